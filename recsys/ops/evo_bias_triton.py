"""SparseCTR's composite RelTemporal bias inside Triton kernels (`recsys.ops.evo_local_triton`,
`recsys.ops.evo_keyed_triton`): the three terms of a tile, computed in registers from int32 times and
weekend bits as `recsys.ops.temporal.temporal_components` computes them, and the backward's
reductions into dK, dV and the temporal scales' gradient."""

from __future__ import annotations

import triton
import triton.language as tl


@triton.jit
def _sin(x, FAST_MATH: tl.constexpr):
    if FAST_MATH:  # the SFU's sin.approx (x is in [0, pi)): libdevice's sinf keeps a range-reduction table in local memory
        return tl.inline_asm_elementwise("sin.approx.f32 $0, $1;", "=r,r", [x], dtype=tl.float32, is_pure=True, pack=1)
    else:
        return tl.sin(x)


@triton.jit
def _cos(x, FAST_MATH: tl.constexpr):
    if FAST_MATH:
        return tl.inline_asm_elementwise("cos.approx.f32 $0, $1;", "=r,r", [x], dtype=tl.float32, is_pure=True, pack=1)
    else:
        return tl.cos(x)


@triton.jit
def _floor_log2(magnitude, FAST_MATH: tl.constexpr):
    """floor(log2(m)) of int32 m >= 1, exactly."""
    if FAST_MATH:  # one bfind (the most significant set bit) per pair instead of seven integer ops
        return tl.inline_asm_elementwise("bfind.u32 $0, $1;", "=r,r", [magnitude], dtype=tl.int32, is_pure=True, pack=1)
    else:
        # the float32 exponent of m, minus one where rounding to float32 carried m up to the next power of two
        exponent = ((magnitude.to(tl.float32).to(tl.int32, bitcast=True) >> 23) & 0xFF) - 127
        return exponent - ((magnitude >> exponent) == 0).to(tl.int32)


@triton.jit
def _clock_angle(t):
    """pi * (seconds of the day) / 86400 of int32 times: in [0, pi)."""
    return (((t % 86400) + 86400) % 86400).to(tl.float32) * (3.141592653589793 / 86400.0)


@triton.jit
def composite_terms(t_i, weekend_i, t_j, weekend_j, WEEKEND_BOTH: tl.constexpr, FAST_MATH: tl.constexpr):
    """`temporal_components` for a tile: int32 times and weekend bits of queries `[BM]` and keys
    `[BN]` -> the log-time, hour and weekend terms `[BM, BN]` (float32).

    The hour term is sin(pi·((t_i - t_j) mod D)/D) with D a day. With a = pi·(t mod D)/D per event,
    that is |sin(a_i - a_j)|: the two angles lie within pi of each other, and the mod adds D (half a
    turn, a sign flip) exactly when a_i < a_j. So the tile needs the sine and cosine of BM + BN
    angles and two multiply-adds per pair, not two integer remainders and a sine per pair."""
    delta = t_i[:, None] - t_j[None, :]
    b_time = -_floor_log2(tl.maximum(tl.abs(delta), 1), FAST_MATH).to(tl.float32)
    angle_i, angle_j = _clock_angle(t_i), _clock_angle(t_j)
    sin_i, cos_i = _sin(angle_i, FAST_MATH), _cos(angle_i, FAST_MATH)
    sin_j, cos_j = _sin(angle_j, FAST_MATH), _cos(angle_j, FAST_MATH)
    b_hour = -tl.abs(sin_i[:, None] * cos_j[None, :] - cos_i[:, None] * sin_j[None, :])
    if WEEKEND_BOTH:
        same_type = weekend_i[:, None] & weekend_j[None, :]
    else:
        same_type = weekend_i[:, None] == weekend_j[None, :]
    b_weekend = tl.where(same_type, 0.0, -1.0)
    return b_time, b_hour, b_weekend


@triton.jit
def load_scales(SCALES, h, H: tl.constexpr):
    """Head h's three temporal scales from the `[3, H]` float32 table."""
    return tl.load(SCALES + h), tl.load(SCALES + H + h), tl.load(SCALES + 2 * H + h)


@triton.jit
def accumulate_key_gradients(dk, dv, q, do, v, scores, lse, delta_row, PRECISION: tl.constexpr):
    """One query tile's contribution to a key block's dK and dV; `scores` natural log (-inf where not
    visible), `lse` in log2 units (+inf for rows without keys)."""
    p = tl.exp2(scores * 1.4426950408889634 - lse[:, None])
    dv += tl.dot(tl.trans(p.to(do.dtype)), do, input_precision=PRECISION)
    dp = tl.dot(do, tl.trans(v), input_precision=PRECISION)
    ds = p * (dp - delta_row[:, None])
    return dk + tl.dot(tl.trans(ds.to(q.dtype)), q, input_precision=PRECISION), dv


@triton.jit
def accumulate_query_gradients(dq, d_time, d_hour, d_weekend, do, k, v, scores, lse, delta_row, b_time, b_hour, b_weekend,
                               PRECISION: tl.constexpr):
    """One key tile's contribution to a query tile's dQ (unscaled) and to the three temporal scales'
    sums, kept per query row: a row's scores sit in one warp, so summing along keys needs shuffles
    only (summing along queries, as the dK/dV kernels would, crosses warps through shared memory)."""
    p = tl.exp2(scores * 1.4426950408889634 - lse[:, None])
    dp = tl.dot(do, tl.trans(v), input_precision=PRECISION)
    ds = p * (dp - delta_row[:, None])
    dq += tl.dot(ds.to(k.dtype), k, input_precision=PRECISION)
    return dq, d_time + tl.sum(ds * b_time, 1), d_hour + tl.sum(ds * b_hour, 1), d_weekend + tl.sum(ds * b_weekend, 1)


@triton.jit
def add_scale_gradients(DSCALES, h, H: tl.constexpr, d_time, d_hour, d_weekend):
    """Add a program's sums to the `[3, H]` scales' gradient (programs of one head share it)."""
    tl.atomic_add(DSCALES + h, tl.sum(d_time, 0))
    tl.atomic_add(DSCALES + H + h, tl.sum(d_hour, 0))
    tl.atomic_add(DSCALES + 2 * H + h, tl.sum(d_weekend, 0))
