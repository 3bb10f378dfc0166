"""SparseCTR's global and transition branches as fused Triton kernels: dK/dV, and the forward and the
share of dQ and of the temporal scales' gradient that the local branch's kernels compute
(`attend_key_list`, `key_list_query_gradients`), so that q is read, and dQ written, once for the three
branches in each direction.

Both branches attend from every position (history and candidates) to a short list of keys: the
chunk summaries (global) or the last `tail` events of every chunk (transition). Key j carries a
time, the position its chunk ends at and a validity bit; query i (history position i, candidates
at position L) sees it when the key is valid and `end_j <= i`, with the composite RelTemporal bias
of `t_i - t_j` (`temporal_components`). A query that sees no key gets zeros, as in
`recsys.ops.evo_attention._attend`. The structural version builds `[B, H, T, K]` bias and visibility
tensors and runs SDPA with an additive mask; here the bias is computed per tile in registers from
int32 times, weekend bits and clock words (`evo_bias_triton.composite_terms`, shared with the local branch).

The key lists are short (chunks, chunks × tail), so dK/dV splits the queries over `SPLIT` programs
per key block: one program per key block would leave most of the GPU idle. Each stores its float32
partial, and the block's last program to finish (an arrival counter) sums the partials in slice
order, so the result does not depend on which program came last, and no second launch sums them.
One launch serves both lists, so their programs read each q and dO tile once from memory between them.

The launchers below are driven by `recsys.ops.evo_branches_triton`, the one autograd node of the
three branches. Runs on CUDA; on CPU
under Triton's interpreter (`TRITON_INTERPRET=1`), which the tests use.
"""

from __future__ import annotations

from typing import List, NamedTuple, Optional, Sequence, Tuple

import torch
import triton
import triton.language as tl
from torch import Tensor

from recsys.ops.evo_bias_triton import (accumulate_key_gradients, accumulate_query_gradients, add_scale_gradients, add_term_sums,
                                        event_clock, load_scales, tile_scores, weekend_coefficients, weekend_value)
from recsys.ops.triton_tiles import (INTERPRETED, finish_rows, head_base, head_strides, load_backward_rows, load_tile,
                                     online_softmax_step, output_backward_rows, row_gates, store_scores, store_tile, tile_configs)

# dK/dV: queries one program walks for its key block. At n = 8,192 (B = 8, 8 heads; H200, session 23
# calls 2-4) 768 took the kernel to 108-109 us from 131-132 at 1,024 (384: 120, 512: 113-115, 640: 118,
# 896: 121, 2,048: 125): more, shorter programs fill the chip's last wave of one-warp programs (then with a
# separate sum of the partials, 7-8 us). Any count works: a slice's rows are masked at its end.
_QUERIES_PER_SPLIT = 768


@triton.jit
def _key_terms(TK_row, END_row, FLAGS_row, CLOCK_row, offs_n, NK):
    """A key block's int32 times, clock sines and cosines, weekend values and the first query
    position that sees each key: its chunk's end, or past every query where the key is invalid or
    beyond the list, so a pair's visibility is one compare."""
    in_range = offs_n < NK
    first_query_j, flags_j = first_visible_query(END_row, FLAGS_row, offs_n, NK)
    sin_j, cos_j = event_clock(CLOCK_row, NK, offs_n, in_range)
    return tl.load(TK_row + offs_n, mask=in_range, other=0), sin_j, cos_j, weekend_value(flags_j), first_query_j


@triton.jit
def first_visible_query(END_row, FLAGS_row, offs_n, NK):
    """The first query position that sees each key of a block (its chunk's end; past every query where
    the key is invalid or beyond the list), and the keys' flag words."""
    in_range = offs_n < NK
    flags_j = tl.load(FLAGS_row + offs_n, mask=in_range, other=0)
    end_j = tl.load(END_row + offs_n, mask=in_range, other=0)
    return tl.where(((flags_j & 1) != 0) & in_range, end_j, 2147483647), flags_j


@triton.jit
def _keyed_tile(q, k, t_i, sin_i, cos_i, gamma_i, delta_i, position_i, t_j, sin_j, cos_j, w_j, first_query_j, s_time, s_hour, s_weekend,
                qk_scale, TERMS: tl.constexpr, PRECISION: tl.constexpr, FAST_MATH: tl.constexpr):
    """log2-unit scores of a query tile against a key block (-inf where not visible) and, with TERMS,
    the three terms (else zeros: gamma_i and delta_i then come multiplied by the weekend scale)."""
    scores, b_time, b_hour, b_weekend = tile_scores(q, k, t_i, sin_i, cos_i, gamma_i, delta_i, t_j, sin_j, cos_j, w_j, s_time, s_hour,
                                                    s_weekend, qk_scale, TERMS, PRECISION, FAST_MATH)
    return tl.where(first_query_j[None, :] <= position_i[:, None], scores, float("-inf")), b_time, b_hour, b_weekend


@triton.jit
def _key_block(start_n, q, K, V, key_base, offs_d, t_i, sin_i, cos_i, gamma_i, delta_i, position_i, TK_row, END_row, FLAGS_row, CLOCK_row,
               NK, s_time, s_hour, s_weekend, qk_scale, D: tl.constexpr, BLOCK_N: tl.constexpr, TERMS: tl.constexpr,
               PRECISION: tl.constexpr, FAST_MATH: tl.constexpr):
    """The key block at `start_n`, its log2-unit scores against a query tile and (TERMS) the three bias
    terms (forward and dQ)."""
    offs_n = start_n + tl.arange(0, BLOCK_N)
    k = load_tile(K, key_base, offs_n, offs_d, D, offs_n < NK)
    v = load_tile(V, key_base, offs_n, offs_d, D, offs_n < NK)
    t_j, sin_j, cos_j, w_j, first_query_j = _key_terms(TK_row, END_row, FLAGS_row, CLOCK_row, offs_n, NK)
    scores, b_time, b_hour, b_weekend = _keyed_tile(q, k, t_i, sin_i, cos_i, gamma_i, delta_i, position_i, t_j, sin_j, cos_j, w_j,
                                                    first_query_j, s_time, s_hour, s_weekend, qk_scale, TERMS, PRECISION, FAST_MATH)
    return k, v, scores, b_time, b_hour, b_weekend


@triton.jit
def _queries(TQ, QFLAGS, QCLOCK, b, offs_m, rows, T, L, WEEKEND_BOTH: tl.constexpr):
    """Times, clock sines and cosines, weekend coefficients and visibility positions (candidates
    count as position L) of a query tile."""
    t_i = tl.load(TQ + b * T + offs_m, mask=rows, other=0)
    sin_i, cos_i = event_clock(QCLOCK + b * 2 * T, T, offs_m, rows)
    gamma_i, delta_i = weekend_coefficients(tl.load(QFLAGS + b * T + offs_m, mask=rows, other=0), WEEKEND_BOTH)
    return t_i, sin_i, cos_i, gamma_i, delta_i, tl.minimum(offs_m, L)


# Key lists are 16-256 long: narrow key tiles (dK/dV holds two [BLOCK_N, D] accumulators besides the
# tile; the offline sm_90 compile spills at 64x32). Tiles from the H100 sweep (`benchmarks/tile_sweep.py`,
# sessions 11 and 13), head dim 64: dK/dV 32x16 on one warp at 3 stages 118 us (gated 126) against 132
# (145) for 64x16 on two warps; 16x16 on one warp 139, 32x16 at 2 or 4 stages 124-133 (no spill
# offline); with both lists in one launch and the gates applied to P and dP (session 14) 90 us, gated 95.
# KEY_TILE: keys per tile where the local kernels walk these lists (`attend_key_list`,
# `key_list_query_gradients`): as kernels of their own, the forward ran 16 % and the dQ 31 % slower with
# 32-key tiles than with 16 (the lists are 16-64 long).
KEY_TILE = 16
_DKDV_TILES = tile_configs([(32, 16, 1, 3)])


@triton.jit
def attend_key_list(q, K, V, TK, KEND, KFLAGS, KCLOCK, O, LSE, NK, b, h, pid_bh, offs_m, offs_d, rows, t_i, sin_i, cos_i, gamma_i, delta_i,
                    position_i, s_time, s_hour, qk_scale, T, OB, OH, OT, D: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
                    PRECISION: tl.constexpr, FAST_MATH: tl.constexpr):
    """A query tile's attention over one key list (dense `[B, H, NK, D]`), stored with its log-sum-exp
    and returned (float32, for a gated sum); gamma_i and delta_i already multiplied by the weekend scale."""
    key_base = pid_bh.to(tl.int64) * NK * D
    m_i = tl.full([BLOCK_M], float("-inf"), dtype=tl.float32)
    l_i = tl.zeros([BLOCK_M], dtype=tl.float32)
    acc = tl.zeros([BLOCK_M, D], dtype=tl.float32)
    for start_n in range(0, NK, BLOCK_N):
        k, v, scores, _, _, _ = _key_block(start_n, q, K, V, key_base, offs_d, t_i, sin_i, cos_i, gamma_i, delta_i, position_i, TK + b * NK,
                                           KEND + b * NK, KFLAGS + b * NK, KCLOCK + b * 2 * NK, NK, s_time, s_hour, 1.0, qk_scale, D,
                                           BLOCK_N, False, PRECISION, FAST_MATH)
        acc, l_i, m_i = online_softmax_step(acc, l_i, m_i, scores, v, PRECISION)
    out, lse = finish_rows(acc, l_i, m_i)
    store_tile(O, head_base(b, h, OB, OH), offs_m, offs_d, OT, rows, out)
    tl.store(LSE + pid_bh.to(tl.int64) * T + offs_m, lse, mask=rows)
    return out


@triton.jit
def _key_block_gradients(block, split, b, h, pid_bh, Q, K, V, DO, LSE, DELTA, GATE, TQ, QFLAGS, QCLOCK, TK, KEND, KFLAGS, KCLOCK, s_time,
                         s_hour, s_weekend, DK, DV, DKO, DVO, ARRIVED, DS, DSCALES, SIZES, sm_scale, T, L, NK, QUERIES, DS_ROWS, SPLITS,
                         SPLIT_STRIDE, QB, QH, QT, GB,
                         GH, GT, H: tl.constexpr, D: tl.constexpr, WEEKEND_BOTH: tl.constexpr, PRECISION: tl.constexpr,
                         FAST_MATH: tl.constexpr, GATED: tl.constexpr, STORE_SCORES: tl.constexpr, MEANS: tl.constexpr,
                         BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr):
    """One key block of one list and one slice of `QUERIES` queries: float32 partial dK, dV into DK,
    DV, and the slices' sum into DKO, DVO (`_sum_slices`). GATED: `DO` is the gated sum's gradient
    and `GATE` this branch's gates (`row_gates`). STORE_SCORES (the stored-score backward,
    `evo_scores_backward`): also store the tile's dS into `DS` `[B·H, DS_ROWS, NK]` (rows past
    DS_ROWS not stored; rows no key of the block sees are not visited, so the reader masks by
    visibility) and add those rows' pairs' share of the temporal scales' gradient into `DSCALES`,
    which the dQ kernel sums otherwise."""
    offs_n = block * BLOCK_N + tl.arange(0, BLOCK_N)
    offs_d = tl.arange(0, D)
    cols = offs_n < NK
    key_base = pid_bh.to(tl.int64) * NK * D
    k = load_tile(K, key_base, offs_n, offs_d, D, cols)
    v = load_tile(V, key_base, offs_n, offs_d, D, cols)
    t_j, sin_j, cos_j, w_j, first_query_j = _key_terms(TK + b * NK, KEND + b * NK, KFLAGS + b * NK, KCLOCK + b * 2 * NK, offs_n, NK)
    # no query before the earliest end of a valid key sees this block
    first_query = tl.min(tl.minimum(first_query_j, T), 0)
    lo = tl.maximum(split * QUERIES, first_query // BLOCK_M * BLOCK_M)
    hi = tl.minimum((split + 1) * QUERIES, T)
    dk = tl.zeros([BLOCK_N, D], dtype=tl.float32)
    dv = tl.zeros([BLOCK_N, D], dtype=tl.float32)
    d_time = tl.zeros([BLOCK_M], dtype=tl.float32)
    d_hour = tl.zeros([BLOCK_M], dtype=tl.float32)
    d_weekend = tl.zeros([BLOCK_M], dtype=tl.float32)
    query_base, do_base = head_base(b, h, QB, QH), head_base(b, h, GB, GH)
    for start_m in range(lo, hi, BLOCK_M):
        offs_m = start_m + tl.arange(0, BLOCK_M)
        rows = offs_m < hi
        q, do, lse, delta_row = load_backward_rows(Q, query_base, QT, DO, do_base, GT, LSE, DELTA, pid_bh.to(tl.int64) * T, offs_m, offs_d,
                                                   rows)
        gate = row_gates(GATE, pid_bh.to(tl.int64) * T, offs_m, rows, GATED)
        t_i, sin_i, cos_i, gamma_i, delta_i, position_i = _queries(TQ, QFLAGS, QCLOCK, b, offs_m, rows, T, L, WEEKEND_BOTH)
        if STORE_SCORES:  # the terms themselves, for the scales' gradient
            scores, b_time, b_hour, b_weekend = _keyed_tile(q, k, t_i, sin_i, cos_i, gamma_i, delta_i, position_i, t_j, sin_j, cos_j, w_j,
                                                            first_query_j, s_time, s_hour, s_weekend, sm_scale * 1.4426950408889634, True,
                                                            PRECISION, FAST_MATH)
        else:
            scores, b_time, b_hour, b_weekend = _keyed_tile(q, k, t_i, sin_i, cos_i, gamma_i * s_weekend, delta_i * s_weekend, position_i,
                                                            t_j, sin_j, cos_j, w_j, first_query_j, s_time, s_hour, 1.0,
                                                            sm_scale * 1.4426950408889634, False, PRECISION, FAST_MATH)
        dk, dv, ds = accumulate_key_gradients(dk, dv, q, do, v, scores, lse, delta_row, gate, PRECISION, GATED)
        if STORE_SCORES:
            # rows past DS_ROWS: the recomputing dQ kernel sums their pairs' share, both branches' (`evo_scores_backward`)
            d_time, d_hour, d_weekend = add_term_sums(d_time, d_hour, d_weekend, ds, b_time, b_hour, b_weekend, offs_m < DS_ROWS)
            store_scores(DS + pid_bh.to(tl.int64) * DS_ROWS * NK, offs_m * NK, offs_n, rows & (offs_m < DS_ROWS), cols, ds)
    if MEANS:  # the keys are chunk means: each row's gradient reaches its chunk's events divided by the chunk's size
        inverse = 1.0 / tl.load(SIZES + b * NK + offs_n, mask=cols, other=1.0)
        dk, dv = dk * inverse[:, None], dv * inverse[:, None]
    _sum_slices(dk * sm_scale, dv, split, pid_bh, offs_n, offs_d, cols, DK, DV, DKO, DVO, ARRIVED, NK, SPLITS, SPLIT_STRIDE, D)
    if STORE_SCORES:
        add_scale_gradients(DSCALES, h, H, d_time, d_hour, d_weekend)


@triton.jit
def _sum_slices(dk, dv, split, pid_bh, offs_n, offs_d, cols, DK, DV, DKO, DVO, ARRIVED, NK, SPLITS, SPLIT_STRIDE, D: tl.constexpr):
    """Store this slice's partial dK, dV; the last of the key block's `SPLITS` programs to arrive sums
    all of them, in slice order, into DKO, DVO, and resets the block's counter `ARRIVED` for the next
    launch. At n = 8,192 on the H200 (session 25) the kernel took 113-115 us with it against 107-110,
    where the separate sum it replaces was an 8 us launch on the critical path; unrolled over the
    slices (`tl.static_range`) it took 123-130 us."""
    head = pid_bh.to(tl.int64) * NK * D
    tiles = head + offs_n[:, None] * D + offs_d[None, :]
    store_tile(DK, split.to(tl.int64) * SPLIT_STRIDE + head, offs_n, offs_d, D, cols, dk)
    store_tile(DV, split.to(tl.int64) * SPLIT_STRIDE + head, offs_n, offs_d, D, cols, dv)
    # every thread's stores before the counter's release; the last program's acquire then sees every slice's
    tl.debug_barrier()
    if tl.atomic_add(ARRIVED, 1.0) == SPLITS - 1:
        sum_k = tl.zeros_like(dk)
        sum_v = tl.zeros_like(dv)
        every = cols[:, None] & (offs_d[None, :] < D)
        slice_k, slice_v = DK + tiles, DV + tiles  # slice 0's tiles; a pointer step per slice keeps the offsets 64-bit
        for _ in range(0, SPLITS):  # this program's own slice too: its stores precede the barrier
            # .cg: past L1, which does not see the other SMs' stores
            sum_k += tl.load(slice_k, mask=every, other=0.0, cache_modifier=".cg")
            sum_v += tl.load(slice_v, mask=every, other=0.0, cache_modifier=".cg")
            slice_k += SPLIT_STRIDE
            slice_v += SPLIT_STRIDE
        store_tile(DKO, head, offs_n, offs_d, D, cols, sum_k)
        store_tile(DVO, head, offs_n, offs_d, D, cols, sum_v)
        tl.store(ARRIVED, 0.0)


@triton.autotune(configs=_DKDV_TILES, key=["T", "NK0", "NK1", "D", "STORE_SCORES", "MEANS0"], reset_to_zero=["DSCALES"])
@triton.jit
def _keyed_dkdv_kernel(Q, TQ, QFLAGS, QCLOCK, SCALES, K0, V0, DO0, LSE0, DELTA0, GATE0, TK0, KEND0, KFLAGS0, KCLOCK0, DK0, DV0, DKO0, DVO0,
                       DS0, K1, V1, DO1, LSE1, DELTA1, GATE1, TK1, KEND1, KFLAGS1, KCLOCK1, DK1, DV1, DKO1, DVO1, DS1, DSCALES, SIZES0,
                       ARRIVED, sm_scale, T, L, NK0, NK1, QUERIES, DS_ROWS, SPLIT_STRIDE, QB, QH, QT, GB0, GH0, GT0, GB1, GH1, GT1,
                       H: tl.constexpr, D: tl.constexpr, WEEKEND_BOTH: tl.constexpr, PRECISION: tl.constexpr, FAST_MATH: tl.constexpr,
                       GATED: tl.constexpr, STORE_SCORES: tl.constexpr, MEANS0: tl.constexpr, BLOCK_M: tl.constexpr,
                       BLOCK_N: tl.constexpr):
    """dK/dV of both key lists in one launch: the first `cdiv(NK0, BLOCK_N)` programs along axis 0
    take list 0's key blocks, the rest list 1's. The programs of both lists for one (batch, head,
    query slice) run side by side and read the same q and dO tiles, so the second read comes from
    L2, where two launches each read q and dO from memory (they were bandwidth-bound, 67-76 % of
    DRAM peak under Nsight Compute: 118 against 90 us at n = 8,192; benchmarks/RESULTS.md, session 14).
    STORE_SCORES: see `_key_block_gradients`. The four partial gradients lie in one float32 buffer,
    SPLIT_STRIDE elements per query slice (the grid's third axis); ARRIVED: one zeroed float32 counter
    per program along axes 0 and 1, left zeroed (`_sum_slices`). MEANS0: list
    0's keys are chunk means, its gradients divided by the chunks' sizes SIZES0 `[B, NK0]` here."""
    pid_bh = tl.program_id(1)
    b, h, split = pid_bh // H, pid_bh % H, tl.program_id(2)
    s_time, s_hour, s_weekend = load_scales(SCALES, h, H)
    blocks0 = tl.cdiv(NK0, BLOCK_N)
    block = tl.program_id(0)
    arrived = ARRIVED + pid_bh * tl.num_programs(0) + block
    splits = tl.num_programs(2)
    if block < blocks0:
        _key_block_gradients(block, split, b, h, pid_bh, Q, K0, V0, DO0, LSE0, DELTA0, GATE0, TQ, QFLAGS, QCLOCK, TK0, KEND0, KFLAGS0, KCLOCK0,
                             s_time, s_hour, s_weekend, DK0, DV0, DKO0, DVO0, arrived, DS0, DSCALES, SIZES0, sm_scale, T, L, NK0, QUERIES,
                             DS_ROWS, splits, SPLIT_STRIDE, QB, QH, QT, GB0, GH0, GT0, H, D, WEEKEND_BOTH, PRECISION, FAST_MATH, GATED,
                             STORE_SCORES, MEANS0, BLOCK_M, BLOCK_N)
    else:
        _key_block_gradients(block - blocks0, split, b, h, pid_bh, Q, K1, V1, DO1, LSE1, DELTA1, GATE1, TQ, QFLAGS, QCLOCK, TK1, KEND1, KFLAGS1,
                             KCLOCK1, s_time, s_hour, s_weekend, DK1, DV1, DKO1, DVO1, arrived, DS1, DSCALES, SIZES0, sm_scale, T, L, NK1,
                             QUERIES, DS_ROWS, splits, SPLIT_STRIDE, QB, QH, QT, GB1, GH1, GT1, H, D, WEEKEND_BOTH, PRECISION, FAST_MATH,
                             GATED, STORE_SCORES, False, BLOCK_M, BLOCK_N)


@triton.jit
def key_list_query_gradients(dq, d_time, d_hour, d_weekend, q, DO, GB, GH, GT, O, LSE, DELTA, GATE, DGATE, K, V, TK, KEND, KFLAGS, KCLOCK,
                              NK, b, h, pid_bh, offs_m, offs_d, rows, t_i, sin_i, cos_i, gamma_i, delta_i, position_i, s_time, s_hour,
                              s_weekend, qk_scale, T, OB, OH, OT, D: tl.constexpr, BLOCK_N: tl.constexpr, PRECISION: tl.constexpr,
                              FAST_MATH: tl.constexpr, GATED: tl.constexpr):
    """One key list's share of a query tile's dQ (unscaled) and scale sums; stores the list's row term
    rowsum(dO·O) for its dK/dV kernel (GATED: and its gates' gradient, `output_backward_rows`)."""
    do, lse, delta_row = output_backward_rows(DO, head_base(b, h, GB, GH), GT, O, head_base(b, h, OB, OH), OT, LSE, DELTA, GATE, DGATE,
                                              pid_bh.to(tl.int64) * T, offs_m, offs_d, rows, GATED)
    key_base = pid_bh.to(tl.int64) * NK * D
    for start_n in range(0, NK, BLOCK_N):
        k, v, scores, b_time, b_hour, b_weekend = _key_block(start_n, q, K, V, key_base, offs_d, t_i, sin_i, cos_i, gamma_i, delta_i,
                                                             position_i, TK + b * NK, KEND + b * NK, KFLAGS + b * NK, KCLOCK + b * 2 * NK, NK,
                                                             s_time, s_hour, s_weekend, qk_scale, D, BLOCK_N, True, PRECISION, FAST_MATH)
        dq, d_time, d_hour, d_weekend = accumulate_query_gradients(dq, d_time, d_hour, d_weekend, do, k, v, scores, lse, delta_row, b_time,
                                                                   b_hour, b_weekend, PRECISION)
    return dq, d_time, d_hour, d_weekend


def _launch(q: Tensor, weekend_rule: int) -> dict:
    return dict(H=q.shape[1], D=q.shape[-1], WEEKEND_BOTH=weekend_rule == 1, PRECISION="ieee" if q.dtype == torch.float32 else "tf32",
                FAST_MATH=not INTERPRETED)


class ScoreStore(NamedTuple):
    """Where the stored-score backward's dK/dV kernels put what its dQ kernel reads
    (`recsys.ops.evo_scores_backward`): the dS buffers (the local kernel's one, or one per key list),
    in q's dtype, for the query rows `[0, rows)`, and a float32 `[3, H]` buffer for those rows' share
    of the scales' gradient (the keyed kernel sums its pairs' as it goes; the local pairs' are summed
    from the stored dS afterwards), which the recomputing dQ kernel sums otherwise."""

    scores: Sequence[Tensor]
    rows: int
    dscales: Tensor


class KeyTimes(NamedTuple):
    """A key list's int32 times, the positions their chunks end at and flag words (bit 1 valid, bit 2
    weekend), `[B, K]` each, and clock words `[B, 2, K]`, as `recsys.ops.evo_attention.FusedTimes` holds them."""

    times: Tensor
    end: Tensor
    flags: Tensor
    clock: Tensor


class KeyList(NamedTuple):
    """One branch's key list: keys and values `[B, H, K, D]`, their `KeyTimes`, the branch output
    `[B, H, T, D]` (forward: written; backward: read) and, in the backward, its gradient and natural
    log-sum-exp."""

    k: Tensor
    v: Tensor
    keys: KeyTimes
    out: Tensor
    grad_out: Optional[Tensor] = None
    lse: Optional[Tensor] = None


def list_arguments(lists: Sequence[KeyList], deltas: Optional[Sequence[Tensor]] = None) -> list:
    """Each list's kernel arguments (keys, values, their times, ends, flags and clock, then the output;
    with `deltas`, the list's row-term buffer to fill: dO, output, log-sum-exp and that buffer), the
    second list repeating the first where there is one list only (the kernels read it only with two)."""
    if len(lists) not in (1, 2):
        raise ValueError(f"the keyed kernels take one or two key lists, got {len(lists)}")
    arguments = []
    for index in (0, -1):
        entry = lists[index]
        arguments += [entry.k.contiguous(), entry.v.contiguous(), *entry.keys]
        arguments += [entry.out] if deltas is None else [entry.grad_out, entry.out, entry.lse, deltas[index]]
    return arguments


class KeyListBackward(NamedTuple):
    """One key list as its dK/dV kernel reads it: the list (`KeyList` with its dO and log-sum-exp), the
    row term rowsum(dO·O) the dQ kernel stored for it, and, where the node returns the branches'
    gated sum, the branch's float32 gates `[B, H, T]` (the list's dO is then the sum's gradient)."""

    entry: KeyList
    delta: Tensor
    gate: Optional[Tensor] = None


def arrival_counters(batch: int, heads: int, key_counts: Sequence[int]) -> int:
    """How many zeroed float32 counters `keyed_key_gradients` takes: one per key block of either list
    and (batch, head), at the smallest key tile of its candidates."""
    block = min(config.kwargs["BLOCK_N"] for config in _keyed_dkdv_kernel.configs)
    return batch * heads * sum(triton.cdiv(count, block) for count in key_counts)


def keyed_key_gradients(q: Tensor, lists: Sequence[KeyListBackward], query_times: Tensor, query_flags: Tensor, query_clock: Tensor,
                        scales32: Tensor, history_length: int, weekend_rule: int, sm_scale: float, arrived: Tensor,
                        store: Optional[ScoreStore] = None, chunk_sizes: Optional[Tensor] = None) -> List[Tuple[Tensor, Tensor]]:
    """float32 dK, dV `[B, H, K, D]` of the global and the transition key lists, in one launch.
    `arrived`: `arrival_counters(...)` zeroed float32 counters, which the kernel leaves zeroed. With
    `store` (one dS buffer `[B·H, store.rows, K]` per list) also each list's dS, and those rows'
    share of the scales' gradient added into `store.dscales`. With `chunk_sizes` (float32 `[B, K0]`,
    the global list's keys being chunk means) the global list's gradients come divided by them: what
    each of a chunk's events receives."""
    if len(lists) != 2 or len({item.gate is None for item in lists}) != 1:
        raise ValueError("the keyed dK/dV kernel takes two key lists, both gated or neither")
    batch, heads, total, dim = q.shape
    splits = triton.cdiv(total, _QUERIES_PER_SPLIT)
    counts = [item.entry.k.shape[2] for item in lists]
    if arrived.numel() < arrival_counters(batch, heads, counts) or arrived.dtype != torch.float32:
        raise ValueError(f"arrived must hold {arrival_counters(batch, heads, counts)} float32 counters, got {arrived.numel()} {arrived.dtype}")
    # the four partial gradients (dK, dV of each list) side by side in one buffer per query slice, and their sums
    sizes = [batch * heads * count * dim for count in counts]
    parts = torch.empty(splits, 2 * sum(sizes), device=q.device, dtype=torch.float32)
    summed = torch.empty(2 * sum(sizes), device=q.device, dtype=torch.float32)
    widths = [sizes[0], sizes[0], sizes[1], sizes[1]]
    pieces, sums = parts.split(widths, dim=1), summed.split(widths)
    arguments, strides = [], []
    for index, item in enumerate(lists):
        entry = item.entry
        arguments += [entry.k.contiguous(), entry.v.contiguous(), entry.grad_out, entry.lse, item.delta,
                      item.delta if item.gate is None else item.gate, *entry.keys, pieces[2 * index], pieces[2 * index + 1],
                      sums[2 * index], sums[2 * index + 1], parts if store is None else store.scores[index]]
        strides += head_strides(entry.grad_out)
    _keyed_dkdv_kernel[lambda meta: (triton.cdiv(counts[0], meta["BLOCK_N"]) + triton.cdiv(counts[1], meta["BLOCK_N"]), batch * heads, splits)](
        q, query_times, query_flags, query_clock, scales32, *arguments, parts if store is None else store.dscales,
        parts if chunk_sizes is None else chunk_sizes.contiguous(), arrived, sm_scale, total, history_length, counts[0], counts[1],
        _QUERIES_PER_SPLIT, 0 if store is None else store.rows, parts.stride(0), *head_strides(q), *strides, GATED=lists[0].gate is not None,
        STORE_SCORES=store is not None, MEANS0=chunk_sizes is not None, **_launch(q, weekend_rule))
    shapes = [(batch, heads, count, dim) for count in counts]
    return [(sums[0].view(shapes[0]), sums[1].view(shapes[0])), (sums[2].view(shapes[1]), sums[3].view(shapes[1]))]
