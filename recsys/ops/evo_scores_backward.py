"""SparseCTR's three-branch backward from stored score gradients: the dK/dV kernels keep the dS they
compute, and dQ becomes a banded matmul over it, so no kernel computes a score, its bias or its
exponent a second time.

The recomputing backward (`evo_branches_triton`, the default) runs the dQ kernel first: it builds
every (query, key) pair's score, bias and dP, and the dK/dV kernels then build them all again. That
dQ kernel took 514 of the node's 1,230 µs at n = 8,192 on the H200, and the kernels are bound by the
instructions they issue per pair (benchmarks/RESULTS.md, sessions 11 and 16). Here:

1. `row_terms`: one pass over the rows writes each branch's row term rowsum(dO·O) (and, gated, the
   gates' gradient), the profile key's dS per row and its key's and value's gradients: what the dQ
   kernel used to hand the dK/dV kernels, which now run first.
2. The keyed and local dK/dV kernels (`STORE_SCORES`) also store their dS tiles in q's dtype (the
   recomputing dQ kernel rounds dS to it before its matmul too). The keyed kernel also sums its
   pairs' share of the temporal scales' gradient.
3. `window_scale_gradients`: the local pairs' share, from the stored dS. The terms depend on the
   times only, so one program builds them for a row block's window band once and sums every head's
   dS against them, reading only the band (half the stored bytes). Summed in the local dK/dV kernel
   instead, the per-pair terms took it from 309 to 447 µs (its registers, not its instructions: 4
   programs per SM instead of 6); in the dQ pass, per head over both blocks' keys, from 104 to 272
   (H200, session 17, benchmarks/RESULTS.md). Here it takes 42 µs at n = 8,192 (session 27), on a side stream
   (`SideStream`) beside the dQ pass, which hides 13 of them (session 18).
4. `query_gradients_from_scores`: per block of `SCORE_BLOCK` history rows, dQ = dS_local ·
   K[previous and own block] + Σ_lists dS_list · K_list + dS_profile ⊗ k_profile, two dense matmuls.
   Stored entries no dK/dV program wrote (pairs outside the window, or before a list key's first
   viewer) are masked by the visibility rules, so the buffers need no zero fill.
5. The rows past the last whole block (the history's remainder, and the candidates, whose window is
   not banded) go through the recomputing dQ kernel (`local_query_gradients(first_row=...)`): it
   sums those rows' share of the scales' gradient, both branches', and writes the profile key's
   gradients into scratch (the row-term pass summed them for every row).

The stored local dS is `[B·H, rows, 2·SCORE_BLOCK]`: row i's column c is key
`(i // SCORE_BLOCK - 1)·SCORE_BLOCK + c`, which covers its window (`evo_local_triton.score_block`).

Equal to the recomputing backward (the tests compare every gradient under Triton's interpreter; on
the H200 `gpu_suite.py --parts correctness` passes with it). At n = 8,192 on the H200 the node takes
1.09 against 1.24 ms recomputing in the same run (session 18), and a training step at L = 4,096 runs
as fast as with the recomputing backward. It is the default; `RECSYS_EVO_BACKWARD=recompute` switches back.
"""

from __future__ import annotations

from typing import Dict, List, Optional, Sequence, Tuple

import torch
import triton
import triton.language as tl
from torch import Tensor

from recsys.ops.evo_bias_triton import banded_terms, weekend_coefficients, weekend_value
from recsys.ops.evo_keyed_triton import KEY_TILE, KeyList, ScoreStore, first_visible_query
from recsys.ops.evo_local_triton import score_block
from recsys.ops.triton_tiles import (INTERPRETED, backward_row_stats, branch_row_term, head_base, head_strides, load_tile,
                                     profile_score_gradients, program_rows, store_tile, tile_configs)

# One configuration each (an autotuner of one candidate runs no benchmark; benchmarks/kernel_resources.py
# reads the tables). The row-term pass is bandwidth-bound: one 64-row tile of each operand per program,
# two warps (H200 tile sweep, session 17: 124 us against 140 on four warps and 168 on eight).
# The dQ pass runs a 64 x 128 by 128 x 64 dot per program on four warps, one stage (H200 sweeps,
# sessions 17-18: 103.7-104.5 us against 108.5-109.6 at two stages).
_ROW_TILES = tile_configs([(64, 64, 2, 1)])
_DQ_TILES = [triton.Config({}, num_warps=1 if INTERPRETED else 4, num_stages=1)]
# The window scale sums: 4 rows of every head's band per program on one warp, so no sum crosses warps
# (H200 sweeps, session 18: 51.7 us, 57.5 for 8 rows, 90 for 16, 132-241 on 2-8 warps; session 27,
# with the sums over rows first: 41.9 us, 47.0 for 8 rows, 51.2 for 16, 55.6 for 2, 63-66 on 2 warps).
_SCALE_SUM_TILES = tile_configs([(4, 64, 1, 1)])


@triton.autotune(configs=_ROW_TILES, key=["ROWS", "D", "GATED", "SHARED_DO"], reset_to_zero=["DKP", "DVP"])
@triton.jit
def _row_terms_kernel(Q, KP, VP, DO, O, LSE, DELTA, DO0, O0, DELTA0, DO1, O1, DELTA1, GATES, DGATES, DKP, DVP, DSP, sm_scale,
                      ROWS, QB, QH, QT, OB, OH, OT, GB, GH, GT, GB0, GH0, GT0, GB1, GH1, GT1, H: tl.constexpr, D: tl.constexpr,
                      GATED: tl.constexpr, SHARED_DO: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr):
    """Row terms of the local (DO, O, DELTA; LSE for the profile key), global (..0) and transition (..1) branches, the
    profile key's dS per row into DSP `[B·H, ROWS]` and its key's and value's gradients. GATED: every
    dO is the gated sum's gradient, GATES `[3, B·H, ROWS]` (global, transition, local) and DGATES
    their gradient, written here. SHARED_DO: the three dO are one tensor (the gated sum's gradient, or
    one given to the three outputs), loaded once: 5 tiles per program instead of 7. (BLOCK_N: unused,
    the tile tables' second size.)"""
    b, h, pid_bh, start_m, offs_m, rows = program_rows(BLOCK_M, H, ROWS)
    offs_d = tl.arange(0, D)
    row_base = pid_bh.to(tl.int64) * ROWS
    branch_rows = tl.num_programs(1).to(tl.int64) * ROWS  # one branch's gates
    out_base = head_base(b, h, OB, OH)
    do_local = load_tile(DO, head_base(b, h, GB, GH), offs_m, offs_d, GT, rows)
    if SHARED_DO:  # one dO for the three branches (DO0 and DO1 are DO): loaded once
        do_global, do_transition = do_local, do_local
    else:
        do_global = load_tile(DO0, head_base(b, h, GB0, GH0), offs_m, offs_d, GT0, rows)
        do_transition = load_tile(DO1, head_base(b, h, GB1, GH1), offs_m, offs_d, GT1, rows)
    branch_row_term(do_global, O0, out_base, OT, DELTA0, GATES, DGATES, row_base, offs_m, offs_d, rows, GATED)
    branch_row_term(do_transition, O1, out_base, OT, DELTA1, GATES + branch_rows, DGATES + branch_rows, row_base, offs_m, offs_d, rows, GATED)
    q = load_tile(Q, head_base(b, h, QB, QH), offs_m, offs_d, QT, rows)
    # the local dO unscaled: the profile's sums take the gates per row (`profile_score_gradients`)
    delta, gate = branch_row_term(do_local, O, out_base, OT, DELTA, GATES + 2 * branch_rows, DGATES + 2 * branch_rows, row_base, offs_m,
                                  offs_d, rows, GATED)
    ds, _ = profile_score_gradients(q, do_local, backward_row_stats(LSE, row_base, offs_m, rows), delta, gate, KP, VP, DKP, DVP, pid_bh,
                                    offs_d, sm_scale, D)
    tl.store(DSP + row_base + offs_m, ds, mask=rows)


@triton.autotune(configs=_SCALE_SUM_TILES, key=["SCORE_ROWS", "H", "WINDOW", "SCORE_BLOCK"])
@triton.jit
def _window_scale_sums_kernel(DS, T, FLAGS, CLOCK, PARTIAL, SLOTS, ROWS, SCORE_ROWS, H: tl.constexpr, WINDOW: tl.constexpr,
                              WEEKEND_BOTH: tl.constexpr, SCORE_BLOCK: tl.constexpr, BAND: tl.constexpr, FAST_MATH: tl.constexpr,
                              BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr):
    """One block of BLOCK_M stored history rows of one batch row, every head: the sums of the stored
    local dS times each temporal term over the window band (row i's keys i - WINDOW + 1 .. i, BAND
    columns, the real ones), into PARTIAL `[3, H, SLOTS]` (slot b·programs + block; unused slots stay
    0). The head loop is unrolled so that every head's band load can be in flight at once (rolled, on four warps: 162 us at n = 8,192 on the
    H200). (BLOCK_N: unused, the tile tables' second size.)"""
    pid_m, b = tl.program_id(0), tl.program_id(1)
    offs_m = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    band = tl.arange(0, BAND)
    keys = offs_m[:, None] - (WINDOW - 1) + band[None, :]
    T_row, FLAGS_row, CLOCK_row = T + b * ROWS, FLAGS + b * ROWS, CLOCK + b * 2 * ROWS
    rows = offs_m < SCORE_ROWS
    inside = rows[:, None] & (band < WINDOW)[None, :] & (keys >= 0)
    flags_j = tl.load(FLAGS_row + keys, mask=inside, other=0)
    visible = inside & ((flags_j & 1) != 0)  # real keys; every key of a stored row's window is a history key
    gamma_i, delta_i = weekend_coefficients(tl.load(FLAGS_row + offs_m, mask=rows, other=0), WEEKEND_BOTH)
    b_time, b_hour, b_weekend = banded_terms(tl.load(T_row + offs_m, mask=rows, other=0), tl.load(CLOCK_row + offs_m, mask=rows, other=0.0),
                                             tl.load(CLOCK_row + ROWS + offs_m, mask=rows, other=1.0), gamma_i, delta_i,
                                             tl.load(T_row + keys, mask=visible, other=0), tl.load(CLOCK_row + keys, mask=visible, other=0.0),
                                             tl.load(CLOCK_row + ROWS + keys, mask=visible, other=1.0), weekend_value(flags_j), FAST_MATH)
    # int32 offsets within a (batch, head)'s rows: row i's column 0 is key (i // SCORE_BLOCK - 1)·SCORE_BLOCK
    offsets = offs_m[:, None] * (2 * SCORE_BLOCK) + keys - (offs_m // SCORE_BLOCK - 1)[:, None] * SCORE_BLOCK
    # term-major: the sum over the slots then runs along unit-strided rows (over `[slots, 3, H]`, the
    # outer dimension of 24 columns, it took about 8 us at n = 8,192)
    partial = PARTIAL + b * tl.num_programs(0) + pid_m
    # Each sum runs over the rows first: a thread holds its columns of all BLOCK_M rows, so that part
    # needs no shuffle, and the warp reduces one value per (head, term). Rows last cost a warp
    # reduction per row: 2,088 against 1,352 instructions offline, 55 against 42 us (session 27).
    for h in tl.static_range(H):
        ds = tl.load(DS + (b * H + h).to(tl.int64) * SCORE_ROWS * (2 * SCORE_BLOCK) + offsets, mask=visible, other=0.0).to(tl.float32)
        tl.store(partial + h * SLOTS, tl.sum(tl.sum(ds * b_time, 0), 0))
        tl.store(partial + (H + h) * SLOTS, tl.sum(tl.sum(ds * b_hour, 0), 0))
        tl.store(partial + (2 * H + h) * SLOTS, tl.sum(tl.sum(ds * b_weekend, 0), 0))


@triton.jit
def _list_share(acc, DSK, K, KEND, KFLAGS, NK, b, pid_bh, offs_m, offs_d, SCORE_ROWS, D: tl.constexpr, KEY_BLOCK: tl.constexpr,
                PRECISION: tl.constexpr):
    """acc + dS_list · K_list for one key list; history rows see a key from its chunk's end on."""
    key_base = pid_bh.to(tl.int64) * NK * D
    for start_n in range(0, NK, KEY_BLOCK):
        offs_n = start_n + tl.arange(0, KEY_BLOCK)
        in_range = offs_n < NK
        first_query_j, _ = first_visible_query(KEND + b * NK, KFLAGS + b * NK, offs_n, NK)
        ds = tl.load(DSK + (pid_bh.to(tl.int64) * SCORE_ROWS + offs_m)[:, None] * NK + offs_n[None, :], mask=in_range[None, :], other=0.0)
        ds = tl.where(first_query_j[None, :] <= offs_m[:, None], ds.to(tl.float32), 0.0)
        k = load_tile(K, key_base, offs_n, offs_d, D, in_range)
        acc = tl.dot(ds.to(k.dtype), k, acc, input_precision=PRECISION)
    return acc


@triton.autotune(configs=_DQ_TILES, key=["SCORE_ROWS", "NK0", "NK1", "D", "WINDOW", "SCORE_BLOCK"])
@triton.jit
def _dq_from_scores_kernel(DS, DSP, K, KP, DSK0, K0, KEND0, KFLAGS0, DSK1, K1, KEND1, KFLAGS1, DQ, sm_scale, ROWS, SCORE_ROWS, NK0, NK1,
                           QB, QH, QT, H: tl.constexpr, D: tl.constexpr, WINDOW: tl.constexpr, SCORE_BLOCK: tl.constexpr,
                           KEY_BLOCK: tl.constexpr, PRECISION: tl.constexpr):
    """dQ of one SCORE_BLOCK-row block of history rows (all below SCORE_ROWS) from the stored dS; k and
    dq read and written through the packed projection's strides (QB, QH, QT)."""
    b, h, pid_bh, start_m, offs_m, _ = program_rows(SCORE_BLOCK, H, SCORE_ROWS)
    offs_d = tl.arange(0, D)
    base = head_base(b, h, QB, QH)
    key_rows = start_m - SCORE_BLOCK + tl.arange(0, 2 * SCORE_BLOCK)  # the previous block's keys, then the block's own
    ds = tl.load(DS + (pid_bh.to(tl.int64) * SCORE_ROWS + offs_m)[:, None] * (2 * SCORE_BLOCK) + tl.arange(0, 2 * SCORE_BLOCK)[None, :])
    gap = offs_m[:, None] - key_rows[None, :]
    # the window (entries outside it, and before the first key, were never written)
    ds = tl.where((gap >= 0) & (gap < WINDOW) & (key_rows >= 0)[None, :], ds.to(tl.float32), 0.0)
    k = load_tile(K, base, key_rows, offs_d, QT, key_rows >= 0)
    # the profile key's share starts the accumulator: its loads go out with the window's, not after the lists
    ds_profile = tl.load(DSP + pid_bh.to(tl.int64) * ROWS + offs_m)
    kp = tl.load(KP + pid_bh.to(tl.int64) * D + offs_d).to(tl.float32)
    acc = tl.dot(ds.to(k.dtype), k, ds_profile[:, None] * kp[None, :], input_precision=PRECISION)
    acc = _list_share(acc, DSK0, K0, KEND0, KFLAGS0, NK0, b, pid_bh, offs_m, offs_d, SCORE_ROWS, D, KEY_BLOCK, PRECISION)
    acc = _list_share(acc, DSK1, K1, KEND1, KFLAGS1, NK1, b, pid_bh, offs_m, offs_d, SCORE_ROWS, D, KEY_BLOCK, PRECISION)
    store_tile(DQ, base, offs_m, offs_d, QT, offs_m < SCORE_ROWS, acc * sm_scale)


def _precision(q: Tensor) -> str:
    return "ieee" if q.dtype == torch.float32 else "tf32"


def score_rows(length: int, window: int) -> int:
    """The history rows whose dQ comes from stored dS: the whole `score_block(window)`-row blocks."""
    return length // score_block(window) * score_block(window)


def _one_tensor(grads: Sequence[Tensor]) -> bool:
    """Whether the gradients are views of the same memory with the same strides (the gated sum's one
    gradient, or one tensor given to the three outputs), so one load serves the three branches."""
    first = grads[0]
    return all(g.data_ptr() == first.data_ptr() and g.stride() == first.stride() and g.shape == first.shape for g in grads[1:])


def row_terms(q: Tensor, k_profile: Tensor, v_profile: Tensor, grads: Sequence[Tensor], outputs: Sequence[Tensor], lses: Sequence[Tensor],
              sm_scale: float, dk_profile: Tensor, dv_profile: Tensor, gates: Tensor, d_gates: Tensor) -> Tuple[List[Tensor], Tensor]:
    """(the local, global and transition row terms `[B, H, T]`, the profile key's dS `[B, H, T]`), all
    float32; adds the profile key's and value's gradients into `dk_profile`, `dv_profile` (float32)
    and, with `gates` (float32 `[3, B, H, T]`, or empty), writes their gradient into `d_gates`.
    `grads`, `outputs` and `lses` in the node's order: global, transition, local."""
    batch, heads, rows, dim = q.shape
    deltas = [torch.empty(q.shape[:3], device=q.device, dtype=torch.float32) for _ in range(3)]
    ds_profile = torch.empty(q.shape[:3], device=q.device, dtype=torch.float32)
    gated = gates.numel() > 0
    branches = [(grads[2], outputs[2], lses[2], deltas[2])] + [(grads[index], outputs[index], deltas[index]) for index in (0, 1)]
    _row_terms_kernel[lambda meta: (triton.cdiv(rows, meta["BLOCK_M"]), batch * heads)](
        q, k_profile, v_profile, *[x for branch in branches for x in branch], gates if gated else deltas[0], d_gates if gated else deltas[0],
        dk_profile, dv_profile, ds_profile, sm_scale, rows, *head_strides(q), *head_strides(*outputs), *head_strides(grads[2]),
        *head_strides(grads[0]), *head_strides(grads[1]), H=heads, D=dim, GATED=gated, SHARED_DO=_one_tensor(grads))
    return [deltas[2], deltas[0], deltas[1]], ds_profile


def window_scale_gradients(local: ScoreStore, times: Tensor, flags: Tensor, clock: Tensor, heads: int, window: int,
                           weekend_rule: int) -> None:
    """Add the local pairs' share of the scales' gradient, rows `[0, local.rows)`, into
    `local.dscales`, from the dS the local dK/dV kernel stored; `times`, `flags`, `clock` the rows'
    words (`FusedTimes.query_*`). Deterministic: one partial sum per program and head, added here."""
    if local.rows == 0:
        return
    batch, rows = times.shape
    # sized for the smallest candidate tile; a larger one leaves the rest zero
    programs = triton.cdiv(local.rows, min(config.kwargs["BLOCK_M"] for config in _window_scale_sums_kernel.configs))
    partial = torch.zeros(3, heads, batch * programs, device=times.device, dtype=torch.float32)
    _window_scale_sums_kernel[lambda meta: (triton.cdiv(local.rows, meta["BLOCK_M"]), batch)](
        local.scores[0], times, flags, clock, partial, partial.shape[-1], rows, local.rows, H=heads, WINDOW=window,
        WEEKEND_BOTH=weekend_rule == 1, SCORE_BLOCK=score_block(window), BAND=triton.next_power_of_2(window), FAST_MATH=not INTERPRETED)
    local.dscales.add_(partial.sum(-1))


_SIDE_STREAMS: Dict[int, torch.cuda.Stream] = {}


class SideStream:
    """Kernels queued inside `with side:` start after the work queued so far on the caller's stream
    and run beside what it queues next, until `join()` makes it wait for them. Under CUDA graph
    capture that is a fork and a join in the graph (allocations on the side stream come from the
    graph's pool: it joined the capture). Off CUDA (Triton's interpreter) everything runs in order."""

    def __init__(self, device: torch.device) -> None:
        self.stream: Optional[torch.cuda.Stream] = None
        if device.type == "cuda":
            index = device.index if device.index is not None else torch.cuda.current_device()
            if index not in _SIDE_STREAMS:
                _SIDE_STREAMS[index] = torch.cuda.Stream(index)
            self.stream = _SIDE_STREAMS[index]
        self._context = None

    def __enter__(self) -> "SideStream":
        if self.stream is not None:
            self.stream.wait_stream(torch.cuda.current_stream(self.stream.device))
            self._context = torch.cuda.stream(self.stream)
            self._context.__enter__()
        return self

    def __exit__(self, *exc) -> None:
        if self._context is not None:
            self._context.__exit__(*exc)
            self._context = None

    def join(self) -> None:
        if self.stream is not None:
            torch.cuda.current_stream(self.stream.device).wait_stream(self.stream)


def score_stores(q: Tensor, key_counts: Sequence[int], length: int, window: int, dscales: Tensor) -> Tuple[ScoreStore, ScoreStore]:
    """Uninitialised dS buffers for the local dK/dV kernel and the keyed one (one per list), rows
    `[0, score_rows)`, both adding their share of the scales' gradient into the zeroed float32 `[3, H]`
    `dscales`. One buffer is safe only in this order: the keyed kernel adds first, as its autotuning
    run zeroes (`reset_to_zero`) what it adds into, and `window_scale_gradients` adds after it."""
    batch, heads = q.shape[:2]
    rows = score_rows(length, window)
    local = torch.empty(batch * heads, rows, 2 * score_block(window), device=q.device, dtype=q.dtype)
    keyed = [torch.empty(batch * heads, rows, count, device=q.device, dtype=q.dtype) for count in key_counts]
    return ScoreStore([local], rows, dscales), ScoreStore(keyed, rows, dscales)


def query_gradients_from_scores(q: Tensor, k: Tensor, k_profile: Tensor, dq: Tensor, local: ScoreStore, keyed: ScoreStore,
                                lists: Sequence[KeyList], ds_profile: Tensor, window: int, sm_scale: float) -> None:
    """Write dq's rows `[0, local.rows)` from the stored dS (`score_stores`, filled by the dK/dV
    kernels) and the profile key's dS (`row_terms`); q, k and dq in one layout."""
    batch, heads, rows, dim = q.shape
    block = score_block(window)
    if local.rows == 0:
        return
    key_lists = [(store, entry.k.contiguous(), entry.keys.end, entry.keys.flags) for store, entry in zip(keyed.scores, lists)]
    _dq_from_scores_kernel[(local.rows // block, batch * heads)](
        local.scores[0], ds_profile, k, k_profile, *[x for key_list in key_lists for x in key_list], dq, sm_scale, rows, local.rows,
        lists[0].k.shape[2], lists[1].k.shape[2], *head_strides(q, k, dq), H=heads, D=dim, WINDOW=window, SCORE_BLOCK=block,
        KEY_BLOCK=KEY_TILE, PRECISION=_precision(q))
