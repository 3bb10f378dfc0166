"""SparseCTR's local branch as one fused Triton kernel per direction (forward; dK/dV with the
temporal-scale gradient; dQ).

The branch (`recsys.ops.evo_attention.local_branch`, its twin in the tests): history query i sees
the real history keys j with i - window < j <= i, with the composite RelTemporal bias
`s0·b_time + s1·b_hour + s2·b_wkd` (`temporal_components`), plus the profile token (bias 0). The
structural version materialises the three bias terms and a visibility tensor for every
`[query block, 2·window + 1]` pair and runs SDPA's math path; here each tile computes the terms in
registers from int32 times and a per-event flag word (real, local weekend), and a query block
visits only the one to three key tiles its window covers. The profile key starts every row's online
softmax (`triton_tiles.profile_key_start`); the dQ kernel adds its share and sums the profile key's
and value's gradients (`profile_key_gradients`), so no full-size float32 merge runs outside the
kernels. Candidates keep `candidate_local` (M queries, PyTorch).

Runs on CUDA; on CPU under Triton's interpreter (`TRITON_INTERPRET=1`), which the tests use.
"""

from __future__ import annotations

import math

import torch
import triton
import triton.language as tl
from torch import Tensor

from recsys.ops.evo_bias_triton import accumulate_key_gradients, add_scale_gradients, composite_terms, load_scales
from recsys.ops.triton_tiles import (INTERPRETED, backward_row_term, finish_rows, load_backward_rows, load_tile, online_softmax_step,
                                     pad_head_dim, padded_head_dim, profile_key_gradients, profile_key_start, program_block, store_tile,
                                     tile_configs)



@triton.jit
def _local_tile(q, k, offs_m, offs_n, t_i, weekend_i, T_row, FLAGS_row, s_time, s_hour, s_weekend, sm_scale, L,
                WINDOW: tl.constexpr, WEEKEND_BOTH: tl.constexpr, PRECISION: tl.constexpr, FAST_MATH: tl.constexpr):
    """Natural-log scores (bias included, -inf outside the window or at padding) and the three terms."""
    in_range = offs_n < L
    t_j = tl.load(T_row + offs_n, mask=in_range, other=0)
    flags_j = tl.load(FLAGS_row + offs_n, mask=in_range, other=0)
    real_j = (flags_j & 1) != 0
    b_time, b_hour, b_weekend = composite_terms(t_i, weekend_i, t_j, (flags_j & 2) != 0, WEEKEND_BOTH, FAST_MATH)
    scores = tl.dot(q, tl.trans(k), input_precision=PRECISION) * sm_scale + s_time * b_time + s_hour * b_hour + s_weekend * b_weekend
    visible = (offs_n[None, :] <= offs_m[:, None]) & (offs_n[None, :] > offs_m[:, None] - WINDOW) & (real_j & in_range)[None, :]
    return tl.where(visible, scores, float("-inf")), b_time, b_hour, b_weekend


@triton.jit
def _query_times(T_row, FLAGS_row, offs_m, rows):
    return tl.load(T_row + offs_m, mask=rows, other=0), (tl.load(FLAGS_row + offs_m, mask=rows, other=0) & 2) != 0


@triton.jit
def _window_key_range(start_m, L, WINDOW: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr):
    """The key tiles a query block's windows reach: from the earliest window start to its last query."""
    return tl.maximum(start_m - WINDOW + 1, 0) // BLOCK_N * BLOCK_N, tl.minimum(start_m + BLOCK_M, L)


@triton.jit
def _window_tile(start_n, q, K, V, base, offs_m, offs_d, t_i, weekend_i, T_row, FLAGS_row, s_time, s_hour, s_weekend, sm_scale, L,
                 D: tl.constexpr, BLOCK_N: tl.constexpr, WINDOW: tl.constexpr, WEEKEND_BOTH: tl.constexpr, PRECISION: tl.constexpr,
                 FAST_MATH: tl.constexpr):
    """The key tile at `start_n` and its natural-log scores against the query block (forward and dQ)."""
    offs_n = start_n + tl.arange(0, BLOCK_N)
    cols = offs_n < L
    k = load_tile(K, base, offs_n, offs_d, D, cols)
    v = load_tile(V, base, offs_n, offs_d, D, cols)
    scores, _, _, _ = _local_tile(q, k, offs_m, offs_n, t_i, weekend_i, T_row, FLAGS_row, s_time, s_hour, s_weekend, sm_scale, L,
                                  WINDOW, WEEKEND_BOTH, PRECISION, FAST_MATH)
    return k, v, scores


_TILES = tile_configs([(64, 64, 4, 3), (64, 32, 4, 3), (128, 64, 8, 2), (32, 64, 4, 3)])
# dK/dV: the offline sm_90 compile spills at 64x64 (680 B), 64x32 and 128x64; 32-row query tiles do not.
_DKDV_TILES = tile_configs([(32, 64, 4, 3), (32, 32, 4, 3)])


@triton.autotune(configs=_TILES, key=["L", "D", "WINDOW"])
@triton.jit
def _local_forward_kernel(Q, K, V, KP, VP, T, FLAGS, SCALES, O, LSE, sm_scale, L, H: tl.constexpr, D: tl.constexpr, WINDOW: tl.constexpr,
                          WEEKEND_BOTH: tl.constexpr, PRECISION: tl.constexpr, FAST_MATH: tl.constexpr, BLOCK_M: tl.constexpr,
                          BLOCK_N: tl.constexpr):
    b, h, pid_bh, start_m, offs_m, offs_d, rows, base = program_block(BLOCK_M, H, L, D)
    q = load_tile(Q, base, offs_m, offs_d, D, rows)
    T_row, FLAGS_row = T + b * L, FLAGS + b * L
    t_i, weekend_i = _query_times(T_row, FLAGS_row, offs_m, rows)
    s_time, s_hour, s_weekend = load_scales(SCALES, h, H)
    acc, l_i, m_i = profile_key_start(q, KP, VP, pid_bh, offs_d, sm_scale, BLOCK_M, D)
    lo, hi = _window_key_range(start_m, L, WINDOW, BLOCK_M, BLOCK_N)
    for start_n in range(lo, hi, BLOCK_N):
        k, v, scores = _window_tile(start_n, q, K, V, base, offs_m, offs_d, t_i, weekend_i, T_row, FLAGS_row, s_time, s_hour,
                                    s_weekend, sm_scale, L, D, BLOCK_N, WINDOW, WEEKEND_BOTH, PRECISION, FAST_MATH)
        scores = scores * 1.4426950408889634
        acc, l_i, m_i = online_softmax_step(acc, l_i, m_i, scores, v, PRECISION)
    out, lse = finish_rows(acc, l_i, m_i)
    store_tile(O, base, offs_m, offs_d, D, rows, out)
    tl.store(LSE + pid_bh.to(tl.int64) * L + offs_m, lse, mask=rows)


@triton.autotune(configs=_DKDV_TILES, key=["L", "D", "WINDOW"], reset_to_zero=["DSCALES"])
@triton.jit
def _local_dkdv_kernel(Q, K, V, DO, LSE, DELTA, T, FLAGS, SCALES, DK, DV, DSCALES, sm_scale, L, H: tl.constexpr, D: tl.constexpr,
                       WINDOW: tl.constexpr, WEEKEND_BOTH: tl.constexpr, PRECISION: tl.constexpr, FAST_MATH: tl.constexpr,
                       BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr):
    """One key block per program: the query tiles whose window reaches it; dK, dV and d(scales)."""
    b, h, pid_bh, start_n, offs_n, offs_d, cols, base = program_block(BLOCK_N, H, L, D)
    k = load_tile(K, base, offs_n, offs_d, D, cols)
    v = load_tile(V, base, offs_n, offs_d, D, cols)
    T_row, FLAGS_row = T + b * L, FLAGS + b * L
    s_time, s_hour, s_weekend = load_scales(SCALES, h, H)
    dk = tl.zeros([BLOCK_N, D], dtype=tl.float32)
    dv = tl.zeros([BLOCK_N, D], dtype=tl.float32)
    d_time = tl.zeros([BLOCK_N], dtype=tl.float32)
    d_hour = tl.zeros([BLOCK_N], dtype=tl.float32)
    d_weekend = tl.zeros([BLOCK_N], dtype=tl.float32)
    lo = start_n // BLOCK_M * BLOCK_M
    hi = tl.minimum(start_n + BLOCK_N + WINDOW - 1, L)
    for start_m in range(lo, hi, BLOCK_M):
        offs_m = start_m + tl.arange(0, BLOCK_M)
        rows = offs_m < L
        q, do, lse, delta_row = load_backward_rows(Q, DO, LSE, DELTA, base, pid_bh.to(tl.int64) * L, offs_m, offs_d, D, rows)
        t_i, weekend_i = _query_times(T_row, FLAGS_row, offs_m, rows)
        scores, b_time, b_hour, b_weekend = _local_tile(q, k, offs_m, offs_n, t_i, weekend_i, T_row, FLAGS_row, s_time, s_hour,
                                                        s_weekend, sm_scale, L, WINDOW, WEEKEND_BOTH, PRECISION, FAST_MATH)
        dk, dv, d_time, d_hour, d_weekend = accumulate_key_gradients(dk, dv, d_time, d_hour, d_weekend, q, do, v, scores, lse, delta_row,
                                                                     b_time, b_hour, b_weekend, PRECISION)
    store_tile(DK, base, offs_n, offs_d, D, cols, dk * sm_scale)
    store_tile(DV, base, offs_n, offs_d, D, cols, dv)
    add_scale_gradients(DSCALES, h, H, d_time, d_hour, d_weekend)


@triton.autotune(configs=_TILES, key=["L", "D", "WINDOW"], reset_to_zero=["DKP", "DVP"])
@triton.jit
def _local_dq_kernel(Q, K, V, KP, VP, DO, LSE, DELTA, T, FLAGS, SCALES, DQ, DKP, DVP, sm_scale, L, H: tl.constexpr, D: tl.constexpr,
                     WINDOW: tl.constexpr, WEEKEND_BOTH: tl.constexpr, PRECISION: tl.constexpr, FAST_MATH: tl.constexpr,
                     BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr):
    b, h, pid_bh, start_m, offs_m, offs_d, rows, base = program_block(BLOCK_M, H, L, D)
    q, do, lse, delta_row = load_backward_rows(Q, DO, LSE, DELTA, base, pid_bh.to(tl.int64) * L, offs_m, offs_d, D, rows)
    T_row, FLAGS_row = T + b * L, FLAGS + b * L
    t_i, weekend_i = _query_times(T_row, FLAGS_row, offs_m, rows)
    s_time, s_hour, s_weekend = load_scales(SCALES, h, H)
    dq = tl.zeros([BLOCK_M, D], dtype=tl.float32)
    lo, hi = _window_key_range(start_m, L, WINDOW, BLOCK_M, BLOCK_N)
    for start_n in range(lo, hi, BLOCK_N):
        k, v, scores = _window_tile(start_n, q, K, V, base, offs_m, offs_d, t_i, weekend_i, T_row, FLAGS_row, s_time, s_hour,
                                    s_weekend, sm_scale, L, D, BLOCK_N, WINDOW, WEEKEND_BOTH, PRECISION, FAST_MATH)
        p = tl.exp2(scores * 1.4426950408889634 - lse[:, None])
        dp = tl.dot(do, tl.trans(v), input_precision=PRECISION)
        ds = p * (dp - delta_row[:, None])
        dq += tl.dot(ds.to(k.dtype), k, input_precision=PRECISION)
    dq = profile_key_gradients(dq, q, do, lse, delta_row, KP, VP, DKP, DVP, pid_bh, offs_d, sm_scale, D)
    store_tile(DQ, base, offs_m, offs_d, D, rows, dq * sm_scale)


def _launch(q: Tensor, window: int, weekend_rule: int) -> dict:
    return dict(H=q.shape[1], D=q.shape[-1], WINDOW=window, WEEKEND_BOTH=weekend_rule == 1,
                PRECISION="ieee" if q.dtype == torch.float32 else "tf32", FAST_MATH=not INTERPRETED)


class _LocalHistory(torch.autograd.Function):
    @staticmethod
    def forward(ctx, q: Tensor, k: Tensor, v: Tensor, k_profile: Tensor, v_profile: Tensor, scales: Tensor, times: Tensor, flags: Tensor,
                window: int, weekend_rule: int, sm_scale: float):
        batch, heads, length, _ = q.shape
        out = torch.empty_like(q)
        lse = torch.empty(batch, heads, length, device=q.device, dtype=torch.float32)
        scales32 = scales.float().contiguous()
        _local_forward_kernel[lambda meta: (triton.cdiv(length, meta["BLOCK_M"]), batch * heads)](
            q, k, v, k_profile, v_profile, times, flags, scales32, out, lse, sm_scale, length, **_launch(q, window, weekend_rule))
        ctx.save_for_backward(q, k, v, k_profile, v_profile, out, lse, scales32, times, flags)
        ctx.window, ctx.weekend_rule, ctx.sm_scale, ctx.scales_dtype = window, weekend_rule, sm_scale, scales.dtype
        return out

    @staticmethod
    def backward(ctx, grad_out: Tensor):
        q, k, v, k_profile, v_profile, out, lse, scales32, times, flags = ctx.saved_tensors
        batch, heads, length, _ = q.shape
        grad_out = grad_out.contiguous()
        delta = backward_row_term(grad_out, out, None)
        dq, dk, dv = torch.empty_like(q), torch.empty_like(k), torch.empty_like(v)
        dk_profile = torch.zeros(k_profile.shape, device=q.device, dtype=torch.float32)
        dv_profile = torch.zeros_like(dk_profile)
        dscales = torch.zeros_like(scales32)
        launch = _launch(q, ctx.window, ctx.weekend_rule)
        _local_dkdv_kernel[lambda meta: (triton.cdiv(length, meta["BLOCK_N"]), batch * heads)](
            q, k, v, grad_out, lse, delta, times, flags, scales32, dk, dv, dscales, ctx.sm_scale, length, **launch)
        _local_dq_kernel[lambda meta: (triton.cdiv(length, meta["BLOCK_M"]), batch * heads)](
            q, k, v, k_profile, v_profile, grad_out, lse, delta, times, flags, scales32, dq, dk_profile, dv_profile, ctx.sm_scale, length,
            **launch)
        return (dq, dk, dv, dk_profile.to(k_profile.dtype), dv_profile.to(v_profile.dtype), dscales.to(ctx.scales_dtype),
                None, None, None, None, None)


@torch.compiler.disable  # train.compile: inductor's build of these autotuned kernels fails; they run as they are
def local_history_prepared(q: Tensor, k: Tensor, v: Tensor, k_profile: Tensor, v_profile: Tensor, times: Tensor, flags: Tensor, window: int,
                           scales: Tensor, weekend_rule: int) -> Tensor:
    """`local_history_triton` with the batch's int32 times and flag words (bit 1 real, bit 2 weekend)
    already built (`recsys.ops.evo_attention.FusedTimes`)."""
    if not q.is_cuda and not INTERPRETED:
        raise RuntimeError("the fused local kernel runs on CUDA (on the CPU only under TRITON_INTERPRET=1); use attention 'structural'")
    dim = q.shape[-1]
    padded = padded_head_dim(dim)
    q, k, v, k_profile, v_profile = (pad_head_dim(x.to(q.dtype), padded) for x in (q, k, v, k_profile, v_profile))
    out = _LocalHistory.apply(q, k, v, k_profile, v_profile, scales, times, flags, window, weekend_rule, 1.0 / math.sqrt(dim))
    return out[..., :dim]


def local_history_triton(q: Tensor, k: Tensor, v: Tensor, k_profile: Tensor, v_profile: Tensor, times: Tensor, real: Tensor,
                         window: int, scales: Tensor, utc_offset: int, weekend_rule: int) -> Tensor:
    """The local branch's history queries: q, k, v `[B, H, L, D]`, profile k/v `[B, H, 1, D]`, times
    `[B, L]` int64 (time-sorted, left-padded), real `[B, L]` bool, scales `[3, H]` -> `[B, H, L, D]`,
    equal to `local_branch` on the history positions. Builds the time words as `fused_times` does."""
    from recsys.ops.evo_attention import earliest_real_time, flag_words, relative_int32

    relative = relative_int32(times, real, earliest_real_time(times, real))
    return local_history_prepared(q, k, v, k_profile, v_profile, relative, flag_words(real, times, utc_offset), window, scales,
                                  weekend_rule)
