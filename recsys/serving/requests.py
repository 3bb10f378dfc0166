"""Canonical scoring requests: one Parquet row per request, raw ids, as a serving system sees them.

Columns (`<col>` ranges over the feature spec's fields):

* `request_id` (int64), `user_id`, `timestamp`: the request time, in the spec's timestamp unit;
* `history_timestamp` and `history_<col>` for every sequence column: lists, oldest first, the
  user's earlier events (scoring keeps those strictly before the request time, as training does);
* `candidate_<col>` for every candidate column: lists, one entry per candidate (M per request);
* `<col>` for every profile / context column: one raw value;
* optional `label`: a list parallel to the candidates (copied to the scores, for offline checks).

`replay_requests` builds such a file from a behaviour log: every (user, time, side features) group
of events at or after `since` becomes one request whose candidates are that group's items. It is
how the pipeline and the tests feed `recsys score` with requests whose answers are known.
"""

from __future__ import annotations

from pathlib import Path
from typing import List

import numpy as np
import polars as pl
import pyarrow as pa
import pyarrow.parquet as pq

from recsys.data.ragged import ranges_to_indices
from recsys.data.spec import FeatureSpec
from recsys.data.validate import list_parquet_files

REQUEST_ID = "request_id"
HISTORY = "history_"
CANDIDATE = "candidate_"
LABEL = "label"


def request_columns(spec: FeatureSpec) -> List[str]:
    sequence = [f.column for f in spec.fields_with_role("sequence")]
    side = [f.column for f in spec.fields if f.role != "sequence"]
    candidates = [f.column for f in spec.fields_with_role("sequence") if f.candidate]
    return [REQUEST_ID, "user_id", "timestamp", HISTORY + "timestamp"] + [HISTORY + c for c in sequence] + [CANDIDATE + c for c in candidates] + side


def _list_column(values: pa.Array, starts: np.ndarray, lengths: np.ndarray) -> pa.ListArray:
    offsets = np.concatenate([[0], np.cumsum(lengths)]).astype(np.int32)
    return pa.ListArray.from_arrays(pa.array(offsets), values.take(pa.array(ranges_to_indices(starts, lengths))))


def replay_requests(log_path: str | Path, spec: FeatureSpec, since: int, out: Path, max_history: int | None = None,
                    limit: int | None = None, seed: int = 0) -> dict:
    """Requests at or after `since` (in the log's timestamp unit) with their raw histories."""
    files = list_parquet_files(log_path)
    sequence = [f.column for f in spec.fields_with_role("sequence")]
    candidates = [f.column for f in spec.fields_with_role("sequence") if f.candidate]
    side = [f.column for f in spec.fields if f.role != "sequence"]
    label = spec.label.column
    columns = list(dict.fromkeys(["user_id", "timestamp", *sequence, *side, *([label] if label else [])]))
    log = pl.concat([pl.read_parquet(f, columns=columns) for f in files]).with_row_index("__order")
    log = log.sort(["user_id", "timestamp", "__order"])
    excluded = list(spec.history.exclude_actions)
    history = log.filter(~pl.col("action").cast(pl.String).is_in(excluded)) if excluded else log
    keys = ["user_id", "timestamp", *side]
    requests = (
        log.filter(pl.col("timestamp") >= since)
        .group_by(keys, maintain_order=True)
        .agg([pl.col(c).alias(CANDIDATE + c) for c in candidates] + ([pl.col(label).cast(pl.Int8).alias(LABEL)] if label else []))
    )
    if limit is not None and requests.height > limit:
        chosen = np.sort(np.random.default_rng(seed).choice(requests.height, limit, replace=False))
        requests = requests[chosen]
    # History of a request: the user's history events strictly before its time (searchsorted per user).
    codes = history.select("user_id").unique(maintain_order=True).with_row_index("__user").with_columns(pl.col("__user").cast(pl.Int64))
    history_user = history.join(codes, on="user_id", how="left", maintain_order="left")["__user"].to_numpy()
    request_user = requests.join(codes, on="user_id", how="left", maintain_order="left")["__user"].fill_null(-1).to_numpy()
    history_key = (history_user << 34) + history["timestamp"].cast(pl.Int64).to_numpy()
    request_times = requests["timestamp"].cast(pl.Int64).to_numpy()
    ends = np.searchsorted(history_key, (request_user << 34) + request_times, side="left")
    user_first = np.searchsorted(history_user, request_user, side="left")
    lengths = np.where(request_user >= 0, ends - user_first, 0)
    if max_history is not None:
        lengths = np.minimum(lengths, max_history)
    starts = ends - lengths
    table = requests.with_row_index(REQUEST_ID).with_columns(pl.col(REQUEST_ID).cast(pl.Int64)).to_arrow()
    arrow_history = history.to_arrow()
    for column in ["timestamp", *sequence]:
        table = table.append_column(HISTORY + column, _list_column(arrow_history[column].combine_chunks(), starts, lengths))
    out.parent.mkdir(parents=True, exist_ok=True)
    pq.write_table(table.select([c for c in request_columns(spec) if c in table.column_names] + ([LABEL] if label else [])), out)
    return {"requests": table.num_rows, "candidates": int(sum(len(x) for x in requests[CANDIDATE + candidates[0]].to_list())),
            "mean_history": float(lengths.mean()) if len(lengths) else 0.0, "out": str(out)}
