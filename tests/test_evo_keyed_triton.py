"""SparseCTR's fused global/transition kernel (Triton's interpreter here) equals the structural
`global_branch` / `transition_branch`: outputs and the gradients of q, the keys, the values and the
temporal scales, on ragged left-padded histories with candidates; and the whole model with
`attention: triton` equals `structural`."""

from __future__ import annotations

import pytest
import torch

from recsys.ops import evo_keyed_triton
from recsys.ops.chunking import personalized_chunks
from recsys.ops.evo_attention import evo_attend, evo_attend_fused, evo_geometry, global_branch, transition_branch
from recsys.ops.temporal import alibi_scales
from tests.model_variants import assert_attention_paths_agree, assert_blocks_compile_whole

T0 = 1_704_067_200


def _histories(generator: torch.Generator, batch: int, length: int, candidates: int, chunks: int):
    lengths = torch.tensor([length, length // 2 + 3, 1, 0][:batch])
    # Gaps from seconds to days, and exact powers of two: every term of the composite bias varies.
    gaps = torch.randint(1, 200_000, (batch, length), generator=generator) * torch.randint(0, 2, (batch, length), generator=generator)
    gaps[:, ::7] = 64
    times = T0 + gaps.cumsum(1)
    real = torch.arange(length).view(1, -1) >= (length - lengths).view(-1, 1)
    times = torch.where(real, times, torch.zeros_like(times))
    layout = personalized_chunks(times, lengths, chunks)
    request = times.max(dim=1, keepdim=True).values.clamp_min(T0) + torch.randint(1, 90_000, (batch, candidates), generator=generator)
    return torch.cat([times, request], dim=1), layout


@pytest.mark.parametrize("dim,tail,weekend_rule,utc_offset,candidates,queries_per_split",
                         [(16, 2, 0, 0, 3, None), (8, 3, 1, 8 * 3600, 0, None), (16, 1, 0, -5 * 3600, 2, 24)])
def test_keyed_kernel_equals_structural_global_and_transition_with_gradients(dim, tail, weekend_rule, utc_offset, candidates,
                                                                             queries_per_split, monkeypatch):
    if queries_per_split is not None:  # several query slices per key block, their bounds off the 16-row tiles
        monkeypatch.setattr(evo_keyed_triton, "_QUERIES_PER_SPLIT", queries_per_split)
    generator = torch.Generator().manual_seed(torch.seed() % 2**31)
    batch, length, heads, chunks, window = 4, 41, 2, 5, 8
    times, layout = _histories(generator, batch, length, candidates, chunks)
    total = length + candidates
    structural = evo_geometry(times, *layout, candidates, tail, window, utc_offset, weekend_rule)
    fused = evo_geometry(times, *layout, candidates, tail, window, utc_offset, weekend_rule, fused=True)
    assert fused.global_terms.numel() == 0 and fused.tail_terms.numel() == 0 and fused.local_terms.numel() == 0
    q, k, v = (torch.randn(batch, heads, total, dim, generator=generator).requires_grad_() for _ in range(3))
    scales = (alibi_scales(heads) + 0.3 * torch.randn(3, heads, generator=generator)).requires_grad_()
    profile = [torch.randn(batch, heads, 1, dim, generator=generator) for _ in range(2)]
    leaves = [q, k, v, scales]
    upstream = [torch.randn(batch, heads, total, dim, generator=generator) for _ in range(2)]

    expected = (global_branch(q, k, v, structural, scales), transition_branch(q, k, v, structural, scales))
    expected_grads = torch.autograd.grad(sum((e * u).sum() for e, u in zip(expected, upstream)), leaves)
    got = evo_attend_fused(q, k, v, *profile, k, v, fused, window, scales, times, utc_offset, weekend_rule)[:2]
    got_grads = torch.autograd.grad(sum((g * u).sum() for g, u in zip(got, upstream)), leaves)

    for name, g, e in zip(("global", "transition"), got, expected):
        torch.testing.assert_close(g, e, rtol=1e-4, atol=1e-5, msg=lambda m, name=name: f"{name}: {m}")
    assert (expected[0][:, :, :length].abs().sum(-1) == 0).any(), "some history queries must see no chunk (zero rows)"
    for name, g, e in zip(("q", "k", "v", "scales"), got_grads, expected_grads):
        tolerance = 1e-3 if name == "scales" else 1e-4  # a float32 sum over every pair: see test_evo_branches_triton
        torch.testing.assert_close(g, e, rtol=tolerance, atol=tolerance, msg=lambda m, name=name: f"grad of {name}: {m}")


def test_fused_branches_equal_structural_local_branch_too():
    generator = torch.Generator().manual_seed(torch.seed() % 2**31)
    batch, length, heads, dim, candidates, window = 3, 30, 2, 16, 2, 8
    times, layout = _histories(generator, batch, length, candidates, 4)
    q, k, v = (torch.randn(batch, heads, length + candidates, dim, generator=generator) for _ in range(3))
    profile = [torch.randn(batch, heads, 1, dim, generator=generator) for _ in range(2)]
    scales = alibi_scales(heads)
    expected = evo_attend(q, k, v, *profile, k, v, evo_geometry(times, *layout, candidates, 2, window, 0, 0), window, scales)
    got = evo_attend_fused(q, k, v, *profile, k, v, evo_geometry(times, *layout, candidates, 2, window, 0, 0, fused=True), window, scales,
                           times, 0, 0)
    for g, e in zip(got, expected):
        torch.testing.assert_close(g, e, rtol=1e-4, atol=1e-5)


def test_sparsectr_with_fused_branches_equals_structural_with_gradients(prepared):
    assert_attention_paths_agree(prepared, "sparsectr", {"d_model": 16, "heads": 2, "layers": 2, "window": 8},
                                 ("structural", "triton"), max_history=40, trained_parameter="scales")


def test_sparsectr_blocks_with_fused_branches_compile_as_one_graph(prepared):
    assert_blocks_compile_whole(prepared, "sparsectr", {"d_model": 16, "heads": 2, "layers": 2, "window": 8, "attention": "triton"},
                                max_history=40)
