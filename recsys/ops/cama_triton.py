"""CamA as one fused Triton kernel (forward and backward): flash-attention tiling with the channel
masks and the log-bucket temporal bias computed per tile from `[B, N]` metadata, so no
`[B, H, N, N]` mask, bias or score tensor exists in either direction.

The rules are those of `recsys.ops.cama.cama_mask` (its docstring); `cama_attention` with the dense
mask and bias is the twin the tests and `benchmarks/gpu_suite.py` compare against. Structure:

* The kernel attends over the event keys only and returns the output and its log-sum-exp; the
  per-segment context key (bias 0, always visible) is merged afterwards in PyTorch through the
  log-sum-exp, which keeps the kernel free of gathers and lets autograd carry the context's grads.
* Every allowed key precedes or equals its query in sequence order (history is time-sorted and
  candidates follow it), so each query block walks key blocks from its segment's first real
  position up to its own diagonal: causal block skipping, and packed users never touch each other.
* Temporal bias per tile: the tile's bucket range comes from its smallest and largest Δ (buckets
  are monotone in Δ). Off the diagonal a tile inside one bucket (most of them: log buckets widen
  with Δ) adds table[bucket] as one scalar; the others take a log2 per pair and look the bias up with
  one `ld.global.nc` per pair (`_gather`): a plain `tl.load` gather there is software-pipelined by
  Triton into 4-byte cp.async copies through shared memory, which cost ~4x the tile's matmuls
  (benchmarks/probe_cama_triton.py). The table is read head-major (each head's entries adjacent;
  no faster than row-major as measured, kept for the smaller footprint per head).
* Bias-table gradient: per tile, the score gradients are summed per bucket over the (few) buckets
  the tile spans; off the diagonal the lowest bucket's sums stay per row until the bucket changes
  along the walk. One atomic add per bucket per program.
* Ablation (`ABLATION["bias_steps"]` > 0; slower since the gather went direct): off-diagonal tiles
  spanning at most that many bucket edges take table[low] plus one compare-and-select per edge
  against exact integer thresholds (`bucket_thresholds`); the forward and dQ walks find the first
  key block that does not qualify.
* Buckets use `log_bucket`'s float32 formula; the GPU's fast `log2` can put a Δ lying within
  rounding of a bucket edge into the neighbouring bucket (about 1 pair in 10⁵, measured in the suite).

Runs on CUDA; on CPU it runs under Triton's interpreter (`TRITON_INTERPRET=1`), which the tests use.
"""

import functools
from typing import List, NamedTuple, Tuple

import torch
import triton
import triton.language as tl
from torch import Tensor

from recsys.ops.temporal import LOG_BUCKET_PER_OCTAVE, log_bucket
from recsys.ops.triton_tiles import (INTERPRETED, LOG2E, RELAXED, backward_row_term, finish_rows, load_backward_rows, load_tile,
                                     merge_extra_key, online_softmax_step, pad_head_dim, padded_head_dim, program_block, store_tile, tile_configs)

_REAL, _HISTORY, _CANDIDATE, _FIRST_GROUP_BIT = 1, 2, 4, 3
DIRECT_GATHER: tl.constexpr = tl.constexpr(not INTERPRETED)  # inline PTX does not run in the interpreter


class CamaMeta(NamedTuple):
    """Per-batch metadata the kernels read instead of masks (built once, shared by all layers)."""

    times: Tensor  # [B, N] int32: seconds since the row's earliest real event (0 at padding)
    segment: Tensor  # [B, N] int32
    position: Tensor  # [B, N] int32
    flags: Tensor  # [B, N] int32: real | history | candidate | one bit per action group
    block_start: Tensor  # [B, N] int32: first key index a query's segment can attend
    segment_end: Tensor  # [B, N] int32: one past the last position of the key's segment
    head_group: Tensor  # [H] int32: -1 content channel, else the action group's bit index
    # int32 bucket thresholds (`bucket_thresholds`): built with the metadata, outside compiled blocks,
    # so a CUDA-graph replay of a block (train.compile_mode reduce-overhead) holds no cached tensor
    # that was allocated in its memory pool (cudagraph trees refuse one: "not tracked as outputs").
    thresholds: Tensor


def channel_bits(head_groups: List[Tensor]) -> Tuple[List[Tensor], Tensor]:
    """Distinct action groups and, per head, its group's flag bit (-1: content channel). Static per model."""
    distinct: List[Tensor] = []
    head_group = []
    for group in head_groups:
        if group.numel() == 0:
            head_group.append(-1)
            continue
        index = next((i for i, seen in enumerate(distinct) if torch.equal(seen.cpu(), group.cpu())), None)
        if index is None:
            distinct.append(group.cpu())
            index = len(distinct) - 1
        head_group.append(_FIRST_GROUP_BIT + index)
    if _FIRST_GROUP_BIT + len(distinct) > 31:
        raise ValueError(f"{len(distinct)} action groups: the fused CamA kernel holds at most 28")
    return distinct, torch.tensor(head_group, dtype=torch.int32)


def cama_meta(segment: Tensor, position: Tensor, times: Tensor, real: Tensor, is_candidate: Tensor, action_ids: Tensor,
              groups: List[Tensor], head_group: Tensor, num_buckets: int) -> CamaMeta:
    """`cama_mask`'s arguments with the heads' channels as `channel_bits` gives them; segments must be
    contiguous runs and each segment's history sorted by time."""
    batch, length = segment.shape
    history = real & ~is_candidate
    _assert_history_time_sorted(segment, times, history)
    flags = real.int() * _REAL + history.int() * _HISTORY + is_candidate.int() * _CANDIDATE
    for index, group in enumerate(groups):
        member = torch.isin(action_ids, group.to(action_ids.device))
        flags = flags + (member.int() << (_FIRST_GROUP_BIT + index))
    index = torch.arange(length, device=segment.device).expand(batch, length)
    new_run = torch.ones_like(segment, dtype=torch.bool)
    new_run[:, 1:] = segment[:, 1:] != segment[:, :-1]
    run_start = torch.where(new_run, index, torch.zeros_like(index)).cummax(dim=1).values
    # Left padding is never a key: start each row's key walk at its first real position.
    first_real = torch.where(real, index, torch.full_like(index, length)).min(dim=1, keepdim=True).values
    block_start = torch.maximum(run_start, first_real.clamp_max(length - 1))
    ends_run = torch.ones_like(new_run)
    ends_run[:, :-1] = new_run[:, 1:]
    run_end = torch.where(ends_run, index + 1, torch.full_like(index, length)).flip(1).cummin(dim=1).values.flip(1)
    return CamaMeta(_relative_times(times, real), segment.int().contiguous(), position.int().contiguous(), flags.int().contiguous(),
                    block_start.int().contiguous(), run_end.int().contiguous(), head_group.to(segment.device),
                    bucket_thresholds(num_buckets, segment.device))


def _relative_times(times: Tensor, real: Tensor) -> Tensor:
    """int32 offsets from each row's earliest real event: the same differences as int64, half the bytes
    and native 32-bit arithmetic in the kernels. A row must span less than 2³¹ s (68 years)."""
    base = torch.where(real, times, torch.full_like(times, torch.iinfo(torch.int64).max)).min(dim=1, keepdim=True).values
    relative = torch.where(real, times - base, torch.zeros_like(times))
    fits = relative.max() < 2**31
    if fits.is_cuda:
        torch._assert_async(fits, "fused CamA: a row spans 2^31 s or more")
    elif not bool(fits):
        raise ValueError("fused CamA: a row's events span 2^31 seconds or more")
    return relative.int().contiguous()


def _assert_history_time_sorted(segment: Tensor, times: Tensor, history: Tensor) -> None:
    """The kernels walk keys only up to the diagonal: an action key (earlier in time) must also come
    earlier in the sequence. Asynchronous on CUDA (no host sync); fails the next synchronising call."""
    # Segment in the high bits: a running maximum then never crosses from one user into the next.
    key = (segment.long() << 44) + times
    floor = torch.full_like(key, torch.iinfo(torch.int64).min)
    running = torch.where(history, key, floor).cummax(dim=1).values
    previous = torch.cat([floor[:, :1], running[:, :-1]], dim=1)
    sorted_ok = (~history | (key >= previous)).all()
    if sorted_ok.is_cuda:
        torch._assert_async(sorted_ok, "fused CamA needs each user's history sorted by time")
    elif not bool(sorted_ok):
        raise ValueError("fused CamA needs each user's history sorted by time (segment by segment)")


@triton.jit
def _log2(x, FAST_LOG2: tl.constexpr):
    if FAST_LOG2:  # the SFU's lg2.approx: one instruction instead of libdevice's accurate polynomial
        return tl.inline_asm_elementwise("lg2.approx.f32 $0, $1;", "=r,r", [x], dtype=tl.float32, is_pure=True, pack=1)
    else:
        return tl.log2(x)


@triton.jit
def _gather(pointers, DIRECT: tl.constexpr):
    """A per-pair table lookup. DIRECT: one `ld.global.nc` per element into the registers it is used
    in. A plain 32-bit `tl.load` gather inside a loop is software-pipelined by Triton into 4-byte
    cp.async copies to shared memory plus a layout round trip every tile, which made the bias cost
    ~4x the tile's matmuls (benchmarks/probe_cama_triton.py, rungs 7 and 11)."""
    if DIRECT:
        return tl.inline_asm_elementwise("ld.global.nc.f32 $0, [$1];", "=r,l", [pointers], dtype=tl.float32, is_pure=True, pack=1)
    else:
        return tl.load(pointers)


@triton.jit
def _bucket(delta, NUM_BUCKETS: tl.constexpr, BUCKET_SCALE: tl.constexpr, FAST_LOG2: tl.constexpr):
    """`log_bucket` on int32 time differences (any shape)."""
    # log2(max(Δ, 1)) >= 0, so truncation is the floor.
    return tl.minimum(_log2(tl.maximum(delta, 1).to(tl.float32), FAST_LOG2) * BUCKET_SCALE, NUM_BUCKETS).to(tl.int32)


@triton.jit
def _exact_bucket(delta, THRESH, NUM_BUCKETS: tl.constexpr, BUCKET_SCALE: tl.constexpr, FAST_LOG2: tl.constexpr):
    """`log_bucket` of a scalar Δ >= 1, exactly: the log2 estimate (within one bucket) corrected against
    the integer thresholds (`bucket_thresholds`)."""
    estimate = _bucket(delta, NUM_BUCKETS, BUCKET_SCALE, FAST_LOG2)
    return estimate - (delta < tl.load(THRESH + estimate)).to(tl.int32) + (delta >= tl.load(THRESH + estimate + 1)).to(tl.int32)


@triton.jit
def _tile_buckets(t_i, rows, t_j, history_j, THRESH, NUM_BUCKETS: tl.constexpr, BUCKET_SCALE: tl.constexpr, FAST_LOG2: tl.constexpr):
    """The exact bucket range (low, high) of the tile's pairs of query rows and history keys.
    Buckets are monotone in Δ and Δ = t_i - t_j lies within [min t_i - max t_j, max t_i - min t_j]."""
    t_i_low = tl.min(tl.where(rows, t_i, 2147483647), 0)
    t_i_high = tl.max(tl.where(rows, t_i, 0), 0)
    t_j_low = tl.min(tl.where(history_j, t_j, 2147483647), 0)
    t_j_high = tl.max(tl.where(history_j, t_j, -1), 0)  # no history key: the range comes out empty (high < low)
    low = _exact_bucket(tl.maximum(t_i_low - t_j_high, 1), THRESH, NUM_BUCKETS, BUCKET_SCALE, FAST_LOG2)
    high = _exact_bucket(tl.maximum(t_i_high - t_j_low, 1), THRESH, NUM_BUCKETS, BUCKET_SCALE, FAST_LOG2)
    return low, high


@triton.jit
def _bucket_range(t_i, rows, t_j, keys, NUM_BUCKETS: tl.constexpr, BUCKET_SCALE: tl.constexpr, FAST_LOG2: tl.constexpr):
    """`_bucket` of the tile's smallest and largest Δ over `rows` x `keys`: every pair's `_bucket` lies
    between them (monotone in Δ). No key: high < low or both 0 (rows are never empty)."""
    t_i_low = tl.min(tl.where(rows, t_i, 2147483647), 0)
    t_i_high = tl.max(tl.where(rows, t_i, 0), 0)
    t_j_low = tl.min(tl.where(keys, t_j, 2147483647), 0)
    t_j_high = tl.max(tl.where(keys, t_j, -1), 0)
    return (_bucket(t_i_low - t_j_high, NUM_BUCKETS, BUCKET_SCALE, FAST_LOG2),
            _bucket(t_i_high - t_j_low, NUM_BUCKETS, BUCKET_SCALE, FAST_LOG2))


@triton.jit
def _pair_bias(scores, t_i, t_j, TABLE, TABLE_STRIDE: tl.constexpr, NUM_BUCKETS: tl.constexpr, BUCKET_SCALE: tl.constexpr,
               FAST_LOG2: tl.constexpr):
    """Scores plus each pair's bias by its own bucket (a log2 and a `_gather` per pair), and the buckets."""
    bucket = _bucket(t_i[:, None] - t_j[None, :], NUM_BUCKETS, BUCKET_SCALE, FAST_LOG2)
    return scores + _gather(TABLE + bucket * TABLE_STRIDE, DIRECT_GATHER), bucket


@triton.jit
def _threshold_bias(delta, low, TABLE, THRESH, TABLE_STRIDE: tl.constexpr, NUM_BUCKETS: tl.constexpr, STEPS: tl.constexpr):
    """The bias of a tile whose buckets lie in low .. low + STEPS, without a log2 or a table gather per
    pair: table[low] plus, per bucket edge crossed, the step to the next entry (Δ >= threshold)."""
    previous = tl.load(TABLE + low * TABLE_STRIDE)
    bias = tl.zeros(delta.shape, dtype=tl.float32) + previous
    for step in tl.static_range(1, STEPS + 1):
        value = tl.load(TABLE + tl.minimum(low + step, NUM_BUCKETS) * TABLE_STRIDE)
        bias += tl.where(delta >= tl.load(THRESH + low + step), value - previous, 0.0)
        previous = value
    return bias


@triton.jit
def _tile(q, k, offs_m, offs_n, t_i, seg_i, pos_i, candidate_i, t_j, seg_j, pos_j, flags_j, TABLE, group_bit, N,
          TABLE_STRIDE: tl.constexpr, NUM_BUCKETS: tl.constexpr, BUCKET_SCALE: tl.constexpr, qk_scale, PRECISION: tl.constexpr,
          DIAGONAL: tl.constexpr, BIAS: tl.constexpr, CONTENT: tl.constexpr, PACKED: tl.constexpr, FAST_LOG2: tl.constexpr,
          THRESH, FAR: tl.constexpr, STEPS: tl.constexpr, SINGLE: tl.constexpr):
    """Scores of one tile in log2 units (bias included, -inf where the channel forbids the key), its
    buckets (FAR: its Δ instead) and the range they span (the table gradient's bins).

    SINGLE: an off-diagonal tile inside one bucket adds the bias as a scalar. FAR tiles (the
    threshold ablation: off the diagonal, at most STEPS bucket edges inside, as the walks check) take
    it through `_threshold_bias`; the others by bucket and `_gather`.

    Off the diagonal every key precedes every query, so the content rule reduces to "a history event"
    (a per-key test); only diagonal tiles evaluate positions, self and candidate rules. TABLE holds
    the bias table times log2(e), and `qk_scale` is head_dim^-1/2 · log2(e)."""
    history_j = ((flags_j & 2) != 0) & (offs_n < N)
    if CONTENT:
        if DIAGONAL:
            self_key = offs_m[:, None] == offs_n[None, :]
            causal_history = (pos_j[None, :] <= pos_i[:, None]) & history_j[None, :]
            ok = ((flags_j & 1) != 0)[None, :] & tl.where(candidate_i[:, None], history_j[None, :] | self_key, causal_history | self_key)
        else:
            ok = history_j[None, :]
    else:
        in_group = history_j & (((flags_j >> group_bit) & 1) != 0)
        ok = in_group[None, :] & (t_j[None, :] < t_i[:, None])
    if PACKED:  # several users per row; a padded row holds one user and skips this test
        ok = ok & (seg_i[:, None] == seg_j[None, :])
    scores = tl.dot(q, tl.trans(k), input_precision=PRECISION) * qk_scale
    if BIAS:
        if FAR:
            bucket = t_i[:, None] - t_j[None, :]
            low, _ = _tile_buckets(t_i, offs_m < N, t_j, history_j, THRESH, NUM_BUCKETS, BUCKET_SCALE, FAST_LOG2)
            scores += _threshold_bias(bucket, low, TABLE, THRESH, TABLE_STRIDE, NUM_BUCKETS, STEPS)
            high = low
        else:
            # Diagonal tiles also hold candidates' self pairs (a key that is no history event).
            keys = ((flags_j & 1) != 0) & (offs_n < N) if DIAGONAL else history_j
            low, high = _bucket_range(t_i, offs_m < N, t_j, keys, NUM_BUCKETS, BUCKET_SCALE, FAST_LOG2)
            if SINGLE and not DIAGONAL:
                if low == high:  # one bucket for the whole tile (most tiles off the diagonal): one scalar load
                    bucket = tl.zeros(scores.shape, dtype=tl.int32) + low
                    scores += tl.load(TABLE + low * TABLE_STRIDE)
                else:
                    scores, bucket = _pair_bias(scores, t_i, t_j, TABLE, TABLE_STRIDE, NUM_BUCKETS, BUCKET_SCALE, FAST_LOG2)
            else:
                scores, bucket = _pair_bias(scores, t_i, t_j, TABLE, TABLE_STRIDE, NUM_BUCKETS, BUCKET_SCALE, FAST_LOG2)
    else:  # ablation (benchmarks only): no temporal bias
        bucket = tl.zeros([1, 1], dtype=tl.int32)
        low, high = 0, 0
    return tl.where(ok, scores, float("-inf")), bucket, low, high


@triton.jit
def _query_meta(T_row, SEG_row, POS_row, FLAGS_row, offs_m, rows):
    """A query block's times, segments, positions and candidate flags."""
    t_i = tl.load(T_row + offs_m, mask=rows, other=0)
    seg_i = tl.load(SEG_row + offs_m, mask=rows, other=-2)
    pos_i = tl.load(POS_row + offs_m, mask=rows, other=0)
    candidate_i = (tl.load(FLAGS_row + offs_m, mask=rows, other=0) & 4) != 0
    return t_i, seg_i, pos_i, candidate_i


@triton.jit
def _load_keys(K, V, base, offs_n, offs_d, D: tl.constexpr, cols, T_row, SEG_row, POS_row, FLAGS_row):
    """A key tile and its events' metadata."""
    k = load_tile(K, base, offs_n, offs_d, D, cols)
    v = load_tile(V, base, offs_n, offs_d, D, cols)
    t_j = tl.load(T_row + offs_n, mask=cols, other=0)
    seg_j = tl.load(SEG_row + offs_n, mask=cols, other=-1)
    pos_j = tl.load(POS_row + offs_n, mask=cols, other=0)
    flags_j = tl.load(FLAGS_row + offs_n, mask=cols, other=0)
    return k, v, t_j, seg_j, pos_j, flags_j


@triton.jit
def _far_keys_end(t_i, rows, T_row, FLAGS_row, N, lo, hi, THRESH, NUM_BUCKETS: tl.constexpr, BUCKET_SCALE: tl.constexpr,
                  FAST_LOG2: tl.constexpr, BIAS: tl.constexpr, STEPS: tl.constexpr, BLOCK_N: tl.constexpr):
    """Query-major walks: the first key block in `lo` .. `hi` whose pairs with this query block span
    more than STEPS bucket edges. The blocks before it take the threshold bias; keys further back in
    time are fewer buckets apart (log buckets), so usually only the blocks next to the diagonal do not."""
    end = hi
    if BIAS and STEPS > 0:
        for start_n in range(lo, hi, BLOCK_N):
            offs_n = start_n + tl.arange(0, BLOCK_N)
            cols = offs_n < N
            t_j = tl.load(T_row + offs_n, mask=cols, other=0)
            history_j = ((tl.load(FLAGS_row + offs_n, mask=cols, other=0) & 2) != 0) & cols
            low, high = _tile_buckets(t_i, rows, t_j, history_j, THRESH, NUM_BUCKETS, BUCKET_SCALE, FAST_LOG2)
            end = tl.where((high - low > STEPS) & (end == hi), start_n, end)
    else:
        end = lo
    return end


@triton.jit
def _key_tile_scores(start_n, q, K, V, base, offs_m, offs_d, t_i, seg_i, pos_i, candidate_i, T_row, SEG_row, POS_row, FLAGS_row,
                     TABLE, group_bit, qk_scale, N, TABLE_STRIDE: tl.constexpr, D: tl.constexpr, NUM_BUCKETS: tl.constexpr,
                     BUCKET_SCALE: tl.constexpr, PRECISION: tl.constexpr, BLOCK_N: tl.constexpr, DIAGONAL: tl.constexpr,
                     BIAS: tl.constexpr, CONTENT: tl.constexpr, PACKED: tl.constexpr, FAST_LOG2: tl.constexpr,
                     THRESH, FAR: tl.constexpr, STEPS: tl.constexpr, SINGLE: tl.constexpr):
    """The key tile at `start_n` and its scores against the query block (what the forward and dQ walk)."""
    offs_n = start_n + tl.arange(0, BLOCK_N)
    cols = offs_n < N
    k, v, t_j, seg_j, pos_j, flags_j = _load_keys(K, V, base, offs_n, offs_d, D, cols, T_row, SEG_row, POS_row, FLAGS_row)
    scores, _, _, _ = _tile(q, k, offs_m, offs_n, t_i, seg_i, pos_i, candidate_i, t_j, seg_j, pos_j, flags_j, TABLE, group_bit, N,
                         TABLE_STRIDE, NUM_BUCKETS, BUCKET_SCALE, qk_scale, PRECISION, DIAGONAL, BIAS, CONTENT, PACKED, FAST_LOG2, THRESH, FAR, STEPS, SINGLE)
    return k, v, scores


@triton.jit
def _forward_block(acc, l_i, m_i, q, K, V, base, offs_m, offs_d, t_i, seg_i, pos_i, candidate_i, T_row, SEG_row, POS_row,
                   FLAGS_row, TABLE, group_bit, sm_scale, N, lo, hi, TABLE_STRIDE: tl.constexpr, D: tl.constexpr,
                   NUM_BUCKETS: tl.constexpr, BUCKET_SCALE: tl.constexpr, PRECISION: tl.constexpr, BLOCK_N: tl.constexpr,
                   DIAGONAL: tl.constexpr, BIAS: tl.constexpr, CONTENT: tl.constexpr, PACKED: tl.constexpr, FAST_LOG2: tl.constexpr,
                   THRESH, FAR: tl.constexpr, STEPS: tl.constexpr, SINGLE: tl.constexpr):
    qk_scale = sm_scale * 1.4426950408889634
    for start_n in range(lo, hi, BLOCK_N):
        k, v, scores = _key_tile_scores(start_n, q, K, V, base, offs_m, offs_d, t_i, seg_i, pos_i, candidate_i, T_row, SEG_row,
                                        POS_row, FLAGS_row, TABLE, group_bit, qk_scale, N, TABLE_STRIDE, D, NUM_BUCKETS, BUCKET_SCALE,
                                        PRECISION, BLOCK_N, DIAGONAL, BIAS, CONTENT, PACKED, FAST_LOG2,
                                        THRESH, FAR, STEPS, SINGLE)
        acc, l_i, m_i = online_softmax_step(acc, l_i, m_i, scores, v, PRECISION)
    return acc, l_i, m_i


@triton.jit
def _forward_walk(acc, l_i, m_i, q, K, V, base, offs_m, offs_d, t_i, seg_i, pos_i, candidate_i, T_row, SEG_row, POS_row, FLAGS_row,
                  TABLE, group_bit, sm_scale, N, lo, start_m, diagonal_lo, diagonal_hi, TABLE_STRIDE: tl.constexpr, D: tl.constexpr,
                  NUM_BUCKETS: tl.constexpr, BUCKET_SCALE: tl.constexpr, PRECISION: tl.constexpr, BLOCK_N: tl.constexpr,
                  BIAS: tl.constexpr, CONTENT: tl.constexpr, PACKED: tl.constexpr, FAST_LOG2: tl.constexpr, THRESH, STEPS: tl.constexpr, SINGLE: tl.constexpr):
    """A query block's key blocks: those before it (`lo` .. `start_m`; threshold bias up to `far_end`),
    then the diagonal ones."""
    far_end = _far_keys_end(t_i, offs_m < N, T_row, FLAGS_row, N, lo, start_m, THRESH, NUM_BUCKETS, BUCKET_SCALE, FAST_LOG2, BIAS,
                            STEPS, BLOCK_N)
    acc, l_i, m_i = _forward_block(acc, l_i, m_i, q, K, V, base, offs_m, offs_d, t_i, seg_i, pos_i, candidate_i, T_row, SEG_row, POS_row,
                                   FLAGS_row, TABLE, group_bit, sm_scale, N, lo, far_end, TABLE_STRIDE, D, NUM_BUCKETS, BUCKET_SCALE, PRECISION,
                                   BLOCK_N, False, BIAS, CONTENT, PACKED, FAST_LOG2, THRESH, True, STEPS, SINGLE)
    acc, l_i, m_i = _forward_block(acc, l_i, m_i, q, K, V, base, offs_m, offs_d, t_i, seg_i, pos_i, candidate_i, T_row, SEG_row, POS_row,
                                   FLAGS_row, TABLE, group_bit, sm_scale, N, far_end, start_m, TABLE_STRIDE, D, NUM_BUCKETS, BUCKET_SCALE, PRECISION,
                                   BLOCK_N, False, BIAS, CONTENT, PACKED, FAST_LOG2, THRESH, False, STEPS, SINGLE)
    return _forward_block(acc, l_i, m_i, q, K, V, base, offs_m, offs_d, t_i, seg_i, pos_i, candidate_i, T_row, SEG_row, POS_row,
                          FLAGS_row, TABLE, group_bit, sm_scale, N, diagonal_lo, diagonal_hi, TABLE_STRIDE, D, NUM_BUCKETS, BUCKET_SCALE, PRECISION,
                          BLOCK_N, True, BIAS, CONTENT, PACKED, FAST_LOG2, THRESH, False, STEPS, SINGLE)


# BLOCK_M >= BLOCK_N in query-major kernels and BLOCK_N >= BLOCK_M in the key-major one: a block then
# starts on a boundary of the other axis' blocks, which the diagonal split relies on.
# Interpreted, the tiles are unequal as on the GPU, so the tests cover the diagonal split's bookkeeping.
# Only tiles that compile without large spills with the bias (benchmarks/kernel_resources.py): the
# 128x128 and 64x128 candidates spilled 0.7-1 KiB and took minutes of ptxas time on the H100 each.
# 64x32 runs capped at 128 registers (143-149 uncapped; 3 -> 4 programs per SM, 0-16 bytes spilled):
# forward 1,784 against 1,960 us, dQ 1,749 against 1,879 at n = 4,096 (session 14, call 10). The
# dK/dV kernel's caps (168, 128) spill 0.7-0.9 KiB and ran 1.5-2.2x slower.
_QUERY_MAJOR = tile_configs([(64, 64, 4, 3), (64, 32, 4, 3, 128), (128, 64, 8, 3)], interpreted=(32, 16))
_KEY_MAJOR = tile_configs([(64, 64, 4, 3), (32, 64, 4, 3), (16, 64, 4, 3)], interpreted=(16, 32))


@triton.autotune(configs=_QUERY_MAJOR, key=["N", "D", "H", "BIAS", "PACKED", "STEPS", "SINGLE"])
@triton.jit
def _cama_forward_kernel(Q, K, V, T, SEG, POS, FLAGS, START, HEAD_GROUP, TABLE, THRESH, O, LSE, sm_scale, N,
                         H: tl.constexpr, D: tl.constexpr, TABLE_STRIDE: tl.constexpr, HEAD_STRIDE: tl.constexpr, NUM_BUCKETS: tl.constexpr, BUCKET_SCALE: tl.constexpr,
                         PRECISION: tl.constexpr, BIAS: tl.constexpr, TABLE_GRAD: tl.constexpr, PACKED: tl.constexpr, FAST_LOG2: tl.constexpr,
                         STEPS: tl.constexpr, SINGLE: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr):
    b, h, pid_bh, start_m, offs_m, offs_d, rows, base = program_block(BLOCK_M, H, N, D)
    q = load_tile(Q, base, offs_m, offs_d, D, rows)
    T_row, SEG_row, POS_row, FLAGS_row = T + b * N, SEG + b * N, POS + b * N, FLAGS + b * N
    t_i, seg_i, pos_i, candidate_i = _query_meta(T_row, SEG_row, POS_row, FLAGS_row, offs_m, rows)
    group_bit = tl.load(HEAD_GROUP + h)
    TABLE += h * HEAD_STRIDE  # this head's entries, TABLE_STRIDE apart

    m_i = tl.full([BLOCK_M], float("-inf"), dtype=tl.float32)
    l_i = tl.zeros([BLOCK_M], dtype=tl.float32)
    acc = tl.zeros([BLOCK_M, D], dtype=tl.float32)
    lo = tl.minimum(tl.load(START + b * N + start_m) // BLOCK_N * BLOCK_N, start_m)
    diagonal_lo = tl.maximum(lo, start_m)
    diagonal_hi = tl.minimum(start_m + BLOCK_M, N)
    # One branch per program, outside the loops: the channel is a compile-time constant inside them.
    if group_bit < 0:
        acc, l_i, m_i = _forward_walk(acc, l_i, m_i, q, K, V, base, offs_m, offs_d, t_i, seg_i, pos_i, candidate_i, T_row, SEG_row, POS_row,
                                      FLAGS_row, TABLE, group_bit, sm_scale, N, lo, start_m, diagonal_lo, diagonal_hi, TABLE_STRIDE, D, NUM_BUCKETS,
                                      BUCKET_SCALE, PRECISION, BLOCK_N, BIAS, True, PACKED, FAST_LOG2, THRESH, STEPS, SINGLE)
    else:
        acc, l_i, m_i = _forward_walk(acc, l_i, m_i, q, K, V, base, offs_m, offs_d, t_i, seg_i, pos_i, candidate_i, T_row, SEG_row, POS_row,
                                      FLAGS_row, TABLE, group_bit, sm_scale, N, lo, start_m, diagonal_lo, diagonal_hi, TABLE_STRIDE, D, NUM_BUCKETS,
                                      BUCKET_SCALE, PRECISION, BLOCK_N, BIAS, False, PACKED, FAST_LOG2, THRESH, STEPS, SINGLE)
    out, lse = finish_rows(acc, l_i, m_i)
    store_tile(O, base, offs_m, offs_d, D, rows, out)
    tl.store(LSE + pid_bh.to(tl.int64) * N + offs_m, lse, mask=rows)


@triton.jit
def _dkdv_block(dk, dv, histogram, k, v, Q, DO, LSE, DELTA, base, pid_bh, offs_n, offs_d, t_j, seg_j, pos_j, flags_j,
                T_row, SEG_row, POS_row, FLAGS_row, TABLE, group_bit, sm_scale, N, lo, hi, TABLE_STRIDE: tl.constexpr, D: tl.constexpr,
                NUM_BUCKETS: tl.constexpr, BUCKET_SCALE: tl.constexpr, TABLE_BINS: tl.constexpr, PRECISION: tl.constexpr,
                BLOCK_M: tl.constexpr, DIAGONAL: tl.constexpr, BIAS: tl.constexpr, TABLE_GRAD: tl.constexpr, CONTENT: tl.constexpr,
                PACKED: tl.constexpr, FAST_LOG2: tl.constexpr, THRESH, FAR: tl.constexpr, STEPS: tl.constexpr, SINGLE: tl.constexpr):
    qk_scale = sm_scale * 1.4426950408889634
    bins = tl.arange(0, TABLE_BINS)
    # Off the diagonal, successive query blocks mostly share their lowest bucket (log buckets widen with
    # Δ): its score gradients are summed per row (within each warp) into `run_rows` until the bucket
    # changes, and only then reduced across the block into the histogram.
    run_rows = tl.zeros([BLOCK_M], dtype=tl.float32)
    run_bucket = -1
    for start_m in range(lo, hi, BLOCK_M):
        offs_m = start_m + tl.arange(0, BLOCK_M)
        rows = offs_m < N
        q, do, lse, delta_row = load_backward_rows(Q, base, D, DO, base, D, LSE, DELTA, pid_bh.to(tl.int64) * N, offs_m, offs_d, rows)
        t_i, seg_i, pos_i, candidate_i = _query_meta(T_row, SEG_row, POS_row, FLAGS_row, offs_m, rows)
        scores, bucket, low, high = _tile(q, k, offs_m, offs_n, t_i, seg_i, pos_i, candidate_i, t_j, seg_j, pos_j, flags_j, TABLE, group_bit,
                                    N, TABLE_STRIDE, NUM_BUCKETS, BUCKET_SCALE, qk_scale, PRECISION, DIAGONAL, BIAS, CONTENT, PACKED, FAST_LOG2,
                                    THRESH, FAR, STEPS, SINGLE)
        p = tl.exp2(scores - lse[:, None])  # 0 at forbidden keys (-inf) and rows past N (lse +inf)
        dv += tl.dot(tl.trans(p.to(do.dtype)), do, input_precision=PRECISION)
        dp = tl.dot(do, tl.trans(v), input_precision=PRECISION)
        ds = p * (dp - delta_row[:, None])
        dk += tl.dot(tl.trans(ds.to(q.dtype)), q, input_precision=PRECISION)
        if TABLE_GRAD:
            # The tile's buckets span low .. high (`_tile`), a few values off the diagonal.
            if DIAGONAL:
                first = low
            else:
                if low != run_bucket:
                    histogram += tl.where(bins == run_bucket, tl.sum(run_rows, 0), 0.0)
                    run_rows = tl.zeros([BLOCK_M], dtype=tl.float32)
                    run_bucket = low
                run_rows += tl.sum(tl.where(bucket == low, ds, 0.0), axis=1)
                first = low + 1
            # Inside an `if`: a bare nested loop makes Triton skip software-pipelining the walk's
            # q/dO loads (no cp.async at all; benchmarks/kernel_resources.py).
            if high >= first:
                for value in range(first, high + 1):
                    total = tl.sum(tl.sum(tl.where(bucket == value, ds, 0.0), axis=1), axis=0)
                    histogram += tl.where(bins == value, total, 0.0)
    if TABLE_GRAD:
        histogram += tl.where(bins == run_bucket, tl.sum(run_rows, 0), 0.0)
    return dk, dv, histogram


@triton.jit
def _dkdv_walk(dk, dv, histogram, k, v, Q, DO, LSE, DELTA, base, pid_bh, offs_n, offs_d, t_j, seg_j, pos_j, flags_j, T_row, SEG_row,
               POS_row, FLAGS_row, TABLE, group_bit, sm_scale, N, start_n, diagonal_end, hi, TABLE_STRIDE: tl.constexpr, D: tl.constexpr,
               NUM_BUCKETS: tl.constexpr, BUCKET_SCALE: tl.constexpr, TABLE_BINS: tl.constexpr, PRECISION: tl.constexpr,
               BLOCK_M: tl.constexpr, BIAS: tl.constexpr, TABLE_GRAD: tl.constexpr, CONTENT: tl.constexpr, PACKED: tl.constexpr,
               FAST_LOG2: tl.constexpr, THRESH, STEPS: tl.constexpr, SINGLE: tl.constexpr):
    """A key block's query blocks: the diagonal ones (`start_n` .. `diagonal_end`), then those after it.

    Every tile takes its bias by bucket and gather here: the threshold path with its table gradient
    (STEPS + 1 tile-wide sums per tile) measured slower, 9.1 against 5.9 ms at n = 4,096 on the H100."""
    dk, dv, histogram = _dkdv_block(dk, dv, histogram, k, v, Q, DO, LSE, DELTA, base, pid_bh, offs_n, offs_d, t_j, seg_j, pos_j, flags_j,
                                    T_row, SEG_row, POS_row, FLAGS_row, TABLE, group_bit, sm_scale, N, start_n, diagonal_end, TABLE_STRIDE, D,
                                    NUM_BUCKETS, BUCKET_SCALE, TABLE_BINS, PRECISION, BLOCK_M, True, BIAS, TABLE_GRAD, CONTENT, PACKED, FAST_LOG2,
                                    THRESH, False, STEPS, SINGLE)
    return _dkdv_block(dk, dv, histogram, k, v, Q, DO, LSE, DELTA, base, pid_bh, offs_n, offs_d, t_j, seg_j, pos_j, flags_j,
                       T_row, SEG_row, POS_row, FLAGS_row, TABLE, group_bit, sm_scale, N, diagonal_end, hi, TABLE_STRIDE, D,
                       NUM_BUCKETS, BUCKET_SCALE, TABLE_BINS, PRECISION, BLOCK_M, False, BIAS, TABLE_GRAD, CONTENT, PACKED, FAST_LOG2,
                       THRESH, False, STEPS, SINGLE)


@triton.autotune(configs=_KEY_MAJOR, key=["N", "D", "H", "BIAS", "TABLE_GRAD", "PACKED", "STEPS", "SINGLE"], reset_to_zero=["DTABLE"])
@triton.jit
def _cama_dkdv_kernel(Q, K, V, DO, LSE, DELTA, T, SEG, POS, FLAGS, END, HEAD_GROUP, TABLE, THRESH, DK, DV, DTABLE, sm_scale, N,
                      H: tl.constexpr, D: tl.constexpr, TABLE_STRIDE: tl.constexpr, HEAD_STRIDE: tl.constexpr, NUM_BUCKETS: tl.constexpr, BUCKET_SCALE: tl.constexpr, TABLE_BINS: tl.constexpr,
                      PRECISION: tl.constexpr, BIAS: tl.constexpr, TABLE_GRAD: tl.constexpr, PACKED: tl.constexpr, FAST_LOG2: tl.constexpr, STEPS: tl.constexpr, SINGLE: tl.constexpr, BLOCK_M: tl.constexpr,
                      BLOCK_N: tl.constexpr):
    """One key block per program: walks the query blocks that can see it; dK, dV and the bias histogram."""
    b, h, pid_bh, start_n, offs_n, offs_d, cols, base = program_block(BLOCK_N, H, N, D)
    T_row, SEG_row, POS_row, FLAGS_row = T + b * N, SEG + b * N, POS + b * N, FLAGS + b * N
    k, v, t_j, seg_j, pos_j, flags_j = _load_keys(K, V, base, offs_n, offs_d, D, cols, T_row, SEG_row, POS_row, FLAGS_row)
    group_bit = tl.load(HEAD_GROUP + h)
    TABLE += h * HEAD_STRIDE  # this head's entries, TABLE_STRIDE apart
    dk = tl.zeros([BLOCK_N, D], dtype=tl.float32)
    dv = tl.zeros([BLOCK_N, D], dtype=tl.float32)
    histogram = tl.zeros([TABLE_BINS], dtype=tl.float32)
    hi = tl.load(END + b * N + tl.minimum(start_n + BLOCK_N, N) - 1)
    hi = tl.where(tl.max(flags_j & 1, 0) > 0, hi, start_n)  # a block of padding is nobody's key
    diagonal_end = tl.minimum(start_n + BLOCK_N, hi)
    if group_bit < 0:
        dk, dv, histogram = _dkdv_walk(dk, dv, histogram, k, v, Q, DO, LSE, DELTA, base, pid_bh, offs_n, offs_d, t_j, seg_j, pos_j, flags_j,
                                       T_row, SEG_row, POS_row, FLAGS_row, TABLE, group_bit, sm_scale, N, start_n, diagonal_end, hi, TABLE_STRIDE, D,
                                       NUM_BUCKETS, BUCKET_SCALE, TABLE_BINS, PRECISION, BLOCK_M, BIAS, TABLE_GRAD, True, PACKED, FAST_LOG2, THRESH, STEPS, SINGLE)
    else:
        dk, dv, histogram = _dkdv_walk(dk, dv, histogram, k, v, Q, DO, LSE, DELTA, base, pid_bh, offs_n, offs_d, t_j, seg_j, pos_j, flags_j,
                                       T_row, SEG_row, POS_row, FLAGS_row, TABLE, group_bit, sm_scale, N, start_n, diagonal_end, hi, TABLE_STRIDE, D,
                                       NUM_BUCKETS, BUCKET_SCALE, TABLE_BINS, PRECISION, BLOCK_M, BIAS, TABLE_GRAD, False, PACKED, FAST_LOG2, THRESH, STEPS, SINGLE)
    store_tile(DK, base, offs_n, offs_d, D, cols, dk * sm_scale)
    store_tile(DV, base, offs_n, offs_d, D, cols, dv)
    if TABLE_GRAD:
        bins = tl.arange(0, TABLE_BINS)
        tl.atomic_add(DTABLE + h * HEAD_STRIDE + bins * TABLE_STRIDE, histogram, mask=bins <= NUM_BUCKETS, sem=RELAXED)


@triton.jit
def _dq_block(dq, q, do, lse, delta_row, K, V, base, offs_m, offs_d, t_i, seg_i, pos_i, candidate_i, T_row, SEG_row, POS_row,
              FLAGS_row, TABLE, group_bit, sm_scale, N, lo, hi, TABLE_STRIDE: tl.constexpr, D: tl.constexpr, NUM_BUCKETS: tl.constexpr,
              BUCKET_SCALE: tl.constexpr, PRECISION: tl.constexpr, BLOCK_N: tl.constexpr, DIAGONAL: tl.constexpr, BIAS: tl.constexpr,
              CONTENT: tl.constexpr, PACKED: tl.constexpr, FAST_LOG2: tl.constexpr, THRESH, FAR: tl.constexpr, STEPS: tl.constexpr, SINGLE: tl.constexpr):
    qk_scale = sm_scale * 1.4426950408889634
    for start_n in range(lo, hi, BLOCK_N):
        k, v, scores = _key_tile_scores(start_n, q, K, V, base, offs_m, offs_d, t_i, seg_i, pos_i, candidate_i, T_row, SEG_row,
                                        POS_row, FLAGS_row, TABLE, group_bit, qk_scale, N, TABLE_STRIDE, D, NUM_BUCKETS, BUCKET_SCALE,
                                        PRECISION, BLOCK_N, DIAGONAL, BIAS, CONTENT, PACKED, FAST_LOG2,
                                        THRESH, FAR, STEPS, SINGLE)
        p = tl.exp2(scores - lse[:, None])
        dp = tl.dot(do, tl.trans(v), input_precision=PRECISION)
        ds = p * (dp - delta_row[:, None])
        dq += tl.dot(ds.to(k.dtype), k, input_precision=PRECISION)
    return dq


@triton.jit
def _dq_walk(dq, q, do, lse, delta_row, K, V, base, offs_m, offs_d, t_i, seg_i, pos_i, candidate_i, T_row, SEG_row, POS_row, FLAGS_row,
             TABLE, group_bit, sm_scale, N, lo, start_m, diagonal_lo, diagonal_hi, TABLE_STRIDE: tl.constexpr, D: tl.constexpr,
             NUM_BUCKETS: tl.constexpr, BUCKET_SCALE: tl.constexpr, PRECISION: tl.constexpr, BLOCK_N: tl.constexpr, BIAS: tl.constexpr,
             CONTENT: tl.constexpr, PACKED: tl.constexpr, FAST_LOG2: tl.constexpr, THRESH, STEPS: tl.constexpr, SINGLE: tl.constexpr):
    """As `_forward_walk`, for dQ."""
    far_end = _far_keys_end(t_i, offs_m < N, T_row, FLAGS_row, N, lo, start_m, THRESH, NUM_BUCKETS, BUCKET_SCALE, FAST_LOG2, BIAS,
                            STEPS, BLOCK_N)
    dq = _dq_block(dq, q, do, lse, delta_row, K, V, base, offs_m, offs_d, t_i, seg_i, pos_i, candidate_i, T_row, SEG_row, POS_row,
                   FLAGS_row, TABLE, group_bit, sm_scale, N, lo, far_end, TABLE_STRIDE, D, NUM_BUCKETS, BUCKET_SCALE, PRECISION, BLOCK_N,
                   False, BIAS, CONTENT, PACKED, FAST_LOG2, THRESH, True, STEPS, SINGLE)
    dq = _dq_block(dq, q, do, lse, delta_row, K, V, base, offs_m, offs_d, t_i, seg_i, pos_i, candidate_i, T_row, SEG_row, POS_row,
                   FLAGS_row, TABLE, group_bit, sm_scale, N, far_end, start_m, TABLE_STRIDE, D, NUM_BUCKETS, BUCKET_SCALE, PRECISION, BLOCK_N,
                   False, BIAS, CONTENT, PACKED, FAST_LOG2, THRESH, False, STEPS, SINGLE)
    return _dq_block(dq, q, do, lse, delta_row, K, V, base, offs_m, offs_d, t_i, seg_i, pos_i, candidate_i, T_row, SEG_row, POS_row,
                     FLAGS_row, TABLE, group_bit, sm_scale, N, diagonal_lo, diagonal_hi, TABLE_STRIDE, D, NUM_BUCKETS, BUCKET_SCALE, PRECISION,
                     BLOCK_N, True, BIAS, CONTENT, PACKED, FAST_LOG2, THRESH, False, STEPS, SINGLE)


@triton.autotune(configs=_QUERY_MAJOR, key=["N", "D", "H", "BIAS", "PACKED", "STEPS", "SINGLE"])
@triton.jit
def _cama_dq_kernel(Q, K, V, DO, LSE, DELTA, T, SEG, POS, FLAGS, START, HEAD_GROUP, TABLE, THRESH, DQ, sm_scale, N,
                    H: tl.constexpr, D: tl.constexpr, TABLE_STRIDE: tl.constexpr, HEAD_STRIDE: tl.constexpr, NUM_BUCKETS: tl.constexpr, BUCKET_SCALE: tl.constexpr,
                    PRECISION: tl.constexpr, BIAS: tl.constexpr, TABLE_GRAD: tl.constexpr, PACKED: tl.constexpr, FAST_LOG2: tl.constexpr, STEPS: tl.constexpr, SINGLE: tl.constexpr, BLOCK_M: tl.constexpr,
                    BLOCK_N: tl.constexpr):
    b, h, pid_bh, start_m, offs_m, offs_d, rows, base = program_block(BLOCK_M, H, N, D)
    q, do, lse, delta_row = load_backward_rows(Q, base, D, DO, base, D, LSE, DELTA, pid_bh.to(tl.int64) * N, offs_m, offs_d, rows)
    T_row, SEG_row, POS_row, FLAGS_row = T + b * N, SEG + b * N, POS + b * N, FLAGS + b * N
    t_i, seg_i, pos_i, candidate_i = _query_meta(T_row, SEG_row, POS_row, FLAGS_row, offs_m, rows)
    group_bit = tl.load(HEAD_GROUP + h)
    TABLE += h * HEAD_STRIDE  # this head's entries, TABLE_STRIDE apart
    dq = tl.zeros([BLOCK_M, D], dtype=tl.float32)
    lo = tl.minimum(tl.load(START + b * N + start_m) // BLOCK_N * BLOCK_N, start_m)
    diagonal_lo = tl.maximum(lo, start_m)
    diagonal_hi = tl.minimum(start_m + BLOCK_M, N)
    if group_bit < 0:
        dq = _dq_walk(dq, q, do, lse, delta_row, K, V, base, offs_m, offs_d, t_i, seg_i, pos_i, candidate_i, T_row, SEG_row, POS_row,
                      FLAGS_row, TABLE, group_bit, sm_scale, N, lo, start_m, diagonal_lo, diagonal_hi, TABLE_STRIDE, D, NUM_BUCKETS, BUCKET_SCALE,
                      PRECISION, BLOCK_N, BIAS, True, PACKED, FAST_LOG2, THRESH, STEPS, SINGLE)
    else:
        dq = _dq_walk(dq, q, do, lse, delta_row, K, V, base, offs_m, offs_d, t_i, seg_i, pos_i, candidate_i, T_row, SEG_row, POS_row,
                      FLAGS_row, TABLE, group_bit, sm_scale, N, lo, start_m, diagonal_lo, diagonal_hi, TABLE_STRIDE, D, NUM_BUCKETS, BUCKET_SCALE,
                      PRECISION, BLOCK_N, BIAS, False, PACKED, FAST_LOG2, THRESH, STEPS, SINGLE)
    store_tile(DQ, base, offs_m, offs_d, D, rows, dq * sm_scale)


# Ablation switches for benchmarks/gpu_suite.py only: what the temporal bias, its table gradient,
# the SFU's approximate log2 (against libdevice's exact one), the table's layout, the threshold path
# (bias_steps > 0) and the one-bucket tiles' scalar bias (single_bucket) cost or save.
ABLATION = {"bias": True, "table_grad": True, "fast_log2": True, "bias_steps": 0, "table_layout": "head_major", "single_bucket": True}
_MAX_STEPS = 32


def bucket_thresholds(num_buckets: int, device: torch.device) -> Tensor:
    """int32 `[num_buckets + 2 + _MAX_STEPS]`: entry v is the smallest Δ >= 1 whose `log_bucket` is >= v
    (entry 0 is 1), and 2^31 - 1 past the last bucket an int32 Δ reaches. The kernels compare Δ
    against these instead of evaluating log2 per pair, so the threshold path equals `log_bucket` exactly."""
    return _thresholds_on(num_buckets, str(device))


@functools.lru_cache(maxsize=None)
def _thresholds_on(num_buckets: int, device: str) -> Tensor:
    limit = 2**31 - 1
    wanted = torch.arange(num_buckets + 2 + _MAX_STEPS, dtype=torch.int64)
    low, high = torch.ones_like(wanted), torch.full_like(wanted, limit)
    for _ in range(32):  # binary search on the monotone bucket, every entry at once
        middle = (low + high) // 2
        reaches = log_bucket(middle, num_buckets) >= wanted
        high, low = torch.where(reaches, middle, high), torch.where(reaches, low, middle + 1)
    thresholds = torch.where(log_bucket(low, num_buckets) >= wanted, low, torch.full_like(low, limit))
    return thresholds.int().to(device)


def _kernel_table(table: Tensor) -> Tensor:
    """The bias table as the kernels read it: float32 in log2 units, `[buckets, H]` with each head's
    entries adjacent in memory (`ABLATION["table_layout"]`: a warp's per-pair lookups stay within a
    few cache lines of one head; against the row-major layout this measured no different, 17.48 vs
    17.54 ms in benchmarks/RESULTS.md session 7 call 1)."""
    scaled = table.float() * LOG2E
    if ABLATION["table_layout"] == "head_major":
        return scaled.t().contiguous().t()
    return scaled.contiguous()


def _launch_meta(q: Tensor, table32: Tensor, num_buckets: int, packed: bool) -> dict:
    # float32 inputs get exact float32 products (tests, correctness checks); bf16/fp16 use tensor cores.
    precision = "ieee" if q.dtype == torch.float32 else "tf32"
    return dict(H=q.shape[1], TABLE_STRIDE=table32.stride(0), HEAD_STRIDE=table32.stride(1), NUM_BUCKETS=num_buckets, BUCKET_SCALE=LOG_BUCKET_PER_OCTAVE, PRECISION=precision,
                BIAS=ABLATION["bias"], TABLE_GRAD=ABLATION["bias"] and ABLATION["table_grad"], PACKED=packed, STEPS=ABLATION["bias_steps"], SINGLE=ABLATION["single_bucket"],
                FAST_LOG2=ABLATION["fast_log2"] and not INTERPRETED)


# Custom ops with a registered autograd formula (not an autograd.Function behind
# torch.compiler.disable): torch.compile traces the node as one opaque call from its fake
# implementation, so a compiled GRAB block has no graph break around it.
@torch.library.custom_op("recsys::cama_events", mutates_args=())
def _cama_forward(q: Tensor, k: Tensor, v: Tensor, table: Tensor, meta_tensors: List[Tensor], num_buckets: int, sm_scale: float,
                  packed: bool) -> Tuple[Tensor, Tensor]:
    """(out, natural log-sum-exp) over the event keys."""
    q, k, v = q.contiguous(), k.contiguous(), v.contiguous()  # dense rows: a no-op for the eager caller's tensors
    meta = CamaMeta(*meta_tensors)
    batch, heads, length, dim = q.shape
    out, lse = _cama_forward_shapes(q, k, v, table, meta_tensors, num_buckets, sm_scale, packed)
    table32 = _kernel_table(table)
    grid = lambda meta_params: (triton.cdiv(length, meta_params["BLOCK_M"]), batch * heads)  # noqa: E731
    _cama_forward_kernel[grid](q, k, v, meta.times, meta.segment, meta.position, meta.flags, meta.block_start, meta.head_group,
                               table32, meta.thresholds, out, lse, sm_scale, length, D=dim,
                               **_launch_meta(q, table32, num_buckets, packed))
    return out, lse


@_cama_forward.register_fake
def _cama_forward_shapes(q, k, v, table, meta_tensors, num_buckets, sm_scale, packed):
    return torch.empty(q.shape, device=q.device, dtype=q.dtype), torch.empty(q.shape[:3], device=q.device, dtype=torch.float32)


@torch.library.custom_op("recsys::cama_events_backward", mutates_args=())
def _cama_backward(grad_out: Tensor, grad_lse: Tensor, q: Tensor, k: Tensor, v: Tensor, out: Tensor, lse: Tensor, table: Tensor,
                   meta_tensors: List[Tensor], num_buckets: int, sm_scale: float, packed: bool) -> Tuple[Tensor, Tensor, Tensor, Tensor]:
    """(dq, dk, dv, d table)."""
    q, k, v, out, lse = (x.contiguous() for x in (q, k, v, out, lse))
    meta = CamaMeta(*meta_tensors)
    batch, heads, length, dim = q.shape
    grad_out = grad_out.contiguous()
    # dS = P ∘ (dP − rowsum(dO ∘ O) + dLSE): the LSE output's gradient folds into the row term.
    delta = backward_row_term(grad_out, out, grad_lse)
    dq, dk, dv = torch.empty_like(q), torch.empty_like(k), torch.empty_like(v)
    table32 = _kernel_table(table)
    dtable = torch.zeros_like(table32)  # table32's strides; natural units: d(score)/d(bias) = 1
    launch = _launch_meta(q, table32, num_buckets, packed)
    _cama_dkdv_kernel[lambda meta_params: (triton.cdiv(length, meta_params["BLOCK_N"]), batch * heads)](
        q, k, v, grad_out, lse, delta, meta.times, meta.segment, meta.position, meta.flags, meta.segment_end, meta.head_group,
        table32, meta.thresholds, dk, dv, dtable, sm_scale, length, D=dim, TABLE_BINS=triton.next_power_of_2(num_buckets + 1), **launch)
    _cama_dq_kernel[lambda meta_params: (triton.cdiv(length, meta_params["BLOCK_M"]), batch * heads)](
        q, k, v, grad_out, lse, delta, meta.times, meta.segment, meta.position, meta.flags, meta.block_start, meta.head_group,
        table32, meta.thresholds, dq, sm_scale, length, D=dim, **launch)
    return dq, dk, dv, dtable.to(table.dtype).contiguous()  # contiguous, as the fake implementation promises


@_cama_backward.register_fake
def _cama_backward_shapes(grad_out, grad_lse, q, k, v, out, lse, table, meta_tensors, num_buckets, sm_scale, packed):
    return tuple(x.new_empty(x.shape) for x in (q, k, v, table))  # contiguous, as the real ones


def _cama_setup_context(ctx, inputs, output) -> None:
    q, k, v, table, meta_tensors, num_buckets, sm_scale, packed = inputs
    ctx.save_for_backward(q, k, v, *output, table, *meta_tensors)
    ctx.num_buckets, ctx.sm_scale, ctx.packed = num_buckets, sm_scale, packed


def _cama_backward_formula(ctx, grad_out: Tensor, grad_lse: Tensor):
    q, k, v, out, lse, table, *meta_tensors = ctx.saved_tensors
    dq, dk, dv, dtable = _cama_backward(grad_out, grad_lse, q, k, v, out, lse, table, meta_tensors, ctx.num_buckets, ctx.sm_scale, ctx.packed)
    return dq, dk, dv, dtable, [None] * len(meta_tensors), None, None, None


_cama_forward.register_autograd(_cama_backward_formula, setup_context=_cama_setup_context)


def cama_triton_attention(q: Tensor, k: Tensor, v: Tensor, k_context: Tensor, v_context: Tensor, meta: CamaMeta, table: Tensor,
                          num_buckets: int, packed: bool = True) -> Tensor:
    """q, k, v `[B, H, N, D]` (event keys), k/v_context `[B, H, S, D]` (key s serves segment s),
    table `[num_buckets + 1, H]` -> `[B, H, N, D]`, equal to `cama_attention` over `[context, events]`.
    `packed=False` promises one segment per row (the padded layout) and skips the segment test."""
    if not q.is_cuda and not INTERPRETED:
        raise RuntimeError("the fused CamA kernel runs on CUDA (on the CPU only under TRITON_INTERPRET=1, as the tests do); "
                           "use attention 'softmax' elsewhere")
    if meta.thresholds.shape[0] != num_buckets + 2 + _MAX_STEPS:
        raise ValueError(f"meta was built for another bucket count than {num_buckets} (cama_meta's num_buckets)")
    dim = q.shape[-1]
    padded = padded_head_dim(dim)
    # Under autocast the action-aware keys/values can come out float32 next to bfloat16 queries.
    k, v = k.to(q.dtype), v.to(q.dtype)
    q_padded = pad_head_dim(q, padded)
    out, lse = _cama_forward(q_padded, pad_head_dim(k, padded), pad_head_dim(v, padded), table, list(meta), num_buckets, dim**-0.5, packed)
    # The merge reads q from the dense copy the kernel read (the model's q is a transposed view).
    return merge_extra_key(out[..., :dim], lse, q_padded[..., :dim], _per_query(k_context, meta.segment),
                           _per_query(v_context, meta.segment))


def _per_query(context: Tensor, segment: Tensor) -> Tensor:
    """`[B, H, S, D]` context keys -> `[B, H, N, D]`, row n holding its segment's key. Not a gather:
    its backward scatter-adds every query of a segment into the same few addresses (atomics on one
    row: 77 ms at B·N = 65,536 on the H100). An expand (one segment) or a one-hot matmul reduce instead."""
    batch, heads, segments, dim = context.shape
    if segments == 1:
        return context.expand(batch, heads, segment.shape[1], dim)
    one_hot = torch.nn.functional.one_hot(segment.long(), segments).to(context.dtype).unsqueeze(1)  # [B, 1, N, S]
    return torch.matmul(one_hot, context)
