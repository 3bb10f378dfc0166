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

Runs on CUDA; on CPU under Triton's interpreter (`TRITON_INTERPRET=1`), which the tests use.
"""

from __future__ import annotations

import math

import torch
import triton
import triton.language as tl
from torch import Tensor

from recsys.ops.evo_bias_triton import accumulate_key_gradients, add_scale_gradients, composite_terms, load_scales
from recsys.ops.triton_tiles import (INTERPRETED, backward_row_term, finish_rows, load_backward_rows, load_tile,
                                     online_softmax_step, pad_head_dim, padded_head_dim, program_block, store_tile, tile_configs)

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
    """The key block at `start_n` and its natural-log scores against a query tile (forward and dQ)."""
    offs_n = start_n + tl.arange(0, BLOCK_N)
    k = load_tile(K, key_base, offs_n, offs_d, D, offs_n < NK)
    v = load_tile(V, key_base, offs_n, offs_d, D, offs_n < NK)
    scores, _, _, _ = _keyed_tile(q, k, t_i, weekend_i, position_i, TK_row, END_row, FLAGS_row, offs_n, NK, s_time, s_hour, s_weekend,
                                  sm_scale, WEEKEND_BOTH, PRECISION, FAST_MATH)
    return k, v, scores


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
def _keyed_forward_kernel(Q, K, V, TQ, QFLAGS, TK, KEND, KFLAGS, SCALES, O, LSE, sm_scale, T, L, NK, H: tl.constexpr, D: tl.constexpr,
                          WEEKEND_BOTH: tl.constexpr, PRECISION: tl.constexpr, FAST_MATH: tl.constexpr, BLOCK_M: tl.constexpr,
                          BLOCK_N: tl.constexpr):
    b, h, pid_bh, start_m, offs_m, offs_d, rows, base = program_block(BLOCK_M, H, T, D)
    q = load_tile(Q, base, offs_m, offs_d, D, rows)
    t_i, weekend_i, position_i = _queries(TQ, QFLAGS, b, offs_m, rows, T, L)
    s_time, s_hour, s_weekend = load_scales(SCALES, h, H)
    key_base = pid_bh.to(tl.int64) * NK * D
    m_i = tl.full([BLOCK_M], float("-inf"), dtype=tl.float32)
    l_i = tl.zeros([BLOCK_M], dtype=tl.float32)
    acc = tl.zeros([BLOCK_M, D], dtype=tl.float32)
    for start_n in range(0, NK, BLOCK_N):
        k, v, scores = _key_block(start_n, q, K, V, key_base, offs_d, t_i, weekend_i, position_i, TK + b * NK, KEND + b * NK,
                                  KFLAGS + b * NK, NK, s_time, s_hour, s_weekend, sm_scale, D, BLOCK_N, WEEKEND_BOTH, PRECISION, FAST_MATH)
        acc, l_i, m_i = online_softmax_step(acc, l_i, m_i, scores * 1.4426950408889634, v, PRECISION)
    out, lse = finish_rows(acc, l_i, m_i)
    store_tile(O, base, offs_m, offs_d, D, rows, out)
    tl.store(LSE + pid_bh.to(tl.int64) * T + offs_m, lse, mask=rows)


@triton.autotune(configs=_DKDV_TILES, key=["T", "NK", "D"], reset_to_zero=["DSCALES"])
@triton.jit
def _keyed_dkdv_kernel(Q, K, V, DO, LSE, DELTA, TQ, QFLAGS, TK, KEND, KFLAGS, SCALES, DK, DV, DSCALES, sm_scale, T, L, NK, QUERIES,
                       H: tl.constexpr, D: tl.constexpr, WEEKEND_BOTH: tl.constexpr, PRECISION: tl.constexpr, FAST_MATH: tl.constexpr,
                       BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr):
    """One key block and one slice of `QUERIES` queries per program: float32 partial dK, dV (summed
    over the slices by the caller) and the temporal scales' gradient (atomics)."""
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
    d_time = tl.zeros([BLOCK_N], dtype=tl.float32)
    d_hour = tl.zeros([BLOCK_N], dtype=tl.float32)
    d_weekend = tl.zeros([BLOCK_N], dtype=tl.float32)
    query_base = pid_bh.to(tl.int64) * T * D
    for start_m in range(lo, hi, BLOCK_M):
        offs_m = start_m + tl.arange(0, BLOCK_M)
        rows = offs_m < hi
        q, do, lse, delta_row = load_backward_rows(Q, DO, LSE, DELTA, query_base, pid_bh.to(tl.int64) * T, offs_m, offs_d, D, rows)
        t_i, weekend_i, position_i = _queries(TQ, QFLAGS, b, offs_m, rows, T, L)
        scores, b_time, b_hour, b_weekend = _keyed_tile(q, k, t_i, weekend_i, position_i, TK + b * NK, KEND + b * NK, KFLAGS + b * NK,
                                                        offs_n, NK, s_time, s_hour, s_weekend, sm_scale, WEEKEND_BOTH, PRECISION, FAST_MATH)
        dk, dv, d_time, d_hour, d_weekend = accumulate_key_gradients(dk, dv, d_time, d_hour, d_weekend, q, do, v, scores, lse, delta_row,
                                                                     b_time, b_hour, b_weekend, PRECISION)
    partial_base = (split.to(tl.int64) * tl.num_programs(1) + pid_bh) * NK * D
    store_tile(DK, partial_base, offs_n, offs_d, D, cols, dk * sm_scale)
    store_tile(DV, partial_base, offs_n, offs_d, D, cols, dv)
    add_scale_gradients(DSCALES, h, H, d_time, d_hour, d_weekend)


@triton.autotune(configs=_TILES, key=["T", "NK", "D"])
@triton.jit
def _keyed_dq_kernel(Q, K, V, DO, LSE, DELTA, TQ, QFLAGS, TK, KEND, KFLAGS, SCALES, DQ, sm_scale, T, L, NK, H: tl.constexpr,
                     D: tl.constexpr, WEEKEND_BOTH: tl.constexpr, PRECISION: tl.constexpr, FAST_MATH: tl.constexpr, BLOCK_M: tl.constexpr,
                     BLOCK_N: tl.constexpr):
    b, h, pid_bh, start_m, offs_m, offs_d, rows, base = program_block(BLOCK_M, H, T, D)
    q, do, lse, delta_row = load_backward_rows(Q, DO, LSE, DELTA, base, pid_bh.to(tl.int64) * T, offs_m, offs_d, D, rows)
    t_i, weekend_i, position_i = _queries(TQ, QFLAGS, b, offs_m, rows, T, L)
    s_time, s_hour, s_weekend = load_scales(SCALES, h, H)
    key_base = pid_bh.to(tl.int64) * NK * D
    dq = tl.zeros([BLOCK_M, D], dtype=tl.float32)
    for start_n in range(0, NK, BLOCK_N):
        k, v, scores = _key_block(start_n, q, K, V, key_base, offs_d, t_i, weekend_i, position_i, TK + b * NK, KEND + b * NK,
                                  KFLAGS + b * NK, NK, s_time, s_hour, s_weekend, sm_scale, D, BLOCK_N, WEEKEND_BOTH, PRECISION, FAST_MATH)
        p = tl.exp2(scores * 1.4426950408889634 - lse[:, None])
        dp = tl.dot(do, tl.trans(v), input_precision=PRECISION)
        ds = p * (dp - delta_row[:, None])
        dq += tl.dot(ds.to(k.dtype), k, input_precision=PRECISION)
    store_tile(DQ, base, offs_m, offs_d, D, rows, dq * sm_scale)


def _launch(q: Tensor, weekend_rule: int) -> dict:
    return dict(H=q.shape[1], D=q.shape[-1], WEEKEND_BOTH=weekend_rule == 1, PRECISION="ieee" if q.dtype == torch.float32 else "tf32",
                FAST_MATH=not INTERPRETED)


class _KeyedAttention(torch.autograd.Function):
    @staticmethod
    def forward(ctx, q: Tensor, k: Tensor, v: Tensor, scales: Tensor, query_times: Tensor, query_flags: Tensor, key_times: Tensor,
                key_end: Tensor, key_flags: Tensor, history_length: int, weekend_rule: int, sm_scale: float):
        batch, heads, total, _ = q.shape
        keys = k.shape[2]
        out = torch.empty_like(q)
        lse = torch.empty(batch, heads, total, device=q.device, dtype=torch.float32)
        scales32 = scales.float().contiguous()
        _keyed_forward_kernel[lambda meta: (triton.cdiv(total, meta["BLOCK_M"]), batch * heads)](
            q, k, v, query_times, query_flags, key_times, key_end, key_flags, scales32, out, lse, sm_scale, total, history_length, keys,
            **_launch(q, weekend_rule))
        ctx.save_for_backward(q, k, v, out, lse, scales32, query_times, query_flags, key_times, key_end, key_flags)
        ctx.history_length, ctx.weekend_rule, ctx.sm_scale, ctx.scales_dtype = history_length, weekend_rule, sm_scale, scales.dtype
        return out

    @staticmethod
    def backward(ctx, grad_out: Tensor):
        q, k, v, out, lse, scales32, query_times, query_flags, key_times, key_end, key_flags = ctx.saved_tensors
        batch, heads, total, dim = q.shape
        keys = k.shape[2]
        grad_out = grad_out.contiguous()
        delta = backward_row_term(grad_out, out, None)
        splits = triton.cdiv(total, _QUERIES_PER_SPLIT)
        dk_parts = torch.empty(splits, batch, heads, keys, dim, device=q.device, dtype=torch.float32)
        dv_parts = torch.empty_like(dk_parts)
        dscales = torch.zeros_like(scales32)
        dq = torch.empty_like(q)
        launch = _launch(q, ctx.weekend_rule)
        tensors = (query_times, query_flags, key_times, key_end, key_flags, scales32)
        _keyed_dkdv_kernel[lambda meta: (triton.cdiv(keys, meta["BLOCK_N"]), batch * heads, splits)](
            q, k, v, grad_out, lse, delta, *tensors, dk_parts, dv_parts, dscales, ctx.sm_scale, total, ctx.history_length, keys,
            _QUERIES_PER_SPLIT, **launch)
        _keyed_dq_kernel[lambda meta: (triton.cdiv(total, meta["BLOCK_M"]), batch * heads)](
            q, k, v, grad_out, lse, delta, *tensors, dq, ctx.sm_scale, total, ctx.history_length, keys, **launch)
        return (dq, dk_parts.sum(0).to(k.dtype), dv_parts.sum(0).to(v.dtype), dscales.to(ctx.scales_dtype),
                None, None, None, None, None, None, None, None)


@torch.compiler.disable  # train.compile: inductor's build of these autotuned kernels fails; they run as they are
def keyed_attention_prepared(q: Tensor, k: Tensor, v: Tensor, query_times: Tensor, query_flags: Tensor, history_length: int,
                             key_times: Tensor, key_end: Tensor, key_flags: Tensor, scales: Tensor, weekend_rule: int) -> Tensor:
    """q `[B, H, T, D]` (history then candidates), keys k/v `[B, H, K, D]`, scales `[3, H]` ->
    `[B, H, T, D]`: equal to `evo_attention._attend` with the visibility `key valid & (key_end <= position)`
    (candidates at position `history_length`) and the composite bias of the time differences. Times
    and flag words (bit 1 valid, bit 2 weekend) as `recsys.ops.evo_attention.FusedTimes` holds them,
    built once per batch."""
    if not q.is_cuda and not INTERPRETED:
        raise RuntimeError("the fused keyed kernel runs on CUDA (on the CPU only under TRITON_INTERPRET=1); use attention 'structural'")
    dim = q.shape[-1]
    padded = padded_head_dim(dim)
    out = _KeyedAttention.apply(pad_head_dim(q, padded), pad_head_dim(k.to(q.dtype), padded), pad_head_dim(v.to(q.dtype), padded), scales,
                                query_times, query_flags, key_times, key_end, key_flags, history_length, weekend_rule, 1.0 / math.sqrt(dim))
    return out[..., :dim]
