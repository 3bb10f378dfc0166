"""What every ranking model shares: the embedding module, the token inputs and the output type."""

from __future__ import annotations

from typing import NamedTuple, Optional

import torch
from torch import Tensor, nn

from recsys.models.embedding import EmbeddedBatch, EmbeddingLayout, FeatureEmbedding


class ModelOutput(NamedTuple):
    logits: Tensor  # [B, M] one logit per candidate
    history_logits: Optional[Tensor]  # [B, L] per history event (GRAB's dense supervision), or None


class SequenceInputs(NamedTuple):
    """Everything a sequence model reads besides the embeddings, in the padded layout.

    NamedTuples (not dataclasses) cross into TorchScript: `recsys.export` scripts `score`."""

    history_lengths: Tensor  # [B]
    history_times: Tensor  # [B, L]
    request_times: Tensor  # [B]
    chunk_id: Tensor  # [B, L]
    chunk_start: Tensor  # [B, P]
    chunk_end: Tensor  # [B, P]
    chunk_valid: Tensor  # [B, P]



def sequence_inputs(batch) -> SequenceInputs:
    """The sequence inputs of a loader `Batch`."""
    return SequenceInputs(batch.history_lengths, batch.history_timestamps, batch.request_timestamps,
                          batch.chunk_id, batch.chunk_start, batch.chunk_end, batch.chunk_valid)


def history_valid(inputs: SequenceInputs) -> Tensor:
    """`[B, L]` True at real history events (padding has chunk id 0)."""
    return inputs.chunk_id > 0


def all_times(inputs: SequenceInputs, candidates: int) -> Tensor:
    """`[B, L + M]`: history times then the request time for every candidate."""
    return torch.cat([inputs.history_times, inputs.request_times.unsqueeze(1).expand(-1, candidates)], dim=1)


class RankingModel(nn.Module):
    """Base: embeds a `Batch` with TorchRec and hands dense tensors to `score`."""

    def __init__(self, layout: EmbeddingLayout):
        super().__init__()
        self.layout = layout
        self.embedding = FeatureEmbedding(layout)

    @torch.jit.unused
    def forward(self, batch) -> ModelOutput:
        # Training entry (KJT through TorchRec); serving scripts `score` behind its own embeddings.
        width = batch.history_timestamps.shape[1]
        embedded = self.embedding(batch.sparse_features, batch.history_slots, batch.history_lengths, width)
        return self.score(embedded, sequence_inputs(batch))

    def score(self, embedded: EmbeddedBatch, inputs: SequenceInputs) -> ModelOutput:
        raise TypeError(f"{type(self).__name__} must define score()")

    def compile_blocks(self, mode: str = "default") -> int:
        """`torch.compile` each encoder block in place (`nn.Module.compile`: the parameters and the
        state-dict keys stay as they are, so checkpoints and export see the plain model). Returns the
        number of blocks; a model without encoder blocks (the pooled baselines) refuses."""
        blocks = getattr(self, "blocks", None)
        if not isinstance(blocks, nn.ModuleList) or len(blocks) == 0:
            raise ValueError(f"train.compile: {type(self).__name__} has no encoder blocks to compile")
        for block in blocks:
            block.compile(mode=mode)
        return len(blocks)

    def dense_parameters(self):
        """Parameters the dense optimizer owns (embedding tables get fused optimizers)."""
        table_params = {id(p) for collection in self.embedding.sequence_collections.values() for p in collection.parameters()}
        if self.embedding.side_collection is not None:
            table_params |= {id(p) for p in self.embedding.side_collection.parameters()}
        return [p for p in self.parameters() if id(p) not in table_params]
