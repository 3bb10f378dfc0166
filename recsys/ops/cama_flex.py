"""CamA through FlexAttention: the channel masks as a `mask_mod` and the log-bucket temporal bias
as a `score_mod`, so nothing of size `[B, H, N, S + N]` is materialised and fully masked blocks are
skipped. The rules are those of `recsys.ops.cama.cama_mask` (its docstring); `cama_attention` with
the dense mask is the twin the tests and `benchmarks/gpu_suite.py` compare against.

For speed FlexAttention must run compiled (`torch.compile(flex_attention)`), which is what
`cama_flex_attention` does on CUDA; on CPU it runs FlexAttention's eager path (forward only in
torch 2.13: no backward on CPU), used by the tests. Measured on an H100 (benchmarks/RESULTS.md):
correct (gradients included) but 1.6x slower than the dense path so far, and the block mask is
still built densely; it is the starting point for a fused CamA kernel, not yet a speed-up.
"""

from __future__ import annotations

from typing import Callable, Tuple

import torch
from torch import Tensor
from torch.nn.attention.flex_attention import BlockMask, create_block_mask, flex_attention

_COMPILED: dict = {}


def head_channels(head_groups: list, num_actions: int, device: torch.device) -> Tuple[Tensor, Tensor]:
    """`content_head [H]` bool and `in_group [H, A]` bool (action row a belongs to head h's group)."""
    content = torch.tensor([g.numel() == 0 for g in head_groups], device=device)
    in_group = torch.zeros(len(head_groups), num_actions, dtype=torch.bool, device=device)
    for h, group in enumerate(head_groups):
        if group.numel():
            in_group[h, group.to(device)] = True
    return content, in_group


def cama_mask_mod(segment: Tensor, position: Tensor, times: Tensor, real: Tensor, is_candidate: Tensor, action_ids: Tensor,
                  content_head: Tensor, in_group: Tensor, num_context: int) -> Callable:
    history = real & ~is_candidate

    def mask_mod(b, h, q, kv):
        is_context = kv < num_context
        j = (kv - num_context).clamp(min=0)
        same_segment = segment[b, q] == segment[b, j]
        key_history = history[b, j]
        is_self = j == q
        content = same_segment & real[b, j] & torch.where(
            is_candidate[b, q], key_history | is_self, ((position[b, j] <= position[b, q]) & key_history) | is_self)
        action = same_segment & key_history & in_group[h, action_ids[b, j]] & (times[b, j] < times[b, q])
        allowed = torch.where(content_head[h], content, action)
        return torch.where(is_context, segment[b, q] == kv, allowed)

    return mask_mod


def time_bias_score_mod(times: Tensor, bias_table: Tensor, num_context: int, num_buckets: int) -> Callable:
    """`score + bias_table[log_bucket(t_q − t_k), h]` on event keys, unchanged on context keys."""

    def score_mod(score, b, h, q, kv):
        j = (kv - num_context).clamp(min=0)
        delta = (times[b, q] - times[b, j]).clamp(min=1).to(torch.float32)
        bucket = torch.floor(torch.log2(delta) * 2.3028145533553).clamp(0, num_buckets).to(torch.int64)
        return torch.where(kv < num_context, score, score + bias_table[bucket, h].to(score.dtype))

    return score_mod


def cama_block_mask(segment: Tensor, position: Tensor, times: Tensor, real: Tensor, is_candidate: Tensor, action_ids: Tensor,
                    content_head: Tensor, in_group: Tensor, num_context: int) -> BlockMask:
    batch, length = segment.shape
    mask_mod = cama_mask_mod(segment, position, times, real, is_candidate, action_ids, content_head, in_group, num_context)
    # Compiled on CUDA: the mask is evaluated block by block instead of as one dense [B, H, N, S + N] tensor.
    return create_block_mask(mask_mod, batch, content_head.shape[0], length, num_context + length, device=segment.device,
                             _compile=segment.is_cuda)


def _cama_flex(q: Tensor, k: Tensor, v: Tensor, block_mask: BlockMask, times: Tensor, bias_table: Tensor,
               num_context: int, num_buckets: int) -> Tensor:
    # The score_mod closure is built inside the compiled function, so torch.compile traces it once per
    # shape instead of seeing a new Python function (and recompiling, then falling back) every call.
    return flex_attention(q, k, v, score_mod=time_bias_score_mod(times, bias_table, num_context, num_buckets), block_mask=block_mask)


def cama_flex_attention(q: Tensor, k: Tensor, v: Tensor, block_mask: BlockMask, times: Tensor, bias_table: Tensor,
                        num_context: int, num_buckets: int) -> Tensor:
    """q `[B, H, N, D]`, k/v `[B, H, S + N, D]` (context keys first) -> `[B, H, N, D]`."""
    if q.is_cuda:
        compiled = _COMPILED.setdefault("flex", torch.compile(_cama_flex, dynamic=False))
        return compiled(q, k, v, block_mask, times, bias_table, num_context, num_buckets)
    return _cama_flex(q, k, v, block_mask, times, bias_table, num_context, num_buckets)
