"""What the fused attention kernels (`cama_triton`, `evo_local_triton`) share: tile loads, the online
softmax step, the backward's per-row inputs, tile configurations, and the PyTorch side that merges
one extra always-visible key (CamA's context token, SparseCTR's profile token) through the
log-sum-exp the kernels return."""

from __future__ import annotations

import os
from typing import List, Tuple

import torch
import triton
import triton.language as tl
from torch import Tensor

INTERPRETED = os.environ.get("TRITON_INTERPRET") == "1"
# The memory order of the kernels' float atomic adds (gradient sums, read only after the kernel ends):
# none needed, and the default (acq_rel) fences the whole GPU around each add.
RELAXED: tl.constexpr = tl.constexpr("relaxed")
LOG2E = 1.4426950408889634


def tile_configs(shapes: List[Tuple[int, ...]], interpreted: Tuple[int, int] = (16, 16)) -> List[triton.Config]:
    """(BLOCK_M, BLOCK_N, warps, stages[, register cap]) candidates tuned on the GPU; one small tile
    when interpreted."""
    if INTERPRETED:
        return [triton.Config({"BLOCK_M": interpreted[0], "BLOCK_N": interpreted[1]}, num_warps=1)]
    return [triton.Config({"BLOCK_M": m, "BLOCK_N": n}, num_warps=w, num_stages=st, maxnreg=cap[0] if cap else None)
            for m, n, w, st, *cap in shapes]


@triton.jit
def program_block(BLOCK: tl.constexpr, H: tl.constexpr, N, D: tl.constexpr):
    """Grid (blocks along N, batch x heads) over a dense `[B, H, N, D]` tensor: batch row, head, the
    flat (batch, head) index, the block's first position, its positions, the head-dim offsets, which
    positions exist, and the (b, h) offset."""
    b, h, pid_bh, start, offs, valid = program_rows(BLOCK, H, N)
    return b, h, pid_bh, start, offs, tl.arange(0, D), valid, pid_bh.to(tl.int64) * N * D


@triton.jit
def program_rows(BLOCK: tl.constexpr, H: tl.constexpr, N):
    """`program_block` for kernels that address their operands through strides (`head_base`): batch
    row, head, the flat (batch, head) index, the block's first position, its positions and which exist."""
    pid_bh = tl.program_id(1)
    start = tl.program_id(0) * BLOCK
    offs = start + tl.arange(0, BLOCK)
    return pid_bh // H, pid_bh % H, pid_bh, start, offs, offs < N


@triton.jit
def head_base(b, h, STRIDE_B, STRIDE_H):
    """Offset of a (batch, head) row's first position in a `[B, H, N, D]` view with these strides."""
    return b.to(tl.int64) * STRIDE_B + h.to(tl.int64) * STRIDE_H


@triton.jit
def load_tile(PTR, base, offs, offs_d, STRIDE, valid):
    """Rows `offs` (STRIDE elements apart; the head dim unit-strided) of a `[.., N, D]` block starting
    at `base`; zeros where not `valid`. A dense block has STRIDE = D; a head of a packed `[B, N, 3, H,
    D]` projection has 3·H·D, so the kernels read q, k and v where the projection wrote them."""
    return tl.load(PTR + base + offs[:, None] * STRIDE + offs_d[None, :], mask=valid[:, None], other=0.0)


@triton.jit
def store_tile(PTR, base, offs, offs_d, STRIDE, valid, value):
    tl.store(PTR + base + offs[:, None] * STRIDE + offs_d[None, :], value.to(PTR.dtype.element_ty), mask=valid[:, None])


@triton.jit
def store_scores(DS, row_offsets, col_offsets, rows, cols, ds):
    """A `[BM, BN]` tile of score gradients into a row-major buffer at per-row and per-column offsets
    (the stored-score backward), in the buffer's dtype; only where `rows` and `cols` hold."""
    tl.store(DS + row_offsets[:, None] + col_offsets[None, :], ds.to(DS.dtype.element_ty), mask=rows[:, None] & cols[None, :])


@triton.jit
def online_softmax_step(acc, l_i, m_i, scores, v, PRECISION: tl.constexpr):
    """One key tile of the forward: `scores` in log2 units, -inf where a key is not visible."""
    m_new = tl.maximum(m_i, tl.max(scores, 1))
    m_safe = tl.where(m_new == float("-inf"), 0.0, m_new)
    p = tl.exp2(scores - m_safe[:, None])
    alpha = tl.exp2(m_i - m_safe)
    l_i = l_i * alpha + tl.sum(p, 1)
    acc = acc * alpha[:, None] + tl.dot(p.to(v.dtype), v, input_precision=PRECISION)
    return acc, l_i, m_new


# A row's softmax sum past this (exp2 overflows float32 at 2^128) means a key's score went too far above
# the row's fixed reference (`fixed_reference_step`): the row's program recomputes with a running maximum.
FIXED_REFERENCE_LIMIT = tl.constexpr(2.0**100)


@triton.jit
def fixed_reference_step(acc, l_i, scores, v, PRECISION: tl.constexpr):
    """One key tile of the forward against a fixed per-row reference: `scores` in log2 units with the
    reference already subtracted (-inf where a key is not visible). No running maximum, so no row
    maximum per tile and no rescaling of the accumulator and the sum. The caller checks the sums
    against FIXED_REFERENCE_LIMIT at the end (a score above the reference by more than about 100 in
    log2 units would overflow) and recomputes with `online_softmax_step` where one does."""
    p = tl.exp2(scores)
    return tl.dot(p.to(v.dtype), v, acc, input_precision=PRECISION), l_i + tl.sum(p, 1)


@triton.jit
def finish_rows(acc, l_i, m_i):
    """Normalised output and the natural log-sum-exp (-inf for a row that saw no key)."""
    has_key = l_i > 0
    out = acc / tl.where(has_key, l_i, 1.0)[:, None]
    lse = tl.where(has_key, (m_i + tl.log2(tl.where(has_key, l_i, 1.0))) / 1.4426950408889634, float("-inf"))
    return out, lse


@triton.jit
def backward_row_stats(LSE, row_base, offs_m, rows):
    """The log-sum-exps of a tile's rows in log2 units, +inf for rows without keys or past the end."""
    lse = tl.load(LSE + row_base + offs_m, mask=rows, other=float("inf"))
    return tl.where(lse == float("-inf"), float("inf"), lse) * 1.4426950408889634


@triton.jit
def load_backward_rows(Q, q_base, q_stride, DO, do_base, do_stride, LSE, DELTA, row_base, offs_m, offs_d, rows):
    """q, dO (each at its base and row stride), the log-sum-exp in log2 units (+inf for rows without
    keys or past the end, so their probabilities are 0) and the row term rowsum(dO·O) - dLSE (dense
    `[B·H, N]` float32 rows at `row_base`)."""
    q = load_tile(Q, q_base, offs_m, offs_d, q_stride, rows)
    do = load_tile(DO, do_base, offs_m, offs_d, do_stride, rows)
    delta = tl.load(DELTA + row_base + offs_m, mask=rows, other=0.0)
    return q, do, backward_row_stats(LSE, row_base, offs_m, rows), delta


@triton.jit
def row_gates(GATE, row_base, offs_m, rows, GATED: tl.constexpr):
    """A branch's gates `[BM]` of a query tile from its `[B·H, N]` float32 gates at `row_base` where
    the node returns the branches' gated sum (SparseCTR's fusion; `accumulate_key_gradients` applies
    them), else an unread 1.0."""
    if GATED:
        return tl.load(GATE + row_base + offs_m, mask=rows, other=0.0)
    else:
        return 1.0


@triton.jit
def output_backward_rows(DO, do_base, do_stride, O, o_base, o_stride, LSE, DELTA, GATE, DGATE, row_base, offs_m, offs_d, rows,
                         GATED: tl.constexpr):
    """A dQ kernel's per-output inputs: dO, the log-sum-exp in log2 units and the row term
    rowsum(dO·O), computed from the dO it loads anyway and stored for the dK/dV kernel, instead of a
    separate pass reading dO and O again (`backward_row_term`). GATED: `DO` is the gradient of the
    gated sum, so the branch's dO is g·dO, its row term g·rowsum(dO·O),
    and rowsum(dO·O) is the gate's gradient, stored into `DGATE`."""
    do = load_tile(DO, do_base, offs_m, offs_d, do_stride, rows)
    return output_row_terms(do, O, o_base, o_stride, LSE, DELTA, GATE, DGATE, row_base, offs_m, offs_d, rows, GATED)


@triton.jit
def output_row_terms(do, O, o_base, o_stride, LSE, DELTA, GATE, DGATE, row_base, offs_m, offs_d, rows, GATED: tl.constexpr):
    """`output_backward_rows` for a dO tile already loaded: where the branches share one dO (the
    gated sum's gradient, or one tensor given to all three outputs) the row-term pass loads it once."""
    delta, gate = branch_row_term(do, O, o_base, o_stride, DELTA, GATE, DGATE, row_base, offs_m, offs_d, rows, GATED)
    if GATED:  # once per program here; the dK/dV kernels, which load dO per query tile, scale P and dP instead
        do = (do.to(tl.float32) * gate[:, None]).to(do.dtype)
    return do, backward_row_stats(LSE, row_base, offs_m, rows), delta


@triton.jit
def branch_row_term(do, O, o_base, o_stride, DELTA, GATE, DGATE, row_base, offs_m, offs_d, rows, GATED: tl.constexpr):
    """A branch's row term rowsum(dO·O) `[BM]`, stored into DELTA, and its gates (`row_gates`). GATED:
    `do` is the gated sum's gradient, rowsum(dO·O) the gate's gradient (stored into DGATE) and the
    branch's row term g·rowsum(dO·O)."""
    out = load_tile(O, o_base, offs_m, offs_d, o_stride, rows)
    delta = tl.sum(do.to(tl.float32) * out.to(tl.float32), 1)
    gate = row_gates(GATE, row_base, offs_m, rows, GATED)
    if GATED:
        tl.store(DGATE + row_base + offs_m, delta, mask=rows)
        delta = delta * gate
    tl.store(DELTA + row_base + offs_m, delta, mask=rows)
    return delta, gate


@triton.jit
def query_backward_rows(Q, q_base, q_stride, DO, do_base, do_stride, O, o_base, o_stride, LSE, DELTA, GATE, DGATE, row_base, offs_m, offs_d,
                        rows, GATED: tl.constexpr):
    """`load_backward_rows` for a dQ kernel that runs before its dK/dV kernel (`output_backward_rows`)."""
    q = load_tile(Q, q_base, offs_m, offs_d, q_stride, rows)
    do, lse, delta = output_backward_rows(DO, do_base, do_stride, O, o_base, o_stride, LSE, DELTA, GATE, DGATE, row_base, offs_m, offs_d, rows,
                                          GATED)
    return q, do, lse, delta


@triton.jit
def profile_key_start(q, KP, VP, pid_bh, offs_d, sm_scale, BLOCK_M: tl.constexpr, D: tl.constexpr):
    """The online softmax state `(acc, l, m)` after one always-visible key with bias 0, the same
    `[D]` key/value for every query of a (batch, head) row (SparseCTR's profile token): every row
    then has a key, so no row needs the empty-row case."""
    kp = tl.load(KP + pid_bh.to(tl.int64) * D + offs_d).to(tl.float32)
    return profile_value_start(VP, pid_bh, offs_d, tl.sum(q.to(tl.float32) * kp[None, :], 1) * (sm_scale * 1.4426950408889634), BLOCK_M, D)


@triton.jit
def profile_value_start(VP, pid_bh, offs_d, profile_scores, BLOCK_M: tl.constexpr, D: tl.constexpr):
    """`profile_key_start` from the rows' profile scores (log2 units) already computed: the state
    again without q (a recomputing forward keeps the scores, not the q tile's registers)."""
    vp = tl.load(VP + pid_bh.to(tl.int64) * D + offs_d).to(tl.float32)
    return tl.zeros([BLOCK_M, D], dtype=tl.float32) + vp[None, :], tl.full([BLOCK_M], 1.0, dtype=tl.float32), profile_scores


@triton.jit
def profile_score_gradients(q, do, lse, delta_row, gate, KP, VP, DKP, DVP, pid_bh, offs_d, sm_scale, D: tl.constexpr):
    """The profile key's score gradient dS `[BM]` of a query tile (natural units) and the tile's sums
    into the profile key's and value's float32 gradients (atomics: every query tile of the row adds
    to them). `lse` in log2 units, +inf for rows past the end. `gate` `[BM]` (or 1.0): the local
    branch's dO is gate·`do`, applied to the rows' dP and P rather than to the `[BM, D]` tile (a
    float32 round trip of the tile and a conversion per element otherwise)."""
    kp = tl.load(KP + pid_bh.to(tl.int64) * D + offs_d).to(tl.float32)
    vp = tl.load(VP + pid_bh.to(tl.int64) * D + offs_d).to(tl.float32)
    q32, do32 = q.to(tl.float32), do.to(tl.float32)
    p = tl.exp2(tl.sum(q32 * kp[None, :], 1) * (sm_scale * 1.4426950408889634) - lse)
    ds = p * (tl.sum(do32 * vp[None, :], 1) * gate - delta_row)
    # relaxed: the sums need no ordering, and the default acq_rel put a GPU-wide fence and an L1
    # invalidation around every add (a fifth of the row-term pass's stall samples; 107 -> 99 us at
    # n = 8,192, benchmarks/RESULTS.md session 20)
    tl.atomic_add(DKP + pid_bh.to(tl.int64) * D + offs_d, tl.sum(ds[:, None] * q32, 0) * sm_scale, sem=RELAXED)
    tl.atomic_add(DVP + pid_bh.to(tl.int64) * D + offs_d, tl.sum((p * gate)[:, None] * do32, 0), sem=RELAXED)
    return ds, kp


@triton.jit
def profile_key_gradients(dq, q, do, lse, delta_row, KP, VP, DKP, DVP, pid_bh, offs_d, sm_scale, D: tl.constexpr):
    """dQ's share of the profile key (dq unscaled, as the dQ kernels accumulate it), and
    `profile_score_gradients`' sums into the profile key's and value's gradients."""
    ds, kp = profile_score_gradients(q, do, lse, delta_row, 1.0, KP, VP, DKP, DVP, pid_bh, offs_d, sm_scale, D)
    return dq + ds[:, None] * kp[None, :]


@triton.jit
def _row_term_kernel(DO, O, DLSE, DELTA, ROWS, D: tl.constexpr, HAS_DLSE: tl.constexpr, BLOCK: tl.constexpr):
    offs = tl.program_id(0).to(tl.int64) * BLOCK + tl.arange(0, BLOCK)
    rows = offs < ROWS
    offs_d = tl.arange(0, D)
    do = tl.load(DO + offs[:, None] * D + offs_d[None, :], mask=rows[:, None], other=0.0).to(tl.float32)
    out = tl.load(O + offs[:, None] * D + offs_d[None, :], mask=rows[:, None], other=0.0).to(tl.float32)
    term = tl.sum(do * out, 1)
    if HAS_DLSE:
        term -= tl.load(DLSE + offs, mask=rows, other=0.0).to(tl.float32)
    tl.store(DELTA + offs, term, mask=rows)


def backward_row_term_reference(grad_out: Tensor, out: Tensor, grad_lse: Tensor | None) -> Tensor:
    term = (grad_out.float() * out.float()).sum(-1)
    return (term - grad_lse.float() if grad_lse is not None else term).contiguous()


def backward_row_term(grad_out: Tensor, out: Tensor, grad_lse: Tensor | None) -> Tensor:
    """dS = P ∘ (dP − rowsum(dO ∘ O) + dLSE): the LSE output's gradient folds into the row term.
    One pass over the bf16 dO and O (`backward_row_term_reference` casts both to float32 first: three
    full-size temporaries at long n); `grad_out` and `out` contiguous `[..., D]`, D a power of two."""
    dim = out.shape[-1]
    rows = out.numel() // dim
    delta = torch.empty(out.shape[:-1], device=out.device, dtype=torch.float32)
    block = 16 if INTERPRETED else 64
    grad_out, out = grad_out.contiguous(), out.contiguous()
    grad_lse = grad_lse.contiguous() if grad_lse is not None else None
    _row_term_kernel[(triton.cdiv(rows, block),)](grad_out, out, grad_lse if grad_lse is not None else delta, delta, rows, D=dim,
                                                 HAS_DLSE=grad_lse is not None, BLOCK=block)
    return delta


def head_strides(*views: Tensor) -> Tuple[int, int, int]:
    """The (batch, head, row) strides that `[B, H, N, D]` views share, for kernels that take a layout
    rather than a dense block: a head of the packed qkv projection, or an output written as `[B, N,
    H, D]` for the output projection, is read and written in place."""
    strides = {x.stride()[:3] for x in views}
    if len(strides) != 1 or any(x.stride(3) != 1 for x in views):
        raise ValueError(f"views must share their strides and have a unit-strided head dim: {[x.stride() for x in views]}")
    return next(iter(strides))


def pad_head_dim(x: Tensor, dim: int) -> Tensor:
    """Zero-pad the head dimension (tl.dot wants a power of two >= 16; zeros change no product)."""
    return torch.nn.functional.pad(x, (0, dim - x.shape[-1])).contiguous() if x.shape[-1] != dim else x.contiguous()


def padded_head_dim(dim: int) -> int:
    return max(16, triton.next_power_of_2(dim))


def merge_extra_key_reference(out: Tensor, lse: Tensor, q: Tensor, k_extra: Tensor, v_extra: Tensor) -> Tensor:
    """Add one more key per query (bias 0, always visible) to attention outputs `out` `[B, H, N, D]`
    with natural log-sum-exp `lse` `[B, H, N]`; k/v_extra `[B, H, N, D]` (already gathered per query).
    The plain PyTorch twin of `merge_extra_key` (about ten float32 passes each way at full size)."""
    extra_score = (q.float() * k_extra.float()).sum(-1) * q.shape[-1] ** -0.5
    total = torch.logaddexp(lse, extra_score)
    merged = out.float() * torch.exp(lse - total).unsqueeze(-1) + v_extra.float() * torch.exp(extra_score - total).unsqueeze(-1)
    return merged.to(q.dtype)


@triton.jit
def _extra_rows(Q, KX, VX, LSE, N, H: tl.constexpr, KX_B, KX_H, KX_N, VX_B, VX_H, VX_N, scale, ROWS, D: tl.constexpr,
                D_PAD: tl.constexpr, BLOCK: tl.constexpr):
    """A block of rows of `merge_extra_key`: q, the extra key and value (through their strides: they
    are often expanded views), the extra score and the two softmax weights."""
    offs = tl.program_id(0).to(tl.int64) * BLOCK + tl.arange(0, BLOCK)
    offs_d = tl.arange(0, D_PAD)
    rows = offs < ROWS
    valid = rows[:, None] & (offs_d < D)[None, :]
    bh, n = offs // N, offs % N
    b, h = bh // H, bh % H
    q = tl.load(Q + offs[:, None] * D + offs_d[None, :], mask=valid, other=0.0).to(tl.float32)
    kx = tl.load(KX + (b * KX_B + h * KX_H + n * KX_N)[:, None] + offs_d[None, :], mask=valid, other=0.0).to(tl.float32)
    vx = tl.load(VX + (b * VX_B + h * VX_H + n * VX_N)[:, None] + offs_d[None, :], mask=valid, other=0.0).to(tl.float32)
    score = tl.sum(q * kx, 1) * scale
    lse = tl.load(LSE + offs, mask=rows, other=0.0)
    top = tl.maximum(lse, score)  # the extra score is finite; lse is -inf for a row that saw no key
    total = top + tl.log(tl.exp(lse - top) + tl.exp(score - top))
    return offs, offs_d, valid, q, kx, vx, tl.exp(lse - total), tl.exp(score - total)


@triton.jit
def _merge_forward_kernel(OUT, LSE, Q, KX, VX, MERGED, N, H: tl.constexpr, KX_B, KX_H, KX_N, VX_B, VX_H, VX_N, scale, ROWS,
                          D: tl.constexpr, D_PAD: tl.constexpr, BLOCK: tl.constexpr):
    offs, offs_d, valid, q, kx, vx, weight_out, weight_extra = _extra_rows(Q, KX, VX, LSE, N, H, KX_B, KX_H, KX_N, VX_B, VX_H, VX_N,
                                                                           scale, ROWS, D, D_PAD, BLOCK)
    out = tl.load(OUT + offs[:, None] * D + offs_d[None, :], mask=valid, other=0.0).to(tl.float32)
    merged = out * weight_out[:, None] + vx * weight_extra[:, None]
    tl.store(MERGED + offs[:, None] * D + offs_d[None, :], merged.to(MERGED.dtype.element_ty), mask=valid)


@triton.jit
def _merge_backward_kernel(GRAD, OUT, LSE, Q, KX, VX, D_OUT, D_LSE, D_Q, D_KX, D_VX, N, H: tl.constexpr, KX_B, KX_H, KX_N,
                           VX_B, VX_H, VX_N, scale, ROWS, D: tl.constexpr, D_PAD: tl.constexpr, BLOCK: tl.constexpr):
    offs, offs_d, valid, q, kx, vx, weight_out, weight_extra = _extra_rows(Q, KX, VX, LSE, N, H, KX_B, KX_H, KX_N, VX_B, VX_H, VX_N,
                                                                           scale, ROWS, D, D_PAD, BLOCK)
    grad = tl.load(GRAD + offs[:, None] * D + offs_d[None, :], mask=valid, other=0.0).to(tl.float32)
    out = tl.load(OUT + offs[:, None] * D + offs_d[None, :], mask=valid, other=0.0).to(tl.float32)
    # merged = out·w_o + vx·w_e with (w_o, w_e) the softmax of (lse, score): the weights' gradients
    # a = w_o·<g, out> and c = w_e·<g, vx> give d lse = a - (a + c)·w_o and d score = c - (a + c)·w_e.
    from_out = weight_out * tl.sum(grad * out, 1)
    from_extra = weight_extra * tl.sum(grad * vx, 1)
    d_score = (from_extra - (from_out + from_extra) * weight_extra) * scale
    rows = offs < ROWS
    tl.store(D_LSE + offs, from_out - (from_out + from_extra) * weight_out, mask=rows)
    at = offs[:, None] * D + offs_d[None, :]
    tl.store(D_OUT + at, (grad * weight_out[:, None]).to(D_OUT.dtype.element_ty), mask=valid)
    tl.store(D_VX + at, (grad * weight_extra[:, None]).to(D_VX.dtype.element_ty), mask=valid)
    tl.store(D_Q + at, (d_score[:, None] * kx).to(D_Q.dtype.element_ty), mask=valid)
    tl.store(D_KX + at, (d_score[:, None] * q).to(D_KX.dtype.element_ty), mask=valid)


def _merge_launch(q: Tensor, k_extra: Tensor, v_extra: Tensor) -> dict:
    batch, heads, length, dim = q.shape
    rows = q.numel() // dim
    block = 16 if INTERPRETED else 32
    return dict(grid=(triton.cdiv(rows, block),), N=length, H=heads, KX_B=k_extra.stride(0), KX_H=k_extra.stride(1), KX_N=k_extra.stride(2),
                VX_B=v_extra.stride(0), VX_H=v_extra.stride(1), VX_N=v_extra.stride(2), scale=dim**-0.5, ROWS=rows, D=dim,
                D_PAD=triton.next_power_of_2(dim), BLOCK=block)


def _merge_inputs(out: Tensor, lse: Tensor, q: Tensor, k_extra: Tensor, v_extra: Tensor) -> Tuple[Tensor, ...]:
    # The kernels follow the extra key/value's strides (expanded views stay views) but want the head
    # dim unit-strided; out, lse and q dense.
    k_extra, v_extra = (x if x.stride(-1) == 1 else x.contiguous() for x in (k_extra, v_extra))
    return out.contiguous(), lse.contiguous(), q.contiguous(), k_extra, v_extra


# Custom ops (not an autograd.Function) so torch.compile traces the merge as one opaque call.
@torch.library.custom_op("recsys::merge_extra_key", mutates_args=())
def _merge_forward(out: Tensor, lse: Tensor, q: Tensor, k_extra: Tensor, v_extra: Tensor) -> Tensor:
    out, lse, q, k_extra, v_extra = _merge_inputs(out, lse, q, k_extra, v_extra)
    merged = torch.empty(q.shape, device=q.device, dtype=q.dtype)
    launch = _merge_launch(q, k_extra, v_extra)
    _merge_forward_kernel[launch.pop("grid")](out, lse, q, k_extra, v_extra, merged, **launch)
    return merged


@_merge_forward.register_fake
def _merge_forward_shape(out, lse, q, k_extra, v_extra):
    return torch.empty(q.shape, device=q.device, dtype=q.dtype)


@torch.library.custom_op("recsys::merge_extra_key_backward", mutates_args=())
def _merge_backward(grad: Tensor, out: Tensor, lse: Tensor, q: Tensor, k_extra: Tensor, v_extra: Tensor
                    ) -> Tuple[Tensor, Tensor, Tensor, Tensor, Tensor]:
    out, lse, q, k_extra, v_extra = _merge_inputs(out, lse, q, k_extra, v_extra)
    d_out, d_lse, d_q, d_kx, d_vx = _merge_backward_shapes(grad, out, lse, q, k_extra, v_extra)
    launch = _merge_launch(q, k_extra, v_extra)
    _merge_backward_kernel[launch.pop("grid")](grad.contiguous(), out, lse, q, k_extra, v_extra, d_out, d_lse, d_q, d_kx, d_vx, **launch)
    return d_out, d_lse, d_q, d_kx, d_vx


@_merge_backward.register_fake
def _merge_backward_shapes(grad, out, lse, q, k_extra, v_extra):
    # Full-size (contiguous) gradients of the extra key/value, as autograd wants the views' shape; an
    # expanded view's sum over N follows in autograd.
    return (torch.empty(out.shape, device=q.device, dtype=out.dtype), torch.empty(lse.shape, device=q.device, dtype=lse.dtype),
            torch.empty(q.shape, device=q.device, dtype=q.dtype), torch.empty(q.shape, device=q.device, dtype=k_extra.dtype),
            torch.empty(q.shape, device=q.device, dtype=v_extra.dtype))


def _merge_setup_context(ctx, inputs, output) -> None:
    ctx.save_for_backward(*inputs)


def _merge_backward_formula(ctx, grad: Tensor):
    return _merge_backward(grad, *ctx.saved_tensors)


_merge_forward.register_autograd(_merge_backward_formula, setup_context=_merge_setup_context)


def merge_extra_key(out: Tensor, lse: Tensor, q: Tensor, k_extra: Tensor, v_extra: Tensor) -> Tensor:
    """`merge_extra_key_reference` in one pass each way (Triton): the merged output in q's dtype, and
    gradients for out, lse, q and the extra key and value. `lse` float32."""
    return _merge_forward(out, lse, q, k_extra, v_extra)
