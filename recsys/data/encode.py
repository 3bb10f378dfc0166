"""Raw ids to embedding rows: vocabularies built on the training period, or stable hashing.

Row 0 of every table is the out-of-vocabulary row. A vocabulary orders ids by training-period
frequency (ties by value) so hot rows sit together; reserved tokens follow the ids. Hashing uses
splitmix64 on integers and blake2b on strings: both are stable across library versions, so
`recsys score` maps ids exactly as `recsys prepare` did.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass

import numpy as np
import polars as pl

from recsys.data.spec import TableConfig

OOV_ROW = 0
_MASK64 = np.uint64(0xFFFFFFFFFFFFFFFF)


@dataclass
class Vocabulary:
    """value -> row for one table; `frame` has columns value, row, count."""

    table: str
    frame: pl.DataFrame
    reserved: dict[str, int]

    @property
    def num_embeddings(self) -> int:
        return 1 + self.frame.height + len(self.reserved)


def splitmix64(values: np.ndarray) -> np.ndarray:
    with np.errstate(over="ignore"):
        z = values.astype(np.uint64) + np.uint64(0x9E3779B97F4A7C15)
        z = (z ^ (z >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
        z = (z ^ (z >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
        return (z ^ (z >> np.uint64(31))) & _MASK64


def _string_hash(value: str) -> int:
    return int.from_bytes(hashlib.blake2b(value.encode(), digest_size=8).digest(), "little")


def hash_rows(values: pl.Series, buckets: int) -> pl.Series:
    """Rows 1..buckets-1 from a stable 64-bit hash; nulls go to the OOV row."""
    if values.dtype.is_integer():
        hashed = splitmix64(values.fill_null(0).to_numpy().astype(np.int64).view(np.uint64))
    else:
        uniques = values.drop_nulls().unique()
        table = pl.DataFrame(
            {"value": uniques, "hash": pl.Series([_string_hash(v) for v in uniques.to_list()], dtype=pl.UInt64)}
        )
        joined = pl.DataFrame({"value": values}).join(table, on="value", how="left", maintain_order="left")
        hashed = joined["hash"].fill_null(0).to_numpy()
    rows = (hashed % np.uint64(buckets - 1)).astype(np.int64) + 1
    return pl.Series(values.name, rows).set(values.is_null(), OOV_ROW)


def build_vocabulary(table: TableConfig, training_values: pl.Series) -> Vocabulary:
    counts = (
        pl.DataFrame({"value": training_values})
        .drop_nulls()
        .group_by("value")
        .len(name="count")
        .filter(pl.col("count") >= table.min_count)
        .sort(["count", "value"], descending=[True, False])
    )
    frame = counts.with_columns(pl.int_range(1, pl.len() + 1, dtype=pl.Int64).alias("row")).select("value", "row", "count")
    reserved = {token: frame.height + 1 + i for i, token in enumerate(table.reserved)}
    return Vocabulary(table=table.name, frame=frame, reserved=reserved)


def encode_with_vocabulary(values: pl.Series, vocabulary: Vocabulary) -> pl.Series:
    mapping = vocabulary.frame.select(pl.col("value").cast(values.dtype), "row")
    joined = pl.DataFrame({"value": values}).join(mapping, on="value", how="left", maintain_order="left")
    return joined["row"].fill_null(OOV_ROW).rename(values.name)
