"""`recsys score`: canonical request Parquet (raw ids) -> one score per candidate, with an exported model.

Requests stream through `ParquetFile.iter_batches`; each batch is checked (list lengths that must
agree, ordered history times, at least one candidate: errors name the file, column and row),
encoded with the bundle's vocabularies and hash settings (unknown ids go to the out-of-vocabulary
row, and are counted), filtered as in training (history events at or after the request time and
excluded actions are dropped, and counted), padded into the module's input contract and scored
in one listwise call per batch. Output: one row per candidate, `request_id, candidate_index,
candidate_<first candidate column>, score` (+ `label` when the requests carry labels).
"""

from __future__ import annotations

import json
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Dict, Iterator, List, Optional

import numpy as np
import polars as pl
import pyarrow as pa
import pyarrow.parquet as pq
import torch
from tqdm.auto import tqdm

from recsys.data.encode import OOV_ROW, Vocabulary, encode_with_vocabulary, hash_rows
from recsys.data.ragged import positions_within_rows
from recsys.data.spec import FeatureSpec, spec_from_dict
from recsys.data.validate import UNIT_DIVISOR, InputError
from recsys.serving.requests import CANDIDATE, HISTORY, LABEL, REQUEST_ID


@dataclass
class ScoreSummary:
    requests: int = 0
    candidates: int = 0
    seconds: float = 0.0
    history_events: int = 0
    excluded_history: Counter = field(default_factory=Counter)
    unknown_ids: Counter = field(default_factory=Counter)

    def as_dict(self) -> dict:
        return {"requests": self.requests, "candidates": self.candidates, "seconds": round(self.seconds, 3),
                "requests_per_s": self.requests / max(self.seconds, 1e-9), "history_events_kept": self.history_events,
                "history_events_excluded": dict(self.excluded_history), "unknown_ids_mapped_to_oov": dict(self.unknown_ids)}


class RequestEncoder:
    """Raw request columns -> the module's int64 tensors, with the bundle's vocabularies."""

    def __init__(self, bundle: Path):
        contract = json.loads((bundle / "contract.json").read_text())
        self.spec: FeatureSpec = spec_from_dict(json.loads((bundle / "feature_spec.json").read_text()), str(bundle / "feature_spec.json"))
        self.max_history = int(contract["max_history"])
        self.vocabularies = {
            t.name: Vocabulary(t.name, pl.read_parquet(bundle / "vocab" / f"{t.name}.parquet"), {})
            for t in self.spec.tables if t.encoding == "vocab"
        }
        self.sequence = [f for f in self.spec.fields_with_role("sequence")]
        self.candidates = [f for f in self.sequence if f.candidate]
        self.side = [f for f in self.spec.fields if f.role != "sequence"]
        unit = self.spec.source.timestamp_unit
        if unit not in UNIT_DIVISOR:
            raise InputError(f"{bundle}: scoring supports integer timestamps (s, ms, us); the spec says {unit!r}")
        self.divisor = UNIT_DIVISOR[unit]
        self.excluded_actions = set(self.spec.history.exclude_actions)

    @property
    def required_columns(self) -> List[str]:
        return (["timestamp", HISTORY + "timestamp"] + [HISTORY + f.column for f in self.sequence]
                + [CANDIDATE + f.column for f in self.candidates] + [f.column for f in self.side])

    def rows(self, values: pl.Series, table_name: str, column: str, summary: ScoreSummary) -> np.ndarray:
        table = self.spec.table(table_name)
        if table.encoding == "vocab":
            vocabulary = self.vocabularies[table_name]
            if vocabulary.frame.height and values.dtype != vocabulary.frame["value"].dtype:
                values = values.cast(vocabulary.frame["value"].dtype, strict=False)
            encoded = encode_with_vocabulary(values, vocabulary)
            summary.unknown_ids[column] += int((encoded == OOV_ROW).sum())
        else:
            encoded = hash_rows(values, table.buckets or 2)
        return encoded.to_numpy().astype(np.int64)

    def encode(self, frame: pl.DataFrame, file: str, first_row: int, summary: ScoreSummary) -> Dict[str, torch.Tensor]:
        _check(frame, file, first_row, self)
        batch = frame.height
        request_seconds = frame["timestamp"].cast(pl.Int64).to_numpy() // self.divisor
        history_times = frame[HISTORY + "timestamp"].explode().cast(pl.Int64).to_numpy() // self.divisor
        history_lengths = frame[HISTORY + "timestamp"].list.len().to_numpy().astype(np.int64)
        request_of_event = np.repeat(np.arange(batch), history_lengths)
        keep = history_times < request_seconds[request_of_event]
        summary.excluded_history["at_or_after_request_time"] += int((~keep).sum())
        if self.excluded_actions:
            actions = frame[HISTORY + "action"].explode().cast(pl.String).to_numpy()
            excluded = np.isin(actions, list(self.excluded_actions)) & keep
            summary.excluded_history["excluded_action"] += int(excluded.sum())
            keep &= ~excluded
        kept_lengths = np.bincount(request_of_event[keep], minlength=batch).astype(np.int64)
        # Only the most recent max_history events can matter: cut before padding.
        kept_rank_from_end = _rank_from_end(request_of_event[keep], kept_lengths)
        recent = np.flatnonzero(keep)[kept_rank_from_end < self.max_history]
        lengths = np.minimum(kept_lengths, self.max_history)
        summary.history_events += int(lengths.sum())
        width = int(lengths.max()) if batch else 0
        rows_of = np.repeat(np.arange(batch), lengths)
        positions = positions_within_rows(lengths)

        def padded(values: np.ndarray) -> torch.Tensor:
            out = np.zeros((batch, width), dtype=np.int64)
            out[rows_of, positions] = values[recent]
            return torch.from_numpy(out)

        inputs = {"history.lengths": torch.from_numpy(lengths), "history.timestamp": padded(history_times),
                  "request.timestamp": torch.from_numpy(request_seconds.astype(np.int64))}
        for f in self.sequence:
            inputs[f"history.{f.column}"] = padded(self.rows(frame[HISTORY + f.column].explode(), f.table, f.column, summary))
        counts = frame[CANDIDATE + self.candidates[0].column].list.len().to_numpy().astype(np.int64)
        num_candidates = int(counts.max())
        cand_rows = np.repeat(np.arange(batch), counts)
        cand_positions = positions_within_rows(counts)
        for f in self.candidates:
            # Requests with fewer candidates are padded with OOV rows; candidates never see each other,
            # so padding changes no real score, and the padded scores are dropped.
            out = np.zeros((batch, num_candidates), dtype=np.int64)
            out[cand_rows, cand_positions] = self.rows(frame[CANDIDATE + f.column].explode(), f.table, f.column, summary)
            inputs[f"candidate.{f.column}"] = torch.from_numpy(out)
        for f in self.side:
            inputs[f"{f.role}.{f.column}"] = torch.from_numpy(self.rows(frame[f.column], f.table, f.column, summary))
        summary.requests += batch
        summary.candidates += int(counts.sum())
        return inputs


def _rank_from_end(groups: np.ndarray, counts: np.ndarray) -> np.ndarray:
    """For sorted group labels, each element's position counted from its group's end (0 = last)."""
    ends = np.cumsum(counts)
    return ends[groups] - 1 - np.arange(len(groups))


def _check(frame: pl.DataFrame, file: str, first_row: int, encoder: RequestEncoder) -> None:
    def fail(column: str, bad: np.ndarray, what: str) -> None:
        rows = (np.flatnonzero(bad)[:5] + first_row).tolist()
        raise InputError(f"{file}: column {column!r}, rows {rows} ({int(bad.sum())} in all): {what}")

    for column in encoder.required_columns:
        nulls = frame[column].is_null().to_numpy()
        if nulls.any():
            fail(column, nulls, "null value")
    history_length = frame[HISTORY + "timestamp"].list.len().to_numpy()
    for f in encoder.sequence:
        bad = frame[HISTORY + f.column].list.len().to_numpy() != history_length
        if bad.any():
            fail(HISTORY + f.column, bad, "list length differs from history_timestamp")
    candidate_count = frame[CANDIDATE + encoder.candidates[0].column].list.len().to_numpy()
    if (candidate_count == 0).any():
        fail(CANDIDATE + encoder.candidates[0].column, candidate_count == 0, "no candidates")
    for f in encoder.candidates[1:]:
        bad = frame[CANDIDATE + f.column].list.len().to_numpy() != candidate_count
        if bad.any():
            fail(CANDIDATE + f.column, bad, f"list length differs from {CANDIDATE + encoder.candidates[0].column}")
    decreasing = frame.select(pl.col(HISTORY + "timestamp").list.diff().list.min().fill_null(0) < 0).to_series().to_numpy()
    if decreasing.any():
        fail(HISTORY + "timestamp", decreasing, "history times must be non-decreasing (oldest first)")


def _batches(path: Path, columns: List[str], batch_size: int) -> Iterator[tuple[str, int, pl.DataFrame]]:
    files = sorted(path.glob("*.parquet")) if path.is_dir() else [path]
    for file in files:
        try:
            parquet = pq.ParquetFile(file)
        except (pa.ArrowException, OSError) as exc:
            raise InputError(f"{file}: unreadable Parquet ({exc})") from exc
        missing = [c for c in columns if c not in parquet.schema_arrow.names]
        if missing:
            raise InputError(f"{file}: missing request columns {missing} (see recsys.serving.requests for the format)")
        present = [c for c in [REQUEST_ID, LABEL] if c in parquet.schema_arrow.names]
        first = 0
        for record_batch in parquet.iter_batches(batch_size=batch_size, columns=columns + present):
            frame = pl.from_arrow(record_batch)
            assert isinstance(frame, pl.DataFrame)
            yield str(file), first, frame
            first += frame.height


def score_requests(model_path: Path, requests: Path, out: Path, batch_size: int = 256, threads: Optional[int] = None,
                   progress: bool = True) -> ScoreSummary:
    from recsys.export.exporter import bundle_dir

    if threads:
        torch.set_num_threads(threads)
    bundle = bundle_dir(model_path)
    if not bundle.exists():
        raise InputError(f"{model_path}: its bundle {bundle} (vocabularies, spec, contract) is missing; re-run recsys export")
    module = torch.jit.load(str(model_path), map_location="cpu").eval()
    encoder = RequestEncoder(bundle)
    summary = ScoreSummary()
    total = sum(pq.ParquetFile(f).metadata.num_rows for f in (sorted(requests.glob("*.parquet")) if requests.is_dir() else [requests]))
    out.parent.mkdir(parents=True, exist_ok=True)
    writer: Optional[pq.ParquetWriter] = None
    first_candidate = CANDIDATE + encoder.candidates[0].column
    started = time.perf_counter()
    with tqdm(total=total, unit="req", desc="scoring", disable=not progress, mininterval=1.0) as bar:
        for file, first_row, frame in _batches(requests, encoder.required_columns, batch_size):
            inputs = encoder.encode(frame, file, first_row, summary)
            with torch.inference_mode():
                scores = module(inputs).numpy()
            table = _score_table(frame, scores, first_candidate, first_row)
            writer = writer or pq.ParquetWriter(out, table.schema)
            writer.write_table(table)
            bar.update(frame.height)
    if writer is not None:
        writer.close()
    summary.seconds = time.perf_counter() - started
    return summary


def _score_table(frame: pl.DataFrame, scores: np.ndarray, first_candidate: str, first_row: int) -> pa.Table:
    counts = frame[first_candidate].list.len().to_numpy().astype(np.int64)
    rows = np.repeat(np.arange(frame.height), counts)
    positions = positions_within_rows(counts)
    request_ids = frame[REQUEST_ID].to_numpy() if REQUEST_ID in frame.columns else np.arange(frame.height) + first_row
    columns = {
        REQUEST_ID: pa.array(request_ids[rows]),
        "candidate_index": pa.array(positions.astype(np.int32)),
        first_candidate: frame[first_candidate].explode().to_arrow(),
        "score": pa.array(scores[rows, positions].astype(np.float32)),
    }
    if LABEL in frame.columns:
        columns[LABEL] = frame[LABEL].explode().to_arrow()
    return pa.table(columns)
