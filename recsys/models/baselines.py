"""Honest baselines on the same embeddings and prediction head as SparseCTR.

* `DIN` (Zhou et al., 2018): target attention — an MLP over [h, c, h − c, h ⊙ c] scores every
  history event against the candidate; the unnormalised weighted sum (DIN's choice, so intensity
  is kept) is the user interest.
* `DNN`: the mean-pooled history, the floor every sequence model must beat.
The `transformer` baseline is `SparseCTR` with `attention="full"` (see registry).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Tuple

import torch
from torch import Tensor, nn

from recsys.models.base import ModelOutput, RankingModel, SequenceInputs, history_valid
from recsys.models.embedding import EmbeddedBatch, EmbeddingLayout
from recsys.models.layers import MLP, PredictionHead


@dataclass(frozen=True)
class PoolingConfig:
    d_model: int = 64
    attention_hidden: Tuple[int, ...] = field(default=(64, 32))
    head_hidden: Tuple[int, ...] = field(default=(128, 64))
    dropout: float = 0.0


class _PooledHistoryModel(RankingModel):
    def __init__(self, layout: EmbeddingLayout, cfg: PoolingConfig):
        super().__init__(layout)
        self.cfg = cfg
        self.history_token = nn.Linear(layout.content_dim + layout.action_dim, cfg.d_model)
        self.candidate_token = nn.Linear(layout.content_dim, cfg.d_model)
        self.head = PredictionHead(2 * cfg.d_model, layout.side_dim, layout.content_dim, cfg.head_hidden, cfg.dropout)

    def _tokens(self, embedded: EmbeddedBatch, inputs: SequenceInputs) -> Tuple[Tensor, Tensor, Tensor]:
        history = self.history_token(torch.cat([embedded.history_content, embedded.history_action], dim=-1))
        valid = history_valid(inputs).unsqueeze(-1).to(history.dtype)
        return history * valid, valid, self.candidate_token(embedded.candidate_content)

    def _finish(self, interest: Tensor, candidate: Tensor, embedded: EmbeddedBatch) -> ModelOutput:
        state = torch.cat([interest, candidate], dim=-1)
        return ModelOutput(self.head(state, embedded.side, embedded.candidate_content), None)


class DNN(_PooledHistoryModel):
    def score(self, embedded: EmbeddedBatch, inputs: SequenceInputs) -> ModelOutput:
        history, valid, candidate = self._tokens(embedded, inputs)
        mean = history.sum(1) / valid.sum(1).clamp_min(1.0)
        return self._finish(mean.unsqueeze(1).expand_as(candidate), candidate, embedded)


class DIN(_PooledHistoryModel):
    def __init__(self, layout: EmbeddingLayout, cfg: PoolingConfig):
        super().__init__(layout, cfg)
        self.attention = MLP(4 * cfg.d_model, cfg.attention_hidden, 1)

    def score(self, embedded: EmbeddedBatch, inputs: SequenceInputs) -> ModelOutput:
        history, valid, candidate = self._tokens(embedded, inputs)
        h = history.unsqueeze(1)  # [B, 1, L, d]
        c = candidate.unsqueeze(2).expand(-1, -1, history.shape[1], -1)  # [B, M, L, d]
        h = h.expand_as(c)
        weights = self.attention(torch.cat([h, c, h - c, h * c], dim=-1)).squeeze(-1) * valid.squeeze(-1).unsqueeze(1)
        interest = torch.einsum("bml,bld->bmd", weights, history)
        return self._finish(interest, candidate, embedded)
