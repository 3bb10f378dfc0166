"""Helpers the fused kernels share equal their plain PyTorch twins: the backward's row term and the
extra-key merge (Triton, interpreted here) and the chunk means by matmul that the fused SparseCTR path uses."""

from __future__ import annotations

import pytest
import torch

from recsys.ops.chunking import personalized_chunks
from recsys.ops.evo_attention import chunk_membership, chunk_summaries, chunk_summaries_matmul
from recsys.ops.triton_tiles import backward_row_term, backward_row_term_reference, merge_extra_key, merge_extra_key_reference


@pytest.mark.parametrize("with_lse_grad", [False, True])
def test_row_term_kernel_equals_reference(with_lse_grad):
    generator = torch.Generator().manual_seed(torch.seed() % 2**31)
    shape = (2, 3, 37, 16)  # 222 rows: the last block is partial
    grad_out, out = torch.randn(shape, generator=generator), torch.randn(shape, generator=generator)
    grad_lse = torch.randn(shape[:-1], generator=generator) if with_lse_grad else None
    torch.testing.assert_close(backward_row_term(grad_out, out, grad_lse), backward_row_term_reference(grad_out, out, grad_lse),
                               rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("dim,layout", [(16, "expanded"), (24, "full"), (16, "strided")])
def test_merge_extra_key_kernel_equals_reference_with_gradients(dim, layout):
    """One extra key per query merged through the log-sum-exp, forward and all five gradients; rows that
    saw no key (lse -inf), a partial last block, a head dim that is not a power of two, and the extra
    key/value as an expanded view (one per row, as CamA's single-segment context is), full-size, or
    with a head dim that is not unit-strided."""
    generator = torch.Generator().manual_seed(torch.seed() % 2**31)
    batch, heads, length = 2, 3, 37
    out, q = (torch.randn(batch, heads, length, dim, generator=generator) for _ in range(2))
    lse = torch.randn(batch, heads, length, generator=generator)
    lse[0, 1, :5] = float("-inf")
    if layout == "expanded":
        k_source, v_source = (torch.randn(batch, heads, 1, dim, generator=generator) for _ in range(2))
    elif layout == "full":
        k_source, v_source = (torch.randn(batch, heads, length, dim, generator=generator) for _ in range(2))
    else:
        k_source, v_source = (torch.randn(batch, heads, length, dim, 2, generator=generator) for _ in range(2))
    upstream = torch.randn(batch, heads, length, dim, generator=generator)
    results = []
    for merge in (merge_extra_key, merge_extra_key_reference):
        leaves = [x.clone().requires_grad_() for x in (out, lse, q, k_source, v_source)]
        k_extra, v_extra = (x[..., 0] if layout == "strided" else x.expand(batch, heads, length, dim) for x in leaves[3:])
        assert k_extra.stride(-1) == (2 if layout == "strided" else 1)
        merged = merge(leaves[0], leaves[1], leaves[2], k_extra, v_extra)
        merged.backward(upstream)
        results.append([merged] + [x.grad for x in leaves])
    assert results[0][0].abs().max() > 0 and results[0][2][0, 1, :5].abs().max() == 0  # no gradient into an empty row's lse
    for fused, reference in zip(*results):
        torch.testing.assert_close(fused, reference, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("dtype,tolerance", [(torch.float32, 1e-5), (torch.bfloat16, 2e-2)])
def test_chunk_means_by_matmul_equal_scatter_add_with_gradients(dtype, tolerance):
    generator = torch.Generator().manual_seed(torch.seed() % 2**31)
    batch, heads, length, dim, chunks = 3, 2, 50, 8, 6
    lengths = torch.tensor([length, 17, 0])
    times = (1_704_067_200 + torch.randint(1, 90_000, (batch, length), generator=generator).cumsum(1))
    real = torch.arange(length).view(1, -1) >= (length - lengths).view(-1, 1)
    chunk_id = personalized_chunks(torch.where(real, times, torch.zeros_like(times)), lengths, chunks)[0]
    values = torch.randn(batch, heads, length, dim, generator=generator).to(dtype).requires_grad_()
    upstream = torch.randn(batch, heads, chunks, dim, generator=generator).to(dtype)

    expected = chunk_summaries(values, chunk_id, chunks)
    (expected_grad,) = torch.autograd.grad((expected.float() * upstream.float()).sum(), values)
    got = chunk_summaries_matmul(values, chunk_membership(chunk_id, chunks))
    (got_grad,) = torch.autograd.grad((got.float() * upstream.float()).sum(), values)

    assert got.dtype == dtype
    torch.testing.assert_close(got.float(), expected.float(), rtol=tolerance, atol=tolerance)
    torch.testing.assert_close(got_grad.float(), expected_grad.float(), rtol=tolerance, atol=tolerance)
    assert torch.all(got[2] == 0), "a row with no history has zero summaries"
