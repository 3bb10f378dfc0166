"""SparseCTR's global and transition branches as one fused Triton kernel per direction (forward;
dK/dV with the temporal-scale gradient; dQ).

Both branches attend from every position (history and candidates) to a short list of keys: the
chunk summaries (global) or the last `tail` events of every chunk (transition). Key j carries a
time, the position its chunk ends at and a validity bit; query i (history position i, candidates
at position L) sees it when the key is valid and `end_j <= i`, with the composite RelTemporal bias
of `t_i - t_j` (`temporal_components`). A query that sees no key gets zeros, as in
`recsys.ops.evo_attention._attend`. The structural version builds `[B, H, T, K]` bias and visibility
tensors and runs SDPA with an additive mask; here the bias is computed per tile in registers from
int32 times and weekend bits (`evo_bias_triton.composite_terms`, shared with the local branch).

The key lists are short (chunks, chunks × tail), so dK/dV splits the queries over `SPLIT` programs
per key block and sums their float32 partials afterwards: one program per key block would leave
most of the GPU idle.

The launchers below are driven by `recsys.ops.evo_branches_triton`, the one autograd node of the
three branches (the dQ kernel can add to the other branches' dQ in place). Runs on CUDA; on CPU
under Triton's interpreter (`TRITON_INTERPRET=1`), which the tests use.
"""

from __future__ import annotations

from typing import NamedTuple, Tuple

import torch
import triton
import triton.language as tl
from torch import Tensor

from recsys.ops.evo_bias_triton import accumulate_key_gradients, accumulate_query_gradients, add_scale_gradients, composite_terms, load_scales
from recsys.ops.triton_tiles import (INTERPRETED, finish_rows, head_base, head_strides, load_backward_rows, load_tile, online_softmax_step,
                                     program_block, program_rows, query_backward_rows, store_or_add_tile, store_tile, tile_configs)

_QUERIES_PER_SPLIT = 1024  # dK/dV: queries one program walks for its key block


@triton.jit
def _keyed_tile(q, k, t_i, weekend_i, position_i, TK_row, END_row, FLAGS_row, offs_n, NK, s_time, s_hour, s_weekend, sm_scale,
                WEEKEND_BOTH: tl.constexpr, PRECISION: tl.constexpr, FAST_MATH: tl.constexpr):
    """Natural-log scores of a query tile against the keys `offs_n` (-inf where not visible) and the three terms."""
    in_range = offs_n < NK
    t_j = tl.load(TK_row + offs_n, mask=in_range, other=0)
    end_j = tl.load(END_row + offs_n, mask=in_range, other=0)
    flags_j = tl.load(FLAGS_row + offs_n, mask=in_range, other=0)
    b_time, b_hour, b_weekend = composite_terms(t_i, weekend_i, t_j, (flags_j & 2) != 0, WEEKEND_BOTH, FAST_MATH)
    scores = tl.dot(q, tl.trans(k), input_precision=PRECISION) * sm_scale + s_time * b_time + s_hour * b_hour + s_weekend * b_weekend
    visible = (end_j[None, :] <= position_i[:, None]) & (((flags_j & 1) != 0) & in_range)[None, :]
    return tl.where(visible, scores, float("-inf")), b_time, b_hour, b_weekend


@triton.jit
def _key_block(start_n, q, K, V, key_base, offs_d, t_i, weekend_i, position_i, TK_row, END_row, FLAGS_row, NK, s_time, s_hour, s_weekend,
               sm_scale, D: tl.constexpr, BLOCK_N: tl.constexpr, WEEKEND_BOTH: tl.constexpr, PRECISION: tl.constexpr,
               FAST_MATH: tl.constexpr):
    """The key block at `start_n`, its natural-log scores against a query tile and the three bias terms
    (forward and dQ)."""
    offs_n = start_n + tl.arange(0, BLOCK_N)
    k = load_tile(K, key_base, offs_n, offs_d, D, offs_n < NK)
    v = load_tile(V, key_base, offs_n, offs_d, D, offs_n < NK)
    scores, b_time, b_hour, b_weekend = _keyed_tile(q, k, t_i, weekend_i, position_i, TK_row, END_row, FLAGS_row, offs_n, NK, s_time,
                                                    s_hour, s_weekend, sm_scale, WEEKEND_BOTH, PRECISION, FAST_MATH)
    return k, v, scores, b_time, b_hour, b_weekend


@triton.jit
def _queries(TQ, QFLAGS, b, offs_m, rows, T, L):
    """Times, weekend bits and visibility positions (candidates count as position L) of a query tile."""
    t_i = tl.load(TQ + b * T + offs_m, mask=rows, other=0)
    weekend_i = (tl.load(QFLAGS + b * T + offs_m, mask=rows, other=0) & 2) != 0
    return t_i, weekend_i, tl.minimum(offs_m, L)


# Key lists are 16-256 long: narrow key tiles. dK/dV holds two [BLOCK_N, D] accumulators besides the
# tile: short query tiles keep it under the register cap (the offline sm_90 compile spills at 64x32).
_TILES = tile_configs([(64, 16, 4, 3), (64, 32, 4, 3), (128, 32, 8, 2), (128, 64, 8, 2)])
_DKDV_TILES = tile_configs([(32, 16, 4, 3), (32, 32, 4, 3), (64, 16, 4, 3), (32, 64, 4, 3)])


@triton.autotune(configs=_TILES, key=["T", "NK", "D"])
@triton.jit
def _keyed_forward_kernel(Q, K, V, TQ, QFLAGS, TK, KEND, KFLAGS, SCALES, O, LSE, sm_scale, T, L, NK, QB, QH, QT, OB, OH, OT,
                          H: tl.constexpr, D: tl.constexpr, WEEKEND_BOTH: tl.constexpr, PRECISION: tl.constexpr, FAST_MATH: tl.constexpr,
                          BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr):
    """Queries and outputs through their (batch, head, row) strides; the key lists dense `[B, H, NK, D]`."""
    b, h, pid_bh, start_m, offs_m, rows = program_rows(BLOCK_M, H, T)
    offs_d = tl.arange(0, D)
    q = load_tile(Q, head_base(b, h, QB, QH), offs_m, offs_d, QT, rows)
    t_i, weekend_i, position_i = _queries(TQ, QFLAGS, b, offs_m, rows, T, L)
    s_time, s_hour, s_weekend = load_scales(SCALES, h, H)
    key_base = pid_bh.to(tl.int64) * NK * D
    m_i = tl.full([BLOCK_M], float("-inf"), dtype=tl.float32)
    l_i = tl.zeros([BLOCK_M], dtype=tl.float32)
    acc = tl.zeros([BLOCK_M, D], dtype=tl.float32)
    for start_n in range(0, NK, BLOCK_N):
        k, v, scores, _, _, _ = _key_block(start_n, q, K, V, key_base, offs_d, t_i, weekend_i, position_i, TK + b * NK, KEND + b * NK,
                                           KFLAGS + b * NK, NK, s_time, s_hour, s_weekend, sm_scale, D, BLOCK_N, WEEKEND_BOTH, PRECISION,
                                           FAST_MATH)
        acc, l_i, m_i = online_softmax_step(acc, l_i, m_i, scores * 1.4426950408889634, v, PRECISION)
    out, lse = finish_rows(acc, l_i, m_i)
    store_tile(O, head_base(b, h, OB, OH), offs_m, offs_d, OT, rows, out)
    tl.store(LSE + pid_bh.to(tl.int64) * T + offs_m, lse, mask=rows)


@triton.autotune(configs=_DKDV_TILES, key=["T", "NK", "D"])
@triton.jit
def _keyed_dkdv_kernel(Q, K, V, DO, LSE, DELTA, TQ, QFLAGS, TK, KEND, KFLAGS, SCALES, DK, DV, sm_scale, T, L, NK, QUERIES, QB, QH, QT,
                       GB, GH, GT, H: tl.constexpr, D: tl.constexpr, WEEKEND_BOTH: tl.constexpr, PRECISION: tl.constexpr, FAST_MATH: tl.constexpr,
                       BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr):
    """One key block and one slice of `QUERIES` queries per program: float32 partial dK, dV (summed
    over the slices by the caller); the dQ kernel sums the temporal scales' gradient."""
    b, h, pid_bh, start_n, offs_n, offs_d, cols, key_base = program_block(BLOCK_N, H, NK, D)
    split = tl.program_id(2)
    k = load_tile(K, key_base, offs_n, offs_d, D, cols)
    v = load_tile(V, key_base, offs_n, offs_d, D, cols)
    s_time, s_hour, s_weekend = load_scales(SCALES, h, H)
    end_j = tl.load(KEND + b * NK + offs_n, mask=cols, other=0)
    valid_j = ((tl.load(KFLAGS + b * NK + offs_n, mask=cols, other=0) & 1) != 0) & cols
    # no query before the earliest end of a valid key sees this block
    first_query = tl.min(tl.where(valid_j, end_j, T), 0)
    lo = tl.maximum(split * QUERIES, first_query // BLOCK_M * BLOCK_M)
    hi = tl.minimum((split + 1) * QUERIES, T)
    dk = tl.zeros([BLOCK_N, D], dtype=tl.float32)
    dv = tl.zeros([BLOCK_N, D], dtype=tl.float32)
    query_base, do_base = head_base(b, h, QB, QH), head_base(b, h, GB, GH)
    for start_m in range(lo, hi, BLOCK_M):
        offs_m = start_m + tl.arange(0, BLOCK_M)
        rows = offs_m < hi
        q, do, lse, delta_row = load_backward_rows(Q, query_base, QT, DO, do_base, GT, LSE, DELTA, pid_bh.to(tl.int64) * T, offs_m, offs_d,
                                                   rows)
        t_i, weekend_i, position_i = _queries(TQ, QFLAGS, b, offs_m, rows, T, L)
        scores, _, _, _ = _keyed_tile(q, k, t_i, weekend_i, position_i, TK + b * NK, KEND + b * NK, KFLAGS + b * NK, offs_n, NK, s_time,
                                      s_hour, s_weekend, sm_scale, WEEKEND_BOTH, PRECISION, FAST_MATH)
        dk, dv = accumulate_key_gradients(dk, dv, q, do, v, scores, lse, delta_row, PRECISION)
    partial_base = (split.to(tl.int64) * tl.num_programs(1) + pid_bh) * NK * D
    store_tile(DK, partial_base, offs_n, offs_d, D, cols, dk * sm_scale)
    store_tile(DV, partial_base, offs_n, offs_d, D, cols, dv)


@triton.autotune(configs=_TILES, key=["T", "NK", "D", "ACCUMULATE"], restore_value=["DQ"], reset_to_zero=["DSCALES"])
@triton.jit
def _keyed_dq_kernel(Q, K, V, DO, O, LSE, DELTA, TQ, QFLAGS, TK, KEND, KFLAGS, SCALES, DQ, DSCALES, sm_scale, T, L, NK, QB, QH, QT,
                     OB, OH, OT, GB, GH, GT, H: tl.constexpr, D: tl.constexpr, WEEKEND_BOTH: tl.constexpr, PRECISION: tl.constexpr, FAST_MATH: tl.constexpr,
                     ACCUMULATE: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr):
    """dQ of a query tile (ACCUMULATE: added to what DQ holds, the other branches' share) and the
    temporal scales' gradient (atomics). q and dq share the strides (QB, QH, QT)."""
    b, h, pid_bh, start_m, offs_m, rows = program_rows(BLOCK_M, H, T)
    offs_d = tl.arange(0, D)
    base = head_base(b, h, QB, QH)
    q, do, lse, delta_row = query_backward_rows(Q, base, QT, DO, head_base(b, h, GB, GH), GT, O, head_base(b, h, OB, OH), OT, LSE, DELTA,
                                                pid_bh.to(tl.int64) * T, offs_m, offs_d, rows)
    t_i, weekend_i, position_i = _queries(TQ, QFLAGS, b, offs_m, rows, T, L)
    s_time, s_hour, s_weekend = load_scales(SCALES, h, H)
    key_base = pid_bh.to(tl.int64) * NK * D
    dq = tl.zeros([BLOCK_M, D], dtype=tl.float32)
    d_time = tl.zeros([BLOCK_M], dtype=tl.float32)
    d_hour = tl.zeros([BLOCK_M], dtype=tl.float32)
    d_weekend = tl.zeros([BLOCK_M], dtype=tl.float32)
    for start_n in range(0, NK, BLOCK_N):
        k, v, scores, b_time, b_hour, b_weekend = _key_block(start_n, q, K, V, key_base, offs_d, t_i, weekend_i, position_i, TK + b * NK,
                                                             KEND + b * NK, KFLAGS + b * NK, NK, s_time, s_hour, s_weekend, sm_scale, D,
                                                             BLOCK_N, WEEKEND_BOTH, PRECISION, FAST_MATH)
        dq, d_time, d_hour, d_weekend = accumulate_query_gradients(dq, d_time, d_hour, d_weekend, do, k, v, scores, lse, delta_row, b_time,
                                                                   b_hour, b_weekend, PRECISION)
    store_or_add_tile(DQ, base, offs_m, offs_d, QT, rows, dq * sm_scale, ACCUMULATE)
    add_scale_gradients(DSCALES, h, H, d_time, d_hour, d_weekend)


def _launch(q: Tensor, weekend_rule: int) -> dict:
    return dict(H=q.shape[1], D=q.shape[-1], WEEKEND_BOTH=weekend_rule == 1, PRECISION="ieee" if q.dtype == torch.float32 else "tf32",
                FAST_MATH=not INTERPRETED)


class KeyTimes(NamedTuple):
    """A key list's int32 times, the positions their chunks end at and flag words (bit 1 valid, bit 2
    weekend), `[B, K]` each, as `recsys.ops.evo_attention.FusedTimes` holds them."""

    times: Tensor
    end: Tensor
    flags: Tensor


def keyed_forward(q: Tensor, k: Tensor, v: Tensor, query_times: Tensor, query_flags: Tensor, keys: KeyTimes, scales32: Tensor, out: Tensor,
                  history_length: int, weekend_rule: int, sm_scale: float) -> Tensor:
    """Write `out` `[B, H, T, D]` (any layout with a unit-strided head dim) and the natural log-sum-exp
    `[B, H, T]` (-inf where a query sees no key); k and v dense."""
    batch, heads, total, _ = q.shape
    lse = torch.empty(batch, heads, total, device=q.device, dtype=torch.float32)
    _keyed_forward_kernel[lambda meta: (triton.cdiv(total, meta["BLOCK_M"]), batch * heads)](
        q, k.contiguous(), v.contiguous(), query_times, query_flags, keys.times, keys.end, keys.flags, scales32, out, lse, sm_scale, total,
        history_length, k.shape[2], *head_strides(q), *head_strides(out), **_launch(q, weekend_rule))
    return lse


def keyed_key_gradients(q: Tensor, k: Tensor, v: Tensor, grad_out: Tensor, lse: Tensor, delta: Tensor, query_times: Tensor,
                        query_flags: Tensor, keys: KeyTimes, scales32: Tensor, history_length: int, weekend_rule: int,
                        sm_scale: float) -> Tuple[Tensor, Tensor]:
    """float32 dK, dV `[B, H, K, D]`."""
    batch, heads, total, dim = q.shape
    count = k.shape[2]
    splits = triton.cdiv(total, _QUERIES_PER_SPLIT)
    dk_parts = torch.empty(splits, batch, heads, count, dim, device=q.device, dtype=torch.float32)
    dv_parts = torch.empty_like(dk_parts)
    _keyed_dkdv_kernel[lambda meta: (triton.cdiv(count, meta["BLOCK_N"]), batch * heads, splits)](
        q, k.contiguous(), v.contiguous(), grad_out, lse, delta, query_times, query_flags, keys.times, keys.end, keys.flags, scales32,
        dk_parts, dv_parts, sm_scale, total, history_length, count, _QUERIES_PER_SPLIT, *head_strides(q), *head_strides(grad_out),
        **_launch(q, weekend_rule))
    return (dk_parts[0], dv_parts[0]) if splits == 1 else (dk_parts.sum(0), dv_parts.sum(0))


def keyed_query_gradients(q: Tensor, k: Tensor, v: Tensor, grad_out: Tensor, out: Tensor, lse: Tensor, query_times: Tensor,
                          query_flags: Tensor, keys: KeyTimes, scales32: Tensor, dq: Tensor, dscales: Tensor, accumulate: bool,
                          history_length: int, weekend_rule: int, sm_scale: float) -> Tensor:
    """Write dQ into `dq`, or with `accumulate` add it to what `dq` holds; add the scales' gradient into
    float32 `dscales` (an autotuning launch zeroes it first: give each kernel its own). Returns the row
    term rowsum(dO·O) `[B, H, T]` that `keyed_key_gradients`, run next, reads."""
    batch, heads, total, _ = q.shape
    delta = torch.empty(q.shape[:3], device=q.device, dtype=torch.float32)
    _keyed_dq_kernel[lambda meta: (triton.cdiv(total, meta["BLOCK_M"]), batch * heads)](
        q, k.contiguous(), v.contiguous(), grad_out, out, lse, delta, query_times, query_flags, keys.times, keys.end, keys.flags, scales32,
        dq, dscales, sm_scale, total, history_length, k.shape[2], *head_strides(q, dq), *head_strides(out), *head_strides(grad_out),
        ACCUMULATE=accumulate, **_launch(q, weekend_rule))
    return delta
