from __future__ import annotations

import hashlib

import polars as pl
import pytest
from torchmetrics.functional.classification import binary_auroc
import torch

from recsys.data.synth import SynthConfig, generate_events, write_synthetic


def _digest(folder):
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(folder.iterdir())}


def test_same_seed_same_bytes_other_seed_other_bytes(tmp_path):
    cfg = SynthConfig(users=40, events_per_user=60, seed=11)
    write_synthetic(cfg, tmp_path / "a")
    write_synthetic(cfg, tmp_path / "b")
    write_synthetic(SynthConfig(users=40, events_per_user=60, seed=12), tmp_path / "c")
    assert _digest(tmp_path / "a") == _digest(tmp_path / "b")
    assert _digest(tmp_path / "a")["part-00000.parquet"] != _digest(tmp_path / "c")["part-00000.parquet"]


@pytest.fixture(scope="module")
def events():
    return pl.from_arrow(generate_events(SynthConfig(users=300, events_per_user=300, seed=1)))


def test_log_is_canonical_and_time_ordered(events):
    assert {"user_id", "item_id", "timestamp", "action", "label", "category_id"} <= set(events.columns)
    assert set(events["action"].unique()) == {"impression", "click", "conversion"}
    assert events.group_by("user_id").agg((pl.col("timestamp").diff() >= 0).all().alias("ok"))["ok"].all()
    # Labels are clicks; conversions are a subset of clicks.
    assert (events.filter(pl.col("action") != "impression")["label"] == 1).all()
    assert (events.filter(pl.col("action") == "impression")["label"] == 0).all()
    # Some impressions share a request timestamp.
    assert events.group_by(["user_id", "timestamp"]).len()["len"].max() > 1


def test_labels_follow_the_documented_ground_truth(events):
    auc = binary_auroc(torch.tensor(events["true_ctr"].to_numpy()), torch.tensor(events["label"].to_numpy()).long())
    assert auc > 0.75
    rate = events["label"].mean()
    assert 0.2 < rate < 0.7


def test_long_range_history_carries_signal(events):
    # A re-shown item (seen earlier, often far back) is clicked far more often than a fresh one.
    seen = events.with_columns(pl.int_range(pl.len()).over(["user_id", "item_id"]).alias("k"))
    seen = seen.with_columns((pl.col("k") > 0).alias("repeat"), pl.int_range(pl.len()).over("user_id").alias("pos"))
    rates = seen.group_by("repeat").agg(pl.col("label").mean()).sort("repeat")["label"].to_list()
    assert rates[1] - rates[0] > 0.15
    # And the repeats reach back far: many first occurrences lie more than 64 events earlier.
    first = seen.filter(pl.col("k") == 0).select("user_id", "item_id", pl.col("pos").alias("first_pos"))
    distance = seen.filter(pl.col("repeat")).join(first, on=["user_id", "item_id"]).select(pl.col("pos") - pl.col("first_pos"))
    assert float((distance.to_series() > 64).mean()) > 0.3
