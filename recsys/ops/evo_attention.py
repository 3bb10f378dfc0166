"""SparseCTR's three sparse attention branches (§3), structural kernels and a dense reference.

Sequence layout: T = L + M positions, the left-padded history `[0, L)` then M candidates. Per
query position i and branch:

* global: one key per chunk (the masked mean of the chunk's keys and values, timed at the chunk's
  last event); a history query sees chunks that ended before it (`chunk_end <= i`), a candidate sees
  every non-empty chunk.
* transition: the last `tail` events of every chunk, with the same visibility rule.
* local: keys `j` with `i - window < j <= i` among real history events, plus the profile token
  (always visible, bias 0). A candidate sees the last `window` history positions and itself, never
  another candidate.

A query with no visible key in a branch gets a zero output from that branch. Every logit gets the
RelTemporal bias. The structural kernels never build a `T x T` mask: global and transition attend
over `[B, H, T, P]` / `[B, H, T, P·tail]` keys, local over blocks `[B, H, L/w, w, 2w + 1]`.
`evo_branches_reference` builds the dense masks instead and is the ground truth for tests.
"""

import math
from typing import List, NamedTuple, Optional, Tuple

import torch
import torch.nn.functional as F
from torch import Tensor

from recsys.ops.temporal import _is_weekend, bias_from_components, composite_temporal_bias, temporal_components



def chunk_summaries(values: Tensor, chunk_id: Tensor, num_chunks: int) -> Tensor:
    """Masked mean of `values` `[B, H, L, D]` per chunk -> `[B, H, P, D]` (zeros for empty chunks)."""
    batch, heads, length, dim = values.shape
    index = chunk_id.view(batch, 1, length, 1).expand(batch, heads, length, dim)
    # Accumulate in at least float32: bf16 sums over long chunks would round away the mean.
    accumulate = torch.promote_types(values.dtype, torch.float32)
    sums = torch.zeros(batch, heads, num_chunks + 1, dim, dtype=accumulate, device=values.device).scatter_add(2, index, values.to(accumulate))
    counts = torch.zeros(batch, num_chunks + 1, dtype=accumulate, device=values.device).scatter_add(1, chunk_id, torch.ones_like(chunk_id, dtype=accumulate))
    return (sums / counts.clamp_min(1.0).view(batch, 1, num_chunks + 1, 1))[:, :, 1:].to(values.dtype)


def chunk_membership(chunk_id: Tensor, num_chunks: int) -> Tensor:
    """`[B, P, L]` bool: event l belongs to chunk p (chunk ids 1..P; 0 is padding)."""
    return chunk_id.unsqueeze(1) == torch.arange(1, num_chunks + 1, device=chunk_id.device).view(1, -1, 1)


def chunk_summaries_matmul(values: Tensor, membership: Tensor) -> Tensor:
    """`chunk_summaries` as one batched matmul with the chunk membership (`chunk_membership`, built
    once per layer for k and v): the tensor cores accumulate in float32, and neither direction
    materialises a float32 copy or an int64 index of `values`, as scatter_add and its gather backward
    do. Membership weights are exact ones; the sum is rounded once to `values.dtype` before the division."""
    counts = membership.sum(-1).clamp_min(1).to(values.dtype)
    sums = torch.matmul(membership.to(values.dtype).unsqueeze(1), values)  # [B, H, P, D]
    return sums / counts.view(counts.shape[0], 1, counts.shape[1], 1)


def tail_positions(chunk_start: Tensor, chunk_end: Tensor, chunk_valid: Tensor, tail: int) -> Tuple[Tensor, Tensor]:
    """Positions `[B, P·tail]` of the last `tail` events of every chunk and their validity."""
    offsets = torch.arange(tail, device=chunk_end.device) - tail
    positions = chunk_end.unsqueeze(-1) + offsets  # [B, P, tail]
    valid = chunk_valid.unsqueeze(-1) & (positions >= chunk_start.unsqueeze(-1))
    return positions.clamp_min(0).flatten(1), valid.flatten(1)


def _gather_positions(values: Tensor, positions: Tensor) -> Tensor:
    """`values` `[B, H, L, D]`, `positions` `[B, K]` -> `[B, H, K, D]`."""
    batch, heads, _, dim = values.shape
    index = positions.view(batch, 1, -1, 1).expand(batch, heads, positions.shape[1], dim)
    return values.gather(2, index)


def _attend(q: Tensor, k: Tensor, v: Tensor, visible: Tensor, bias: Tensor) -> Tensor:
    """SDPA with an additive mask; rows with no visible key are computed on key 0 and zeroed."""
    has_key = visible.any(dim=-1, keepdim=True)
    first = torch.zeros_like(visible)
    first[..., 0] = True
    safe_visible = visible | (~has_key & first)
    mask = bias.masked_fill(~safe_visible, float("-inf"))
    out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask)
    return out * has_key.to(out.dtype)


def _query_positions(length: int, candidates: int, device: torch.device) -> Tensor:
    """Position index used for chunk visibility: candidates count as position L (after all chunks)."""
    history = torch.arange(length, device=device)
    return torch.cat([history, torch.full((candidates,), length, device=device, dtype=history.dtype)])


def _blocks(x: Tensor, blocks: int, window: int) -> Tensor:
    """`[..., Lp, D]` -> `[..., blocks, window, D]`."""
    return x.reshape(x.shape[:-2] + (blocks, window, x.shape[-1]))


def _with_previous_block(x: Tensor, block_dim: int) -> Tensor:
    """Concatenate each block with the block before it (zeros before the first) along the next dim."""
    shape = list(x.shape)
    shape[block_dim] = 1
    shifted = torch.cat([x.new_zeros(shape), x.narrow(block_dim, 0, x.shape[block_dim] - 1)], dim=block_dim)
    return torch.cat([shifted, x], dim=block_dim + 1)


class FusedTimes(NamedTuple):
    """What the fused kernels read about time, built once per batch: int32 seconds since the row's
    earliest real query (differences, not epochs, reach the kernels) and flag words, bit 1 real or
    valid, bit 2 a weekend in local time. Queries `[B, T]`, their history part `[B, L]` (the local
    kernel's keys too), chunk keys `[B, P]` and tail keys `[B, P·tail]` with the positions their
    chunks end at; and where the keyed branches' key gradients land among the history keys: each
    position's chunk (int32 1..P, 0 padding) and its slot in the tail list (int32, -1 if none); and
    each list's clock words (`clock_words`, float32 `[B, 2, ·]`)."""

    query_times: Tensor
    query_flags: Tensor
    history_times: Tensor
    history_flags: Tensor
    chunk_times: Tensor
    chunk_end: Tensor
    chunk_flags: Tensor
    tail_times: Tensor
    tail_end: Tensor
    tail_flags: Tensor
    history_chunk: Tensor
    tail_slot: Tensor
    query_clock: Tensor
    history_clock: Tensor
    chunk_clock: Tensor
    tail_clock: Tensor


def flag_words(real: Tensor, times: Tensor, utc_offset: int) -> Tensor:
    """int32 words the fused kernels read: bit 1 real (or valid), bit 2 a weekend in local time."""
    return (real.to(torch.int32) + 2 * _is_weekend(times + utc_offset).to(torch.int32)).contiguous()


def clock_words(relative: Tensor) -> Tensor:
    """`[B, N]` int32 seconds -> `[B, 2, N]` float32: the sine and cosine of each event's clock angle
    pi·(t mod day)/day. The hour term of a pair is |sin(a_i - a_j)| (`evo_bias_triton.composite_terms`),
    which depends on time differences only, so relative times serve as well as epochs."""
    angle = torch.remainder(relative.to(torch.int64), 86_400).to(torch.float64) * (math.pi / 86_400)
    return torch.stack([torch.sin(angle), torch.cos(angle)], dim=1).to(torch.float32).contiguous()


def relative_int32(event_times: Tensor, real: Tensor, base: Tensor) -> Tensor:
    """int32 seconds since `base` `[B, 1]` (0 where not real): differences, not epochs, reach the kernels."""
    return torch.where(real, event_times - base, torch.zeros_like(event_times)).to(torch.int32).contiguous()


def earliest_real_time(times: Tensor, real: Tensor) -> Tensor:
    """`[B, 1]`: each row's earliest real time (padding stands in as the row's latest time, so a row
    with nothing real gets a base that only zeros are measured from)."""
    latest = times.max(dim=1, keepdim=True).values
    return torch.where(real, times, latest).min(dim=1, keepdim=True).values


def fused_times(times: Tensor, chunk_id: Tensor, chunk_end: Tensor, chunk_valid: Tensor, tail_positions: Tensor, tail_valid: Tensor,
                utc_offset: int) -> FusedTimes:
    """`FusedTimes` of a batch: times `[B, T]` int64 (history then candidates), chunk_id `[B, L]` (0 padding)."""
    history_real = chunk_id > 0
    batch, length = history_real.shape
    query_real = torch.cat([history_real, torch.ones(batch, times.shape[1] - length, dtype=torch.bool, device=times.device)], dim=1)
    base = earliest_real_time(times, query_real)

    history_times = times[:, :length]
    chunk_times = history_times.gather(1, (chunk_end - 1).clamp_min(0))
    tail_times = history_times.gather(1, tail_positions)
    tail = tail_positions.shape[1] // max(chunk_end.shape[1], 1)
    query_relative = relative_int32(times, query_real, base)
    history_relative = relative_int32(history_times, history_real, base)
    chunk_relative = relative_int32(chunk_times, chunk_valid, base)
    tail_relative = relative_int32(tail_times, tail_valid, base)
    return FusedTimes(query_relative, flag_words(query_real, times, utc_offset),
                      history_relative, flag_words(history_real, history_times, utc_offset),
                      chunk_relative, chunk_end.to(torch.int32).contiguous(), flag_words(chunk_valid, chunk_times, utc_offset),
                      tail_relative, chunk_end.repeat_interleave(tail, dim=1).to(torch.int32).contiguous(),
                      flag_words(tail_valid, tail_times, utc_offset), chunk_id.to(torch.int32).contiguous(),
                      tail_slots(tail_positions, tail_valid, length), clock_words(query_relative), clock_words(history_relative),
                      clock_words(chunk_relative), clock_words(tail_relative))


def tail_slots(tail_positions: Tensor, tail_valid: Tensor, length: int) -> Tensor:
    """`[B, L]` int32: the index of each history position in the tail list, -1 where it is no
    chunk's tail. Valid tails of different chunks never share a position; an invalid entry may point
    at another chunk's tail, so invalid slots count as -1 and the largest wins."""
    slots = torch.arange(tail_positions.shape[1], device=tail_positions.device).expand_as(tail_positions)
    proposed = torch.where(tail_valid, slots, torch.full_like(slots, -1))
    empty = torch.full((tail_positions.shape[0], length), -1, dtype=slots.dtype, device=tail_positions.device)
    return empty.scatter_reduce(1, tail_positions, proposed, "amax").to(torch.int32).contiguous()


def _no_fused_times(device: torch.device) -> FusedTimes:
    empty = torch.zeros(0, 0, dtype=torch.int32, device=device)
    clock = torch.zeros(0, 2, 0, device=device)
    return FusedTimes(empty, empty, empty, empty, empty, empty, empty, empty, empty, empty, empty, empty, clock, clock, clock, clock)


class EvoGeometry(NamedTuple):
    """What `evo_geometry` computes once per batch (a NamedTuple: typed, and safe in TorchScript)."""

    chunk_id: Tensor  # [B, L]
    global_visible: Tensor  # [B, 1, T, P]
    global_terms: Tensor  # temporal components of query x chunk
    tail_positions: Tensor  # [B, P·tail]
    tail_visible: Tensor  # [B, 1, T, P·tail]
    tail_terms: Tensor
    local_visible: Tensor  # [B, 1, nb, w, 2w + 1]
    local_terms: Tensor
    candidate_valid: Tensor  # [B, 1, 1, ≤w]
    candidate_terms: Tensor
    candidate_self_terms: Tensor
    chunk_end: Tensor  # [B, P]: the key layout the fused kernels read instead of the tensors above
    chunk_valid: Tensor  # [B, P]
    tail_valid: Tensor  # [B, P·tail]
    fused_times: FusedTimes  # empty unless `fused=True`


def evo_geometry(times: Tensor, chunk_id: Tensor, chunk_start: Tensor, chunk_end: Tensor, chunk_valid: Tensor, candidates: int,
                 tail: int, window: int, utc_offset: int, weekend_rule: int, fused: bool = False) -> EvoGeometry:
    """Everything the three branches need that does not depend on q, k, v: key positions,
    visibility and temporal components. Computed once per batch and shared by all layers.
    `fused=True` leaves the visibility and temporal tensors of the global and transition branches and
    of the history window empty: the fused kernels (`evo_attend_fused`) compute them per tile."""
    batch, length = chunk_id.shape
    num_chunks = chunk_end.shape[1]
    query_pos = _query_positions(length, candidates, times.device)

    positions, valid = tail_positions(chunk_start, chunk_end, chunk_valid, tail)
    if fused:
        global_visible = torch.zeros(batch, 1, 0, num_chunks, dtype=torch.bool, device=times.device)
        global_terms = torch.zeros(batch, 3, 0, num_chunks, device=times.device)
        tail_visible = torch.zeros(batch, 1, 0, num_chunks * tail, dtype=torch.bool, device=times.device)
        tail_terms = torch.zeros(batch, 3, 0, num_chunks * tail, device=times.device)
    else:
        chunk_times = times[:, :length].gather(1, (chunk_end - 1).clamp_min(0))
        global_visible = (chunk_valid.unsqueeze(1) & (chunk_end.unsqueeze(1) <= query_pos.view(1, -1, 1))).unsqueeze(1)
        global_terms = temporal_components(times, chunk_times, utc_offset, weekend_rule)
        tail_chunk_end = chunk_end.repeat_interleave(tail, dim=1)
        tail_visible = (valid.unsqueeze(1) & (tail_chunk_end.unsqueeze(1) <= query_pos.view(1, -1, 1))).unsqueeze(1)
        tail_terms = temporal_components(times, times.gather(1, positions), utc_offset, weekend_rule)

    history_valid = chunk_id > 0
    if not fused:
        blocks = (length + window - 1) // window
        pad = blocks * window - length
        t_blocks = F.pad(times[:, :length], (pad, 0)).view(batch, blocks, window)
        valid_win = _with_previous_block(F.pad(history_valid, (pad, 0)).view(batch, blocks, window), 1)  # [B, nb, 2w]
        query_index = torch.arange(window, device=times.device).view(window, 1)
        key_index = torch.arange(2 * window, device=times.device).view(1, 2 * window)
        band = (key_index > query_index) & (key_index <= query_index + window)  # i - w < j <= i
        visible = band.view(1, 1, window, 2 * window) & valid_win.unsqueeze(2)  # [B, nb, w, 2w]
        local_visible = torch.cat([visible, visible.new_ones(batch, blocks, window, 1)], dim=3).unsqueeze(1)
        local_terms = temporal_components(t_blocks, _with_previous_block(t_blocks, 1), utc_offset, weekend_rule)
    else:
        local_visible = torch.zeros(batch, 1, 0, window, 2 * window + 1, dtype=torch.bool, device=times.device)
        local_terms = torch.zeros(batch, 0, 3, window, 2 * window, device=times.device)

    # With no candidates these are empty ([B, ·, 0, ·]): nothing reads them.
    start = max(0, length - window)
    t_cand = times[:, length:]
    candidate_valid = history_valid[:, start:].view(batch, 1, 1, -1)
    candidate_terms = temporal_components(t_cand, times[:, start:length], utc_offset, weekend_rule)
    candidate_self_terms = temporal_components(t_cand.unsqueeze(-1), t_cand.unsqueeze(-1), utc_offset, weekend_rule)
    times_for_kernels = fused_times(times, chunk_id, chunk_end, chunk_valid, positions, valid, utc_offset) if fused \
        else _no_fused_times(times.device)
    return EvoGeometry(chunk_id, global_visible, global_terms, positions, tail_visible, tail_terms, local_visible, local_terms,
                       candidate_valid, candidate_terms, candidate_self_terms, chunk_end, chunk_valid, valid, times_for_kernels)


def global_branch(q: Tensor, k_summary: Tensor, v_summary: Tensor, geometry: EvoGeometry, scales: Tensor) -> Tensor:
    """`k_summary`/`v_summary` `[B, H, ≥L, D]` are what a chunk token averages (k, v or a learned map of them)."""
    chunk_id = geometry.chunk_id
    length, num_chunks = chunk_id.shape[1], geometry.global_visible.shape[-1]
    k_chunk = chunk_summaries(k_summary[:, :, :length], chunk_id, num_chunks)
    v_chunk = chunk_summaries(v_summary[:, :, :length], chunk_id, num_chunks)
    return _attend(q, k_chunk, v_chunk, geometry.global_visible, bias_from_components(geometry.global_terms, scales))


def transition_branch(q: Tensor, k: Tensor, v: Tensor, geometry: EvoGeometry, scales: Tensor) -> Tensor:
    positions = geometry.tail_positions
    k_tail, v_tail = _gather_positions(k, positions), _gather_positions(v, positions)
    return _attend(q, k_tail, v_tail, geometry.tail_visible, bias_from_components(geometry.tail_terms, scales))


def local_branch(q: Tensor, k: Tensor, v: Tensor, k_profile: Tensor, v_profile: Tensor, geometry: EvoGeometry,
                 window: int, scales: Tensor) -> Tensor:
    """Blocked causal sliding window over the history plus the candidates' own window."""
    batch, heads, total, dim = q.shape
    length = geometry.chunk_id.shape[1]
    blocks = (length + window - 1) // window
    pad = blocks * window - length
    hq, hk, hv = (F.pad(x[:, :, :length], (0, 0, pad, 0)) for x in (q, k, v))
    qb = _blocks(hq, blocks, window)  # [B, H, nb, w, D]
    k_win = _with_previous_block(_blocks(hk, blocks, window), 2)  # previous block + own: [B, H, nb, 2w, D]
    v_win = _with_previous_block(_blocks(hv, blocks, window), 2)
    bias = bias_from_components(geometry.local_terms, scales).permute(0, 2, 1, 3, 4)  # [B, H, nb, w, 2w]
    keys = torch.cat([k_win, k_profile.unsqueeze(2).expand(batch, heads, blocks, 1, dim)], dim=3)
    values = torch.cat([v_win, v_profile.unsqueeze(2).expand(batch, heads, blocks, 1, dim)], dim=3)
    full_bias = torch.cat([bias, bias.new_zeros(batch, heads, blocks, window, 1)], dim=4)  # profile key: bias 0
    history_out = _attend(qb, keys, values, geometry.local_visible, full_bias).reshape(batch, heads, blocks * window, dim)[:, :, pad:]
    if total == length:
        return history_out
    return torch.cat([history_out, _candidate_local(q, k, v, k_profile, v_profile, geometry, window, scales)], dim=2)


def _candidate_local(q: Tensor, k: Tensor, v: Tensor, k_profile: Tensor, v_profile: Tensor, geometry: EvoGeometry,
                     window: int, scales: Tensor) -> Tensor:
    """Candidates: the last `window` history positions, the candidate itself and the profile token."""
    length = geometry.chunk_id.shape[1]
    start = max(0, length - window)
    qc, kc, vc = q[:, :, length:], k[:, :, length:], v[:, :, length:]
    k_recent, v_recent = k[:, :, start:length], v[:, :, start:length]
    scale = 1.0 / math.sqrt(q.shape[-1])
    logits_recent = torch.matmul(qc, k_recent.transpose(-1, -2)) * scale + bias_from_components(geometry.candidate_terms, scales)
    logits_recent = logits_recent.masked_fill(~geometry.candidate_valid, float("-inf"))
    self_bias = bias_from_components(geometry.candidate_self_terms, scales).squeeze(-1).permute(0, 2, 1, 3)  # [B, H, M, 1]
    logits_self = (qc * kc).sum(-1, keepdim=True) * scale + self_bias
    logits_profile = torch.matmul(qc, k_profile.transpose(-1, -2)) * scale
    weights = torch.softmax(torch.cat([logits_recent, logits_self, logits_profile], dim=-1), dim=-1)
    recent_w, self_w, profile_w = weights.split([k_recent.shape[2], 1, 1], dim=-1)
    return torch.matmul(recent_w, v_recent) + self_w * vc + profile_w * v_profile


def evo_attend(q: Tensor, k: Tensor, v: Tensor, k_profile: Tensor, v_profile: Tensor, k_summary: Tensor, v_summary: Tensor,
               geometry: EvoGeometry, window: int, scales: Tensor) -> Tuple[Tensor, Tensor, Tensor]:
    """The three branches for one layer, given the batch's `evo_geometry`."""
    return (
        global_branch(q, k_summary, v_summary, geometry, scales),
        transition_branch(q, k, v, geometry, scales),
        local_branch(q, k, v, k_profile, v_profile, geometry, window, scales),
    )


def evo_attend_fused(q: Tensor, k: Tensor, v: Tensor, k_profile: Tensor, v_profile: Tensor, k_summary: Tensor, v_summary: Tensor,
                     geometry: EvoGeometry, window: int, scales: Tensor, times: Tensor, utc_offset: int,
                     weekend_rule: int, keyed: bool = True) -> Tuple[Tensor, Tensor, Tensor]:
    """`evo_attend` through the fused Triton kernels, one autograd node for the three branches that
    sums their q, k, v gradients inside the kernels (`recsys.ops.evo_branches_triton`): global and
    transition in the keyed kernel (`recsys.ops.evo_keyed_triton`), the local branch, the
    candidates' window included, in the local kernel (`recsys.ops.evo_local_triton`). `geometry`
    from `evo_geometry(..., fused=True)`. `keyed=False` keeps the structural global and transition
    branches (geometry from `fused=False`) and the candidates' PyTorch window, each branch its own
    node: what the keyed kernel and the shared node gain, for benchmarks. CUDA, or Triton's
    interpreter in tests; not scriptable."""
    from recsys.ops.evo_branches_triton import evo_branches_triton  # triton: a training-time dependency only
    from recsys.ops.evo_local_triton import local_history_prepared

    if keyed:
        qkv = torch.stack([x.transpose(1, 2) for x in (q, k, v)], dim=2)  # the packed layout the model's projection writes
        shared = k_summary is k and v_summary is v
        return evo_branches_triton(qkv, k_profile, v_profile, None if shared else k_summary, None if shared else v_summary, geometry, window,
                                   scales, weekend_rule)
    length = geometry.chunk_id.shape[1]
    # The kernels read contiguous [B, H, T, D]; the model's heads are transposed views of one
    # projection. One copy here instead of one per kernel call.
    q, k, v = q.contiguous(), k.contiguous(), v.contiguous()
    if geometry.fused_times.query_times.numel() == 0:  # a geometry built with fused=False
        geometry = geometry._replace(fused_times=fused_times(times, geometry.chunk_id, geometry.chunk_end, geometry.chunk_valid,
                                                             geometry.tail_positions, geometry.tail_valid, utc_offset))
    timing = geometry.fused_times
    history = local_history_prepared(q[:, :, :length], k[:, :, :length], v[:, :, :length], k_profile, v_profile, timing.history_times,
                                     timing.history_flags, timing.history_clock, window, scales, weekend_rule)
    local = history if q.shape[2] == length else torch.cat(
        [history, _candidate_local(q, k, v, k_profile, v_profile, geometry, window, scales)], dim=2)
    return global_branch(q, k_summary, v_summary, geometry, scales), transition_branch(q, k, v, geometry, scales), local


def evo_attend_packed(qkv: Tensor, k_profile: Tensor, v_profile: Tensor, k_summary: Optional[Tensor], v_summary: Optional[Tensor],
                      geometry: EvoGeometry, window: int, scales: Tensor, weekend_rule: int) -> Tuple[Tensor, Tensor, Tensor]:
    """`evo_attend_fused` on the packed projection `[B, T, 3, H, D]` as the model computes it: the
    kernels read q, k and v in place and write their gradients into one packed tensor (no transposing
    copies either way). k_summary / v_summary None: the chunks average qkv's k and v."""
    from recsys.ops.evo_branches_triton import evo_branches_triton  # triton: a training-time dependency only

    return evo_branches_triton(qkv, k_profile, v_profile, k_summary, v_summary, geometry, window, scales, weekend_rule)


def evo_attend_packed_gated(qkv: Tensor, k_profile: Tensor, v_profile: Tensor, k_summary: Optional[Tensor], v_summary: Optional[Tensor],
                            geometry: EvoGeometry, window: int, scales: Tensor, weekend_rule: int, gates: Tensor) -> Tensor:
    """`evo_attend_packed` with SparseCTR's fusion of the three outputs by `gates` `[3, B, H, T]`
    (global, transition, local) done inside the kernels: `[B, H, T, D]`."""
    from recsys.ops.evo_branches_triton import evo_branches_triton_gated

    return evo_branches_triton_gated(qkv, k_profile, v_profile, k_summary, v_summary, geometry, window, scales, weekend_rule, gates)


def evo_branches(q: Tensor, k: Tensor, v: Tensor, k_profile: Tensor, v_profile: Tensor, k_summary: Tensor, v_summary: Tensor,
                 times: Tensor, chunk_id: Tensor, chunk_start: Tensor, chunk_end: Tensor, chunk_valid: Tensor, tail: int, window: int,
                 scales: Tensor, utc_offset: int, weekend_rule: int) -> Tuple[Tensor, Tensor, Tensor]:
    """Structural kernels: (global, transition, local) outputs, each `[B, H, T, D]`.

    q, k, v: `[B, H, T, D]`; k_profile, v_profile: `[B, H, 1, D]`; times: `[B, T]` int64 (history
    then candidates' request time); chunk layout as produced by `personalized_chunks`.
    """
    candidates = q.shape[2] - chunk_id.shape[1]
    geometry = evo_geometry(times, chunk_id, chunk_start, chunk_end, chunk_valid, candidates, tail, window, utc_offset, weekend_rule)
    return evo_attend(q, k, v, k_profile, v_profile, k_summary, v_summary, geometry, window, scales)


def _masked_softmax_attend(logits: Tensor, visible: Tensor, values: Tensor) -> Tensor:
    """Reference attention: rows with no visible key give zeros."""
    has_key = visible.any(dim=-1, keepdim=True)
    logits = logits.masked_fill(~visible, float("-inf")).masked_fill(~has_key, 0.0)
    weights = torch.softmax(logits, dim=-1) * has_key
    return torch.matmul(weights, values)


def evo_branches_reference(q: Tensor, k: Tensor, v: Tensor, k_profile: Tensor, v_profile: Tensor, k_summary: Tensor, v_summary: Tensor,
                           times: Tensor, chunk_id: Tensor, chunk_start: Tensor, chunk_end: Tensor, chunk_valid: Tensor, tail: int,
                           window: int, scales: Tensor, utc_offset: int, weekend_rule: int) -> Tuple[Tensor, Tensor, Tensor]:
    """Dense-mask twin of `evo_branches`: O(T²) masks, one-hot chunk means, loops for the tails."""
    batch, heads, total, dim = q.shape
    length, num_chunks = chunk_id.shape[1], chunk_end.shape[1]
    scale = 1.0 / math.sqrt(dim)
    position = torch.arange(total, device=q.device)
    is_candidate = position >= length
    query_pos = torch.where(is_candidate, torch.full_like(position, length), position)

    # Global: one-hot chunk membership, means by matmul.
    membership = (chunk_id.unsqueeze(1) == torch.arange(1, num_chunks + 1, device=q.device).view(1, -1, 1)).to(q.dtype)  # [B, P, L]
    counts = membership.sum(-1).clamp_min(1.0)
    k_chunk = torch.einsum("bpl,bhld->bhpd", membership, k_summary[:, :, :length]) / counts.view(batch, 1, num_chunks, 1)
    v_chunk = torch.einsum("bpl,bhld->bhpd", membership, v_summary[:, :, :length]) / counts.view(batch, 1, num_chunks, 1)
    chunk_last_time = torch.stack([torch.stack([times[b, int(chunk_end[b, c]) - 1] if bool(chunk_valid[b, c]) else times[b, 0]
                                                for c in range(num_chunks)]) for b in range(batch)])
    chunk_visible = chunk_valid.unsqueeze(1) & (chunk_end.unsqueeze(1) <= query_pos.view(1, -1, 1))
    logits = torch.matmul(q, k_chunk.transpose(-1, -2)) * scale + composite_temporal_bias(times, chunk_last_time, scales, utc_offset, weekend_rule)
    out_global = _masked_softmax_attend(logits, chunk_visible.unsqueeze(1), v_chunk)

    # Transition: explicit list of (chunk, position) tail tokens per row.
    tails: List[List[Tuple[int, int]]] = []
    for b in range(batch):
        row = []
        for c in range(num_chunks):
            for t in range(tail):
                row.append((c, int(chunk_end[b, c]) - tail + t))
        tails.append(row)
    tail_pos = torch.tensor([[max(p, 0) for _, p in row] for row in tails], device=q.device)
    tail_valid = torch.tensor([[bool(chunk_valid[b, c]) and p >= int(chunk_start[b, c]) for c, p in row] for b, row in enumerate(tails)], device=q.device)
    tail_end = torch.tensor([[int(chunk_end[b, c]) for c, _ in row] for b, row in enumerate(tails)], device=q.device)
    k_tail = torch.stack([k[b][:, tail_pos[b]] for b in range(batch)])
    v_tail = torch.stack([v[b][:, tail_pos[b]] for b in range(batch)])
    tail_times = torch.stack([times[b, tail_pos[b]] for b in range(batch)])
    tail_visible = tail_valid.unsqueeze(1) & (tail_end.unsqueeze(1) <= query_pos.view(1, -1, 1))
    logits = torch.matmul(q, k_tail.transpose(-1, -2)) * scale + composite_temporal_bias(times, tail_times, scales, utc_offset, weekend_rule)
    out_transition = _masked_softmax_attend(logits, tail_visible.unsqueeze(1), v_tail)

    # Local: a dense T x T band mask plus the profile token as key 0.
    real = torch.cat([chunk_id > 0, torch.ones(batch, total - length, dtype=torch.bool, device=q.device)], dim=1)  # [B, T]
    qi, kj = position.view(-1, 1), position.view(1, -1)
    history_band = (kj <= qi) & (kj > qi - window) & (kj < length)
    candidate_keys = ((kj < length) & (kj >= length - window)) | (kj == qi)
    band = torch.where(is_candidate.view(-1, 1), candidate_keys, history_band)
    local_visible = band.unsqueeze(0) & real.unsqueeze(1)  # [B, T, T]
    local_visible = torch.cat([torch.ones(batch, total, 1, dtype=torch.bool, device=q.device), local_visible], dim=2)
    keys = torch.cat([k_profile, k], dim=2)
    values = torch.cat([v_profile, v], dim=2)
    bias = composite_temporal_bias(times, times, scales, utc_offset, weekend_rule)
    bias = torch.cat([bias.new_zeros(batch, heads, total, 1), bias], dim=3)
    logits = torch.matmul(q, keys.transpose(-1, -2)) * scale + bias
    out_local = _masked_softmax_attend(logits, local_visible.unsqueeze(1), values)
    return out_global, out_transition, out_local
