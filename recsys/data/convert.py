"""Public datasets in their published formats -> canonical behavior-log Parquet.

Canonical columns: user_id, item_id, timestamp, action, and where the source has them label,
category_id and source-specific side columns. Every converter reads with polars, keeps every input
row (Taobao adds sampled negatives, flagged as such), and returns counts for the CLI summary.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import polars as pl

TAOBAO_BEHAVIORS = ["pv", "buy", "cart", "fav"]
SAMPLED_NEGATIVE = "sampled_negative"


class ConvertError(ValueError):
    pass


@dataclass
class ConvertResult:
    input_rows: int
    output_rows: int
    files: list[str]


def _input_files(path: Path, patterns: list[str]) -> list[Path]:
    if path.is_file():
        return [path]
    if path.is_dir():
        files = sorted({p for pattern in patterns for p in path.glob(pattern)})
        if files:
            return files
        raise ConvertError(f"{path}: no files matching {patterns}")
    raise ConvertError(f"{path}: no such file or directory")


def _write(frame: pl.DataFrame, out: Path, name: str) -> str:
    out.mkdir(parents=True, exist_ok=True)
    target = out / f"{name}.parquet"
    frame.write_parquet(target, compression="zstd")
    return str(target)


def _read_movielens(path: Path) -> pl.DataFrame:
    with open(path, encoding="latin-1") as handle:
        first = handle.readline()
    if path.suffix == ".csv":  # ml-latest / ml-20m+: header userId,movieId,rating,timestamp
        frame = pl.read_csv(path, schema_overrides={"userId": pl.Int64, "movieId": pl.Int64, "rating": pl.Float64, "timestamp": pl.Int64})
        return frame.rename({"userId": "user_id", "movieId": "item_id"})
    names = ["user_id", "item_id", "rating", "timestamp"]
    if "::" in first:  # ml-1m / ml-10m ratings.dat: UserID::MovieID::Rating::Timestamp
        lines = pl.read_csv(path, has_header=False, separator="\x1f", new_columns=["line"], encoding="utf8-lossy")
        parts = lines["line"].str.split("::")
        if parts.list.len().min() != 4:
            raise ConvertError(f"{path}: expected 4 '::'-separated fields per line")
        return pl.DataFrame({n: parts.list.get(i).cast(pl.Float64 if n == "rating" else pl.Int64) for i, n in enumerate(names)})
    if "\t" in first:  # ml-100k u.data: user item rating timestamp, tab-separated
        return pl.read_csv(path, has_header=False, separator="\t", new_columns=names, schema_overrides=dict.fromkeys(names, pl.Int64)).with_columns(pl.col("rating").cast(pl.Float64))
    raise ConvertError(f"{path}: not a MovieLens ratings file (u.data, ratings.dat or ratings.csv)")


def _rating_action(rating: pl.Expr) -> pl.Expr:
    """`r4` for 4.0, `r3.5` for 3.5: one action per rating level (GRAB's rating channels)."""
    text = pl.when(rating == rating.floor()).then(rating.cast(pl.Int64).cast(pl.String)).otherwise(rating.cast(pl.String))
    return pl.concat_str([pl.lit("r"), text])


def convert_movielens(input_path: str | Path, out: str | Path) -> ConvertResult:
    """Ratings -> events with action `r<rating>`; the spec's label rule (e.g. rating >= 4) labels them."""
    files = _input_files(Path(input_path), ["u.data", "ratings.dat", "ratings.csv"])
    written, rows = [], 0
    for path in files:
        frame = _read_movielens(path)
        rows += frame.height
        canonical = frame.select(
            "user_id",
            "item_id",
            pl.col("timestamp").cast(pl.Int64),
            _rating_action(pl.col("rating")).alias("action"),
            "rating",
        )
        written.append(_write(canonical, Path(out), path.stem.replace(".", "_")))
    return ConvertResult(rows, rows, written)


def convert_taobao(input_path: str | Path, out: str | Path, negatives: int = 1, seed: int = 0) -> ConvertResult:
    """UserBehavior.csv (user, item, category, behavior, timestamp; no header) -> events.

    Every `pv` is a positive CTR sample (label 1). For each pv, `negatives` items are drawn from
    the item popularity distribution at the same timestamp with action `sampled_negative` and label
    0; the spec excludes them from histories. buy/cart/fav events are history only (label null).
    """
    files = _input_files(Path(input_path), ["UserBehavior*.csv"])
    names = ["user_id", "item_id", "category_id", "behavior", "timestamp"]
    schema = {"user_id": pl.Int64, "item_id": pl.Int64, "category_id": pl.Int64, "behavior": pl.String, "timestamp": pl.Int64}
    rng = np.random.default_rng(seed)
    written, input_rows, output_rows = [], 0, 0
    for path in files:
        frame = pl.read_csv(path, has_header=False, new_columns=names, schema_overrides=schema)
        unknown = frame.filter(~pl.col("behavior").is_in(TAOBAO_BEHAVIORS))
        if unknown.height:
            raise ConvertError(f"{path}: column 'behavior' has values outside {TAOBAO_BEHAVIORS} ({unknown.height} rows, e.g. {unknown['behavior'][0]!r})")
        input_rows += frame.height
        events = frame.select(
            "user_id", "item_id", "category_id", "timestamp",
            pl.col("behavior").alias("action"),
            pl.when(pl.col("behavior") == "pv").then(1).otherwise(None).cast(pl.Int8).alias("label"),
        )
        parts = [events]
        if negatives > 0:
            parts.append(_taobao_negatives(events, negatives, rng))
        canonical = pl.concat(parts).sort(["user_id", "timestamp"], maintain_order=True)
        output_rows += canonical.height
        written.append(_write(canonical, Path(out), path.stem))
    return ConvertResult(input_rows, output_rows, written)


def _taobao_negatives(events: pl.DataFrame, negatives: int, rng: np.random.Generator) -> pl.DataFrame:
    items = events.group_by("item_id").agg(pl.len().alias("count"), pl.col("category_id").first()).sort("item_id")
    positives = events.filter(pl.col("label") == 1)
    probabilities = items["count"].to_numpy() / items["count"].sum()
    draws = rng.choice(items.height, size=positives.height * negatives, p=probabilities)
    repeated = positives.select("user_id", "timestamp").select(pl.all().repeat_by(negatives).explode())
    return repeated.with_columns(
        pl.Series("item_id", items["item_id"].to_numpy()[draws]),
        pl.Series("category_id", items["category_id"].to_numpy()[draws]),
        pl.lit(SAMPLED_NEGATIVE).alias("action"),
        pl.lit(0, dtype=pl.Int8).alias("label"),
    ).select(events.columns)


KUAIRAND_SIGNALS = ["is_click", "is_like", "is_follow", "is_comment", "is_forward", "is_hate", "long_view"]


def convert_kuairand(input_path: str | Path, out: str | Path) -> ConvertResult:
    """log_standard_*.csv / log_random_*.csv -> events (timestamp in ms, action from the signals).

    action is `like` if is_like, else `click` if is_click, else `impression`; label = is_click; the
    other signals, play time, tab and is_rand stay as side columns; `log_source` says which log.
    """
    files = _input_files(Path(input_path), ["log_standard_*.csv", "log_random_*.csv"])
    written, rows = [], 0
    for path in files:
        frame = pl.read_csv(path, schema_overrides={"user_id": pl.Int64, "video_id": pl.Int64, "time_ms": pl.Int64})
        missing = [c for c in ["user_id", "video_id", "time_ms", *KUAIRAND_SIGNALS, "tab"] if c not in frame.columns]
        if missing:
            raise ConvertError(f"{path}: missing KuaiRand columns {missing}")
        rows += frame.height
        canonical = frame.select(
            "user_id",
            pl.col("video_id").alias("item_id"),
            pl.col("time_ms").alias("timestamp"),
            pl.when(pl.col("is_like") == 1).then(pl.lit("like"))
            .when(pl.col("is_click") == 1).then(pl.lit("click"))
            .otherwise(pl.lit("impression")).alias("action"),
            pl.col("is_click").cast(pl.Int8).alias("label"),
            *[pl.col(c).cast(pl.Int8) for c in KUAIRAND_SIGNALS if c != "is_click"],
            pl.col("play_time_ms").cast(pl.Int64) if "play_time_ms" in frame.columns else pl.lit(None, dtype=pl.Int64).alias("play_time_ms"),
            pl.col("tab").cast(pl.Int64),
            pl.col("is_rand").cast(pl.Int8) if "is_rand" in frame.columns else pl.lit(0, dtype=pl.Int8).alias("is_rand"),
            pl.lit("random" if path.name.startswith("log_random") else "standard").alias("log_source"),
        )
        written.append(_write(canonical, Path(out), path.stem))
    return ConvertResult(rows, rows, written)
