"""Analytic forward FLOPs per sample (2 per multiply-add), next to what `torch.utils.flop_counter`
measures. Counts the matrix work: linear layers and attention scores/values; norms, activations,
softmax and embedding lookups are left out (they are memory-bound and small in FLOPs).

For a history of L events and M candidates, T = L + M tokens. Attention counts the keys each
kernel actually computes: SparseCTR's structural branches P + P·tail (+ 2w + 1 blocked local keys),
full attention all T + 1 keys (masked ones included, as SDPA computes them).

Why both numbers: on CPU, `FlopCounterMode` has no formula for the fused flash-attention op that
SDPA dispatches to, so the measured count there omits attention done through SDPA (GRAB: about a
fifth of its FLOPs at L = 64); on GPU it counts it. The analytic count is the same on both.
"""

from __future__ import annotations

from typing import Sequence

from recsys.models.base import RankingModel
from recsys.models.baselines import DIN, DNN
from recsys.models.grab import GRAB
from recsys.models.sparsectr import SparseCTR


def _linear(inputs: int, outputs: int) -> int:
    return 2 * inputs * outputs


def _mlp(inputs: int, hidden: Sequence[int], outputs: int = 1) -> int:
    total, width = 0, inputs
    for size in list(hidden) + [outputs]:
        total += _linear(width, size)
        width = size
    return total


def _swiglu(d: int) -> int:
    hidden = int(8 / 3 * d + 7) // 8 * 8
    return _linear(d, 2 * hidden) + _linear(hidden, d)


def analytic_forward_flops(model: RankingModel, history: int, candidates: int = 1, num_chunks: int = 16) -> float:
    layout = model.layout
    tokens = history + candidates
    content, action, side = layout.content_dim, layout.action_dim, layout.side_dim
    if isinstance(model, SparseCTR):
        cfg, d = model.cfg, model.cfg.d_model
        keys = tokens + 1 if cfg.attention == "full" else num_chunks + num_chunks * model.tail + 2 * model.window + 1
        per_token = _linear(d, 3 * d) + _linear(d, d) + _swiglu(d) + 2 * 2 * d * keys
        if cfg.attention != "full":
            per_token += _linear(d, 3 * cfg.heads)  # gates
        per_layer = tokens * per_token + _linear(d, 3 * d)  # + the profile token's projections
        embed = tokens * _linear(content + action, d) + _linear(side, d)
        head = candidates * _mlp(d + side + content, cfg.head_hidden)
        return float(embed + cfg.layers * per_layer + head)
    if isinstance(model, GRAB):
        cfg, d = model.cfg, model.cfg.d_model
        per_token = _linear(d, d) + _linear(d, 2 * d) + _linear(action, 2 * d) + _linear(d, d) + _swiglu(d) + 2 * 2 * d * (tokens + 1)
        per_layer = tokens * per_token + _linear(d, 2 * d)  # + the context token's keys and values
        embed = tokens * _linear(content, d) + _linear(side, d)
        head = tokens * _mlp(d, cfg.head_hidden)
        return float(embed + cfg.layers * per_layer + head)
    if isinstance(model, (DIN, DNN)):
        cfg, d = model.cfg, model.cfg.d_model
        flops = history * _linear(content + action, d) + candidates * _linear(content, d)
        if isinstance(model, DIN):
            flops += candidates * history * (_mlp(4 * d, cfg.attention_hidden) + 2 * d)
        return float(flops + candidates * _mlp(2 * d + side + content, cfg.head_hidden))
    raise TypeError(f"no analytic FLOPs formula for {type(model).__name__}")
