"""Building blocks shared by every model: norms, SwiGLU FFN, token projection, prediction head."""

from __future__ import annotations

from typing import Sequence

import torch
from torch import Tensor, nn


class SwiGLU(nn.Module):
    """`W2(silu(W1 x) * W3 x)` with hidden width `multiple · d` rounded to a multiple of 8."""

    def __init__(self, dim: int, multiple: float = 8 / 3):
        super().__init__()
        hidden = int(multiple * dim + 7) // 8 * 8
        self.gate_up = nn.Linear(dim, 2 * hidden, bias=False)
        self.down = nn.Linear(hidden, dim, bias=False)

    def forward(self, x: Tensor) -> Tensor:
        gate, up = self.gate_up(x).chunk(2, dim=-1)
        return self.down(nn.functional.silu(gate) * up)


class MLP(nn.Module):
    def __init__(self, input_dim: int, hidden: Sequence[int], output_dim: int = 1, dropout: float = 0.0):
        super().__init__()
        layers: list[nn.Module] = []
        width = input_dim
        for size in hidden:
            layers += [nn.Linear(width, size), nn.SiLU(), nn.Dropout(dropout)]
            width = size
        layers.append(nn.Linear(width, output_dim))
        self.net = nn.Sequential(*layers)

    def forward(self, x: Tensor) -> Tensor:
        return self.net(x)


class PredictionHead(nn.Module):
    """SparseCTR §5: candidate state ⊕ e_U ⊕ candidate embedding -> MLP -> logit (per candidate)."""

    def __init__(self, state_dim: int, side_dim: int, candidate_dim: int, hidden: Sequence[int], dropout: float = 0.0):
        super().__init__()
        self.mlp = MLP(state_dim + side_dim + candidate_dim, hidden, 1, dropout)

    def forward(self, state: Tensor, side: Tensor, candidate: Tensor) -> Tensor:
        """state `[B, M, S]`, side `[B, E]`, candidate `[B, M, C]` -> logits `[B, M]`."""
        side = side.unsqueeze(1).expand(-1, state.shape[1], -1)
        return self.mlp(torch.cat([state, side, candidate], dim=-1)).squeeze(-1)
