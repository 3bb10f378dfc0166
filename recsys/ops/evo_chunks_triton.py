"""SparseCTR's key lists from the packed projection in one Triton pass: the chunk summaries (each
chunk's mean key and value, the global branch's keys) and the chunk tails (the keys and values at
`tail_positions`, the transition branch's keys), written as the dense `[B, H, K, D]` lists the keyed
kernels read, with each chunk's size for the backward.

In PyTorch this was a one-hot membership `[B, P, L]` built per call, its conversion and row sums, a
batched matmul over k and v, a division, two transposing copies and two gathers: about ten small
kernels per layer and direction's forward, each with its launch gap inside a CUDA graph, around the
one matmul that reads k and v (`evo_attention.chunk_summaries_matmul` stays the reference the tests
compare with). Chunks are contiguous runs of the history (`recsys.ops.chunking`), so a program walks
its chunk's rows only: from the previous chunk's end (the first chunk from row 0, its padding masked
by the chunk id) to its own. Means are summed in float32 and rounded once to the source's dtype.

Runs on CUDA; on CPU under Triton's interpreter (`TRITON_INTERPRET=1`), which the tests use.
"""

from __future__ import annotations

from typing import NamedTuple

import torch
import triton
import triton.language as tl
from torch import Tensor

from recsys.ops.triton_tiles import INTERPRETED, head_base, head_strides, load_tile, store_tile

# Rows per step of a chunk's walk. The pass reads k and v once and is bound by memory; a chunk is a
# few hundred rows, so one program per (chunk, head, k or v) keeps thousands of programs in flight.
# One configuration (an autotuner of one candidate runs no benchmark; benchmarks/kernel_resources.py
# reads it). Not yet swept on the GPU.
_TILES = [triton.Config({"BLOCK_M": 16 if INTERPRETED else 64}, num_warps=1 if INTERPRETED else 4)]


class ChunkKeys(NamedTuple):
    """The global list (chunk means) and the transition list (tails), `[B, H, K, D]` each, and the
    chunks' sizes `[B, P]` float32 (at least 1: an empty chunk's mean is zeros)."""

    k_chunks: Tensor
    v_chunks: Tensor
    k_tails: Tensor
    v_tails: Tensor
    chunk_sizes: Tensor


@triton.jit
def _chunk_mean(SRC, base, STRIDE, CHUNK_ROW, chunk, lo, hi, offs_d, D: tl.constexpr, BLOCK_M: tl.constexpr):
    """The sum of one head's rows `[lo, hi)` whose chunk id is `chunk`, and how many there are."""
    acc = tl.zeros([BLOCK_M, D], dtype=tl.float32)
    count = tl.zeros([BLOCK_M], dtype=tl.int32)
    for start in range(lo, hi, BLOCK_M):
        offs = start + tl.arange(0, BLOCK_M)
        member = (offs < hi) & (tl.load(CHUNK_ROW + offs, mask=offs < hi, other=0) == chunk)
        acc += load_tile(SRC, base, offs, offs_d, STRIDE, member).to(tl.float32)
        count += member.to(tl.int32)
    return tl.sum(acc, 0), tl.sum(count, 0)


@triton.jit
def _list_rows(MEAN_SRC, TAIL_SRC, MEANS, TAILS, CHUNK_ID, CHUNK_END, TAIL_POS, b, h, p, mean_base, tail_base, MT, QT, L, P,
               H: tl.constexpr, D: tl.constexpr, TAIL: tl.constexpr, TAIL_PAD: tl.constexpr, BLOCK_M: tl.constexpr):
    """One chunk's mean of one head of k or v (MEAN_SRC) into MEANS `[B, H, P, D]`, and its tail rows
    of TAIL_SRC into TAILS `[B, H, P·TAIL, D]`; returns the chunk's size (at least 1)."""
    offs_d = tl.arange(0, D)
    lo = tl.where(p > 0, tl.load(CHUNK_END + b * P + p - 1, mask=p > 0, other=0), 0)
    hi = tl.load(CHUNK_END + b * P + p)
    total, count = _chunk_mean(MEAN_SRC, mean_base, MT, CHUNK_ID + b.to(tl.int64) * L, p + 1, lo, hi, offs_d, D, BLOCK_M)
    size = tl.maximum(count, 1).to(tl.float32)
    out_row = (b * H + h).to(tl.int64) * P + p
    tl.store(MEANS + out_row * D + offs_d, (total / size).to(MEANS.dtype.element_ty))
    slots = p * TAIL + tl.arange(0, TAIL_PAD)
    in_chunk = tl.arange(0, TAIL_PAD) < TAIL
    positions = tl.load(TAIL_POS + b.to(tl.int64) * P * TAIL + slots, mask=in_chunk, other=0)
    rows = load_tile(TAIL_SRC, tail_base, positions, offs_d, QT, in_chunk)
    store_tile(TAILS, (b * H + h).to(tl.int64) * P * TAIL * D, slots, offs_d, D, in_chunk, rows)
    return size


@triton.autotune(configs=_TILES, key=["P", "H", "D", "TAIL"])
@triton.jit
def _chunk_keys_kernel(MK, MV, K, V, K_MEANS, V_MEANS, K_TAILS, V_TAILS, SIZES, CHUNK_ID, CHUNK_END, TAIL_POS, L, P, MB, MH, MT, QB, QH, QT,
                       H: tl.constexpr, D: tl.constexpr, TAIL: tl.constexpr, TAIL_PAD: tl.constexpr, BLOCK_M: tl.constexpr):
    """Grid (B·P, H, 2): chunk p of batch row b, head h, keys (0) or values (1). MK / MV (strides MB,
    MH, MT) are what the means average; K / V (QB, QH, QT) what the tails are taken from."""
    pid_bp, h, values = tl.program_id(0), tl.program_id(1), tl.program_id(2)
    b, p = pid_bp // P, pid_bp % P
    mean_base, tail_base = head_base(b, h, MB, MH), head_base(b, h, QB, QH)
    if values == 0:
        size = _list_rows(MK, K, K_MEANS, K_TAILS, CHUNK_ID, CHUNK_END, TAIL_POS, b, h, p, mean_base, tail_base, MT, QT, L, P, H, D, TAIL,
                          TAIL_PAD, BLOCK_M)
        if h == 0:
            tl.store(SIZES + b * P + p, size)
    else:
        _list_rows(MV, V, V_MEANS, V_TAILS, CHUNK_ID, CHUNK_END, TAIL_POS, b, h, p, mean_base, tail_base, MT, QT, L, P, H, D, TAIL, TAIL_PAD,
                   BLOCK_M)


def chunk_keys(k_source: Tensor, v_source: Tensor, k: Tensor, v: Tensor, chunk_id: Tensor, chunk_end: Tensor, tail_positions: Tensor) -> ChunkKeys:
    """The key lists of a batch: means of `k_source` / `v_source` `[B, H, ≥L, D]` over each chunk's
    history rows (int32 `chunk_id` `[B, L]`, 1..P, 0 padding; int32 `chunk_end` `[B, P]`, each chunk's
    half-open end, chunks contiguous and in order), and the rows of k / v `[B, H, T, D]` at
    `tail_positions` `[B, P·tail]`. Equal to `chunk_summaries_matmul` and `_gather_positions`
    (tests/test_evo_chunks_triton.py). The sources of a pair share their strides (`head_strides`)."""
    batch, heads, _, dim = k.shape
    length, num_chunks = chunk_id.shape[1], chunk_end.shape[1]
    tail = tail_positions.shape[1] // max(num_chunks, 1)
    if tail * num_chunks != tail_positions.shape[1]:
        raise ValueError(f"tail_positions has {tail_positions.shape[1]} entries, not a multiple of the {num_chunks} chunks")
    # four buffers, not views of two: a custom op's returns may not alias (`evo_branches_triton`)
    means = [k_source.new_empty(batch, heads, num_chunks, dim) for _ in range(2)]
    tails = [k.new_empty(batch, heads, tail * num_chunks, dim) for _ in range(2)]
    sizes = torch.empty(batch, num_chunks, device=k.device, dtype=torch.float32)
    if batch * num_chunks > 0:
        _chunk_keys_kernel[(batch * num_chunks, heads, 2)](
            k_source, v_source, k, v, means[0], means[1], tails[0], tails[1], sizes, chunk_id.to(torch.int32).contiguous(),
            chunk_end.to(torch.int32).contiguous(), tail_positions.contiguous(), length, num_chunks, *head_strides(k_source, v_source),
            *head_strides(k, v), H=heads, D=dim, TAIL=tail, TAIL_PAD=max(triton.next_power_of_2(tail), 1))
    return ChunkKeys(means[0], means[1], tails[0], tails[1], sizes)
