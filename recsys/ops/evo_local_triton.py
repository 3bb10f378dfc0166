"""SparseCTR's local branch as one fused Triton kernel per direction: the forward and the dQ kernel
(with the temporal scales' gradient) also walk the global and transition key lists, so each is one
kernel for the three branches; dK/dV.

The branch (`recsys.ops.evo_attention.local_branch`, its twin in the tests): history query i sees
the real history keys j with i - window < j <= i, a candidate (positions L.. of the sequence) the
last `window` real history keys and itself, each with the composite RelTemporal bias
`s0·b_time + s1·b_hour + s2·b_wkd` (`temporal_components`), plus the profile token (bias 0). The
structural version materialises the three bias terms and a visibility tensor for every
`[query block, 2·window + 1]` pair and runs SDPA's math path, and the candidates' window in
PyTorch; here each tile computes the terms in registers from int32 times, a per-event flag word
(real, local weekend) and per-event clock sines and cosines, and a query block visits only the key
tiles its windows cover. The profile
key starts every row's online softmax (`triton_tiles.profile_key_start`); the dQ kernel adds its
share and sums the profile key's and value's gradients (`profile_key_gradients`), so no full-size
float32 merge runs outside the kernels. `local_history_triton` is the history-only entry point;
`recsys.ops.evo_branches_triton` drives the kernels over history and candidates.

Runs on CUDA; on CPU under Triton's interpreter (`TRITON_INTERPRET=1`), which the tests use.
"""

from __future__ import annotations

import math
from typing import List, NamedTuple, Optional, Sequence

import torch
import triton
import triton.language as tl
from torch import Tensor

from recsys.ops.evo_bias_triton import (accumulate_key_gradients, accumulate_query_gradients, add_scale_gradients,
                                        event_clock, load_scales, tile_scores, weekend_coefficients, weekend_value)
from recsys.ops.evo_keyed_triton import KEY_TILE, KeyList, KeyTimes, ScoreStore, attend_key_list, key_list_query_gradients, list_arguments
from recsys.ops.triton_tiles import (FIXED_REFERENCE_LIMIT, INTERPRETED, finish_rows, head_base, head_strides, load_backward_rows, load_tile,
                                     fixed_reference_step, online_softmax_step, pad_head_dim, padded_head_dim, profile_key_gradients, profile_key_start, profile_value_start,
                                     program_rows, query_backward_rows, row_gates, store_scores, store_tile, tile_configs)



@triton.jit
def _key_terms(T_row, FLAGS_row, CLOCK_row, offs_n, L, ROWS, WINDOW: tl.constexpr):
    """A key tile's int32 times, clock sines and cosines, weekend values and reach: a real history
    key is visible from its own row to WINDOW - 1 rows later (0: never), so a pair's visibility is one
    unsigned compare."""
    cols = offs_n < ROWS
    flags_j = tl.load(FLAGS_row + offs_n, mask=cols, other=0)
    sin_j, cos_j = event_clock(CLOCK_row, ROWS, offs_n, cols)
    reach_j = tl.where(((flags_j & 1) != 0) & (offs_n < L), WINDOW, 0).to(tl.uint32)
    return tl.load(T_row + offs_n, mask=cols, other=0), sin_j, cos_j, weekend_value(flags_j), reach_j


@triton.jit
def _local_tile(q, k, offs_m, offs_n, t_i, sin_i, cos_i, gamma_i, delta_i, t_j, sin_j, cos_j, w_j, reach_j, s_time, s_hour, s_weekend,
                qk_scale, L, CANDIDATES: tl.constexpr, TERMS: tl.constexpr, PRECISION: tl.constexpr, FAST_MATH: tl.constexpr):
    """log2-unit scores (bias included, -inf where not visible) and, with TERMS, the three terms (else
    zeros: gamma_i and delta_i then come multiplied by the weekend scale, `scores_with_bias`). History
    query i sees the real history keys (i - WINDOW, i]; a candidate (i >= L) the real history keys
    [L - WINDOW, L) and itself."""
    scores, b_time, b_hour, b_weekend = tile_scores(q, k, t_i, sin_i, cos_i, gamma_i, delta_i, t_j, sin_j, cos_j, w_j, s_time, s_hour,
                                                    s_weekend, qk_scale, TERMS, PRECISION, FAST_MATH)
    if CANDIDATES:  # compiled separately: the history-only rule is cheaper per pair
        anchor = tl.minimum(offs_m, L - 1)  # a candidate's window ends at the last history key
        own_key = tl.where(offs_m >= L, offs_m, -1)
        visible = ((anchor[:, None] - offs_n[None, :]).to(tl.uint32) < reach_j[None, :]) | (offs_n[None, :] == own_key[:, None])
    else:
        visible = (offs_m[:, None] - offs_n[None, :]).to(tl.uint32) < reach_j[None, :]
    return tl.where(visible, scores, float("-inf")), b_time, b_hour, b_weekend


@triton.jit
def _query_terms(T_row, FLAGS_row, CLOCK_row, offs_m, rows, ROWS, WEEKEND_BOTH: tl.constexpr):
    """A query tile's int32 times, clock sines and cosines and weekend coefficients."""
    sin_i, cos_i = event_clock(CLOCK_row, ROWS, offs_m, rows)
    gamma_i, delta_i = weekend_coefficients(tl.load(FLAGS_row + offs_m, mask=rows, other=0), WEEKEND_BOTH)
    return tl.load(T_row + offs_m, mask=rows, other=0), sin_i, cos_i, gamma_i, delta_i


@triton.jit
def _window_key_ranges(start_m, L, ROWS, WINDOW: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr):
    """The key tiles a query block reaches, as two ranges: history keys from the earliest window start
    (a candidate's window starts at L - WINDOW) to its last history query, then the candidates' own
    keys among its queries, from where the first range's last tile ended (so no tile is seen twice)."""
    lo = tl.maximum(tl.minimum(start_m, L - 1) - WINDOW + 1, 0) // BLOCK_N * BLOCK_N
    hi = tl.minimum(start_m + BLOCK_M, L)
    end = lo + tl.cdiv(tl.maximum(hi - lo, 0), BLOCK_N) * BLOCK_N
    return lo, hi, tl.maximum(end, start_m // BLOCK_N * BLOCK_N), tl.minimum(start_m + BLOCK_M, ROWS)


@triton.jit
def _window_tile(start_n, q, K, V, base, offs_m, offs_d, t_i, sin_i, cos_i, gamma_i, delta_i, T_row, FLAGS_row, CLOCK_row, s_time, s_hour,
                 s_weekend, qk_scale, L, ROWS, KT, BLOCK_N: tl.constexpr, WINDOW: tl.constexpr, CANDIDATES: tl.constexpr,
                 TERMS: tl.constexpr, PRECISION: tl.constexpr, FAST_MATH: tl.constexpr):
    """The key tile at `start_n`, its log2-unit scores against the query block and (TERMS) the three
    bias terms (forward and dQ)."""
    offs_n = start_n + tl.arange(0, BLOCK_N)
    cols = offs_n < ROWS
    k = load_tile(K, base, offs_n, offs_d, KT, cols)
    v = load_tile(V, base, offs_n, offs_d, KT, cols)
    t_j, sin_j, cos_j, w_j, reach_j = _key_terms(T_row, FLAGS_row, CLOCK_row, offs_n, L, ROWS, WINDOW)
    scores, b_time, b_hour, b_weekend = _local_tile(q, k, offs_m, offs_n, t_i, sin_i, cos_i, gamma_i, delta_i, t_j, sin_j, cos_j, w_j,
                                                    reach_j, s_time, s_hour, s_weekend, qk_scale, L, CANDIDATES, TERMS, PRECISION, FAST_MATH)
    return k, v, scores, b_time, b_hour, b_weekend


# Tiles from the H100 sweep (`benchmarks/tile_sweep.py`, session 11 calls 4-10; benchmarks/RESULTS.md),
# head dim 64: the configurations within 10 % of the best. Triton's one autotuning pass is no judge
# of these: in one process it picked the spilling 128x64 dQ (25 % slower). The loops are 2-4 tiles
# long, so software pipelining (num_stages > 1) only costs shared memory and occupancy: one stage
# ran 8-15 % faster, and the dK/dV kernel's 32-row tiles run best on two warps. The dQ kernel (three
# branches, since session 12 also the gated sum) runs best on one warp over 32 x 16 tiles: 539 against
# 588 us for 64 x 32 on four warps, gated 542 against 623 (session 13, tile_sweep at n = 8,192), though
# it spills 328 bytes offline: one-warp programs keep more of them resident per SM.
# Register caps (the fifth entry, ptxas' maxnreg) that let one more program fit per SM: the forward at
# 128 registers (144 uncapped: 3 -> 4 programs of 4 warps; 8 bytes spilled) ran 248 against 281 us,
# gated 280 against 308; the dK/dV kernel at 168 (225-238: 4 -> 6 programs of 2 warps; 72 bytes
# spilled) 275 against 302, gated 282 against 306 (session 14, calls 8-9). A cap that adds no
# program (the forward at 136) gains nothing, and the dQ kernel's spills grow too fast (208: 632
# bytes, 18 % slower).
_FORWARD_TILES = tile_configs([(64, 32, 4, 1, 128)])
_DQ_TILES = tile_configs([(32, 16, 1, 1)])
_DKDV_TILES = tile_configs([(32, 32, 2, 1, 168)])
# The stored-score backward's dK/dV tile: the recomputing kernel's, at its 168-register cap (H200,
# session 17 call B: 309.5 us with the dS stores, the best of that sweep).
_DKDV_STORED_TILES = tile_configs([(32, 32, 2, 1, 168)])


@triton.jit
def _branch_gates(GATES, branch, pid_bh, offs_m, rows, ROWS):
    """Branch `branch`'s gates of a query tile from the float32 `[3, B·H, ROWS]` gates (global,
    transition, local)."""
    return tl.load(GATES + (branch * tl.num_programs(1) + pid_bh).to(tl.int64) * ROWS + offs_m, mask=rows, other=0.0)


@triton.autotune(configs=_FORWARD_TILES, key=["L", "ROWS", "D", "WINDOW", "KEYED", "NK0", "NK1", "GATED"])
@triton.jit
def _local_forward_kernel(Q, K, V, KP, VP, T, FLAGS, CLOCK, SCALES, O, LSE, K0, V0, TK0, KEND0, KFLAGS0, KCLOCK0, O0, LSE0, K1, V1, TK1,
                          KEND1, KFLAGS1, KCLOCK1, O1, LSE1, GATES, FUSED, sm_scale, L, ROWS, NK0, NK1, QB, QH, QT, OB, OH, OT,
                          H: tl.constexpr, D: tl.constexpr, WINDOW: tl.constexpr, CANDIDATES: tl.constexpr, WEEKEND_BOTH: tl.constexpr,
                          PRECISION: tl.constexpr, FAST_MATH: tl.constexpr, KEYED: tl.constexpr, GATED: tl.constexpr,
                          KEY_BLOCK: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr):
    """ROWS positions per (batch, head) row: the history `[0, L)`, then candidates. q, k and v share
    the (batch, head, row) strides QB, QH, QT; the outputs (OB, OH, OT). KEYED: the global and
    transition branches too (`evo_keyed_triton.attend_key_list`, KEY_BLOCK keys per tile), so the
    query tile and its terms are loaded once for the three branches, as in the dQ kernel. GATED
    (with KEYED): also the branches' sum weighted by per-row gates (`_branch_gates`) into FUSED,
    which SparseCTR's layer reads instead of combining the three outputs in another pass."""
    b, h, pid_bh, start_m, offs_m, rows = program_rows(BLOCK_M, H, ROWS)
    offs_d = tl.arange(0, D)
    base = head_base(b, h, QB, QH)
    q = load_tile(Q, base, offs_m, offs_d, QT, rows)
    T_row, FLAGS_row, CLOCK_row = T + b * ROWS, FLAGS + b * ROWS, CLOCK + b * 2 * ROWS
    t_i, sin_i, cos_i, gamma_i, delta_i = _query_terms(T_row, FLAGS_row, CLOCK_row, offs_m, rows, ROWS, WEEKEND_BOTH)
    s_time, s_hour, s_weekend = load_scales(SCALES, h, H)
    gamma_i, delta_i = gamma_i * s_weekend, delta_i * s_weekend  # the weekend term arrives scaled: one multiply-add per pair
    qk_scale = sm_scale * 1.4426950408889634
    acc, l_i, m_i = profile_key_start(q, KP, VP, pid_bh, offs_d, sm_scale, BLOCK_M, D)
    lo, hi, candidates_lo, candidates_hi = _window_key_ranges(start_m, L, ROWS, WINDOW, BLOCK_M, BLOCK_N)
    # The profile key's score is every row's fixed reference: subtracted with the per-row constant, so
    # the tiles need no running maximum (`fixed_reference_step`); the rare block where a score rises
    # too far above it runs again with one.
    delta_fixed = delta_i - m_i
    for start_n in range(lo, hi, BLOCK_N):
        k, v, scores, _, _, _ = _window_tile(start_n, q, K, V, base, offs_m, offs_d, t_i, sin_i, cos_i, gamma_i, delta_fixed, T_row,
                                             FLAGS_row, CLOCK_row, s_time, s_hour, 1.0, qk_scale, L, ROWS, QT, BLOCK_N, WINDOW, CANDIDATES,
                                             False, PRECISION, FAST_MATH)
        acc, l_i = fixed_reference_step(acc, l_i, scores, v, PRECISION)
    if CANDIDATES:
        for start_n in range(candidates_lo, candidates_hi, BLOCK_N):
            k, v, scores, _, _, _ = _window_tile(start_n, q, K, V, base, offs_m, offs_d, t_i, sin_i, cos_i, gamma_i, delta_fixed, T_row,
                                                 FLAGS_row, CLOCK_row, s_time, s_hour, 1.0, qk_scale, L, ROWS, QT, BLOCK_N, WINDOW, CANDIDATES,
                                                 False, PRECISION, FAST_MATH)
            acc, l_i = fixed_reference_step(acc, l_i, scores, v, PRECISION)
    if tl.max(l_i, 0) > FIXED_REFERENCE_LIMIT:
        acc, l_i, m_i = profile_value_start(VP, pid_bh, offs_d, m_i, BLOCK_M, D)
        for start_n in range(lo, hi, BLOCK_N):
            k, v, scores, _, _, _ = _window_tile(start_n, q, K, V, base, offs_m, offs_d, t_i, sin_i, cos_i, gamma_i, delta_i, T_row,
                                                 FLAGS_row, CLOCK_row, s_time, s_hour, 1.0, qk_scale, L, ROWS, QT, BLOCK_N, WINDOW, CANDIDATES,
                                                 False, PRECISION, FAST_MATH)
            acc, l_i, m_i = online_softmax_step(acc, l_i, m_i, scores, v, PRECISION)
        if CANDIDATES:
            for start_n in range(candidates_lo, candidates_hi, BLOCK_N):
                k, v, scores, _, _, _ = _window_tile(start_n, q, K, V, base, offs_m, offs_d, t_i, sin_i, cos_i, gamma_i, delta_i, T_row,
                                                     FLAGS_row, CLOCK_row, s_time, s_hour, 1.0, qk_scale, L, ROWS, QT, BLOCK_N, WINDOW,
                                                     CANDIDATES, False, PRECISION, FAST_MATH)
                acc, l_i, m_i = online_softmax_step(acc, l_i, m_i, scores, v, PRECISION)
    out, lse = finish_rows(acc, l_i, m_i)
    store_tile(O, head_base(b, h, OB, OH), offs_m, offs_d, OT, rows, out)
    tl.store(LSE + pid_bh.to(tl.int64) * ROWS + offs_m, lse, mask=rows)
    if KEYED:
        position_i = tl.minimum(offs_m, L)  # candidates see the keys of the whole history
        attend_key_list(q, K0, V0, TK0, KEND0, KFLAGS0, KCLOCK0, O0, LSE0, NK0, b, h, pid_bh, offs_m, offs_d, rows, t_i, sin_i, cos_i, gamma_i,
                        delta_i, position_i, s_time, s_hour, qk_scale, ROWS, OB, OH, OT, D, BLOCK_M, KEY_BLOCK, PRECISION, FAST_MATH)
        out_transition = attend_key_list(q, K1, V1, TK1, KEND1, KFLAGS1, KCLOCK1, O1, LSE1, NK1, b, h, pid_bh, offs_m, offs_d, rows, t_i,
                                         sin_i, cos_i, gamma_i, delta_i, position_i, s_time, s_hour, qk_scale, ROWS, OB, OH, OT, D, BLOCK_M,
                                         KEY_BLOCK, PRECISION, FAST_MATH)
        if GATED:  # the other two outputs come back from the tiles this program just stored: no tile stays live across the lists
            tl.debug_barrier()  # the block's stores are visible to all its threads (another thread may have stored an element)
            out_base = head_base(b, h, OB, OH)
            fused = (_branch_gates(GATES, 0, pid_bh, offs_m, rows, ROWS)[:, None] * load_tile(O0, out_base, offs_m, offs_d, OT, rows).to(tl.float32)
                     + _branch_gates(GATES, 1, pid_bh, offs_m, rows, ROWS)[:, None] * out_transition
                     + _branch_gates(GATES, 2, pid_bh, offs_m, rows, ROWS)[:, None] * load_tile(O, out_base, offs_m, offs_d, OT, rows).to(tl.float32))
            store_tile(FUSED, out_base, offs_m, offs_d, OT, rows, fused)


@triton.jit
def _local_dkdv_kernel(Q, K, V, DO, LSE, DELTA, GATE, T, FLAGS, CLOCK, SCALES, DK, DV, CHUNK_ID, DKC, DVC, P, TAIL_SLOT, DKT, DVT, NT,
                       DS, DS_ROWS, sm_scale, L, ROWS, QB, QH, QT, GB, GH, GT, H: tl.constexpr, D: tl.constexpr,
                       WINDOW: tl.constexpr, CANDIDATES: tl.constexpr, WEEKEND_BOTH: tl.constexpr, PRECISION: tl.constexpr,
                       FAST_MATH: tl.constexpr, CHUNK_GRADS: tl.constexpr, TAIL_GRADS: tl.constexpr, GATED: tl.constexpr,
                       STORE_SCORES: tl.constexpr, SCORE_BLOCK: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr):
    """One key block per program: the query tiles whose window reaches it; dK and dV (the dQ kernel
    sums the temporal scales' gradient).
    CHUNK_GRADS / TAIL_GRADS: the block also adds what the global and transition branches give its
    keys (float32 `[B, H, P, D]` per chunk, already divided by the chunk's size, gathered by
    CHUNK_ID; `[B, H, NT, D]` per tail key, gathered by TAIL_SLOT, -1 where none), so one store
    writes the keys' whole gradient. q, k, v, dk and dv share the strides (QB, QH, QT); dO has (GB, GH, GT).
    GATED: dO is the gated sum's gradient and GATE the local branch's `[B·H, ROWS]` gates.
    STORE_SCORES (the stored-score backward, `evo_scores_backward`): also store the history rows'
    dS below DS_ROWS into `DS` `[B·H, DS_ROWS, 2·SCORE_BLOCK]` (row i's columns are the keys from the
    start of the SCORE_BLOCK-row block before its own); the temporal scales' gradient is then summed
    from them (`evo_scores_backward`), not here: its per-pair terms took this kernel from 309 to 447 us."""
    b, h, pid_bh, start_n, offs_n, cols = program_rows(BLOCK_N, H, ROWS)
    offs_d = tl.arange(0, D)
    base, do_base = head_base(b, h, QB, QH), head_base(b, h, GB, GH)
    k = load_tile(K, base, offs_n, offs_d, QT, cols)
    v = load_tile(V, base, offs_n, offs_d, QT, cols)
    T_row, FLAGS_row, CLOCK_row = T + b * ROWS, FLAGS + b * ROWS, CLOCK + b * 2 * ROWS
    t_j, sin_j, cos_j, w_j, reach_j = _key_terms(T_row, FLAGS_row, CLOCK_row, offs_n, L, ROWS, WINDOW)  # once for every query tile
    s_time, s_hour, s_weekend = load_scales(SCALES, h, H)
    dk = tl.zeros([BLOCK_N, D], dtype=tl.float32)
    dv = tl.zeros([BLOCK_N, D], dtype=tl.float32)
    # The key lists' share starts the accumulators (dK's divided by the sm_scale it is multiplied by at
    # the end), so its dependent loads (index, then row) overlap the query tiles instead of waiting at
    # the end of a program three tiles long: added after the loop they cost 75 us of 280 at n = 8,192
    # (benchmarks/RESULTS.md, session 21).
    history = cols & (offs_n < L)
    if CHUNK_GRADS:
        chunk = tl.load(CHUNK_ID + b * L + offs_n, mask=history, other=0)
        dk, dv = _add_key_rows(dk, dv, DKC, DVC, pid_bh, chunk - 1, P, offs_d, history & (chunk > 0), D)
    if TAIL_GRADS:
        slot = tl.load(TAIL_SLOT + b * L + offs_n, mask=history, other=-1)
        dk, dv = _add_key_rows(dk, dv, DKT, DVT, pid_bh, slot, NT, offs_d, history & (slot >= 0), D)
    if CHUNK_GRADS or TAIL_GRADS:
        dk = dk * (1.0 / sm_scale)
    # history queries whose window reaches the block
    for start_m in range(start_n // BLOCK_M * BLOCK_M, tl.minimum(start_n + BLOCK_N + WINDOW - 1, L), BLOCK_M):
        offs_m = start_m + tl.arange(0, BLOCK_M)
        dk, dv = _key_block_update(dk, dv, k, v, t_j, sin_j, cos_j, w_j, reach_j, T_row, FLAGS_row, CLOCK_row, s_time, s_hour, s_weekend,
                                   sm_scale, L, ROWS, Q, DO, LSE, DELTA, GATE, DS, DS_ROWS, base, QT, do_base, GT, pid_bh, offs_m, offs_n,
                                   offs_d, offs_m < L, CANDIDATES, WEEKEND_BOTH, PRECISION, FAST_MATH, GATED, STORE_SCORES, SCORE_BLOCK)
    if CANDIDATES:  # all candidates see the last WINDOW history keys, each one its own key
        candidates_lo = tl.where(start_n >= L, start_n // BLOCK_M * BLOCK_M,
                                 tl.where(start_n + BLOCK_N > L - WINDOW, L // BLOCK_M * BLOCK_M, ROWS))
        candidates_hi = tl.where(start_n >= L, tl.minimum(start_n + BLOCK_N, ROWS), ROWS)
        for start_m in range(candidates_lo, candidates_hi, BLOCK_M):
            offs_m = start_m + tl.arange(0, BLOCK_M)
            dk, dv = _key_block_update(dk, dv, k, v, t_j, sin_j, cos_j, w_j, reach_j, T_row, FLAGS_row, CLOCK_row, s_time, s_hour,
                                       s_weekend, sm_scale, L, ROWS, Q, DO, LSE, DELTA, GATE, DS, DS_ROWS, base, QT, do_base, GT, pid_bh,
                                       offs_m, offs_n, offs_d, (offs_m >= L) & (offs_m < ROWS), CANDIDATES, WEEKEND_BOTH, PRECISION,
                                       FAST_MATH, GATED, STORE_SCORES, SCORE_BLOCK)
    dk = dk * sm_scale
    store_tile(DK, base, offs_n, offs_d, QT, cols, dk)
    store_tile(DV, base, offs_n, offs_d, QT, cols, dv)


_DKDV_KEY = ["L", "ROWS", "D", "WINDOW", "GATED", "STORE_SCORES"]
# The same kernel as the stored-score backward runs it, behind an autotuner with its own tiles.
_local_dkdv_stored_kernel = triton.autotune(configs=_DKDV_STORED_TILES, key=_DKDV_KEY)(_local_dkdv_kernel)
_local_dkdv_kernel = triton.autotune(configs=_DKDV_TILES, key=_DKDV_KEY)(_local_dkdv_kernel)


@triton.jit
def _key_block_update(dk, dv, k, v, t_j, sin_j, cos_j, w_j, reach_j, T_row, FLAGS_row, CLOCK_row, s_time, s_hour, s_weekend, sm_scale, L,
                      ROWS, Q, DO, LSE, DELTA, GATE, DS, DS_ROWS, base, QT, do_base, GT, pid_bh, offs_m, offs_n, offs_d, rows,
                      CANDIDATES: tl.constexpr, WEEKEND_BOTH: tl.constexpr, PRECISION: tl.constexpr, FAST_MATH: tl.constexpr,
                      GATED: tl.constexpr, STORE_SCORES: tl.constexpr, SCORE_BLOCK: tl.constexpr):
    """One query tile's (`rows` of `offs_m`) contribution to a key block's dK and dV (STORE_SCORES: its
    dS stored); t_j .. reach_j the block's `_key_terms`."""
    q, do, lse, delta_row = load_backward_rows(Q, base, QT, DO, do_base, GT, LSE, DELTA, pid_bh.to(tl.int64) * ROWS, offs_m, offs_d, rows)
    gate = row_gates(GATE, pid_bh.to(tl.int64) * ROWS, offs_m, rows, GATED)
    t_i, sin_i, cos_i, gamma_i, delta_i = _query_terms(T_row, FLAGS_row, CLOCK_row, offs_m, rows, ROWS, WEEKEND_BOTH)
    qk_scale = sm_scale * 1.4426950408889634
    scores, _, _, _ = _local_tile(q, k, offs_m, offs_n, t_i, sin_i, cos_i, gamma_i * s_weekend, delta_i * s_weekend, t_j, sin_j, cos_j,
                                  w_j, reach_j, s_time, s_hour, 1.0, qk_scale, L, CANDIDATES, False, PRECISION, FAST_MATH)
    dk, dv, ds = accumulate_key_gradients(dk, dv, q, do, v, scores, lse, delta_row, gate, PRECISION, GATED)
    if STORE_SCORES:
        window_start = (offs_m // SCORE_BLOCK - 1) * SCORE_BLOCK  # row i's column 0
        # int32 offsets from the (batch, head)'s first row: a 64-bit offset per element cost registers the tile loop spilled
        store_scores(DS + pid_bh.to(tl.int64) * DS_ROWS * (2 * SCORE_BLOCK), offs_m * (2 * SCORE_BLOCK) - window_start, offs_n,
                     rows & (offs_m < DS_ROWS), offs_n < ROWS, ds)
    return dk, dv


@triton.jit
def _add_key_rows(dk, dv, DKX, DVX, pid_bh, index, N, offs_d, valid, D: tl.constexpr):
    """Add rows `index` of float32 `[B·H, N, D]` key and value gradients to a key block's."""
    offsets = (pid_bh.to(tl.int64) * N + index)[:, None] * D + offs_d[None, :]
    return (dk + tl.load(DKX + offsets, mask=valid[:, None], other=0.0),
            dv + tl.load(DVX + offsets, mask=valid[:, None], other=0.0))


@triton.autotune(configs=_DQ_TILES, key=["L", "ROWS", "D", "WINDOW", "KEYED", "NK0", "NK1", "GATED"],
                 reset_to_zero=["DKP", "DVP", "DSCALES"])
@triton.jit
def _local_dq_kernel(Q, K, V, KP, VP, DO, O, LSE, DELTA, T, FLAGS, CLOCK, SCALES, DQ, DKP, DVP, DSCALES,
                     K0, V0, TK0, KEND0, KFLAGS0, KCLOCK0, DO0, O0, LSE0, DELTA0, K1, V1, TK1, KEND1, KFLAGS1, KCLOCK1, DO1, O1, LSE1, DELTA1,
                     GATES, DGATES, sm_scale, L, ROWS, NK0, NK1, FIRST_ROW, QB, QH, QT, OB, OH, OT, GB, GH, GT, GB0, GH0, GT0, GB1, GH1, GT1,
                     H: tl.constexpr, D: tl.constexpr, WINDOW: tl.constexpr, CANDIDATES: tl.constexpr, WEEKEND_BOTH: tl.constexpr,
                     PRECISION: tl.constexpr, FAST_MATH: tl.constexpr, KEYED: tl.constexpr, GATED: tl.constexpr, KEY_BLOCK: tl.constexpr,
                     BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr):
    """q, k, v and dq share the strides (QB, QH, QT); the outputs (OB, OH, OT); each dO has its own.
    KEYED: the global and transition branches' key lists too (`evo_keyed_triton.key_list_query_gradients`,
    KEY_BLOCK keys per tile): the query tile is read, and dQ written, once for all three. GATED (with
    KEYED): every dO is the gated sum's gradient, GATES the float32 `[3, B·H, ROWS]` gates (global,
    transition, local) and DGATES their gradient, written here (`output_backward_rows`). The programs
    take the rows from FIRST_ROW on (the stored-score backward leaves this kernel the rows past its
    last whole block: the history's remainder and the candidates)."""
    b, h, pid_bh, start_m, offs_m, rows = program_rows(BLOCK_M, H, ROWS - FIRST_ROW)
    start_m, offs_m = start_m + FIRST_ROW, offs_m + FIRST_ROW
    offs_d = tl.arange(0, D)
    base = head_base(b, h, QB, QH)
    branch_rows = tl.num_programs(1).to(tl.int64) * ROWS  # one branch's gates
    q, do, lse, delta_row = query_backward_rows(Q, base, QT, DO, head_base(b, h, GB, GH), GT, O, head_base(b, h, OB, OH), OT, LSE, DELTA,
                                                GATES + 2 * branch_rows, DGATES + 2 * branch_rows, pid_bh.to(tl.int64) * ROWS, offs_m, offs_d,
                                                rows, GATED)
    T_row, FLAGS_row, CLOCK_row = T + b * ROWS, FLAGS + b * ROWS, CLOCK + b * 2 * ROWS
    t_i, sin_i, cos_i, gamma_i, delta_i = _query_terms(T_row, FLAGS_row, CLOCK_row, offs_m, rows, ROWS, WEEKEND_BOTH)
    s_time, s_hour, s_weekend = load_scales(SCALES, h, H)
    dq = tl.zeros([BLOCK_M, D], dtype=tl.float32)
    d_time = tl.zeros([BLOCK_M], dtype=tl.float32)
    d_hour = tl.zeros([BLOCK_M], dtype=tl.float32)
    d_weekend = tl.zeros([BLOCK_M], dtype=tl.float32)
    lo, hi, candidates_lo, candidates_hi = _window_key_ranges(start_m, L, ROWS, WINDOW, BLOCK_M, BLOCK_N)
    dq, d_time, d_hour, d_weekend = _query_tile_gradients(lo, hi, dq, d_time, d_hour, d_weekend, q, do, lse, delta_row, K, V, base, offs_m,
                                                          offs_d, t_i, sin_i, cos_i, gamma_i, delta_i, T_row, FLAGS_row, CLOCK_row, s_time, s_hour, s_weekend, sm_scale,
                                                          L, ROWS, QT, BLOCK_N, WINDOW, CANDIDATES, PRECISION, FAST_MATH)
    if CANDIDATES:
        dq, d_time, d_hour, d_weekend = _query_tile_gradients(candidates_lo, candidates_hi, dq, d_time, d_hour, d_weekend, q, do, lse,
                                                              delta_row, K, V, base, offs_m, offs_d, t_i, sin_i, cos_i, gamma_i, delta_i, T_row, FLAGS_row,
                                                              CLOCK_row,
                                                              s_time, s_hour, s_weekend, sm_scale, L, ROWS, QT, BLOCK_N, WINDOW, CANDIDATES,
                                                              PRECISION, FAST_MATH)
    dq = profile_key_gradients(dq, q, do, lse, delta_row, KP, VP, DKP, DVP, pid_bh, offs_d, sm_scale, D)
    if KEYED:
        position_i = tl.minimum(offs_m, L)  # candidates see the keys of the whole history
        qk_scale = sm_scale * 1.4426950408889634
        dq, d_time, d_hour, d_weekend = key_list_query_gradients(dq, d_time, d_hour, d_weekend, q, DO0, GB0, GH0, GT0, O0, LSE0, DELTA0,
                                                                  GATES, DGATES, K0, V0, TK0, KEND0, KFLAGS0, KCLOCK0, NK0, b, h, pid_bh,
                                                                  offs_m, offs_d, rows, t_i, sin_i, cos_i, gamma_i, delta_i, position_i,
                                                                  s_time, s_hour, s_weekend, qk_scale, ROWS, OB, OH, OT, D, KEY_BLOCK,
                                                                  PRECISION, FAST_MATH, GATED)
        dq, d_time, d_hour, d_weekend = key_list_query_gradients(dq, d_time, d_hour, d_weekend, q, DO1, GB1, GH1, GT1, O1, LSE1, DELTA1,
                                                                  GATES + branch_rows, DGATES + branch_rows, K1, V1, TK1, KEND1, KFLAGS1,
                                                                  KCLOCK1, NK1, b, h, pid_bh, offs_m, offs_d, rows, t_i, sin_i, cos_i, gamma_i,
                                                                  delta_i, position_i, s_time, s_hour, s_weekend, qk_scale, ROWS, OB, OH, OT, D,
                                                                  KEY_BLOCK, PRECISION, FAST_MATH, GATED)
    store_tile(DQ, base, offs_m, offs_d, QT, rows, dq * sm_scale)
    # the sums are of natural-unit terms; the scales were loaded in log2 units only for the scores
    add_scale_gradients(DSCALES, h, H, d_time, d_hour, d_weekend)


@triton.jit
def _query_tile_gradients(lo, hi, dq, d_time, d_hour, d_weekend, q, do, lse, delta_row, K, V, base, offs_m, offs_d, t_i, sin_i, cos_i,
                          gamma_i, delta_i, T_row, FLAGS_row, CLOCK_row, s_time, s_hour, s_weekend, sm_scale, L, ROWS, KT, BLOCK_N: tl.constexpr,
                          WINDOW: tl.constexpr, CANDIDATES: tl.constexpr, PRECISION: tl.constexpr, FAST_MATH: tl.constexpr):
    """A query block's dQ and scale sums over the key tiles in `[lo, hi)`; t_i .. delta_i its `_query_terms`."""
    for start_n in range(lo, hi, BLOCK_N):
        k, v, scores, b_time, b_hour, b_weekend = _window_tile(start_n, q, K, V, base, offs_m, offs_d, t_i, sin_i, cos_i, gamma_i, delta_i,
                                                               T_row, FLAGS_row, CLOCK_row, s_time, s_hour, s_weekend,
                                                               sm_scale * 1.4426950408889634, L, ROWS, KT, BLOCK_N, WINDOW, CANDIDATES,
                                                               True, PRECISION, FAST_MATH)
        dq, d_time, d_hour, d_weekend = accumulate_query_gradients(dq, d_time, d_hour, d_weekend, do, k, v, scores, lse, delta_row, b_time,
                                                                   b_hour, b_weekend, PRECISION)
    return dq, d_time, d_hour, d_weekend


def _launch(q: Tensor, length: int, window: int, weekend_rule: int) -> dict:
    return dict(H=q.shape[1], D=q.shape[-1], WINDOW=window, CANDIDATES=q.shape[2] > length, WEEKEND_BOTH=weekend_rule == 1,
                PRECISION="ieee" if q.dtype == torch.float32 else "tf32", FAST_MATH=not INTERPRETED)


class KeyGradientsIn(NamedTuple):
    """What the global and transition branches give the history keys, added by the local dK/dV
    kernel before its one store: float32 chunk rows `[B, H, P, D]` (already divided by the chunk's
    size) gathered by `chunk_id` `[B, L]` int32 (1..P, 0 padding), tail rows `[B, H, NT, D]` gathered
    by `tail_slot` `[B, L]` int32 (-1 where the position is no chunk's tail). A None pair adds nothing."""

    chunk_id: Optional[Tensor] = None
    d_chunk_keys: Optional[Tensor] = None
    d_chunk_values: Optional[Tensor] = None
    tail_slot: Optional[Tensor] = None
    d_tail_keys: Optional[Tensor] = None
    d_tail_values: Optional[Tensor] = None


def local_forward(q: Tensor, k: Tensor, v: Tensor, k_profile: Tensor, v_profile: Tensor, times: Tensor, flags: Tensor, clock: Tensor,
                  scales32: Tensor, out: Tensor, lse: Tensor, length: int, window: int, weekend_rule: int, sm_scale: float,
                  keyed: Sequence[KeyList] = (), gates: Optional[Tensor] = None, fused: Optional[Tensor] = None) -> List[Tensor]:
    """Write `out` `[B, H, T, D]` and `lse` `[B, H, T]`: the history `[0, length)`, then T - length
    candidates; `times` and `flags` `[B, T]`, `clock` `[B, 2, T]` (`clock_words`). q, k and v share one layout (`head_strides`), out may
    have another; the profile's k and v dense. With `keyed` (the global and transition lists, their
    outputs in `out`'s layout) also write those outputs, and return their natural log-sum-exps
    `[B, H, T]` (-inf where a query sees no key). With `gates` (float32 `[3, B, H, T]`: global,
    transition, local) also write the gated sum of the three outputs into `fused` (`out`'s layout)."""
    if len(keyed) not in (0, 2):
        raise ValueError(f"the local forward kernel takes no key list or two, got {len(keyed)}")
    if (gates is not None) and (not keyed or fused is None):
        raise ValueError("a gated sum needs the two key lists and an output for it")
    batch, heads, rows, _ = q.shape
    lses = [torch.empty(batch, heads, rows, device=q.device, dtype=torch.float32) for _ in keyed]
    lists = list(keyed) or [KeyList(k, v, KeyTimes(times, times, flags, clock), out)]  # an unread stand-in
    arguments = list_arguments(lists)
    list_lses = lses or [lse, lse]
    _local_forward_kernel[lambda meta: (triton.cdiv(rows, meta["BLOCK_M"]), batch * heads)](
        q, k, v, k_profile, v_profile, times, flags, clock, scales32, out, lse, *arguments[:7], list_lses[0], *arguments[7:], list_lses[-1],
        lse if gates is None else gates, out if fused is None else fused, sm_scale, length, rows, lists[0].k.shape[2], lists[-1].k.shape[2],
        *head_strides(q, k, v), *head_strides(out, *(entry.out for entry in keyed), *([] if fused is None else [fused])), KEYED=bool(keyed),
        GATED=gates is not None, KEY_BLOCK=KEY_TILE, **_launch(q, length, window, weekend_rule))
    return lses


def score_block(window: int) -> int:
    """Rows per block of the stored-score layout (`evo_scores_backward`): a power of two that holds
    the window and that every local tile divides, so a query tile lies in one block and a block's
    keys lie in its own block and the one before."""
    tiles = [config.kwargs[name] for config in (*_DKDV_STORED_TILES, *_DQ_TILES) for name in ("BLOCK_M", "BLOCK_N")]
    return max(triton.next_power_of_2(window), *tiles)


def local_key_gradients(q: Tensor, k: Tensor, v: Tensor, grad_out: Tensor, lse: Tensor, delta: Tensor, times: Tensor, flags: Tensor,
                        clock: Tensor, scales32: Tensor, dk: Tensor, dv: Tensor, length: int, window: int, weekend_rule: int,
                        sm_scale: float, extra: KeyGradientsIn = KeyGradientsIn(), gate: Optional[Tensor] = None,
                        store: Optional[ScoreStore] = None) -> None:
    """Write dk, dv (plus `extra` on the history keys); q, k, v, dk and dv in one layout. With `gate`
    (the local branch's float32 gates `[B, H, T]`), `grad_out` is the gradient of the gated sum.
    With `store` (one dS buffer `[B·H, store.rows, 2·score_block(window)]`) also the history rows'
    dS (`evo_scores_backward.window_scale_gradients` sums the scales' gradient from them)."""
    batch, heads, rows, _ = q.shape
    chunk_grads, tail_grads = extra.d_chunk_keys is not None, extra.d_tail_keys is not None
    chunk_id, dkc, dvc = (extra.chunk_id, extra.d_chunk_keys, extra.d_chunk_values) if chunk_grads else (times, dk, dv)
    tail_slot, dkt, dvt = (extra.tail_slot, extra.d_tail_keys, extra.d_tail_values) if tail_grads else (times, dk, dv)
    scores, score_rows = (dk, 0) if store is None else (store.scores[0], store.rows)  # dk: unread there
    kernel = _local_dkdv_kernel if store is None else _local_dkdv_stored_kernel
    kernel[lambda meta: (triton.cdiv(rows, meta["BLOCK_N"]), batch * heads)](
        q, k, v, grad_out, lse, delta, delta if gate is None else gate, times, flags, clock, scales32, dk, dv, chunk_id, dkc, dvc, dkc.shape[2],
        tail_slot, dkt, dvt, dkt.shape[2], scores, score_rows, sm_scale, length, rows, *head_strides(q, k, v, dk, dv),
        *head_strides(grad_out), CHUNK_GRADS=chunk_grads, TAIL_GRADS=tail_grads, GATED=gate is not None, STORE_SCORES=store is not None,
        SCORE_BLOCK=score_block(window), **_launch(q, length, window, weekend_rule))


def local_query_gradients(q: Tensor, k: Tensor, v: Tensor, k_profile: Tensor, v_profile: Tensor, grad_out: Tensor, out: Tensor,
                          lse: Tensor, times: Tensor, flags: Tensor, clock: Tensor, scales32: Tensor, dq: Tensor, dk_profile: Tensor,
                          dv_profile: Tensor, dscales: Tensor, length: int, window: int, weekend_rule: int, sm_scale: float,
                          keyed: Sequence[KeyList] = (), gates: Optional[Tensor] = None, d_gates: Optional[Tensor] = None,
                          first_row: int = 0) -> List[Tensor]:
    """Write dq; add into the float32 profile and scales' gradients (an autotuning launch zeroes them
    first: give each kernel its own `dscales`). With `keyed` (the global and transition lists, their
    outputs in `out`'s layout) dq holds their share too. Returns the row terms rowsum(dO·O) `[B, H, T]`
    of the local branch and of each keyed list, which the dK/dV kernels, run next, read. q, k, v and
    dq in one layout; `times`, `flags` and `clock` the queries' words (`FusedTimes.query_*`). With
    `gates` (float32 `[3, B, H, T]`: global, transition, local), every dO given is the gradient of
    the branches' gated sum, and `d_gates` (same shape) receives the gates' gradient. Only the rows
    from `first_row` on are computed (dq's other rows are left as they are)."""
    if len(keyed) not in (0, 2):
        raise ValueError(f"the local dQ kernel takes no key list or two, got {len(keyed)}")
    if (gates is not None) and (not keyed or d_gates is None):
        raise ValueError("a gated sum needs the two key lists and a buffer for the gates' gradient")
    batch, heads, rows, _ = q.shape
    deltas = [torch.empty(q.shape[:3], device=q.device, dtype=torch.float32) for _ in range(1 + len(keyed))]
    lists = list(keyed) or [KeyList(k, v, KeyTimes(times, times, flags, clock), out, grad_out, lse)]  # an unread stand-in
    _local_dq_kernel[lambda meta: (triton.cdiv(rows - first_row, meta["BLOCK_M"]), batch * heads)](
        q, k, v, k_profile, v_profile, grad_out, out, lse, deltas[0], times, flags, clock, scales32, dq, dk_profile, dv_profile, dscales,
        *list_arguments(lists, deltas[1:] or deltas), deltas[0] if gates is None else gates, deltas[0] if d_gates is None else d_gates,
        sm_scale, length, rows, lists[0].k.shape[2], lists[-1].k.shape[2], first_row, *head_strides(q, k, v, dq),
        *head_strides(out, *(entry.out for entry in keyed)), *head_strides(grad_out), *head_strides(lists[0].grad_out),
        *head_strides(lists[-1].grad_out), KEYED=bool(keyed), GATED=gates is not None, KEY_BLOCK=KEY_TILE,
        **_launch(q, length, window, weekend_rule))
    return deltas


class _LocalHistory(torch.autograd.Function):
    @staticmethod
    def forward(ctx, q: Tensor, k: Tensor, v: Tensor, k_profile: Tensor, v_profile: Tensor, scales: Tensor, times: Tensor, flags: Tensor,
                clock: Tensor, window: int, weekend_rule: int, sm_scale: float):
        batch, heads, length, _ = q.shape
        out = torch.empty_like(q)
        lse = torch.empty(batch, heads, length, device=q.device, dtype=torch.float32)
        scales32 = scales.float().contiguous()
        local_forward(q, k, v, k_profile, v_profile, times, flags, clock, scales32, out, lse, length, window, weekend_rule, sm_scale)
        ctx.save_for_backward(q, k, v, k_profile, v_profile, out, lse, scales32, times, flags, clock)
        ctx.window, ctx.weekend_rule, ctx.sm_scale, ctx.scales_dtype = window, weekend_rule, sm_scale, scales.dtype
        return out

    @staticmethod
    def backward(ctx, grad_out: Tensor):
        q, k, v, k_profile, v_profile, out, lse, scales32, times, flags, clock = ctx.saved_tensors
        length = q.shape[2]
        grad_out = grad_out.contiguous()
        dq, dk, dv = torch.empty_like(q), torch.empty_like(k), torch.empty_like(v)
        dk_profile = torch.zeros(k_profile.shape, device=q.device, dtype=torch.float32)
        dv_profile = torch.zeros_like(dk_profile)
        dscales = torch.zeros_like(scales32)
        shape = (length, ctx.window, ctx.weekend_rule, ctx.sm_scale)
        delta, = local_query_gradients(q, k, v, k_profile, v_profile, grad_out, out, lse, times, flags, clock, scales32, dq, dk_profile,
                                       dv_profile, dscales, *shape)
        local_key_gradients(q, k, v, grad_out, lse, delta, times, flags, clock, scales32, dk, dv, *shape)
        return (dq, dk, dv, dk_profile.to(k_profile.dtype), dv_profile.to(v_profile.dtype), dscales.to(ctx.scales_dtype),
                None, None, None, None, None, None)


@torch.compiler.disable  # train.compile: inductor's build of these autotuned kernels fails; they run as they are
def local_history_prepared(q: Tensor, k: Tensor, v: Tensor, k_profile: Tensor, v_profile: Tensor, times: Tensor, flags: Tensor,
                           clock: Tensor, window: int, scales: Tensor, weekend_rule: int) -> Tensor:
    """`local_history_triton` with the batch's int32 times, flag words (bit 1 real, bit 2 weekend) and
    clock words already built (`recsys.ops.evo_attention.FusedTimes`)."""
    if not q.is_cuda and not INTERPRETED:
        raise RuntimeError("the fused local kernel runs on CUDA (on the CPU only under TRITON_INTERPRET=1); use attention 'structural'")
    dim = q.shape[-1]
    padded = padded_head_dim(dim)
    q, k, v, k_profile, v_profile = (pad_head_dim(x.to(q.dtype), padded) for x in (q, k, v, k_profile, v_profile))
    out = _LocalHistory.apply(q, k, v, k_profile, v_profile, scales, times, flags, clock, window, weekend_rule, 1.0 / math.sqrt(dim))
    return out[..., :dim]


def local_history_triton(q: Tensor, k: Tensor, v: Tensor, k_profile: Tensor, v_profile: Tensor, times: Tensor, real: Tensor,
                         window: int, scales: Tensor, utc_offset: int, weekend_rule: int) -> Tensor:
    """The local branch's history queries: q, k, v `[B, H, L, D]`, profile k/v `[B, H, 1, D]`, times
    `[B, L]` int64 (time-sorted, left-padded), real `[B, L]` bool, scales `[3, H]` -> `[B, H, L, D]`,
    equal to `local_branch` on the history positions. Builds the time words as `fused_times` does."""
    from recsys.ops.evo_attention import clock_words, earliest_real_time, flag_words, relative_int32

    relative = relative_int32(times, real, earliest_real_time(times, real))
    return local_history_prepared(q, k, v, k_profile, v_profile, relative, flag_words(real, times, utc_offset), clock_words(relative),
                                  window, scales, weekend_rule)
