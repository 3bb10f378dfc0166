"""SparseCTR structural kernels == dense-mask reference: forward and gradients, fresh random inputs."""

from __future__ import annotations

import torch

from recsys.ops.chunking import personalized_chunks
from recsys.ops.evo_attention import evo_branches, evo_branches_reference
from recsys.ops.temporal import WEEKEND_BOTH, WEEKEND_SAME_TYPE, alibi_scales, composite_temporal_bias

T0 = 1_704_067_200


def _layout(lengths, width, num_chunks, generator):
    gaps = torch.randint(0, 20_000, (len(lengths), width), generator=generator)
    gaps[:, ::5] *= 50  # some long gaps between sessions
    lengths = torch.tensor(lengths)
    times = (T0 + gaps.cumsum(1)) * (torch.arange(width) >= width - lengths[:, None])
    return times, lengths, personalized_chunks(times, lengths, num_chunks)


def _relative_error(a, b):
    return ((a - b).abs().max() / b.abs().max().clamp_min(1e-12)).item()


def _check(lengths, width, candidates, num_chunks, tail, window, weekend_rule, heads=2, dim=8):
    generator = torch.Generator().manual_seed(torch.seed() % 2**31)  # fresh inputs every run
    times, lengths_t, (chunk_id, chunk_start, chunk_end, chunk_valid) = _layout(lengths, width, num_chunks, generator)
    request = times.max(1).values.clamp_min(T0) + 3_600
    all_times = torch.cat([times, request[:, None].expand(-1, candidates)], dim=1)
    batch, total = len(lengths), width + candidates
    shapes = [(batch, heads, total, dim)] * 3 + [(batch, heads, 1, dim)] * 2 + [(batch, heads, total, dim)] * 2
    inputs = [torch.randn(s, generator=generator, requires_grad=True) for s in shapes]
    scales = (alibi_scales(heads) + 0.1 * torch.randn(3, heads, generator=generator)).requires_grad_(True)
    args = (all_times, chunk_id, chunk_start, chunk_end, chunk_valid, tail, window)
    structural = evo_branches(*inputs, *args, scales, 3_600, weekend_rule)
    reference = evo_branches_reference(*inputs, *args, scales, 3_600, weekend_rule)
    weights = [torch.randn(out.shape, generator=generator) for out in reference]
    for got, want in zip(structural, reference):
        assert torch.isfinite(got).all()
        assert _relative_error(got, want) < 1e-5
    grads_structural = torch.autograd.grad(sum((o * w).sum() for o, w in zip(structural, weights)), inputs + [scales])
    grads_reference = torch.autograd.grad(sum((o * w).sum() for o, w in zip(reference, weights)), inputs + [scales])
    for got, want in zip(grads_structural, grads_reference):
        assert _relative_error(got, want) < 1e-5


def test_ragged_histories_with_candidates():
    _check([37, 12, 40, 3], width=40, candidates=3, num_chunks=5, tail=2, window=8, weekend_rule=WEEKEND_SAME_TYPE)


def test_single_event_empty_and_padding_only_chunks():
    # 0 events: every chunk empty; 1 event: P-1 empty chunks; 2 events < P: padding-only chunks.
    _check([0, 1, 2, 16], width=16, candidates=1, num_chunks=6, tail=3, window=4, weekend_rule=WEEKEND_BOTH)


def test_window_longer_than_history_and_one_chunk():
    _check([5, 9], width=9, candidates=4, num_chunks=1, tail=1, window=32, weekend_rule=WEEKEND_SAME_TYPE)


def test_window_not_dividing_length():
    _check([23, 7, 30], width=30, candidates=2, num_chunks=4, tail=2, window=7, weekend_rule=WEEKEND_SAME_TYPE)


def test_composite_bias_terms():
    scales = torch.tensor([[1.0], [0.0], [0.0]])
    bias = composite_temporal_bias(torch.tensor([[T0 + 1024]]), torch.tensor([[T0, T0 + 1024, T0 + 1023]]), scales, 0, WEEKEND_SAME_TYPE)
    assert bias.flatten().tolist() == [-10.0, 0.0, 0.0]  # -floor(log2(max(|Δt|, 1)))
    hour = torch.tensor([[0.0], [1.0], [0.0]])
    twelve_hours = composite_temporal_bias(torch.tensor([[T0 + 12 * 3600]]), torch.tensor([[T0, T0 + 24 * 3600 * 7]]), hour, 0, WEEKEND_SAME_TYPE)
    assert torch.allclose(twelve_hours.flatten(), torch.tensor([-1.0, -1.0]))
    weekend = torch.tensor([[0.0], [0.0], [1.0]])
    saturday, monday, sunday = T0 + 5 * 86_400, T0, T0 + 6 * 86_400  # T0 is a Monday
    same_type = composite_temporal_bias(torch.tensor([[saturday]]), torch.tensor([[monday, sunday]]), weekend, 0, WEEKEND_SAME_TYPE)
    assert same_type.flatten().tolist() == [-1.0, 0.0]
    both = composite_temporal_bias(torch.tensor([[monday]]), torch.tensor([[monday + 3600, sunday]]), weekend, 0, WEEKEND_BOTH)
    assert both.flatten().tolist() == [-1.0, -1.0]


def test_log_time_term_is_exact_at_every_power_of_two():
    # Δ = 2^k - 1, 2^k, 2^k + 1 up to 2^52: floor(log2) changes exactly at 2^k (CUDA's float64 log2
    # gives log2(64) = 5.999..., so a floor(log2(Δ)) formula is one octave low there on the GPU).
    powers = torch.tensor([2**k for k in range(1, 53)], dtype=torch.int64)
    deltas = torch.stack([powers - 1, powers, powers + 1], 1).flatten()
    exponents = torch.arange(1, 53).repeat_interleave(3) - torch.tensor([1, 0, 0]).repeat(52)
    exponents[0] = 0  # Δ = 1
    bias = composite_temporal_bias(deltas.view(-1, 1), torch.zeros(len(deltas), 1, dtype=torch.int64), torch.tensor([[1.0], [0.0], [0.0]]),
                                   0, WEEKEND_SAME_TYPE)
    assert bias.flatten().tolist() == (-exponents.double()).tolist()


def test_structural_kernels_are_scriptable_and_match_eager():
    generator = torch.Generator().manual_seed(torch.seed() % 2**31)
    times, lengths, layout = _layout([20, 5, 0], 20, 4, generator)
    request = times.max(1).values.clamp_min(T0) + 60
    all_times = torch.cat([times, request[:, None].expand(-1, 2)], dim=1)
    q, k, v = (torch.randn(3, 2, 22, 8, generator=generator) for _ in range(3))
    kp, vp = (torch.randn(3, 2, 1, 8, generator=generator) for _ in range(2))
    args = (q, k, v, kp, vp, k, v, all_times, *layout, 2, 8, alibi_scales(2), 0, WEEKEND_SAME_TYPE)
    scripted = torch.jit.script(evo_branches)
    for eager_out, scripted_out in zip(evo_branches(*args), scripted(*args)):
        torch.testing.assert_close(scripted_out, eager_out)
