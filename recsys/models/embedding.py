"""Feature embeddings with TorchRec, built from a prepared dataset's metadata.

Sequence fields (history `hist_<col>` and candidate `cand_<col>`, which share their table) go
through `EmbeddingCollection`s, one per embedding dimension because an EmbeddingCollection holds
tables of one dimension; profile and context fields go through one `EmbeddingBagCollection`
(sum pooling). Both work unsharded and under DistributedModelParallel. Jagged history embeddings
are scattered into the left-padded `[B, L, ·]` layout with the batch's slots (plain index_copy,
no fbgemm kernel, so the same code runs on CUDA with fbgemm-gpu-cpu).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Dict, List, NamedTuple, Tuple

import torch
from torch import Tensor, nn
from torchrec.modules.embedding_configs import EmbeddingBagConfig, EmbeddingConfig, PoolingType
from torchrec.modules.embedding_modules import EmbeddingBagCollection, EmbeddingCollection
from torchrec.sparse.jagged_tensor import KeyedJaggedTensor

from recsys.data.layout import CANDIDATE_PREFIX, HISTORY_PREFIX



@dataclass(frozen=True)
class FieldLayout:
    column: str
    table: str
    dim: int
    candidate: bool
    role: str  # sequence | profile | context


@dataclass(frozen=True)
class EmbeddingLayout:
    """What the embedding module needs to know about a prepared dataset."""

    num_embeddings: Dict[str, int]
    table_dims: Dict[str, int]
    sequence_fields: Tuple[FieldLayout, ...]
    side_fields: Tuple[FieldLayout, ...]
    action_column: str
    action_group_rows: Dict[str, Tuple[int, ...]]

    @classmethod
    def from_metadata(cls, metadata: dict) -> EmbeddingLayout:
        spec = metadata["spec"]
        dims = {t["name"]: int(t["dim"]) for t in spec["tables"]}
        sequence, side = [], []
        for f in spec["fields"]:
            entry = FieldLayout(f["column"], f["table"], dims[f["table"]], bool(f.get("candidate", True)), f["role"])
            (sequence if f["role"] == "sequence" else side).append(entry)
        action = next(f for f in sequence if f.column == "action")
        return cls(
            num_embeddings={k: int(v) for k, v in metadata["num_embeddings"].items()},
            table_dims=dims,
            sequence_fields=tuple(sequence),
            side_fields=tuple(side),
            action_column=action.column,
            action_group_rows={k: tuple(v) for k, v in metadata.get("action_group_rows", {}).items()},
        )

    @property
    def content_fields(self) -> Tuple[FieldLayout, ...]:
        """Sequence fields that describe an item (everything but the action)."""
        return tuple(f for f in self.sequence_fields if f.column != self.action_column)

    @property
    def action_dim(self) -> int:
        return self.table_dims[next(f.table for f in self.sequence_fields if f.column == self.action_column)]

    @property
    def content_dim(self) -> int:
        return sum(f.dim for f in self.content_fields)

    @property
    def side_dim(self) -> int:
        return sum(f.dim for f in self.side_fields)


class EmbeddedBatch(NamedTuple):
    """Dense embeddings in the padded layout; the action is kept apart so a model decides its use.

    A NamedTuple, so the model cores that read it compile with TorchScript for serving."""

    history_content: Tensor  # [B, L, content_dim], zeros at padding
    history_action: Tensor  # [B, L, action_dim]
    history_action_ids: Tensor  # [B, L] int64 action rows, 0 at padding
    candidate_content: Tensor  # [B, M, content_dim], zeros for fields that do not describe candidates
    candidate_action: Tensor  # [action_dim] learned "candidate / unknown outcome" action
    side: Tensor  # [B, side_dim] pooled profile and context embeddings


class FeatureEmbedding(nn.Module):
    def __init__(self, layout: EmbeddingLayout, init_std: float = 0.02):
        super().__init__()
        self.layout = layout
        tables_by_dim: Dict[int, List[EmbeddingConfig]] = {}
        for table in dict.fromkeys(f.table for f in layout.sequence_fields):
            features = [HISTORY_PREFIX + f.column for f in layout.sequence_fields if f.table == table]
            features += [CANDIDATE_PREFIX + f.column for f in layout.sequence_fields if f.table == table and f.candidate]
            dim = layout.table_dims[table]
            tables_by_dim.setdefault(dim, []).append(
                EmbeddingConfig(name=table, embedding_dim=dim, num_embeddings=layout.num_embeddings[table], feature_names=features, init_fn=_normal(init_std))
            )
        self.sequence_collections = nn.ModuleDict({f"dim{dim}": EmbeddingCollection(tables=t) for dim, t in tables_by_dim.items()})
        side_tables = [
            EmbeddingBagConfig(name=table, embedding_dim=layout.table_dims[table], num_embeddings=layout.num_embeddings[table],
                               feature_names=[f.column for f in layout.side_fields if f.table == table], pooling=PoolingType.SUM, init_fn=_normal(init_std))
            for table in dict.fromkeys(f.table for f in layout.side_fields)
        ]
        self.side_collection = EmbeddingBagCollection(tables=side_tables) if side_tables else None
        # A dense parameter rather than a reserved table row: it stays readable under sharding.
        self.candidate_action = nn.Parameter(torch.zeros(layout.action_dim).normal_(0.0, init_std))

    def forward(self, features: KeyedJaggedTensor, history_slots: Tensor, history_lengths: Tensor, width: int) -> EmbeddedBatch:
        jagged = {}
        for collection in self.sequence_collections.values():
            jagged.update(collection(features))
        batch = history_lengths.shape[0]
        layout = self.layout

        def padded(column: str) -> Tensor:
            values = jagged[HISTORY_PREFIX + column].values()
            out = values.new_zeros(batch * width, values.shape[-1])
            return out.index_copy(0, history_slots, values).view(batch, width, -1)

        num_candidates = features[CANDIDATE_PREFIX + layout.content_fields[0].column].lengths()[0] if batch else 0

        def candidates(field: FieldLayout) -> Tensor:
            if not field.candidate:
                return history_slots.new_zeros(batch, int(num_candidates), field.dim, dtype=torch.float32)
            values = jagged[CANDIDATE_PREFIX + field.column].values()
            return values.view(batch, -1, values.shape[-1])

        action_ids = features[HISTORY_PREFIX + layout.action_column].values()
        padded_action_ids = action_ids.new_zeros(batch * width).index_copy(0, history_slots, action_ids).view(batch, width)
        if self.side_collection is not None:
            side = self.side_collection(features).values()
        else:
            side = history_slots.new_zeros(batch, 0, dtype=torch.float32)
        return EmbeddedBatch(
            history_content=torch.cat([padded(f.column) for f in layout.content_fields], dim=-1),
            history_action=padded(layout.action_column),
            history_action_ids=padded_action_ids,
            candidate_content=torch.cat([candidates(f) for f in layout.content_fields], dim=-1),
            candidate_action=self.candidate_action,
            side=side,
        )

def _normal(std: float):
    def init(weight: Tensor) -> Tensor:
        with torch.no_grad():
            return weight.normal_(0.0, std)

    return init
