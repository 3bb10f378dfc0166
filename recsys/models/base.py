"""What every ranking model shares: the embedding module, the token inputs and the output type."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import torch
from torch import Tensor, nn

from recsys.models.embedding import EmbeddedBatch, EmbeddingLayout, FeatureEmbedding


@dataclass
class ModelOutput:
    logits: Tensor  # [B, M] one logit per candidate
    history_logits: Optional[Tensor] = None  # [B, L] per history event (GRAB's dense supervision)


@dataclass
class SequenceInputs:
    """Everything a sequence model reads besides the embeddings, in the padded layout."""

    history_lengths: Tensor  # [B]
    history_times: Tensor  # [B, L]
    request_times: Tensor  # [B]
    chunk_id: Tensor  # [B, L]
    chunk_start: Tensor  # [B, P]
    chunk_end: Tensor  # [B, P]
    chunk_valid: Tensor  # [B, P]

    @classmethod
    def from_batch(cls, batch) -> SequenceInputs:
        return cls(batch.history_lengths, batch.history_timestamps, batch.request_timestamps,
                   batch.chunk_id, batch.chunk_start, batch.chunk_end, batch.chunk_valid)

    @property
    def history_valid(self) -> Tensor:
        return self.chunk_id > 0

    def all_times(self, candidates: int) -> Tensor:
        """`[B, L + M]`: history times then the request time for every candidate."""
        return torch.cat([self.history_times, self.request_times.unsqueeze(1).expand(-1, candidates)], dim=1)


class RankingModel(nn.Module):
    """Base: embeds a `Batch` with TorchRec and hands dense tensors to `score`."""

    def __init__(self, layout: EmbeddingLayout):
        super().__init__()
        self.layout = layout
        self.embedding = FeatureEmbedding(layout)

    def forward(self, batch) -> ModelOutput:
        width = batch.history_timestamps.shape[1]
        embedded = self.embedding(batch.sparse_features, batch.history_slots, batch.history_lengths, width)
        return self.score(embedded, SequenceInputs.from_batch(batch))

    def score(self, embedded: EmbeddedBatch, inputs: SequenceInputs) -> ModelOutput:
        raise TypeError(f"{type(self).__name__} must define score()")

    def dense_parameters(self):
        """Parameters the dense optimizer owns (embedding tables get fused optimizers)."""
        table_params = {id(p) for collection in self.embedding.sequence_collections.values() for p in collection.parameters()}
        if self.embedding.side_collection is not None:
            table_params |= {id(p) for p in self.embedding.side_collection.parameters()}
        return [p for p in self.parameters() if id(p) not in table_params]
