"""The key-list pass (`recsys.ops.evo_chunks_triton.chunk_keys`, Triton's interpreter here) gives
what the PyTorch path gives: chunk means as `chunk_summaries_matmul` computes them, the tails as
`_gather_positions` takes them, and the chunk sizes; over left-padded histories, users with fewer
events than chunks (empty chunks, whose means are zeros), candidates past the history, and both the
packed projection's k and v and separate summary tensors as the means' source."""

from __future__ import annotations

import pytest
import torch

from recsys.ops.evo_attention import _gather_positions, chunk_membership, chunk_summaries_matmul, evo_geometry
from recsys.ops.evo_branches_triton import split_heads
from recsys.ops.evo_chunks_triton import chunk_keys
from tests.test_evo_keyed_triton import _histories


@pytest.mark.parametrize("dtype,tail,shared", [(torch.float32, 2, True), (torch.float32, 3, False), (torch.bfloat16, 2, True)])
def test_chunk_keys_equal_the_membership_matmul_and_the_gathers(dtype, tail, shared):
    generator = torch.Generator().manual_seed(torch.seed() % 2**31)
    batch, length, candidates, heads, dim, chunks, window = 4, 45, 3, 2, 16, 5, 8
    times, layout = _histories(generator, batch, length, candidates, chunks)
    geometry = evo_geometry(times, *layout, candidates, tail, window, 0, 0, fused=True)
    qkv = torch.randn(batch, length + candidates, 3, heads, dim, generator=generator).to(dtype)
    _, k, v = split_heads(qkv)
    sources = (k, v) if shared else tuple(torch.randn(batch, heads, length + candidates, dim, generator=generator).to(dtype) for _ in range(2))
    timing = geometry.fused_times

    got = chunk_keys(*sources, k, v, timing.history_chunk, timing.chunk_end, geometry.tail_positions)

    membership = chunk_membership(layout[0], chunks)
    for name, source, mean in (("k", sources[0], got.k_chunks), ("v", sources[1], got.v_chunks)):
        expected = chunk_summaries_matmul(source[:, :, :length].float(), membership)
        # the matmul path rounds the sum, then the mean; this pass rounds the float32 mean once
        tolerance = 1e-6 if dtype == torch.float32 else 1e-2
        torch.testing.assert_close(mean.float(), expected, rtol=tolerance, atol=tolerance, msg=lambda m, name=name: f"{name} means: {m}")
        assert mean.dtype == dtype and mean.is_contiguous()
    assert torch.equal(got.k_tails, _gather_positions(k, geometry.tail_positions))
    assert torch.equal(got.v_tails, _gather_positions(v, geometry.tail_positions))
    assert torch.equal(got.chunk_sizes, membership.sum(-1).clamp_min(1).float())
    empty = ~layout[3]
    assert empty.any(), "the histories include users with fewer events than chunks"
    assert torch.equal(got.k_chunks.permute(0, 2, 1, 3)[empty], torch.zeros_like(got.k_chunks.permute(0, 2, 1, 3)[empty]))


def test_chunk_keys_reject_a_tail_list_that_does_not_divide_into_chunks():
    qkv = torch.randn(1, 8, 3, 1, 16)
    _, k, v = split_heads(qkv)
    with pytest.raises(ValueError, match="multiple"):
        chunk_keys(k, v, k, v, torch.ones(1, 8, dtype=torch.int32), torch.tensor([[4, 8]], dtype=torch.int32), torch.zeros(1, 3, dtype=torch.long))
