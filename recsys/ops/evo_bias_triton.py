"""SparseCTR's composite RelTemporal bias inside Triton kernels (`recsys.ops.evo_local_triton`,
`recsys.ops.evo_keyed_triton`): the three terms of a tile, computed in registers from int32 times,
per-event clock sines and cosines and weekend bits as `recsys.ops.temporal.temporal_components`
computes them, and the backward's reductions into dK, dV and the temporal scales' gradient.

The kernels are bound by instructions issued per (query, key) pair (Nsight Compute, session 11:
40-60 % issue utilisation, tensor pipes under 10 %), so everything that depends on one event only
(clock angles, weekend values, validity) is computed per event, outside the pair loop or the kernel,
and scores are built in log2 units directly."""

from __future__ import annotations

import triton
import triton.language as tl

from recsys.ops.triton_tiles import RELAXED


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
def event_clock(CLOCK_row, N, offs, valid):
    """Sine and cosine of events' clock angles from a row of `[B, 2, N]` float32 clock words
    (`recsys.ops.evo_attention.clock_words`): built once per batch, not per pair and head."""
    return tl.load(CLOCK_row + offs, mask=valid, other=0.0), tl.load(CLOCK_row + N + offs, mask=valid, other=1.0)


@triton.jit
def weekend_value(flags):
    """1.0 where a flag word's weekend bit (bit 2) is set, else 0.0."""
    return ((flags >> 1) & 1).to(tl.float32)


@triton.jit
def weekend_coefficients(flags_i, WEEKEND_BOTH: tl.constexpr):
    """Per query row (gamma, delta) with b_weekend = gamma·w_j + delta for a key's weekend value w_j:
    one multiply-add per pair. Same-type rule: -[w_i != w_j] = (2·w_i - 1)·w_j - w_i; both-weekend
    rule: -(1 - w_i·w_j) = w_i·w_j - 1."""
    w_i = weekend_value(flags_i)
    if WEEKEND_BOTH:
        return w_i, w_i * 0.0 - 1.0
    else:
        return 2.0 * w_i - 1.0, -w_i


@triton.jit
def _abs_int(x, FAST_MATH: tl.constexpr):
    if FAST_MATH:  # one IABS; the generic lowering is a negate and a max
        return tl.inline_asm_elementwise("abs.s32 $0, $1;", "=r,r", [x], dtype=tl.int32, is_pure=True, pack=1)
    else:
        return tl.abs(x)


@triton.jit
def time_octaves(t_i, t_j, FAST_MATH: tl.constexpr):
    """floor(log2(max(|t_i - t_j|, 1))) `[BM, BN]` as float32 (b_time is its negative); `| 1` stands
    for the max: it leaves the leading bit of any nonzero difference where it is."""
    return _floor_log2(_abs_int(t_i[:, None] - t_j[None, :], FAST_MATH) | 1, FAST_MATH).to(tl.float32)


@triton.jit
def hour_sine(sin_i, cos_i, sin_j, cos_j):
    """sin(a_i - a_j) `[BM, BN]` of the events' clock angles (b_hour is minus its magnitude).

    The hour term is sin(pi·((t_i - t_j) mod D)/D) with D a day. With a = pi·(t mod D)/D per event,
    that is |sin(a_i - a_j)|: the two angles lie within pi of each other, and the mod adds D (half a
    turn, a sign flip) exactly when a_i < a_j. So a pair needs two multiply-adds of its events'
    sines and cosines, not two integer remainders and a sine."""
    return sin_i[:, None] * cos_j[None, :] - cos_i[:, None] * sin_j[None, :]


@triton.jit
def composite_terms(t_i, sin_i, cos_i, gamma_i, delta_i, t_j, sin_j, cos_j, w_j, FAST_MATH: tl.constexpr):
    """`temporal_components` for a tile: int32 times, clock sines and cosines and weekend coefficients
    of queries `[BM]`, times, clock sines and cosines and weekend values of keys `[BN]` -> the
    log-time, hour and weekend terms `[BM, BN]` (float32), for the dQ kernels' scale gradients."""
    b_time = -time_octaves(t_i, t_j, FAST_MATH)
    b_hour = -tl.abs(hour_sine(sin_i, cos_i, sin_j, cos_j))
    b_weekend = gamma_i[:, None] * w_j[None, :] + delta_i[:, None]
    return b_time, b_hour, b_weekend


@triton.jit
def biased_scores(dot, qk_scale, b_time, b_hour, b_weekend, s_time, s_hour, s_weekend):
    """Scores in log2 units from `composite_terms`: q·k scaled by qk_scale (sm_scale·log2 e) plus the
    terms weighted by the log2-unit scales (`load_scales`)."""
    return dot * qk_scale + s_time * b_time + s_hour * b_hour + s_weekend * b_weekend


@triton.jit
def scores_with_bias(dot, qk_scale, t_i, sin_i, cos_i, gamma_i, delta_i, t_j, sin_j, cos_j, w_j, s_time, s_hour, FAST_MATH: tl.constexpr):
    """`biased_scores` where the terms themselves are not needed (forward, dK/dV): with gamma_i and
    delta_i already multiplied by the weekend scale, one chain of four multiply-adds per pair (the
    compiler may not reassociate the sum `biased_scores` spells)."""
    scores = dot * qk_scale + delta_i[:, None]
    scores = scores - s_time * time_octaves(t_i, t_j, FAST_MATH)
    scores = scores - s_hour * tl.abs(hour_sine(sin_i, cos_i, sin_j, cos_j))
    return scores + gamma_i[:, None] * w_j[None, :]


@triton.jit
def tile_scores(q, k, t_i, sin_i, cos_i, gamma_i, delta_i, t_j, sin_j, cos_j, w_j, s_time, s_hour, s_weekend, qk_scale,
                TERMS: tl.constexpr, PRECISION: tl.constexpr, FAST_MATH: tl.constexpr):
    """A tile's log2-unit scores, bias included (visibility is the caller's) and, with TERMS, the three
    terms for the dQ kernels' scale gradients; without, zeros, and gamma_i and delta_i come already
    multiplied by the weekend scale (`scores_with_bias`)."""
    dot = tl.dot(q, tl.trans(k), input_precision=PRECISION)
    if TERMS:
        b_time, b_hour, b_weekend = composite_terms(t_i, sin_i, cos_i, gamma_i, delta_i, t_j, sin_j, cos_j, w_j, FAST_MATH)
        scores = biased_scores(dot, qk_scale, b_time, b_hour, b_weekend, s_time, s_hour, s_weekend)
    else:
        scores = scores_with_bias(dot, qk_scale, t_i, sin_i, cos_i, gamma_i, delta_i, t_j, sin_j, cos_j, w_j, s_time, s_hour, FAST_MATH)
        b_time, b_hour, b_weekend = 0.0, 0.0, 0.0
    return scores, b_time, b_hour, b_weekend


@triton.jit
def load_scales(SCALES, h, H: tl.constexpr):
    """Head h's three temporal scales from the `[3, H]` float32 table, in log2 units (times log2 e):
    the kernels build scores in log2 units, so no pair needs its own conversion."""
    return (tl.load(SCALES + h) * 1.4426950408889634, tl.load(SCALES + H + h) * 1.4426950408889634,
            tl.load(SCALES + 2 * H + h) * 1.4426950408889634)


@triton.jit
def accumulate_key_gradients(dk, dv, q, do, v, scores, lse, delta_row, gate, PRECISION: tl.constexpr, GATED: tl.constexpr):
    """One query tile's contribution to a key block's dK and dV, and the tile's score gradients dS
    (natural units; the stored-score backward keeps them); `scores` and `lse` in log2 units
    (scores -inf where not visible, lse +inf for rows without keys). GATED: `do` is the gradient of
    the branches' gated sum and `gate` `[BM]` this branch's gates of the tile's rows, so the branch's
    dO is gate·dO: the gates scale P (for dV) and dO·Vᵀ (for dS), `[BM, BN]` tiles already in
    registers. Scaling the `[BM, D]` dO tile instead took a float32 round trip and a conversion into
    the dot's operand layout per query tile: 30-40 us more than the ungated kernels at n = 8,192
    (benchmarks/RESULTS.md, session 14)."""
    p = tl.exp2(scores - lse[:, None])
    if GATED:
        dv += tl.dot(tl.trans((p * gate[:, None]).to(do.dtype)), do, input_precision=PRECISION)
        dp = tl.dot(do, tl.trans(v), input_precision=PRECISION) * gate[:, None]
    else:
        dv += tl.dot(tl.trans(p.to(do.dtype)), do, input_precision=PRECISION)
        dp = tl.dot(do, tl.trans(v), input_precision=PRECISION)
    ds = p * (dp - delta_row[:, None])
    return dk + tl.dot(tl.trans(ds.to(q.dtype)), q, input_precision=PRECISION), dv, ds


@triton.jit
def accumulate_query_gradients(dq, d_time, d_hour, d_weekend, do, k, v, scores, lse, delta_row, b_time, b_hour, b_weekend,
                               PRECISION: tl.constexpr):
    """One key tile's contribution to a query tile's dQ (unscaled) and to the three temporal scales'
    sums, kept per query row: a row's scores sit in one warp, so summing along keys needs shuffles
    only (summing along queries, as the dK/dV kernels would, crosses warps through shared memory).
    `scores` and `lse` in log2 units."""
    p = tl.exp2(scores - lse[:, None])
    dp = tl.dot(do, tl.trans(v), input_precision=PRECISION)
    ds = p * (dp - delta_row[:, None])
    dq += tl.dot(ds.to(k.dtype), k, input_precision=PRECISION)
    return dq, d_time + tl.sum(ds * b_time, 1), d_hour + tl.sum(ds * b_hour, 1), d_weekend + tl.sum(ds * b_weekend, 1)


@triton.jit
def add_term_sums(d_time, d_hour, d_weekend, ds, b_time, b_hour, b_weekend, summed):
    """A tile's sums of dS times each term, per query row `[BM]` (a row lies in one warp: shuffles,
    no shared memory), for the rows where `summed` holds, added to per-row-slot accumulators that
    `add_scale_gradients` sums at the end: where the keyed dK/dV kernel computes its pairs' share of
    the scales' gradient (the stored-score backward)."""
    return (d_time + tl.where(summed, tl.sum(ds * b_time, 1), 0.0), d_hour + tl.where(summed, tl.sum(ds * b_hour, 1), 0.0),
            d_weekend + tl.where(summed, tl.sum(ds * b_weekend, 1), 0.0))


@triton.jit
def banded_terms(t_i, sin_i, cos_i, gamma_i, delta_i, t_j, sin_j, cos_j, w_j, FAST_MATH: tl.constexpr):
    """`composite_terms` where each pair's key is gathered: query words `[BM]`, key words `[BM, BN]`
    (the stored-score backward's window band, whose keys shift with the row)."""
    b_time = -_floor_log2(_abs_int(t_i[:, None] - t_j, FAST_MATH) | 1, FAST_MATH).to(tl.float32)
    b_hour = -tl.abs(sin_i[:, None] * cos_j - cos_i[:, None] * sin_j)
    return b_time, b_hour, gamma_i[:, None] * w_j + delta_i[:, None]


@triton.jit
def add_scale_gradients(DSCALES, h, H: tl.constexpr, d_time, d_hour, d_weekend):
    """Add a program's sums to the `[3, H]` scales' gradient (programs of one head share it)."""
    tl.atomic_add(DSCALES + h, tl.sum(d_time, 0), sem=RELAXED)
    tl.atomic_add(DSCALES + H + h, tl.sum(d_hour, 0), sem=RELAXED)
    tl.atomic_add(DSCALES + 2 * H + h, tl.sum(d_weekend, 0), sem=RELAXED)
