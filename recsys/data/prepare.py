"""`recsys prepare`: validated log -> event store + sample index + vocabularies + summary.

Storage is O(events): every user's history events are stored once, time-sorted, in `events.arrow`
(Arrow IPC, memory-mapped by the loader) with per-user offsets in `users.arrow`; a sample is a row of
`samples.arrow` that points into its user's events with `hist_end`, the number of that user's
history events with a timestamp *strictly before* the sample's. Events sharing the sample's
timestamp (the same request) are never its history, so no outcome of the same request leaks.
"""

from __future__ import annotations

import hashlib
import json
import time
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from zoneinfo import ZoneInfo

import numpy as np
import polars as pl

from recsys.data.encode import Vocabulary, build_vocabulary, encode_with_vocabulary, hash_rows
from recsys.data.layout import CANDIDATE_PREFIX, FORMAT_VERSION, SPLITS
from recsys.data.spec import FeatureSpec, parse_label_rule
from recsys.data.validate import FILE_COLUMN, ROW_COLUMN, ValidatedLog, validate_log, write_quarantine

ENCODED_PREFIX = "__enc__"  # encoded rows live beside the raw ids until the stores are written


@dataclass
class StageTimer:
    seconds: dict[str, float] = field(default_factory=dict)
    _last: float = field(default_factory=time.perf_counter)

    def lap(self, stage: str) -> None:
        now = time.perf_counter()
        self.seconds[stage] = round(self.seconds.get(stage, 0.0) + now - self._last, 3)
        self._last = now


def label_expr(spec: FeatureSpec) -> pl.Expr:
    if spec.label.column:
        return pl.col(spec.label.column).cast(pl.Int8)
    column, op, operand = parse_label_rule(spec.label.rule or "")
    col = pl.col(column)
    if op == "in":
        assert isinstance(operand, list)
        condition = col.cast(pl.String).is_in(operand)
    else:
        condition = {
            ">=": col >= operand, ">": col > operand, "<=": col <= operand,
            "<": col < operand, "==": col == operand, "!=": col != operand,
        }[op]
    return pl.when(col.is_null()).then(None).otherwise(condition.cast(pl.Int8))


def resolve_cutoffs(spec: FeatureSpec, timestamps: pl.Series) -> dict[str, int]:
    """Absolute cut-off seconds; float split points are quantiles of the accepted events' times."""
    resolved = {}
    for name in ("valid_start", "test_start"):
        point = getattr(spec.split, name)
        if isinstance(point, float):
            point = int(timestamps.quantile(point, interpolation="lower"))
        resolved[name] = int(point)
    if resolved["valid_start"] > resolved["test_start"]:
        raise ValueError(f"split: valid_start {resolved['valid_start']} is after test_start {resolved['test_start']}")
    return resolved


def _utc_offset_seconds(zone: str, at_seconds: int) -> int:
    """Fixed offset of the spec's timezone (at the data's median time; DST shifts are ignored)."""
    offset = datetime.fromtimestamp(at_seconds, ZoneInfo(zone)).utcoffset()
    return int(offset.total_seconds()) if offset is not None else 0


def _harmonise_table_dtypes(log: pl.DataFrame, spec: FeatureSpec) -> pl.DataFrame:
    """Fields sharing a table must share a key type; mixed int/string become strings."""
    casts = []
    for table in spec.tables:
        columns = [f.column for f in spec.fields if f.table == table.name]
        if len({log.schema[c].is_integer() for c in columns}) > 1:
            casts += [pl.col(c).cast(pl.String) for c in columns]
    return log.with_columns(casts) if casts else log


def build_vocabularies(log: pl.DataFrame, spec: FeatureSpec, valid_start: int) -> dict[str, Vocabulary]:
    training = log.filter(pl.col("timestamp") < valid_start)
    vocabularies = {}
    for table in spec.tables:
        if table.encoding != "vocab":
            continue
        columns = [f.column for f in spec.fields if f.table == table.name]
        values = pl.concat([training[c] for c in columns]) if columns else pl.Series("value", [], dtype=pl.Int64)
        vocabularies[table.name] = build_vocabulary(table, values)
    return vocabularies


def encode_fields(log: pl.DataFrame, spec: FeatureSpec, vocabularies: dict[str, Vocabulary]) -> pl.DataFrame:
    encoded = []
    for f in spec.fields:
        table = spec.table(f.table)
        if table.encoding == "vocab":
            rows = encode_with_vocabulary(log[f.column], vocabularies[table.name])
        else:
            rows = hash_rows(log[f.column], table.buckets or 2)
        encoded.append(rows.cast(pl.Int32).rename(ENCODED_PREFIX + f.column))
    return log.with_columns(encoded)


def _sort_and_index(log: pl.DataFrame) -> pl.DataFrame:
    """Sort by user and time (input order breaks ties) and compute each row's history end."""
    log = log.sort(["user_id", "timestamp", FILE_COLUMN, ROW_COLUMN])
    new_user = pl.col("user_id").ne_missing(pl.col("user_id").shift(1))
    return (
        log.with_columns((new_user.cast(pl.Int64).cum_sum() - 1).alias("user_index"))
        .with_columns(
            (pl.col("__is_history").cast(pl.Int64).cum_sum().over("user_id") - pl.col("__is_history").cast(pl.Int64)).alias("__before"),
        )
        .with_columns(pl.col("__before").min().over(["user_id", "timestamp"]).alias("hist_end"))
    )


def _percentiles(values: np.ndarray) -> dict[str, float]:
    if len(values) == 0:
        return {}
    quantiles = np.percentile(values, [50, 90, 99])
    return {"p50": float(quantiles[0]), "p90": float(quantiles[1]), "p99": float(quantiles[2]), "max": float(values.max())}


def _fingerprint(files: list[str]) -> str:
    digest = hashlib.sha256()
    for name in files:
        digest.update(Path(name).name.encode())
        with open(name, "rb") as handle:
            for block in iter(lambda: handle.read(1 << 22), b""):
                digest.update(block)
    return digest.hexdigest()[:16]


def _write_stores(log: pl.DataFrame, spec: FeatureSpec, out: Path) -> tuple[pl.DataFrame, pl.DataFrame, pl.DataFrame]:
    sequence_columns = [f.column for f in spec.fields_with_role("sequence")]
    events = log.filter(pl.col("__is_history")).select(
        "user_index",
        *[pl.col(ENCODED_PREFIX + c).alias(c) for c in sequence_columns],
        "timestamp",
        # Targets for GRAB's dense supervision only; never a model input (-1: not a sample).
        pl.col("label").fill_null(-1).cast(pl.Int8),
    )
    user_counts = events.group_by("user_index").len(name="count")
    users = (
        log.group_by("user_index", maintain_order=True)
        .agg(pl.col("user_id").first())
        .join(user_counts, on="user_index", how="left")
        .with_columns(pl.col("count").fill_null(0).cast(pl.Int64))
        .sort("user_index")
        .with_columns((pl.col("count").cum_sum() - pl.col("count")).alias("offset"))
    )
    candidate_columns = [f.column for f in spec.fields_with_role("sequence") if f.candidate]
    side_columns = [f.column for f in spec.fields if f.role in ("profile", "context")]
    samples = log.filter(pl.col("label").is_not_null()).select(
        "user_index",
        "timestamp",
        pl.col("hist_end").cast(pl.Int64),
        # Where this sample's own event sits in its user's event store (-1: not a history event).
        pl.when(pl.col("__is_history")).then(pl.col("__before")).otherwise(-1).cast(pl.Int64).alias("event_pos"),
        "split",
        "label",
        *[pl.col(ENCODED_PREFIX + c).alias(CANDIDATE_PREFIX + c) for c in candidate_columns],
        *[pl.col(ENCODED_PREFIX + c).alias(c) for c in side_columns],
    )
    # One chunk per column, uncompressed: the loader memory-maps these files zero-copy.
    events.drop("user_index").rechunk().write_ipc(out / "events.arrow", compression="uncompressed")
    users.select("user_index", "user_id", "offset", "count").rechunk().write_ipc(out / "users.arrow", compression="uncompressed")
    samples.rechunk().write_ipc(out / "samples.arrow", compression="uncompressed")
    return events, users, samples


def _summary(validated: ValidatedLog, log: pl.DataFrame, samples: pl.DataFrame, events: pl.DataFrame, spec: FeatureSpec) -> dict:
    per_split = {}
    max_length = spec.history.max_length
    for index, name in enumerate(SPLITS):
        part = samples.filter(pl.col("split") == index)
        hist = part["hist_end"].to_numpy()
        per_split[name] = {
            "samples": part.height,
            "users": part["user_index"].n_unique(),
            "label_rate": float(part["label"].mean()) if part.height else None,
            "history_length": _percentiles(hist),
            "history_length_truncated": _percentiles(np.minimum(hist, max_length)),
        }
    return {
        "input_rows": validated.input_rows,
        "accepted_rows": log.height,
        "rejected_rows": validated.rejected.height,
        "rejected_by_reason": validated.rejected_by_reason(),
        "empty_files": validated.empty_files,
        "events": log.height,
        "history_events": events.height,
        "users": log["user_id"].n_unique(),
        "samples": per_split,
        "rows_not_samples": log.height - samples.height,
    }


def prepare_dataset(spec: FeatureSpec, input_path: str | Path, out_dir: str | Path, on_bad_rows: str = "fail", progress=None) -> dict:
    """Run the whole preparation; returns the summary (also written to DIR/summary.json)."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    timer = StageTimer()
    report = progress or (lambda message: None)

    report("validating input")
    validated = validate_log(input_path, spec, on_bad_rows)
    if validated.rejected.height:
        write_quarantine(validated, out / "quarantine.parquet")
    timer.lap("read_validate")

    report("labels, split and vocabularies")
    log = _harmonise_table_dtypes(validated.accepted, spec)
    log = log.with_columns(label_expr(spec).alias("__label")).drop("label", strict=False).rename({"__label": "label"})
    cutoffs = resolve_cutoffs(spec, log["timestamp"])
    log = log.with_columns(
        pl.when(pl.col("timestamp") < cutoffs["valid_start"]).then(0)
        .when(pl.col("timestamp") < cutoffs["test_start"]).then(1)
        .otherwise(2).cast(pl.Int8).alias("split")
    )
    vocabularies = build_vocabularies(log, spec, cutoffs["valid_start"])
    timer.lap("label_split_vocab")

    report("encoding ids")
    item_count = log["item_id"].n_unique()
    log = encode_fields(log, spec, vocabularies)
    # Keep only what the stores need before the sort, which copies every column it carries.
    is_history = ~pl.col("action").cast(pl.String).is_in(list(spec.history.exclude_actions))
    log = log.select(
        "user_id", "timestamp", FILE_COLUMN, ROW_COLUMN, "label", "split",
        is_history.alias("__is_history"), pl.col(f"^{ENCODED_PREFIX}.*$"),
    )
    validated.accepted = log.clear()
    timer.lap("encode")

    report("sorting and indexing histories")
    log = _sort_and_index(log)
    timer.lap("sort_index")

    report("writing event store and sample index")
    events, users, samples = _write_stores(log, spec, out)
    vocab_dir = out / "vocab"
    vocab_dir.mkdir(exist_ok=True)
    for name, vocabulary in vocabularies.items():
        vocabulary.frame.write_parquet(vocab_dir / f"{name}.parquet")
    timer.lap("write")

    summary = _summary(validated, log, samples, events, spec)
    summary["items"] = item_count
    metadata = _metadata(spec, vocabularies, cutoffs, log, validated)
    summary["stage_seconds"] = timer.seconds
    (out / "dataset.json").write_text(json.dumps(metadata, indent=2, sort_keys=True, default=str))
    (out / "summary.json").write_text(json.dumps(summary, indent=2, sort_keys=True))
    (out / "summary.txt").write_text(format_summary(summary))
    timer.lap("summary")
    summary["stage_seconds"] = timer.seconds
    return summary


def _num_embeddings(spec: FeatureSpec, vocabularies: dict[str, Vocabulary]) -> dict[str, int]:
    return {
        t.name: vocabularies[t.name].num_embeddings if t.encoding == "vocab" else int(t.buckets or 0)
        for t in spec.tables
    }


def _action_group_rows(spec: FeatureSpec, vocabularies: dict[str, Vocabulary]) -> dict[str, list[int]]:
    action_table = spec.action_field.table
    vocabulary = vocabularies.get(action_table)
    if vocabulary is None:
        return {}
    lookup = {str(value): row for value, row in zip(vocabulary.frame["value"].to_list(), vocabulary.frame["row"].to_list(), strict=True)}
    return {group: sorted(lookup[a] for a in actions if a in lookup) for group, actions in spec.action_groups.items()}


def _metadata(spec, vocabularies, cutoffs, log: pl.DataFrame, validated: ValidatedLog) -> dict:
    median_time = int(log["timestamp"].median() or 0)
    return {
        "format_version": FORMAT_VERSION,
        "spec": spec.model_dump(mode="json"),
        "num_embeddings": _num_embeddings(spec, vocabularies),
        "reserved_rows": {name: v.reserved for name, v in vocabularies.items() if v.reserved},
        "action_group_rows": _action_group_rows(spec, vocabularies),
        "split_cutoffs": cutoffs,
        "utc_offset_seconds": _utc_offset_seconds(spec.source.timezone, median_time),
        "user_id_dtype": str(log.schema["user_id"]),
        "fingerprint": _fingerprint(validated.files),
        "input_files": validated.files,
    }


def format_summary(summary: dict) -> str:
    lines = [
        f"input rows      {summary['input_rows']:>12,}",
        f"accepted rows   {summary['accepted_rows']:>12,}",
        f"rejected rows   {summary['rejected_rows']:>12,}",
    ]
    lines += [f"  {reason}: {count:,}" for reason, count in summary["rejected_by_reason"].items()]
    lines += [f"  empty file skipped: {name}" for name in summary["empty_files"]]
    lines += [
        f"events          {summary['events']:>12,}",
        f"history events  {summary['history_events']:>12,}",
        f"users           {summary['users']:>12,}",
        f"items           {summary['items']:>12,}",
        f"rows that are not samples (no label) {summary['rows_not_samples']:,}",
        "",
        f"{'split':<6} {'samples':>11} {'users':>8} {'label rate':>10}  history length p50/p90/p99/max (truncated p99)",
    ]
    for name, part in summary["samples"].items():
        hist = part["history_length"]
        rate = f"{part['label_rate']:.4f}" if part["label_rate"] is not None else "-"
        pcts = "/".join(f"{hist[k]:.0f}" for k in ("p50", "p90", "p99", "max")) if hist else "-"
        truncated = f"{part['history_length_truncated']['p99']:.0f}" if hist else "-"
        lines.append(f"{name:<6} {part['samples']:>11,} {part['users']:>8,} {rate:>10}  {pcts} ({truncated})")
    return "\n".join(lines) + "\n"
