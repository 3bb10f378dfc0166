"""The fused Triton CamA kernel (run by Triton's interpreter here; on the H100 by gpu_suite) equals
the dense-mask CamA: outputs and the gradients of q, k, v, the context keys/values and the bias table."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from recsys.ops.cama import cama_attention, cama_mask
from recsys.ops.cama_triton import cama_meta, cama_triton_attention, channel_bits
from recsys.ops.temporal import log_bucket
from tests.model_variants import assert_attention_paths_agree, assert_blocks_compile_whole

CONTENT = torch.zeros(0, dtype=torch.int64)
HEAD_GROUPS = [CONTENT, CONTENT, torch.tensor([2, 3]), torch.tensor([3])]


def _packed(generator: torch.Generator, lengths=(23, 17, 9), candidates=2):
    """Users packed in one row (history then candidates each), timestamps with ties."""
    segments, positions, times, is_candidate = [], [], [], []
    for user, length in enumerate(lengths):
        gaps = torch.randint(0, 3, (length,), generator=generator) * torch.randint(1, 500_000, (length,), generator=generator)
        t = 1_700_000_000 + gaps.cumsum(0)
        segments += [user] * (length + candidates)
        positions += list(range(length + candidates))
        times += t.tolist() + [int(t[-1]) + 60] * candidates
        is_candidate += [False] * length + [True] * candidates
    n = len(segments)
    candidate = torch.tensor([is_candidate])
    actions = torch.where(candidate, 0, torch.randint(1, 4, (1, n), generator=generator))
    return (torch.tensor([segments]), torch.tensor([positions]), torch.tensor([times]), torch.ones(1, n, dtype=torch.bool),
            candidate, actions, len(lengths))


def _padded(generator: torch.Generator, batch=3, length=40, candidates=3):
    """Left-padded rows (one user each) of different history lengths, then candidates."""
    n = length + candidates
    real_lengths = [length, 11, 0][:batch]
    gaps = torch.randint(0, 3, (batch, length), generator=generator) * torch.randint(1, 90_000, (batch, length), generator=generator)
    history_times = 1_650_000_000 + gaps.cumsum(1)
    real_history = torch.arange(length).view(1, -1) >= (length - torch.tensor(real_lengths)).view(-1, 1)
    history_times = torch.where(real_history, history_times, torch.zeros_like(history_times))
    times = torch.cat([history_times, (history_times[:, -1:] + 3600).expand(batch, candidates)], dim=1)
    real = torch.cat([real_history, torch.ones(batch, candidates, dtype=torch.bool)], dim=1)
    is_candidate = (torch.arange(n) >= length).view(1, -1).expand(batch, n)
    actions = torch.where(real & ~is_candidate, torch.randint(1, 4, (batch, n), generator=generator), 0)
    return torch.zeros(batch, n, dtype=torch.int64), torch.arange(n).expand(batch, n), times, real, is_candidate, actions, 1


def _dense(q, k, v, k_context, v_context, table, layout, buckets):
    segment, position, times, real, is_candidate, actions, contexts = layout
    mask = cama_mask(segment, position, times, real, is_candidate, actions, HEAD_GROUPS, contexts)
    bias = F.embedding(log_bucket((times.unsqueeze(2) - times.unsqueeze(1)).clamp_min(0), buckets), table).permute(0, 3, 1, 2)
    bias = torch.cat([bias.new_zeros(bias.shape[:3] + (contexts,)), bias], dim=3)
    return cama_attention(q, torch.cat([k_context, k], 2), torch.cat([v_context, v], 2), mask, bias)


@pytest.mark.parametrize("make_layout,dim", [(_packed, 16), (_padded, 8)])
def test_fused_cama_equals_dense_cama_with_gradients(make_layout, dim):
    generator = torch.Generator().manual_seed(torch.seed() % 2**31)
    _assert_fused_equals_dense(make_layout(generator), dim, generator)


def _assert_fused_equals_dense(layout, dim: int, generator: torch.Generator) -> None:
    """Outputs and the gradients of q, k, v, context k/v and the bias table against `_dense`."""
    segment, position, times, real, is_candidate, actions, contexts = layout
    batch, n = segment.shape
    heads, buckets = len(HEAD_GROUPS), 128
    leaves = [torch.randn(batch, heads, n, dim, generator=generator) for _ in range(3)]
    leaves += [torch.randn(batch, heads, contexts, dim, generator=generator) for _ in range(2)]
    leaves.append(torch.randn(buckets + 1, heads, generator=generator))
    leaves = [x.requires_grad_() for x in leaves]
    upstream = torch.randn(batch, heads, n, dim, generator=generator)

    expected = _dense(*leaves, layout, buckets)
    expected_grads = torch.autograd.grad((expected * upstream).sum(), leaves)
    meta = cama_meta(segment, position, times, real, is_candidate, actions, *channel_bits(HEAD_GROUPS), buckets)
    got = cama_triton_attention(*leaves[:5], meta, leaves[5], buckets, packed=contexts > 1)
    got_grads = torch.autograd.grad((got * upstream).sum(), leaves)

    torch.testing.assert_close(got, expected, rtol=1e-4, atol=1e-5)
    for name, g, e in zip(("q", "k", "v", "k_context", "v_context", "bias_table"), got_grads, expected_grads):
        torch.testing.assert_close(g, e, rtol=1e-4, atol=1e-4, msg=lambda m, name=name: f"grad of {name}: {m}")


def _steady(generator: torch.Generator, batch=2, length=157, candidates=3, session_gap=40_000, breaks=None):
    """Long histories at a steady pace (1-120 s apart, three `session_gap` s breaks at `breaks`, else at
    random), so that most key tiles away from the diagonal span few buckets (the kernels' threshold
    bias) or, with breaks of weeks, one bucket (their single-bucket tiles)."""
    gaps = torch.randint(1, 120, (batch, length), generator=generator)
    gaps[:, torch.tensor(breaks) if breaks else torch.randint(0, length, (3,), generator=generator)] += session_gap
    history_times = 1_700_000_000 + gaps.cumsum(1)
    times = torch.cat([history_times, (history_times[:, -1:] + 30).expand(batch, candidates)], dim=1)
    n = length + candidates
    real = torch.ones(batch, n, dtype=torch.bool)
    is_candidate = (torch.arange(n) >= length).view(1, -1).expand(batch, n)
    actions = torch.where(is_candidate, 0, torch.randint(1, 4, (batch, n), generator=generator))
    return torch.zeros(batch, n, dtype=torch.int64), torch.arange(n).expand(batch, n), times, real, is_candidate, actions, 1


THRESHOLD_STEPS = 6


def _threshold_tiles(times: torch.Tensor, block_m: int, block_n: int, steps: int) -> int:
    """How many off-diagonal (query block, key block) tiles span at most `steps` bucket edges."""
    count = 0
    for row in times:
        for start_m in range(0, row.numel(), block_m):
            t_i = row[start_m:start_m + block_m]
            for start_n in range(0, start_m, block_n):
                t_j = row[start_n:start_n + block_n]
                low = log_bucket((t_i.min() - t_j.max()).clamp_min(1).view(1))
                high = log_bucket((t_i.max() - t_j.min()).clamp_min(1).view(1))
                count += int(high - low <= steps)
    return count


def test_threshold_bias_tiles_equal_dense_cama_with_gradients():
    """The threshold path (bias without a per-pair log2 or gather, off the diagonal) equals the dense
    CamA, table gradient included; the layout is checked to send tiles down that path."""
    from recsys.ops import cama_triton

    generator = torch.Generator().manual_seed(torch.seed() % 2**31)
    layout = _steady(generator)
    # 40 off-diagonal tiles (two rows of 5 query blocks); 12-32 of them qualify over 150 seeds.
    assert _threshold_tiles(layout[2], 32, 16, THRESHOLD_STEPS) >= 8
    default_steps = cama_triton.ABLATION["bias_steps"]
    cama_triton.ABLATION["bias_steps"] = THRESHOLD_STEPS  # an ablation since the gather went direct (default 0)
    try:
        _assert_fused_equals_dense(layout, 16, generator)
    finally:
        cama_triton.ABLATION["bias_steps"] = default_steps


def test_single_bucket_tiles_equal_dense_cama_with_gradients():
    """Tiles whose pairs all fall in one bucket take the bias as one scalar (no per-pair log2 or
    gather) in all three kernels; with breaks of weeks at query-block boundaries many tiles do."""
    generator = torch.Generator().manual_seed(torch.seed() % 2**31)
    layout = _steady(generator, session_gap=2_000_000, breaks=[31, 63, 95])
    assert _threshold_tiles(layout[2], 32, 16, 0) >= 8  # 40 off-diagonal tiles; the forward's interpreted tile is 32 x 16
    _assert_fused_equals_dense(layout, 16, generator)


def test_bucket_thresholds_reproduce_log_bucket():
    from recsys.ops.cama_triton import bucket_thresholds

    thresholds = bucket_thresholds(128, torch.device("cpu")).long()
    deltas = torch.cat([torch.arange(1, 100_000), torch.randint(100_000, 2**31 - 1, (100_000,))])
    from_thresholds = (deltas[:, None] >= thresholds[None, :]).sum(1) - 1
    assert torch.equal(from_thresholds, log_bucket(deltas, 128))


def test_fused_cama_refuses_history_out_of_time_order():
    generator = torch.Generator().manual_seed(0)
    segment, position, times, real, is_candidate, actions, _ = _packed(generator)
    times = times.clone()
    times[0, 5] = int(times[0, 6]) + 1  # later than the event after it
    with pytest.raises(ValueError, match="sorted by time"):
        cama_meta(segment, position, times, real, is_candidate, actions, *channel_bits(HEAD_GROUPS), 64)


@pytest.mark.parametrize("packed", [False, True])
def test_grab_with_fused_cama_equals_softmax_grab_with_gradients(prepared, packed):
    assert_attention_paths_agree(prepared, "grab", {"d_model": 16, "heads": 4, "layers": 2, "packed": packed},
                                 ("softmax", "triton"), max_history=24, trained_parameter="time_bias.weight")


def test_grab_blocks_with_fused_cama_compile_as_one_graph(prepared):
    assert_blocks_compile_whole(prepared, "grab", {"d_model": 16, "heads": 4, "layers": 2, "packed": True, "attention": "triton"},
                                max_history=24)


def test_fused_cama_outside_the_interpreter_on_cpu_names_the_alternative():
    import os
    import subprocess
    import sys

    code = (
        "import torch\n"
        "from recsys.ops.cama_triton import cama_meta, cama_triton_attention, channel_bits\n"
        "n = 4\n"
        "z = torch.zeros(1, n, dtype=torch.int64)\n"
        "real = torch.ones(1, n, dtype=torch.bool)\n"
        "meta = cama_meta(z, torch.arange(n).view(1, n), torch.arange(n).view(1, n), real, ~real, z + 1, *channel_bits([torch.zeros(0, dtype=torch.int64)]), 128)\n"
        "x = torch.randn(1, 1, n, 16)\n"
        "cama_triton_attention(x, x, x, x[:, :, :1], x[:, :, :1], meta, torch.zeros(129, 1), 128, packed=False)\n"
    )
    env = {key: value for key, value in os.environ.items() if key != "TRITON_INTERPRET"}
    done = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True)
    assert done.returncode != 0
    assert "runs on CUDA" in done.stderr and "softmax" in done.stderr


def test_cama_custom_ops_pass_opcheck():
    """The events op's and the merge op's schemas, fake (shape-only) implementations and autograd
    formulas agree with what they compute: what torch.compile relies on to trace them as calls."""
    generator = torch.Generator().manual_seed(torch.seed() % 2**31)
    segment, position, times, real, is_candidate, actions, contexts = _packed(generator, lengths=(9, 6), candidates=1)
    batch, n = segment.shape
    heads, dim, buckets = len(HEAD_GROUPS), 16, 64
    q, k, v = (torch.randn(batch, heads, n, dim, generator=generator).requires_grad_() for _ in range(3))
    table = torch.randn(buckets + 1, heads, generator=generator).requires_grad_()
    meta = cama_meta(segment, position, times, real, is_candidate, actions, *channel_bits(HEAD_GROUPS), buckets)
    tests = ("test_schema", "test_autograd_registration", "test_faketensor", "test_aot_dispatch_dynamic")
    torch.library.opcheck(torch.ops.recsys.cama_events.default, (q, k, v, table, list(meta), buckets, dim**-0.5, True), test_utils=tests)
    out = torch.randn(batch, heads, n, dim, generator=generator).requires_grad_()
    lse = torch.randn(batch, heads, n, generator=generator).requires_grad_()
    context = torch.randn(batch, heads, 1, dim, generator=generator).requires_grad_()
    # An expanded (stride-0) extra key, as one segment's context key reaches the merge.
    torch.library.opcheck(torch.ops.recsys.merge_extra_key.default, (out, lse, q, context.expand_as(q), context.expand_as(q)), test_utils=tests)


def test_cama_attention_compiles_as_one_graph_with_the_same_gradients():
    """torch.compile(fullgraph=True) traces the fused CamA (events op + merge op) without a graph
    break, and outputs and gradients match eager."""
    generator = torch.Generator().manual_seed(torch.seed() % 2**31)
    layout = _padded(generator, batch=2, length=20, candidates=2)
    segment, position, times, real, is_candidate, actions, contexts = layout
    batch, n = segment.shape
    heads, dim, buckets = len(HEAD_GROUPS), 16, 64
    leaves = [torch.randn(batch, heads, n, dim, generator=generator) for _ in range(3)]
    leaves += [torch.randn(batch, heads, contexts, dim, generator=generator) for _ in range(2)]
    leaves = [x.requires_grad_() for x in leaves + [torch.randn(buckets + 1, heads, generator=generator)]]
    meta = cama_meta(segment, position, times, real, is_candidate, actions, *channel_bits(HEAD_GROUPS), buckets)
    upstream = torch.randn(batch, heads, n, dim, generator=generator)

    def attend(q, k, v, k_context, v_context, table):
        return cama_triton_attention(q, k * 2.0, v, k_context, v_context, meta, table, buckets, packed=False).tanh()

    expected = attend(*leaves)
    expected_grads = torch.autograd.grad((expected * upstream).sum(), leaves)
    got = torch.compile(attend, fullgraph=True, backend="aot_eager")(*leaves)
    got_grads = torch.autograd.grad((got * upstream).sum(), leaves)
    torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-6)
    for g, e in zip(got_grads, expected_grads):
        torch.testing.assert_close(g, e, rtol=1e-5, atol=1e-5)


def test_metadata_built_for_another_bucket_count_is_refused():
    """The bucket thresholds travel with the metadata (built outside compiled blocks, see CamaMeta):
    a table of another bucket count would read them past their end."""
    generator = torch.Generator().manual_seed(0)
    segment, position, times, real, is_candidate, actions, contexts = _packed(generator)
    batch, n = segment.shape
    heads, dim = len(HEAD_GROUPS), 16
    meta = cama_meta(segment, position, times, real, is_candidate, actions, *channel_bits(HEAD_GROUPS), 64)
    q, k, v = (torch.randn(batch, heads, n, dim, generator=generator) for _ in range(3))
    context = torch.randn(batch, heads, contexts, dim, generator=generator)
    with pytest.raises(ValueError, match="another bucket count"):
        cama_triton_attention(q, k, v, context, context, meta, torch.zeros(129, heads), 128)
