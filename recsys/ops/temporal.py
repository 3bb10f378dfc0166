"""Relative temporal biases added to attention logits.

`composite_temporal_bias` is SparseCTR's RelTemporal (§4): per head
`s1·b_time + s2·b_hour + s3·b_wkd` with `b_time = -floor(log2(max(|Δt|, 1)))`,
`b_hour = -sin(π·Δh/24)` (Δh the clock-time difference in hours mod 24) and `b_wkd = -1` when the
two events fall on different day types (rule `same_type`) or unless both fall on weekends (rule
`both_weekend`). `log_bucket` is GRAB's HSTU-style bucketing of time differences.
All functions broadcast over leading dimensions and are TorchScript-scriptable.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

# Seconds per day (86_400) and the rule codes are spelled as literals inside the functions:
# TorchScript reads no module globals.
WEEKEND_SAME_TYPE = 0
WEEKEND_BOTH = 1
# ln(2) / 0.301: `log_bucket` computes ln(Δ)/0.301 as log2(Δ)·this, the form the fused CamA kernel
# evaluates too (TorchScript reads no globals, so `log_bucket` spells it as a literal).
LOG_BUCKET_PER_OCTAVE = 2.3028145533553


def _is_weekend(local_seconds: Tensor) -> Tensor:
    # 1970-01-01 was a Thursday: (day + 3) % 7 is 0 on Mondays.
    return torch.remainder(torch.div(local_seconds, 86_400, rounding_mode="floor") + 3, 7) >= 5


def floor_log2(delta: Tensor) -> Tensor:
    """`floor(log2(max(|Δ|, 1)))` of int64 `delta`, exact on every device. float64 log2 alone is not:
    CUDA's log2(64) is 5.999... (one octave low at powers of two) and the CPU's rounds 2^k - 1 up to k
    for k >= 49, so the estimate is corrected against exact integer powers of two. (Not torch.frexp:
    inductor's CPU code for its int32 exponent does not compile; not a float64 bit view: TorchScript
    has no view(dtype).)"""
    magnitude = delta.abs().clamp_min(1)
    estimate = torch.floor(torch.log2(magnitude.to(torch.float64))).to(torch.int64).clamp(0, 61)
    power = torch.bitwise_left_shift(torch.ones_like(estimate), estimate)
    return estimate - (power > magnitude).to(torch.int64) + (power * 2 <= magnitude).to(torch.int64)


def temporal_components(query_times: Tensor, key_times: Tensor, utc_offset_seconds: int, weekend_rule: int) -> Tensor:
    """`[..., Q]` and `[..., K]` int64 seconds -> `[..., 3, Q, K]` float32 (time, hour, weekend terms)."""
    tq = query_times.unsqueeze(-1)
    tk = key_times.unsqueeze(-2)
    b_time = -floor_log2(tq - tk).to(torch.float64)
    local_q = tq + utc_offset_seconds
    local_k = tk + utc_offset_seconds
    hour_gap = torch.remainder(local_q - local_k, 86_400).to(torch.float64) / 3600.0
    b_hour = -torch.sin(math.pi * hour_gap / 24.0)
    weekend_q = _is_weekend(local_q)
    weekend_k = _is_weekend(local_k)
    if weekend_rule == 1:  # WEEKEND_BOTH (TorchScript reads no module globals)
        same = weekend_q & weekend_k
    else:
        same = weekend_q == weekend_k
    b_wkd = torch.where(same, torch.zeros_like(b_hour), -torch.ones_like(b_hour))
    return torch.stack(torch.broadcast_tensors(b_time, b_hour, b_wkd), dim=-3).to(torch.float32)


def bias_from_components(components: Tensor, scales: Tensor) -> Tensor:
    """`[..., 3, Q, K]` components and `[3, H]` scales -> bias `[..., H, Q, K]`.

    The components depend on times only, so a model computes them once per batch and every layer
    (each with its own scales) pays only for this contraction."""
    return torch.einsum("...cqk,ch->...hqk", components.to(scales.dtype), scales)


def composite_temporal_bias(query_times: Tensor, key_times: Tensor, scales: Tensor, utc_offset_seconds: int, weekend_rule: int) -> Tensor:
    """`scales` `[3, H]` -> bias `[..., H, Q, K]`."""
    return bias_from_components(temporal_components(query_times, key_times, utc_offset_seconds, weekend_rule), scales)


def alibi_scales(heads: int) -> Tensor:
    """`s_h = 2^(-8h/H)` for h = 1..H, the ALiBi slopes, for each of the three terms."""
    slopes = torch.tensor([2.0 ** (-8.0 * (h + 1) / heads) for h in range(heads)])
    return slopes.unsqueeze(0).repeat(3, 1)


def log_bucket(delta_seconds: Tensor, num_buckets: int = 128) -> Tensor:
    """HSTU's bucket: `clamp(floor(ln(max(Δ, 1)) / 0.301), 0, num_buckets)`, evaluated in float32 as
    `floor(log2(Δ) · ln2/0.301)` so the dense path, FlexAttention and the Triton kernel agree."""
    delta = delta_seconds.clamp_min(1).to(torch.float32)
    return torch.floor(torch.log2(delta) * 2.3028145533553).clamp(0, num_buckets).to(torch.int64)
