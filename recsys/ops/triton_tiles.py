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
LOG2E = 1.4426950408889634


def tile_configs(shapes: List[Tuple[int, int, int, int]], interpreted: Tuple[int, int] = (16, 16)) -> List[triton.Config]:
    """(BLOCK_M, BLOCK_N, warps, stages) candidates tuned on the GPU; one small tile when interpreted."""
    if INTERPRETED:
        return [triton.Config({"BLOCK_M": interpreted[0], "BLOCK_N": interpreted[1]}, num_warps=1)]
    return [triton.Config({"BLOCK_M": m, "BLOCK_N": n}, num_warps=w, num_stages=st) for m, n, w, st in shapes]


@triton.jit
def program_block(BLOCK: tl.constexpr, H: tl.constexpr, N, D: tl.constexpr):
    """Grid (blocks along N, batch x heads): batch row, head, the flat (batch, head) index, the block's
    first position, its positions, the head-dim offsets, which positions exist, and the (b, h) offset."""
    pid_bh = tl.program_id(1)
    start = tl.program_id(0) * BLOCK
    offs = start + tl.arange(0, BLOCK)
    return pid_bh // H, pid_bh % H, pid_bh, start, offs, tl.arange(0, D), offs < N, pid_bh.to(tl.int64) * N * D


@triton.jit
def load_tile(PTR, base, offs, offs_d, D: tl.constexpr, valid):
    """Rows `offs` of a `[.., N, D]` block starting at `base`; zeros where not `valid`."""
    return tl.load(PTR + base + offs[:, None] * D + offs_d[None, :], mask=valid[:, None], other=0.0)


@triton.jit
def store_tile(PTR, base, offs, offs_d, D: tl.constexpr, valid, value):
    tl.store(PTR + base + offs[:, None] * D + offs_d[None, :], value.to(PTR.dtype.element_ty), mask=valid[:, None])


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


@triton.jit
def finish_rows(acc, l_i, m_i):
    """Normalised output and the natural log-sum-exp (-inf for a row that saw no key)."""
    has_key = l_i > 0
    out = acc / tl.where(has_key, l_i, 1.0)[:, None]
    lse = tl.where(has_key, (m_i + tl.log2(tl.where(has_key, l_i, 1.0))) / 1.4426950408889634, float("-inf"))
    return out, lse


@triton.jit
def load_backward_rows(Q, DO, LSE, DELTA, base, row_base, offs_m, offs_d, D: tl.constexpr, rows):
    """q, dO, the log-sum-exp in log2 units (+inf for rows without keys or past the end, so their
    probabilities are 0) and the row term rowsum(dO·O) - dLSE."""
    q = load_tile(Q, base, offs_m, offs_d, D, rows)
    do = load_tile(DO, base, offs_m, offs_d, D, rows)
    lse = tl.load(LSE + row_base + offs_m, mask=rows, other=float("inf"))
    lse = tl.where(lse == float("-inf"), float("inf"), lse) * 1.4426950408889634
    delta = tl.load(DELTA + row_base + offs_m, mask=rows, other=0.0)
    return q, do, lse, delta


def backward_row_term(grad_out: Tensor, out: Tensor, grad_lse: Tensor | None) -> Tensor:
    """dS = P ∘ (dP − rowsum(dO ∘ O) + dLSE): the LSE output's gradient folds into the row term."""
    term = (grad_out.float() * out.float()).sum(-1)
    return (term - grad_lse.float() if grad_lse is not None else term).contiguous()


def pad_head_dim(x: Tensor, dim: int) -> Tensor:
    """Zero-pad the head dimension (tl.dot wants a power of two >= 16; zeros change no product)."""
    return torch.nn.functional.pad(x, (0, dim - x.shape[-1])).contiguous() if x.shape[-1] != dim else x.contiguous()


def padded_head_dim(dim: int) -> int:
    return max(16, triton.next_power_of_2(dim))


def merge_extra_key(out: Tensor, lse: Tensor, q: Tensor, k_extra: Tensor, v_extra: Tensor) -> Tensor:
    """Add one more key per query (bias 0, always visible) to attention outputs `out` `[B, H, N, D]`
    with natural log-sum-exp `lse` `[B, H, N]`; k/v_extra `[B, H, N, D]` (already gathered per query)."""
    extra_score = (q.float() * k_extra.float()).sum(-1) * q.shape[-1] ** -0.5
    total = torch.logaddexp(lse, extra_score)
    merged = out.float() * torch.exp(lse - total).unsqueeze(-1) + v_extra.float() * torch.exp(extra_score - total).unsqueeze(-1)
    return merged.to(q.dtype)
