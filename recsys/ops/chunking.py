"""Personalized time-aware chunking (SparseCTR §2), vectorised and TorchScript-scriptable.

Layout: histories are left-padded to `[B, L]`; the real events of a sample occupy the last
`lengths[b]` positions. The `P - 1` largest gaps between consecutive real events become chunk
boundaries (fewer when the history has fewer gaps). Chunks are numbered 1..P and right-aligned:
the last chunk always ends at the last event, empty chunks (users with fewer than P events) come
first, and padding positions carry chunk id 0 (the padding chunk p_0). Equal gaps are broken by
position: the later gap wins, deterministically.

The loader runs this on every batch and the exported TorchScript module runs the same function on
raw request histories, so serving never re-implements it. `personalized_chunks_reference` is the
plain-Python twin used by the tests.
"""

from __future__ import annotations

from typing import List, Tuple

import torch
from torch import Tensor


def personalized_chunks(timestamps: Tensor, lengths: Tensor, num_chunks: int) -> Tuple[Tensor, Tensor, Tensor, Tensor]:
    """Chunk left-padded histories.

    Args:
        timestamps: `[B, L]` int64, non-decreasing over the real (right-aligned) events.
        lengths: `[B]` number of real events per row, `0 <= lengths <= L`.
        num_chunks: P.

    Returns:
        chunk_id `[B, L]` int64 (0 for padding, 1..P for events), chunk_start and chunk_end
        `[B, P]` int64 (half-open position ranges in the padded layout; empty chunks have
        start == end), chunk_valid `[B, P]` bool.
    """
    batch, width = timestamps.shape
    positions = torch.arange(width, device=timestamps.device)
    real = positions.unsqueeze(0) >= (width - lengths).unsqueeze(1)
    breaks = torch.zeros(batch, width, dtype=torch.bool, device=timestamps.device)
    max_breaks = min(num_chunks - 1, width - 1)
    if max_breaks > 0:
        gaps = (timestamps[:, 1:] - timestamps[:, :-1]).clamp_min(0)
        # Both ends of a gap must be real events; position i is the gap after event i.
        gap_valid = real[:, :-1]
        # One int64 key orders by gap, then by position (later wins), so top-k is deterministic.
        keys = torch.where(gap_valid, gaps * width + positions[:-1], torch.full_like(gaps, -1))
        top_keys, top_positions = torch.topk(keys, max_breaks, dim=1)
        breaks.scatter_(1, top_positions, top_keys >= 0)
    starts_new_chunk = torch.zeros_like(breaks)
    starts_new_chunk[:, 1:] = breaks[:, :-1]
    num_breaks = breaks.sum(dim=1, keepdim=True)
    chunk_of_real = num_chunks - num_breaks + starts_new_chunk.long().cumsum(dim=1)
    chunk_id = torch.where(real, chunk_of_real, torch.zeros_like(chunk_of_real))
    chunk_numbers = torch.arange(1, num_chunks + 1, device=timestamps.device).expand(batch, num_chunks).contiguous()
    chunk_start = torch.searchsorted(chunk_id, chunk_numbers, right=False)
    chunk_end = torch.searchsorted(chunk_id, chunk_numbers, right=True)
    return chunk_id, chunk_start, chunk_end, chunk_end > chunk_start


def personalized_chunks_reference(timestamps: List[int], num_chunks: int) -> List[List[int]]:
    """Plain-Python twin: split one user's real (unpadded) history into chunks of event indices.

    Returns exactly `num_chunks` lists (empty chunks first), the concatenation of which is
    `range(len(timestamps))`.
    """
    n = len(timestamps)
    gaps = [(timestamps[i + 1] - timestamps[i], i) for i in range(n - 1)]
    # Largest gap first; among equal gaps the later position first.
    gaps.sort(key=lambda gap: (gap[0], gap[1]), reverse=True)
    cut_after = sorted(position for _, position in gaps[: num_chunks - 1])
    chunks: List[List[int]] = []
    start = 0
    for position in cut_after:
        chunks.append(list(range(start, position + 1)))
        start = position + 1
    if n > 0:
        chunks.append(list(range(start, n)))
    return [[] for _ in range(num_chunks - len(chunks))] + chunks
