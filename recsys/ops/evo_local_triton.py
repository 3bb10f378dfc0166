"""SparseCTR's local branch as one fused Triton kernel per direction (forward; dK/dV with the
temporal-scale gradient; dQ).

The branch (`recsys.ops.evo_attention.local_branch`, its twin in the tests): history query i sees
the real history keys j with i - window < j <= i, with the composite RelTemporal bias
`s0·b_time + s1·b_hour + s2·b_wkd` (`temporal_components`), plus the profile token (bias 0). The
structural version materialises the three bias terms and a visibility tensor for every
`[query block, 2·window + 1]` pair and runs SDPA's math path; here each tile computes the terms in
registers from int32 times and a per-event flag word (real, local weekend), and a query block
visits only the one to three key tiles its window covers. The profile key is merged afterwards
through the log-sum-exp, as the CamA kernel does with its context token. Candidates keep
`candidate_local` (M queries, PyTorch).

Runs on CUDA; on CPU under Triton's interpreter (`TRITON_INTERPRET=1`), which the tests use.
"""

from __future__ import annotations

import math
import os
from typing import List, Tuple

import torch
import triton
import triton.language as tl
from torch import Tensor

from recsys.ops.temporal import _is_weekend

_INTERPRETED = os.environ.get("TRITON_INTERPRET") == "1"
_REAL, _WEEKEND = 1, 2


@triton.jit
def _sin(x, FAST_MATH: tl.constexpr):
    if FAST_MATH:  # the SFU's sin.approx (x is in [0, pi)): libdevice's sinf keeps a range-reduction table in local memory
        return tl.inline_asm_elementwise("sin.approx.f32 $0, $1;", "=r,r", [x], dtype=tl.float32, is_pure=True, pack=1)
    else:
        return tl.sin(x)


@triton.jit
def _local_tile(q, k, offs_m, offs_n, t_i, weekend_i, T_row, FLAGS_row, s_time, s_hour, s_weekend, sm_scale, L,
                WINDOW: tl.constexpr, WEEKEND_BOTH: tl.constexpr, PRECISION: tl.constexpr, FAST_MATH: tl.constexpr):
    """Natural-log scores (bias included, -inf outside the window or at padding) and the three terms."""
    in_range = offs_n < L
    t_j = tl.load(T_row + offs_n, mask=in_range, other=0)
    flags_j = tl.load(FLAGS_row + offs_n, mask=in_range, other=0)
    real_j = (flags_j & 1) != 0
    weekend_j = (flags_j & 2) != 0
    delta = t_i[:, None] - t_j[None, :]
    magnitude = tl.maximum(tl.abs(delta), 1)
    # floor(log2(m)) exactly in int32: the float32 exponent of m, minus one where rounding to float32
    # carried m up to the next power of two.
    exponent = ((magnitude.to(tl.float32).to(tl.int32, bitcast=True) >> 23) & 0xFF) - 127
    exponent -= ((magnitude >> exponent) == 0).to(tl.int32)
    b_time = -exponent.to(tl.float32)
    seconds_of_day = ((delta % 86400) + 86400) % 86400
    b_hour = -_sin(seconds_of_day.to(tl.float32) * (3.141592653589793 / 86400.0), FAST_MATH)
    if WEEKEND_BOTH:
        same_type = weekend_i[:, None] & weekend_j[None, :]
    else:
        same_type = weekend_i[:, None] == weekend_j[None, :]
    b_weekend = tl.where(same_type, 0.0, -1.0)
    scores = tl.dot(q, tl.trans(k), input_precision=PRECISION) * sm_scale + s_time * b_time + s_hour * b_hour + s_weekend * b_weekend
    visible = (offs_n[None, :] <= offs_m[:, None]) & (offs_n[None, :] > offs_m[:, None] - WINDOW) & (real_j & in_range)[None, :]
    return tl.where(visible, scores, float("-inf")), b_time, b_hour, b_weekend


def _configs(shapes: List[Tuple[int, int, int, int]]) -> List[triton.Config]:
    if _INTERPRETED:
        return [triton.Config({"BLOCK_M": 16, "BLOCK_N": 16}, num_warps=1)]
    return [triton.Config({"BLOCK_M": m, "BLOCK_N": n}, num_warps=w, num_stages=st) for m, n, w, st in shapes]


_TILES = _configs([(64, 64, 4, 3), (64, 32, 4, 3), (128, 64, 8, 2), (32, 64, 4, 3)])


@triton.autotune(configs=_TILES, key=["L", "D", "WINDOW"])
@triton.jit
def _local_forward_kernel(Q, K, V, T, FLAGS, SCALES, O, LSE, sm_scale, L, H: tl.constexpr, D: tl.constexpr, WINDOW: tl.constexpr,
                          WEEKEND_BOTH: tl.constexpr, PRECISION: tl.constexpr, FAST_MATH: tl.constexpr, BLOCK_M: tl.constexpr,
                          BLOCK_N: tl.constexpr):
    pid_m = tl.program_id(0)
    pid_bh = tl.program_id(1)
    b = pid_bh // H
    h = pid_bh % H
    start_m = pid_m * BLOCK_M
    offs_m = start_m + tl.arange(0, BLOCK_M)
    offs_d = tl.arange(0, D)
    rows = offs_m < L
    base = pid_bh.to(tl.int64) * L * D
    q = tl.load(Q + base + offs_m[:, None] * D + offs_d[None, :], mask=rows[:, None], other=0.0)
    T_row, FLAGS_row = T + b * L, FLAGS + b * L
    t_i = tl.load(T_row + offs_m, mask=rows, other=0)
    weekend_i = (tl.load(FLAGS_row + offs_m, mask=rows, other=0) & 2) != 0
    s_time, s_hour, s_weekend = tl.load(SCALES + h), tl.load(SCALES + H + h), tl.load(SCALES + 2 * H + h)
    m_i = tl.full([BLOCK_M], float("-inf"), dtype=tl.float32)
    l_i = tl.zeros([BLOCK_M], dtype=tl.float32)
    acc = tl.zeros([BLOCK_M, D], dtype=tl.float32)
    lo = tl.maximum(start_m - WINDOW + 1, 0) // BLOCK_N * BLOCK_N
    hi = tl.minimum(start_m + BLOCK_M, L)
    for start_n in range(lo, hi, BLOCK_N):
        offs_n = start_n + tl.arange(0, BLOCK_N)
        cols = offs_n < L
        k = tl.load(K + base + offs_n[:, None] * D + offs_d[None, :], mask=cols[:, None], other=0.0)
        v = tl.load(V + base + offs_n[:, None] * D + offs_d[None, :], mask=cols[:, None], other=0.0)
        scores, _, _, _ = _local_tile(q, k, offs_m, offs_n, t_i, weekend_i, T_row, FLAGS_row, s_time, s_hour, s_weekend, sm_scale, L,
                                      WINDOW, WEEKEND_BOTH, PRECISION, FAST_MATH)
        scores = scores * 1.4426950408889634
        m_new = tl.maximum(m_i, tl.max(scores, 1))
        m_safe = tl.where(m_new == float("-inf"), 0.0, m_new)
        p = tl.exp2(scores - m_safe[:, None])
        alpha = tl.exp2(m_i - m_safe)
        l_i = l_i * alpha + tl.sum(p, 1)
        acc = acc * alpha[:, None] + tl.dot(p.to(v.dtype), v, input_precision=PRECISION)
        m_i = m_new
    has_key = l_i > 0
    out = acc / tl.where(has_key, l_i, 1.0)[:, None]
    lse = tl.where(has_key, (m_i + tl.log2(tl.where(has_key, l_i, 1.0))) / 1.4426950408889634, float("-inf"))
    tl.store(O + base + offs_m[:, None] * D + offs_d[None, :], out.to(O.dtype.element_ty), mask=rows[:, None])
    tl.store(LSE + pid_bh.to(tl.int64) * L + offs_m, lse, mask=rows)


@triton.autotune(configs=_TILES, key=["L", "D", "WINDOW"], reset_to_zero=["DSCALES"])
@triton.jit
def _local_dkdv_kernel(Q, K, V, DO, LSE, DELTA, T, FLAGS, SCALES, DK, DV, DSCALES, sm_scale, L, H: tl.constexpr, D: tl.constexpr,
                       WINDOW: tl.constexpr, WEEKEND_BOTH: tl.constexpr, PRECISION: tl.constexpr, FAST_MATH: tl.constexpr,
                       BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr):
    """One key block per program: the query tiles whose window reaches it; dK, dV and d(scales)."""
    pid_n = tl.program_id(0)
    pid_bh = tl.program_id(1)
    b = pid_bh // H
    h = pid_bh % H
    start_n = pid_n * BLOCK_N
    offs_n = start_n + tl.arange(0, BLOCK_N)
    offs_d = tl.arange(0, D)
    cols = offs_n < L
    base = pid_bh.to(tl.int64) * L * D
    k = tl.load(K + base + offs_n[:, None] * D + offs_d[None, :], mask=cols[:, None], other=0.0)
    v = tl.load(V + base + offs_n[:, None] * D + offs_d[None, :], mask=cols[:, None], other=0.0)
    T_row, FLAGS_row = T + b * L, FLAGS + b * L
    s_time, s_hour, s_weekend = tl.load(SCALES + h), tl.load(SCALES + H + h), tl.load(SCALES + 2 * H + h)
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
        q = tl.load(Q + base + offs_m[:, None] * D + offs_d[None, :], mask=rows[:, None], other=0.0)
        do = tl.load(DO + base + offs_m[:, None] * D + offs_d[None, :], mask=rows[:, None], other=0.0)
        lse = tl.load(LSE + pid_bh.to(tl.int64) * L + offs_m, mask=rows, other=float("inf"))
        lse = tl.where(lse == float("-inf"), float("inf"), lse)
        delta_row = tl.load(DELTA + pid_bh.to(tl.int64) * L + offs_m, mask=rows, other=0.0)
        t_i = tl.load(T_row + offs_m, mask=rows, other=0)
        weekend_i = (tl.load(FLAGS_row + offs_m, mask=rows, other=0) & 2) != 0
        scores, b_time, b_hour, b_weekend = _local_tile(q, k, offs_m, offs_n, t_i, weekend_i, T_row, FLAGS_row, s_time, s_hour,
                                                        s_weekend, sm_scale, L, WINDOW, WEEKEND_BOTH, PRECISION, FAST_MATH)
        p = tl.exp2((scores - lse[:, None]) * 1.4426950408889634)
        dv += tl.dot(tl.trans(p.to(do.dtype)), do, input_precision=PRECISION)
        dp = tl.dot(do, tl.trans(v), input_precision=PRECISION)
        ds = p * (dp - delta_row[:, None])
        dk += tl.dot(tl.trans(ds.to(q.dtype)), q, input_precision=PRECISION)
        d_time += tl.sum(ds * b_time, 0)
        d_hour += tl.sum(ds * b_hour, 0)
        d_weekend += tl.sum(ds * b_weekend, 0)
    tl.store(DK + base + offs_n[:, None] * D + offs_d[None, :], (dk * sm_scale).to(DK.dtype.element_ty), mask=cols[:, None])
    tl.store(DV + base + offs_n[:, None] * D + offs_d[None, :], dv.to(DV.dtype.element_ty), mask=cols[:, None])
    tl.atomic_add(DSCALES + h, tl.sum(d_time, 0))
    tl.atomic_add(DSCALES + H + h, tl.sum(d_hour, 0))
    tl.atomic_add(DSCALES + 2 * H + h, tl.sum(d_weekend, 0))


@triton.autotune(configs=_TILES, key=["L", "D", "WINDOW"])
@triton.jit
def _local_dq_kernel(Q, K, V, DO, LSE, DELTA, T, FLAGS, SCALES, DQ, sm_scale, L, H: tl.constexpr, D: tl.constexpr, WINDOW: tl.constexpr,
                     WEEKEND_BOTH: tl.constexpr, PRECISION: tl.constexpr, FAST_MATH: tl.constexpr, BLOCK_M: tl.constexpr,
                          BLOCK_N: tl.constexpr):
    pid_m = tl.program_id(0)
    pid_bh = tl.program_id(1)
    b = pid_bh // H
    h = pid_bh % H
    start_m = pid_m * BLOCK_M
    offs_m = start_m + tl.arange(0, BLOCK_M)
    offs_d = tl.arange(0, D)
    rows = offs_m < L
    base = pid_bh.to(tl.int64) * L * D
    q = tl.load(Q + base + offs_m[:, None] * D + offs_d[None, :], mask=rows[:, None], other=0.0)
    do = tl.load(DO + base + offs_m[:, None] * D + offs_d[None, :], mask=rows[:, None], other=0.0)
    lse = tl.load(LSE + pid_bh.to(tl.int64) * L + offs_m, mask=rows, other=float("inf"))
    lse = tl.where(lse == float("-inf"), float("inf"), lse)
    delta_row = tl.load(DELTA + pid_bh.to(tl.int64) * L + offs_m, mask=rows, other=0.0)
    T_row, FLAGS_row = T + b * L, FLAGS + b * L
    t_i = tl.load(T_row + offs_m, mask=rows, other=0)
    weekend_i = (tl.load(FLAGS_row + offs_m, mask=rows, other=0) & 2) != 0
    s_time, s_hour, s_weekend = tl.load(SCALES + h), tl.load(SCALES + H + h), tl.load(SCALES + 2 * H + h)
    dq = tl.zeros([BLOCK_M, D], dtype=tl.float32)
    lo = tl.maximum(start_m - WINDOW + 1, 0) // BLOCK_N * BLOCK_N
    hi = tl.minimum(start_m + BLOCK_M, L)
    for start_n in range(lo, hi, BLOCK_N):
        offs_n = start_n + tl.arange(0, BLOCK_N)
        cols = offs_n < L
        k = tl.load(K + base + offs_n[:, None] * D + offs_d[None, :], mask=cols[:, None], other=0.0)
        v = tl.load(V + base + offs_n[:, None] * D + offs_d[None, :], mask=cols[:, None], other=0.0)
        scores, _, _, _ = _local_tile(q, k, offs_m, offs_n, t_i, weekend_i, T_row, FLAGS_row, s_time, s_hour, s_weekend, sm_scale, L,
                                      WINDOW, WEEKEND_BOTH, PRECISION, FAST_MATH)
        p = tl.exp2((scores - lse[:, None]) * 1.4426950408889634)
        dp = tl.dot(do, tl.trans(v), input_precision=PRECISION)
        ds = p * (dp - delta_row[:, None])
        dq += tl.dot(ds.to(k.dtype), k, input_precision=PRECISION)
    tl.store(DQ + base + offs_m[:, None] * D + offs_d[None, :], (dq * sm_scale).to(DQ.dtype.element_ty), mask=rows[:, None])


def _launch(q: Tensor, window: int, weekend_rule: int) -> dict:
    return dict(H=q.shape[1], D=q.shape[-1], WINDOW=window, WEEKEND_BOTH=weekend_rule == 1,
                PRECISION="ieee" if q.dtype == torch.float32 else "tf32", FAST_MATH=not _INTERPRETED)


class _LocalHistory(torch.autograd.Function):
    @staticmethod
    def forward(ctx, q: Tensor, k: Tensor, v: Tensor, scales: Tensor, times: Tensor, flags: Tensor, window: int, weekend_rule: int,
                sm_scale: float):
        batch, heads, length, _ = q.shape
        out = torch.empty_like(q)
        lse = torch.empty(batch, heads, length, device=q.device, dtype=torch.float32)
        scales32 = scales.float().contiguous()
        _local_forward_kernel[lambda meta: (triton.cdiv(length, meta["BLOCK_M"]), batch * heads)](
            q, k, v, times, flags, scales32, out, lse, sm_scale, length, **_launch(q, window, weekend_rule))
        ctx.save_for_backward(q, k, v, out, lse, scales32, times, flags)
        ctx.window, ctx.weekend_rule, ctx.sm_scale, ctx.scales_dtype = window, weekend_rule, sm_scale, scales.dtype
        return out, lse

    @staticmethod
    def backward(ctx, grad_out: Tensor, grad_lse: Tensor):
        q, k, v, out, lse, scales32, times, flags = ctx.saved_tensors
        batch, heads, length, _ = q.shape
        grad_out = grad_out.contiguous()
        delta = ((grad_out.float() * out.float()).sum(-1) - (grad_lse.float() if grad_lse is not None else 0.0)).contiguous()
        dq, dk, dv = torch.empty_like(q), torch.empty_like(k), torch.empty_like(v)
        dscales = torch.zeros_like(scales32)
        launch = _launch(q, ctx.window, ctx.weekend_rule)
        _local_dkdv_kernel[lambda meta: (triton.cdiv(length, meta["BLOCK_N"]), batch * heads)](
            q, k, v, grad_out, lse, delta, times, flags, scales32, dk, dv, dscales, ctx.sm_scale, length, **launch)
        _local_dq_kernel[lambda meta: (triton.cdiv(length, meta["BLOCK_M"]), batch * heads)](
            q, k, v, grad_out, lse, delta, times, flags, scales32, dq, ctx.sm_scale, length, **launch)
        return dq, dk, dv, dscales.to(ctx.scales_dtype), None, None, None, None, None


def _pad_head_dim(x: Tensor, dim: int) -> Tensor:
    return torch.nn.functional.pad(x, (0, dim - x.shape[-1])).contiguous() if x.shape[-1] != dim else x.contiguous()


def local_history_triton(q: Tensor, k: Tensor, v: Tensor, k_profile: Tensor, v_profile: Tensor, times: Tensor, real: Tensor,
                         window: int, scales: Tensor, utc_offset: int, weekend_rule: int) -> Tensor:
    """The local branch's history queries: q, k, v `[B, H, L, D]`, profile k/v `[B, H, 1, D]`, times
    `[B, L]` int64 (time-sorted, left-padded), real `[B, L]` bool, scales `[3, H]` -> `[B, H, L, D]`,
    equal to `local_branch` on the history positions."""
    if not q.is_cuda and not _INTERPRETED:
        raise RuntimeError("the fused local kernel runs on CUDA (on the CPU only under TRITON_INTERPRET=1); use attention 'structural'")
    batch, heads, length, dim = q.shape
    base = torch.where(real, times, torch.full_like(times, torch.iinfo(torch.int64).max)).min(dim=1, keepdim=True).values
    relative = torch.where(real, times - torch.where(base == torch.iinfo(torch.int64).max, torch.zeros_like(base), base), torch.zeros_like(times))
    flags = real.int() * _REAL + _is_weekend(times + utc_offset).int() * _WEEKEND
    padded = max(16, triton.next_power_of_2(dim))
    k, v = k.to(q.dtype), v.to(q.dtype)
    out, lse = _LocalHistory.apply(_pad_head_dim(q, padded), _pad_head_dim(k, padded), _pad_head_dim(v, padded), scales,
                                   relative.int().contiguous(), flags.int().contiguous(), window, weekend_rule, 1.0 / math.sqrt(dim))
    out = out[..., :dim]
    profile_score = (q.float() * k_profile.float()).sum(-1) / math.sqrt(dim)  # [B, H, L]; bias 0
    total = torch.logaddexp(lse, profile_score)
    return (out.float() * torch.exp(lse - total).unsqueeze(-1) + v_profile.float() * torch.exp(profile_score - total).unsqueeze(-1)).to(q.dtype)
