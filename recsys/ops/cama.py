"""GRAB's Causal Action-aware Multi-channel Attention (CamA): channels as masks over one attention.

One flat layout serves padded batches and packed (padding-free) sequences: `N` positions per row,
each belonging to a segment (a user; one context token per segment), and `S` context tokens that
are keys only. Per head, the channel decides the mask (GRAB.md §2):

* content channel (`group` empty): same segment, key position <= query position, real events;
* action channel (`group` = action rows): same segment, history keys whose action is in the group
  and whose time is strictly earlier than the query's (so same-request outcomes never leak);
* every channel: a candidate sees its segment's history and itself (content channel only), never
  another candidate; every position sees its segment's context token, so no row is empty.

`cama_mask` builds the `[B, H, N, S + N]` boolean mask (context keys first); `cama_attention` runs
SDPA with it and the log-bucket temporal bias; `cama_attention_reference` is the per-head explicit
softmax twin used by tests.
"""

from __future__ import annotations

from typing import List

import torch
import torch.nn.functional as F
from torch import Tensor



def cama_mask(segment: Tensor, position: Tensor, times: Tensor, real: Tensor, is_candidate: Tensor, action_ids: Tensor,
              head_groups: List[Tensor], num_segments: int) -> Tensor:
    """Boolean mask `[B, H, N, S + N]`.

    segment, position, times, action_ids: `[B, N]` int64 (position = index within its segment);
    real, is_candidate: `[B, N]` bool; head_groups: per head a 1-D tensor of action rows (empty = content channel).
    """
    same_segment = segment.unsqueeze(2) == segment.unsqueeze(1)
    key_is_history = (real & ~is_candidate).unsqueeze(1)
    query_is_candidate = is_candidate.unsqueeze(2)
    not_later = position.unsqueeze(1) <= position.unsqueeze(2)
    is_self = torch.eye(segment.shape[1], dtype=torch.bool, device=segment.device).unsqueeze(0)
    strictly_earlier = times.unsqueeze(1) < times.unsqueeze(2)
    # Content: history causal; a candidate sees history keys and itself.
    content = same_segment & real.unsqueeze(1) & torch.where(query_is_candidate, key_is_history | is_self, not_later & key_is_history | is_self)
    context = segment.unsqueeze(2) == torch.arange(num_segments, device=segment.device).view(1, 1, -1)
    masks = []
    for group in head_groups:
        if group.numel() == 0:
            allowed = content
        else:
            in_group = (action_ids.unsqueeze(-1) == group.view(1, 1, -1)).any(-1)
            allowed = same_segment & key_is_history & in_group.unsqueeze(1) & strictly_earlier
        masks.append(torch.cat([context, allowed], dim=2))
    return torch.stack(masks, dim=1)


def cama_attention(q: Tensor, k: Tensor, v: Tensor, mask: Tensor, bias: Tensor) -> Tensor:
    """q `[B, H, N, D]`, k/v `[B, H, S + N, D]`, mask bool and bias float `[B, H, N, S + N]`."""
    return F.scaled_dot_product_attention(q, k, v, attn_mask=bias.masked_fill(~mask, float("-inf")))


def cama_pointwise_attention(q: Tensor, k: Tensor, v: Tensor, mask: Tensor, bias: Tensor, max_length: int) -> Tensor:
    """HSTU-style option: `silu(s) / L_max` over allowed keys instead of a softmax."""
    scores = torch.matmul(q, k.transpose(-1, -2)) / (q.shape[-1] ** 0.5) + bias
    weights = F.silu(scores) * mask.to(scores.dtype) / max_length
    return torch.matmul(weights, v)


def cama_attention_reference(q: Tensor, k: Tensor, v: Tensor, mask: Tensor, bias: Tensor) -> Tensor:
    """Per batch row and head: gather the allowed keys, softmax them, weight their values."""
    out = torch.zeros_like(q)
    scale = q.shape[-1] ** -0.5
    for b in range(q.shape[0]):
        for h in range(q.shape[1]):
            for i in range(q.shape[2]):
                allowed = mask[b, h, i].nonzero().flatten()
                logits = (k[b, h, allowed] @ q[b, h, i]) * scale + bias[b, h, i, allowed]
                out[b, h, i] = torch.softmax(logits, dim=0) @ v[b, h, allowed]
    return out
