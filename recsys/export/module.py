"""The TorchScript scoring module: plain tensors in, one probability per candidate out.

Input contract (a flat `Dict[str, Tensor]`, every id already an embedding row, see
`recsys.export.contract`):

* `history.lengths` `[B]` int64: real events per request;
* `history.timestamp` and `history.<col>` for every sequence column, `[B, L]` int64, right-padded:
  the first `lengths[b]` positions hold the request's history, oldest first;
* `candidate.<col>` `[B, M]` int64 for every candidate column (M candidates per request);
* `<role>.<col>` `[B]` int64 for every profile / context column;
* `request.timestamp` `[B]` int64 seconds.

Inside: validation with messages that name the key, truncation to the most recent `max_history`
events (the training rule), the left-padded layout the models train on, personalized chunking
(`recsys.ops.chunking`, the function the loader runs), plain `nn.Embedding` lookups of the gathered
tables, and the model core's `score`. No TorchRec or fbgemm op is on this path, so the saved file
loads with torch alone.
"""

from __future__ import annotations

from typing import Dict, List, Tuple

import torch
from torch import Tensor, nn

from recsys.models.base import RankingModel, SequenceInputs
from recsys.models.embedding import EmbeddedBatch, EmbeddingLayout
from recsys.ops.chunking import personalized_chunks

HISTORY_LENGTHS = "history.lengths"
HISTORY_TIMESTAMP = "history.timestamp"
REQUEST_TIMESTAMP = "request.timestamp"


def history_key(column: str) -> str:
    return f"history.{column}"


def candidate_key(column: str) -> str:
    return f"candidate.{column}"


def side_key(role: str, column: str) -> str:
    return f"{role}.{column}"


def recent_window(lengths: Tensor, width: int) -> Tuple[Tensor, Tensor, Tensor]:
    """Source positions `[B, width]` of the most recent `width` events in a right-padded history,
    laid out left-padded (real events right-aligned), their validity, and the kept lengths."""
    kept = lengths.clamp(max=width)
    source = lengths.unsqueeze(1) - width + torch.arange(width, device=lengths.device).unsqueeze(0)
    return source.clamp_min(0), source >= 0, kept


def take_recent(values: Tensor, source: Tensor, valid: Tensor) -> Tensor:
    """Right-padded `[B, L]` -> left-padded `[B, width]` of the positions `recent_window` chose, 0 elsewhere."""
    if values.shape[1] == 0:
        return torch.zeros(source.shape, dtype=values.dtype, device=values.device)
    return torch.where(valid, values.gather(1, source.clamp(max=values.shape[1] - 1)), torch.zeros_like(source))


class ServingEmbedding(nn.Module):
    """The trained tables as plain `nn.Embedding`s, producing what `FeatureEmbedding` produces."""

    def __init__(self, layout: EmbeddingLayout, tables: Dict[str, Tensor], candidate_action: Tensor):
        super().__init__()
        table = {name: nn.Embedding.from_pretrained(weight.detach().clone(), freeze=True) for name, weight in tables.items()}
        content = layout.content_fields
        self.history_tables = nn.ModuleList([table[f.table] for f in content])
        self.history_keys: List[str] = [history_key(f.column) for f in content]
        candidates = [f for f in content if f.candidate]
        self.candidate_tables = nn.ModuleList([table[f.table] for f in candidates])
        self.candidate_keys: List[str] = [candidate_key(f.column) for f in candidates]
        self.content_dims: List[int] = [f.dim for f in content]
        self.content_is_candidate: List[bool] = [f.candidate for f in content]
        action_table = next(f.table for f in layout.sequence_fields if f.column == layout.action_column)
        self.action_table = table[action_table]
        self.action_key = history_key(layout.action_column)
        # EmbeddingBagCollection's output order: tables by first use, each table's features in field order.
        side_order = [f for name in dict.fromkeys(f.table for f in layout.side_fields) for f in layout.side_fields if f.table == name]
        self.side_tables = nn.ModuleList([table[f.table] for f in side_order])
        self.side_keys: List[str] = [side_key(f.role, f.column) for f in side_order]
        self.candidate_action = nn.Parameter(candidate_action.detach().clone(), requires_grad=False)

    def forward(self, history: Dict[str, Tensor], valid: Tensor, inputs: Dict[str, Tensor], num_candidates: int) -> EmbeddedBatch:
        batch = valid.shape[0]
        mask = valid.unsqueeze(-1).to(torch.float32)
        history_parts: List[Tensor] = []
        for i, table in enumerate(self.history_tables):
            history_parts.append(table(history[self.history_keys[i]]) * mask)
        candidate_embedded: List[Tensor] = []
        for i, table in enumerate(self.candidate_tables):
            candidate_embedded.append(table(inputs[self.candidate_keys[i]]))
        candidate_parts: List[Tensor] = []
        next_candidate = 0
        for i in range(len(self.content_dims)):
            if self.content_is_candidate[i]:
                candidate_parts.append(candidate_embedded[next_candidate])
                next_candidate += 1
            else:
                candidate_parts.append(torch.zeros(batch, num_candidates, self.content_dims[i], device=valid.device))
        side_parts: List[Tensor] = [torch.zeros(batch, 0, device=valid.device)]
        for i, table in enumerate(self.side_tables):
            side_parts.append(table(inputs[self.side_keys[i]]))
        action_ids = history[self.action_key]
        return EmbeddedBatch(
            history_content=torch.cat(history_parts, dim=-1),
            history_action=self.action_table(action_ids) * mask,
            history_action_ids=action_ids,
            candidate_content=torch.cat(candidate_parts, dim=-1),
            candidate_action=self.candidate_action,
            side=torch.cat(side_parts, dim=-1),
        )


class ScoringModule(nn.Module):
    """`forward(inputs) -> [B, M]` click probabilities; `logits(inputs)` the raw logits."""

    def __init__(self, model: RankingModel, embedding: ServingEmbedding, layout: EmbeddingLayout, max_history: int, num_chunks: int,
                 num_embeddings: Dict[str, int]):
        super().__init__()
        self.model = model
        self.embedding = embedding
        self.max_history = max_history
        self.num_chunks = num_chunks
        # TorchScript reads module attributes, not module-level globals.
        self.lengths_key, self.timestamp_key, self.request_key = HISTORY_LENGTHS, HISTORY_TIMESTAMP, REQUEST_TIMESTAMP
        self.sequence_keys: List[str] = [history_key(f.column) for f in layout.sequence_fields]
        self.candidate_keys: List[str] = [candidate_key(f.column) for f in layout.sequence_fields if f.candidate]
        self.side_keys: List[str] = [side_key(f.role, f.column) for f in layout.side_fields]
        rows = {history_key(f.column): num_embeddings[f.table] for f in layout.sequence_fields}
        rows.update({candidate_key(f.column): num_embeddings[f.table] for f in layout.sequence_fields if f.candidate})
        rows.update({side_key(f.role, f.column): num_embeddings[f.table] for f in layout.side_fields})
        self.id_rows: Dict[str, int] = rows

    def forward(self, inputs: Dict[str, Tensor]) -> Tensor:
        return torch.sigmoid(self.logits(inputs))

    @torch.jit.export
    def logits(self, inputs: Dict[str, Tensor]) -> Tensor:
        batch, num_candidates = self._validate(inputs)
        source, valid, lengths = recent_window(inputs[self.lengths_key], self.max_history)
        history: Dict[str, Tensor] = {}
        for key in self.sequence_keys:
            history[key] = take_recent(inputs[key], source, valid)
        times = take_recent(inputs[self.timestamp_key], source, valid)
        chunk_id, chunk_start, chunk_end, chunk_valid = personalized_chunks(times, lengths, self.num_chunks)
        embedded = self.embedding(history, valid, inputs, num_candidates)
        sequence = SequenceInputs(lengths, times, inputs[self.request_key], chunk_id, chunk_start, chunk_end, chunk_valid)
        return self.model.score(embedded, sequence).logits

    def _require(self, inputs: Dict[str, Tensor], key: str, dims: int) -> Tensor:
        if key not in inputs:
            raise ValueError("missing input '" + key + "' (expected keys: " + ", ".join(self.expected_keys()) + ")")
        value = inputs[key]
        if value.dtype != torch.int64:
            raise ValueError("input '" + key + "' must be int64, got " + str(value.dtype))
        if value.dim() != dims:
            raise ValueError("input '" + key + "' must have " + str(dims) + " dimensions, got shape " + str(value.shape))
        return value

    def _check_rows(self, key: str, value: Tensor) -> None:
        rows = self.id_rows[key]
        if value.numel() > 0 and (int(value.min()) < 0 or int(value.max()) >= rows):
            raise ValueError("input '" + key + "' holds ids outside [0, " + str(rows) + "); map unknown ids to row 0 (out of vocabulary)")

    def _validate(self, inputs: Dict[str, Tensor]) -> Tuple[int, int]:
        lengths = self._require(inputs, self.lengths_key, 1)
        batch = lengths.shape[0]
        times = self._require(inputs, self.timestamp_key, 2)
        if times.shape[0] != batch:
            raise ValueError("'" + self.timestamp_key + "' has " + str(times.shape[0]) + " rows, '" + self.lengths_key + "' has " + str(batch))
        width = times.shape[1]
        if batch > 0 and (int(lengths.min()) < 0 or int(lengths.max()) > width):
            raise ValueError("'" + self.lengths_key + "' must lie in [0, " + str(width) + "] (the padded history width)")
        for key in self.sequence_keys:
            value = self._require(inputs, key, 2)
            if value.shape != times.shape:
                raise ValueError("'" + key + "' has shape " + str(value.shape) + " but '" + self.timestamp_key + "' has " + str(times.shape))
            self._check_rows(key, value)
        num_candidates = -1
        for key in self.candidate_keys:
            value = self._require(inputs, key, 2)
            if value.shape[0] != batch or (num_candidates >= 0 and value.shape[1] != num_candidates):
                raise ValueError("'" + key + "' has shape " + str(value.shape) + "; every candidate input must be [" + str(batch) + ", M]")
            num_candidates = value.shape[1]
            self._check_rows(key, value)
        if num_candidates < 1:
            raise ValueError("at least one candidate per request is needed")
        for key in self.side_keys:
            value = self._require(inputs, key, 1)
            if value.shape[0] != batch:
                raise ValueError("'" + key + "' has " + str(value.shape[0]) + " rows, expected " + str(batch))
            self._check_rows(key, value)
        request = self._require(inputs, self.request_key, 1)
        if request.shape[0] != batch:
            raise ValueError("'" + self.request_key + "' has " + str(request.shape[0]) + " rows, expected " + str(batch))
        return batch, num_candidates

    @torch.jit.export
    def expected_keys(self) -> List[str]:
        return [self.lengths_key, self.timestamp_key] + self.sequence_keys + self.candidate_keys + self.side_keys + [self.request_key]
