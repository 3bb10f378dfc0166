"""The key-list kernels (`recsys.ops.evo_key_lists_triton`, Triton's interpreter here) give the chunk
means, chunk sizes and chunk tails that the PyTorch path (`packed_chunk_summaries`,
`_gather_positions`) gives, for personalized chunks (empty and one-event histories included), for
chunk ids in no particular order, and across several summing slices."""

from __future__ import annotations

import pytest
import torch

import recsys.ops.evo_key_lists_triton as key_lists
from recsys.ops.evo_attention import _gather_positions, chunk_membership, evo_geometry
from recsys.ops.evo_branches_triton import packed_chunk_summaries, split_heads
from tests.test_evo_keyed_triton import _histories


def _reference(qkv: torch.Tensor, chunk_id: torch.Tensor, num_chunks: int, tail_positions: torch.Tensor):
    membership = chunk_membership(chunk_id, num_chunks)
    sizes = membership.sum(-1).clamp_min(1).float()
    k_chunks, v_chunks = packed_chunk_summaries(qkv, membership, sizes)
    _, k, v = split_heads(qkv)
    return k_chunks, v_chunks, _gather_positions(k, tail_positions), _gather_positions(v, tail_positions), sizes


# float32 only: Triton's interpreter multiplies bfloat16 dot operands as their raw bits (the GPU suite's
# correctness part checks the node in bfloat16 on the GPU)
@pytest.mark.parametrize("heads,dim,shuffled", [(2, 16, False), (3, 16, True), (2, 32, False)])
def test_key_lists_equal_the_matmul_path(monkeypatch, heads, dim, shuffled):
    monkeypatch.setattr(key_lists, "_SLICE_ROWS", 32)  # several slices' partials summed
    generator = torch.Generator().manual_seed(torch.seed() % 2**31)
    batch, length, candidates, chunks, tail, window = 4, 77, 3, 5, 2, 8
    times, layout = _histories(generator, batch, length, candidates, chunks)
    geometry = evo_geometry(times, *layout, candidates, tail, window, 0, 0, fused=True)
    chunk_id = geometry.chunk_id
    if shuffled:  # ids in any order along the row, padding (0) anywhere
        chunk_id = torch.randint(0, chunks + 1, chunk_id.shape, generator=generator)
    qkv = torch.randn(batch, length + candidates, 3, heads, dim, generator=generator)

    got = key_lists.packed_key_lists(qkv, chunk_id.to(torch.int32), chunks, geometry.tail_positions)
    expected = _reference(qkv, chunk_id, chunks, geometry.tail_positions)

    tolerance = 1e-6  # the sums in another order
    for name, g, e in zip(["k chunks", "v chunks", "k tails", "v tails", "sizes"], got, expected):
        assert g.shape == e.shape and g.dtype == e.dtype, name
        exact = name.endswith("tails") or name == "sizes"
        torch.testing.assert_close(g, e, rtol=0 if exact else tolerance, atol=0 if exact else tolerance, msg=lambda m, name=name: f"{name}: {m}")


def test_more_chunks_than_one_program_holds_are_refused():
    qkv = torch.zeros(1, 8, 3, 1, 16)
    assert not key_lists.fits(key_lists.MAX_CHUNKS + 1)
    with pytest.raises(ValueError, match="at most"):
        key_lists.packed_key_lists(qkv, torch.zeros(1, 8, dtype=torch.int32), key_lists.MAX_CHUNKS + 1, torch.zeros(1, 2, dtype=torch.int64))
