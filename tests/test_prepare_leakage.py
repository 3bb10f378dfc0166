"""Prepared datasets: histories hold exactly the user's earlier events, nothing later or concurrent."""

from __future__ import annotations

import json

import numpy as np
import polars as pl
import pyarrow as pa
import pyarrow.parquet as pq

from recsys.data.loader import BatchBuilder
from recsys.data.prepare import prepare_dataset
from recsys.data.spec import spec_from_dict
from recsys.data.store import PreparedDataset


def _spec(max_length=8, exclude=()):
    return spec_from_dict(
        {
            "name": "tiny",
            "tables": [{"name": "item", "dim": 4}, {"name": "action", "dim": 4, "reserved": ["<candidate>"]}],
            "fields": [
                {"column": "item_id", "table": "item", "role": "sequence"},
                {"column": "action", "table": "action", "role": "sequence", "candidate": False},
            ],
            "label": {"column": "label"},
            "split": {"valid_start": 1_704_067_200 + 1000, "test_start": 1_704_067_200 + 2000},
            "history": {"max_length": max_length, "exclude_actions": list(exclude)},
            "chunking": {"num_chunks": 3},
        }
    )


T0 = 1_704_067_200


def test_history_is_strictly_earlier_and_equal_timestamps_are_excluded(tmp_path):
    # user 1: events at t, t, t+10 (two impressions of one request share t), then t+10 again.
    rows = {
        "user_id": [1, 1, 1, 1, 2],
        "item_id": [10, 11, 12, 13, 10],
        "timestamp": [T0, T0, T0 + 10, T0 + 10, T0 + 5],
        "action": ["click", "impression", "click", "impression", "click"],
        "label": [1, 0, 1, 0, 1],
    }
    pq.write_table(pa.table(rows), tmp_path / "log.parquet")
    prepare_dataset(_spec(), tmp_path / "log.parquet", tmp_path / "out")
    dataset = PreparedDataset(tmp_path / "out")
    samples = pl.from_arrow(dataset.samples)
    # Same-timestamp events never see each other: hist_end counts events strictly before.
    assert samples.filter(pl.col("user_index") == 0)["hist_end"].to_list() == [0, 0, 2, 2]
    assert samples.filter(pl.col("user_index") == 1)["hist_end"].to_list() == [0]
    builder = BatchBuilder(dataset)
    batch = builder.build(np.arange(samples.height))
    assert batch.history_lengths.tolist() == [0, 0, 2, 2, 0]
    items = batch.sparse_features["hist_item_id"].to_dense()
    vocab = pl.read_parquet(tmp_path / "out" / "vocab" / "item.parquet")
    row_of = dict(zip(vocab["value"].to_list(), vocab["row"].to_list()))
    assert items[2].tolist() == [row_of[10], row_of[11]]


def test_excluded_actions_are_samples_but_never_history(tmp_path):
    rows = {
        "user_id": [1, 1, 1, 1],
        "item_id": [10, 99, 11, 98],
        "timestamp": [T0, T0, T0 + 10, T0 + 10],
        "action": ["pv", "sampled_negative", "pv", "sampled_negative"],
        "label": [1, 0, 1, 0],
    }
    pq.write_table(pa.table(rows), tmp_path / "log.parquet")
    summary = prepare_dataset(_spec(exclude=["sampled_negative"]), tmp_path / "log.parquet", tmp_path / "out")
    dataset = PreparedDataset(tmp_path / "out")
    assert summary["history_events"] == 2 and summary["samples"]["train"]["samples"] == 4
    batch = BatchBuilder(dataset).build(np.arange(4))
    assert batch.history_lengths.tolist() == [0, 0, 1, 1]
    vocab = pl.read_parquet(tmp_path / "out" / "vocab" / "item.parquet")
    row_of = dict(zip(vocab["value"].to_list(), vocab["row"].to_list()))
    assert batch.sparse_features["hist_item_id"].values().tolist() == [row_of[10], row_of[10]]


def test_histories_match_a_brute_force_scan(prepared, synthetic_log, synthetic_spec):
    """Every sample's history = the most recent max_length events of its user strictly before it."""
    dataset = PreparedDataset(prepared)
    log = pl.read_parquet(synthetic_log / "*.parquet").with_row_index("row")
    users = pl.from_arrow(dataset.users)
    samples = pl.from_arrow(dataset.samples).with_row_index("sample")
    rng = np.random.default_rng(0)
    picks = rng.choice(samples.height, size=300, replace=False)
    builder = BatchBuilder(dataset)
    batch = builder.build(picks)
    width = synthetic_spec.history.max_length
    times = batch.history_timestamps
    vocab = pl.read_parquet(prepared / "vocab" / "item.parquet")
    row_of = dict(zip(vocab["value"].to_list(), vocab["row"].to_list()))
    item_rows = batch.sparse_features["hist_item_id"].to_dense()
    for b, sample_id in enumerate(picks.tolist()):
        sample = samples.row(sample_id, named=True)
        user_id = users.row(sample["user_index"], named=True)["user_id"]
        earlier = log.filter((pl.col("user_id") == user_id) & (pl.col("timestamp") < sample["timestamp"])).sort(["timestamp", "row"])
        expected = earlier.tail(width)
        length = int(batch.history_lengths[b])
        assert length == expected.height
        assert times[b, width - length :].tolist() == expected["timestamp"].to_list()
        assert (times[b, : width - length] == 0).all()
        assert item_rows[b].tolist() == [row_of.get(item, 0) for item in expected["item_id"].to_list()]
        assert (times[b, width - length :] < batch.request_timestamps[b]).all()


def test_vocabularies_come_from_the_training_period_only(prepared):
    dataset = PreparedDataset(prepared)
    cutoff = dataset.metadata["split_cutoffs"]["valid_start"]
    vocab = pl.read_parquet(prepared / "vocab" / "item.parquet")
    samples = pl.from_arrow(dataset.samples)
    later_only = samples.filter(pl.col("timestamp") >= cutoff)
    # Rows of later-only items are the OOV row 0, and every vocabulary row is below num_embeddings.
    assert vocab["row"].max() < dataset.num_embeddings["item"]
    assert (samples["cand_item_id"] < dataset.num_embeddings["item"]).all()
    assert later_only["cand_item_id"].min() == 0
    assert dataset.metadata["reserved_rows"]["action"]["<candidate>"] == dataset.num_embeddings["action"] - 1


def test_summary_accounts_for_everything(prepared):
    summary = json.loads((prepared / "summary.json").read_text())
    assert summary["accepted_rows"] + summary["rejected_rows"] == summary["input_rows"]
    total = sum(part["samples"] for part in summary["samples"].values())
    assert total + summary["rows_not_samples"] == summary["events"]
    assert all(part["samples"] > 0 for part in summary["samples"].values())
    assert "history_length" in summary["samples"]["test"] and summary["samples"]["test"]["history_length"]["p50"] > 0
