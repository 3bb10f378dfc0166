"""SparseCTR's key lists from the packed projection in two launches: the global branch's chunk means,
the chunks' sizes and the transition branch's chunk tails.

As PyTorch ops (`packed_chunk_summaries`, `_gather_positions`) they were about a dozen launches per
layer: the membership mask, its count and casts, one batched matmul, the division, two transposing
copies and two gathers (at n = 8,192, 8 heads of 64, the matmul alone took 37 µs on the H200 and the
rest about 30, session 21 profile).

1. `_chunk_sum_kernel`: per slice of history rows, batch row and block of columns of the k and v rows
   (a position's k and v are adjacent in `[B, T, 3, H, D]`, so they read as one row of 2·H·D), the
   one-hot chunk matrix times the tile, on the tensor cores with float32 accumulation, gives the
   slice's per-chunk sums and counts. They are written as partials rather than added atomically,
   so the means are the same bits in every run.
2. `_chunk_finish_kernel`: per (batch row, chunk) the partials summed and divided by the chunk's size
   (at least 1), the means written as `[B, H, P, D]` in the projection's dtype, and the size as float32;
   per (batch row, tail key) the row at its position copied into `[B, H, P·tail, D]`.

Chunk ids may be in any order along the row (the one-hot matrix does not need chunks to be
contiguous), 0 is padding. Equal to `packed_chunk_summaries` and `_gather_positions` up to the means'
rounding: they are rounded once, after the division, where the matmul path rounds the sums first
(`tests/test_evo_key_lists_triton.py`). Runs on CUDA; on CPU under Triton's interpreter.
"""

from __future__ import annotations

from typing import Tuple

import torch
import triton
import triton.language as tl
from torch import Tensor

from recsys.ops.triton_tiles import INTERPRETED

MAX_CHUNKS = 64  # chunks whose [P, BLOCK_C] float32 sums one program holds; more take the matmul path
_SLICE_ROWS = 1024  # history rows one summing program walks
_SUM_TILE = dict(BLOCK_L=16, BLOCK_C=16, num_warps=1, num_stages=1) if INTERPRETED else \
    dict(BLOCK_L=64, BLOCK_C=128, num_warps=4, num_stages=3)


def fits(num_chunks: int) -> bool:
    return num_chunks <= MAX_CHUNKS


@triton.jit
def _chunk_sum_kernel(KV, CHUNK_ID, PARTS, COUNTS, L, STRIDE_B, STRIDE_T, WIDTH: tl.constexpr, P: tl.constexpr, P_PAD: tl.constexpr,
                      SLICE: tl.constexpr, PRECISION: tl.constexpr, BLOCK_L: tl.constexpr, BLOCK_C: tl.constexpr):
    """Per-chunk sums of one slice of SLICE history rows and one block of BLOCK_C of the WIDTH k and v
    columns (KV: row t of batch row b at b·STRIDE_B + t·STRIDE_T) into PARTS `[slices, B, P, WIDTH]`,
    float32; the first column block also writes the slice's chunk counts into COUNTS `[slices, B, P]`."""
    slice_id, b, column_block = tl.program_id(0), tl.program_id(1), tl.program_id(2)
    offs_c = column_block * BLOCK_C + tl.arange(0, BLOCK_C)
    columns = offs_c < WIDTH
    chunk_numbers = tl.arange(0, P_PAD) + 1  # ids 1..P; 0 is padding
    sums = tl.zeros([P_PAD, BLOCK_C], dtype=tl.float32)
    counts = tl.zeros([P_PAD], dtype=tl.float32)
    row_base = KV + b.to(tl.int64) * STRIDE_B
    hi = tl.minimum((slice_id + 1) * SLICE, L)
    for start in range(slice_id * SLICE, hi, BLOCK_L):
        offs_l = start + tl.arange(0, BLOCK_L)
        rows = offs_l < hi
        ids = tl.load(CHUNK_ID + b * L + offs_l, mask=rows, other=0)
        tile = tl.load(row_base + offs_l.to(tl.int64)[:, None] * STRIDE_T + offs_c[None, :], mask=rows[:, None] & columns[None, :], other=0.0)
        member = ids[None, :] == chunk_numbers[:, None]  # [P_PAD, BLOCK_L]
        sums = tl.dot(member.to(tile.dtype), tile, sums, input_precision=PRECISION)
        counts += tl.sum(member.to(tl.float32), 1)
    chunk_rows = chunk_numbers <= P
    part_rows = (slice_id * tl.num_programs(1) + b) * P + chunk_numbers - 1
    tl.store(PARTS + part_rows.to(tl.int64)[:, None] * WIDTH + offs_c[None, :], sums, mask=chunk_rows[:, None] & columns[None, :])
    tl.store(COUNTS + part_rows, counts, mask=chunk_rows & (chunk_numbers * 0 + column_block == 0))


@triton.jit
def _head_rows(BASE, offs, HD: tl.constexpr, D: tl.constexpr, key, KEYS):
    """Offsets of a key's H·D columns in a `[B, H, KEYS, D]` tensor at BASE (the batch row's start)."""
    return BASE + (offs // D) * (KEYS * D) + key * D + offs % D


@triton.jit
def _chunk_finish_kernel(PARTS, COUNTS, KV, TAIL_POSITIONS, K_CHUNKS, V_CHUNKS, SIZES, K_TAILS, V_TAILS, SLICES, STRIDE_B, STRIDE_T, NT,
                         H: tl.constexpr, D: tl.constexpr, P: tl.constexpr, HD_PAD: tl.constexpr):
    """Program (b, j): chunk j's means and size (j < P), or tail key j - P's row copied."""
    b, j = tl.program_id(0), tl.program_id(1)
    HD: tl.constexpr = H * D
    offs = tl.arange(0, HD_PAD)
    inside = offs < HD
    if j < P:
        k_sum = tl.zeros([HD_PAD], dtype=tl.float32)
        v_sum = tl.zeros([HD_PAD], dtype=tl.float32)
        count = 0.0
        for slice_id in range(0, SLICES):
            part = (slice_id * tl.num_programs(0) + b) * P + j
            k_sum += tl.load(PARTS + part.to(tl.int64) * (2 * HD) + offs, mask=inside, other=0.0)
            v_sum += tl.load(PARTS + part.to(tl.int64) * (2 * HD) + HD + offs, mask=inside, other=0.0)
            count += tl.load(COUNTS + part)
        size = tl.maximum(count, 1.0)
        tl.store(SIZES + b * P + j, size)
        batch_row = b.to(tl.int64) * H * P * D
        tl.store(_head_rows(K_CHUNKS + batch_row, offs, HD, D, j, P), (k_sum / size).to(K_CHUNKS.dtype.element_ty), mask=inside)
        tl.store(_head_rows(V_CHUNKS + batch_row, offs, HD, D, j, P), (v_sum / size).to(V_CHUNKS.dtype.element_ty), mask=inside)
    else:
        tail = j - P
        position = tl.load(TAIL_POSITIONS + b * NT + tail)
        row = KV + b.to(tl.int64) * STRIDE_B + position.to(tl.int64) * STRIDE_T
        batch_row = b.to(tl.int64) * H * NT * D
        tl.store(_head_rows(K_TAILS + batch_row, offs, HD, D, tail, NT), tl.load(row + offs, mask=inside), mask=inside)
        tl.store(_head_rows(V_TAILS + batch_row, offs, HD, D, tail, NT), tl.load(row + HD + offs, mask=inside), mask=inside)


def packed_key_lists(qkv: Tensor, chunk_id: Tensor, num_chunks: int, tail_positions: Tensor
                     ) -> Tuple[Tensor, Tensor, Tensor, Tensor, Tensor]:
    """(k and v chunk means `[B, H, P, D]`, k and v chunk tails `[B, H, P·tail, D]`, chunk sizes
    float32 `[B, P]`, at least 1) of a packed `[B, T, 3, H, D]` projection (unit-strided inner
    dims); `chunk_id` `[B, L]` integer (0 padding, 1..P), `tail_positions` `[B, P·tail]` history
    positions. Only for `fits(num_chunks)`."""
    if not fits(num_chunks):
        raise ValueError(f"packed_key_lists holds at most {MAX_CHUNKS} chunks, got {num_chunks}")
    if qkv.stride(-1) != 1 or qkv.stride(-2) != qkv.shape[-1] or qkv.stride(2) != qkv.shape[-1] * qkv.shape[-2]:
        raise ValueError("packed_key_lists needs the projection's inner [3, H, D] dims dense")
    batch, _, _, heads, dim = qkv.shape
    length, tails = chunk_id.shape[1], tail_positions.shape[1]
    width = 2 * heads * dim
    kv = qkv[:, :, 1]  # k's first element of each row; v's follow it in the same row
    slices = triton.cdiv(length, _SLICE_ROWS)
    tile = _SUM_TILE
    parts = torch.empty(slices, batch, num_chunks, width, device=qkv.device, dtype=torch.float32)
    counts = torch.empty(slices, batch, num_chunks, device=qkv.device, dtype=torch.float32)
    _chunk_sum_kernel[(slices, batch, triton.cdiv(width, tile["BLOCK_C"]))](
        kv, chunk_id.contiguous(), parts, counts, length, qkv.stride(0), qkv.stride(1), WIDTH=width, P=num_chunks,
        P_PAD=max(16, triton.next_power_of_2(num_chunks)), SLICE=_SLICE_ROWS, PRECISION="ieee" if qkv.dtype == torch.float32 else "tf32",
        BLOCK_L=tile["BLOCK_L"], BLOCK_C=tile["BLOCK_C"], num_warps=tile["num_warps"], num_stages=tile["num_stages"])
    k_chunks, v_chunks = (qkv.new_empty(batch, heads, num_chunks, dim) for _ in range(2))
    k_tails, v_tails = (qkv.new_empty(batch, heads, tails, dim) for _ in range(2))
    sizes = torch.empty(batch, num_chunks, device=qkv.device, dtype=torch.float32)
    _chunk_finish_kernel[(batch, num_chunks + tails)](
        parts, counts, kv, tail_positions.contiguous(), k_chunks, v_chunks, sizes, k_tails, v_tails, slices, qkv.stride(0), qkv.stride(1),
        tails, H=heads, D=dim, P=num_chunks, HD_PAD=triton.next_power_of_2(heads * dim), num_warps=1 if INTERPRETED else 4)
    return k_chunks, v_chunks, k_tails, v_tails, sizes
