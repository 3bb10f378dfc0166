"""Read canonical behavior-log Parquet and sort every row into accepted or rejected-with-a-reason.

File-level problems (unreadable Parquet, a missing or mistyped column, id types that differ between
files) always raise `InputError` naming the file and column: no row of such a file can be trusted.
Row-level problems (null ids or timestamps, timestamps that cannot be real, labels outside {0, 1})
raise by default with file, column, rows and counts; in quarantine mode the rows are kept, unchanged,
with a `reason`, so that accepted + quarantined = input.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path

import polars as pl
import pyarrow as pa
import pyarrow.parquet as pq

from recsys.data.spec import FeatureSpec

# Anything before 1990 or from 2100 on is a unit mix-up or a corrupted value, not an event.
MIN_PLAUSIBLE_SECONDS = int(datetime(1990, 1, 1, tzinfo=timezone.utc).timestamp())
MAX_PLAUSIBLE_SECONDS = int(datetime(2100, 1, 1, tzinfo=timezone.utc).timestamp())
UNIT_DIVISOR = {"s": 1, "ms": 1_000, "us": 1_000_000}
FILE_COLUMN = "__file"
ROW_COLUMN = "__row"
REASON_COLUMN = "reason"


class InputError(ValueError):
    """Input that cannot be prepared; the message names file, column, rows and counts."""


@dataclass
class ValidatedLog:
    accepted: pl.DataFrame
    rejected: pl.DataFrame
    input_rows: int
    files: list[str]
    empty_files: list[str] = field(default_factory=list)

    def rejected_by_reason(self) -> dict[str, int]:
        if self.rejected.height == 0:
            return {}
        counts = self.rejected.group_by(REASON_COLUMN).len().sort(REASON_COLUMN)
        return dict(zip(counts[REASON_COLUMN].to_list(), counts["len"].to_list(), strict=True))


def list_parquet_files(path: str | Path) -> list[Path]:
    path = Path(path)
    if path.is_file():
        return [path]
    if path.is_dir():
        files = sorted(p for p in path.rglob("*.parquet") if p.is_file())
        if not files:
            raise InputError(f"{path}: directory holds no *.parquet files")
        return files
    raise InputError(f"{path}: no such file or directory")


def _is_id_type(dtype: pa.DataType) -> bool:
    return pa.types.is_integer(dtype) or pa.types.is_string(dtype) or pa.types.is_large_string(dtype)


def _check_schema(path: Path, schema: pa.Schema, spec: FeatureSpec) -> None:
    names = set(schema.names)
    for column in spec.input_columns:
        if column not in names:
            raise InputError(f"{path}: missing column {column!r} (present: {sorted(names)})")
    ts_type = schema.field("timestamp").type
    unit = spec.source.timestamp_unit
    if unit == "arrow" and not pa.types.is_timestamp(ts_type):
        raise InputError(f"{path}: column 'timestamp' has type {ts_type}, the spec says an Arrow timestamp")
    if unit != "arrow" and not pa.types.is_integer(ts_type):
        raise InputError(f"{path}: column 'timestamp' has type {ts_type}, the spec says integer {unit}")
    id_columns = ["user_id", "item_id", "action"] + [f.column for f in spec.fields]
    for column in dict.fromkeys(id_columns):
        dtype = schema.field(column).type
        if not _is_id_type(dtype):
            raise InputError(f"{path}: column {column!r} has type {dtype}; ids must be integers or strings")
    if spec.label.column:
        dtype = schema.field(spec.label.column).type
        if not (pa.types.is_integer(dtype) or pa.types.is_boolean(dtype)):
            raise InputError(f"{path}: label column {spec.label.column!r} has type {dtype}; expected integers 0/1 or booleans")


def _seconds_expr(unit: str) -> pl.Expr:
    ts = pl.col("timestamp")
    if unit == "arrow":
        return ts.dt.epoch("s")
    return ts.cast(pl.Int64) // UNIT_DIVISOR[unit]


def _reason_expr(spec: FeatureSpec) -> pl.Expr:
    """The first failed check of a row, or null for a good row."""
    seconds = _seconds_expr(spec.source.timestamp_unit)
    checks: list[tuple[pl.Expr, str]] = [
        (pl.col("user_id").is_null(), "null user_id"),
        (pl.col("item_id").is_null(), "null item_id"),
        (pl.col("action").is_null(), "null action"),
        (pl.col("timestamp").is_null(), "null timestamp"),
        (
            (seconds < MIN_PLAUSIBLE_SECONDS) | (seconds >= MAX_PLAUSIBLE_SECONDS),
            "implausible timestamp (outside 1990..2100 in the spec's unit)",
        ),
    ]
    if spec.label.column:
        label = pl.col(spec.label.column).cast(pl.Int64)
        checks.append((label.is_not_null() & ~label.is_in([0, 1]), f"{spec.label.column} outside {{0,1}}"))
    expr = pl.lit(None, dtype=pl.String)
    for condition, reason in reversed(checks):
        expr = pl.when(condition).then(pl.lit(reason)).otherwise(expr)
    return expr


def _read_file(path: Path, spec: FeatureSpec, index: int) -> pl.DataFrame:
    try:
        parquet = pq.ParquetFile(path)
    except (pa.ArrowException, OSError) as exc:
        raise InputError(f"{path}: unreadable Parquet ({exc})") from exc
    _check_schema(path, parquet.schema_arrow, spec)
    try:
        # Only the columns the spec reads: quarantine re-reads whole rejected rows from the file.
        frame = pl.read_parquet(path, columns=spec.input_columns)
    except Exception as exc:  # polars raises its own exception family for corrupt pages
        raise InputError(f"{path}: unreadable Parquet ({exc})") from exc
    return frame.with_columns(
        pl.lit(index, dtype=pl.Int32).alias(FILE_COLUMN),
        pl.int_range(pl.len(), dtype=pl.Int64).alias(ROW_COLUMN),
    )


def _first_bad_rows_message(rejected: pl.DataFrame, files: list[str], limit: int = 5) -> str:
    lines = []
    for reason, count in rejected.group_by(REASON_COLUMN).len().sort(REASON_COLUMN).iter_rows():
        examples = rejected.filter(pl.col(REASON_COLUMN) == reason).head(limit)
        where = ", ".join(f"{files[f]} row {r}" for f, r in zip(examples[FILE_COLUMN], examples[ROW_COLUMN], strict=True))
        column = reason.split(" ")[1] if reason.startswith("null ") else reason.split(" ")[0]
        if reason.startswith("implausible"):
            column = "timestamp"
        lines.append(f"  column {column!r}: {reason}: {count} rows (first: {where})")
    return "\n".join(lines)


def _unify_id_types(frames: list[pl.DataFrame], files: list[str], spec: FeatureSpec) -> None:
    columns = ["user_id", "item_id", "action"] + [f.column for f in spec.fields]
    for column in dict.fromkeys(columns):
        kinds = {files[i]: frame.schema[column].is_integer() for i, frame in enumerate(frames)}
        if len(set(kinds.values())) > 1:
            detail = ", ".join(f"{name}: {'integer' if is_int else 'string'}" for name, is_int in kinds.items())
            raise InputError(f"column {column!r} mixes integer and string ids across files ({detail})")


def validate_log(path: str | Path, spec: FeatureSpec, on_bad_rows: str = "fail") -> ValidatedLog:
    """Read every Parquet file under `path` and split rows into accepted and rejected."""
    if on_bad_rows not in ("fail", "quarantine"):
        raise ValueError(f"on_bad_rows must be 'fail' or 'quarantine', got {on_bad_rows!r}")
    paths = list_parquet_files(path)
    files = [str(p) for p in paths]
    frames, empty_files = [], []
    for index, file_path in enumerate(paths):
        frame = _read_file(file_path, spec, index)
        if frame.height == 0:
            if on_bad_rows == "fail":
                raise InputError(f"{file_path}: empty file (0 rows); use --on-bad-rows quarantine to skip it")
            empty_files.append(str(file_path))
            continue
        frames.append(frame)
    if not frames:
        raise InputError(f"{path}: no rows in any input file")
    _unify_id_types(frames, [files[f[FILE_COLUMN][0]] for f in frames], spec)
    log = pl.concat(frames, how="diagonal_relaxed")
    log = log.with_columns(_reason_expr(spec).alias(REASON_COLUMN))
    rejected = log.filter(pl.col(REASON_COLUMN).is_not_null())
    if rejected.height and on_bad_rows == "fail":
        raise InputError(
            f"{rejected.height} of {log.height} input rows are invalid "
            f"(use --on-bad-rows quarantine to set them aside):\n{_first_bad_rows_message(rejected, files)}"
        )
    # Filtering copies every column; skip the copy in the common all-good case.
    accepted = log.filter(pl.col(REASON_COLUMN).is_null()) if rejected.height else log
    accepted = accepted.drop(REASON_COLUMN)
    rejected = rejected.select(FILE_COLUMN, ROW_COLUMN, REASON_COLUMN)
    accepted = accepted.with_columns(_seconds_expr(spec.source.timestamp_unit).alias("timestamp"))
    return ValidatedLog(accepted=accepted, rejected=rejected, input_rows=log.height, files=files, empty_files=empty_files)


def write_quarantine(validated: ValidatedLog, path: Path) -> None:
    """Rejected rows, unchanged and with all their columns, plus `reason`, source file and 0-based row."""
    parts = []
    for file_index, rejected in validated.rejected.partition_by(FILE_COLUMN, as_dict=True).items():
        source = validated.files[file_index[0]]
        rows = rejected.select(ROW_COLUMN, REASON_COLUMN)
        original = pl.read_parquet(source).with_row_index(ROW_COLUMN).with_columns(pl.col(ROW_COLUMN).cast(pl.Int64))
        parts.append(
            original.join(rows, on=ROW_COLUMN, how="inner", maintain_order="left")
            .with_columns(pl.lit(source).alias("source_file"))
            .rename({ROW_COLUMN: "source_row"})
        )
    quarantine = pl.concat(parts, how="diagonal_relaxed")
    ordered = [c for c in quarantine.columns if c not in ("reason", "source_file", "source_row")]
    quarantine.select(*ordered, "reason", "source_file", "source_row").write_parquet(path)
