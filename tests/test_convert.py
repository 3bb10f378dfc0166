"""Converters on small fixtures written in the exact public formats, then prepared with the shipped specs."""

from __future__ import annotations

from pathlib import Path

import polars as pl
import pytest

from recsys.data.convert import ConvertError, convert_kuairand, convert_movielens, convert_taobao
from recsys.data.prepare import prepare_dataset
from recsys.data.spec import load_spec

FIXTURES = Path(__file__).parent / "fixtures"
SPECS = Path(__file__).resolve().parents[1] / "feature_specs"


def _raw_lines(path: Path, header: bool) -> list[str]:
    lines = [line for line in path.read_text(encoding="latin-1").splitlines() if line]
    return lines[1:] if header else lines


@pytest.mark.parametrize(
    "folder,filename,separator,header",
    [("movielens_100k", "u.data", "\t", False), ("movielens_1m", "ratings.dat", "::", False), ("movielens_latest", "ratings.csv", ",", True)],
)
def test_movielens_formats(tmp_path, folder, filename, separator, header):
    result = convert_movielens(FIXTURES / folder, tmp_path / "canonical")
    lines = _raw_lines(FIXTURES / folder / filename, header)
    frame = pl.read_parquet(tmp_path / "canonical" / "*.parquet")
    assert result.input_rows == result.output_rows == len(lines) == frame.height
    first = lines[0].split(separator)
    row = frame.row(0, named=True)
    assert (row["user_id"], row["item_id"], row["timestamp"]) == (int(first[0]), int(first[1]), int(first[3]))
    assert row["rating"] == float(first[2]) and row["action"] == f"r{float(first[2]):g}"
    summary = prepare_dataset(load_spec(SPECS / "movielens.yaml"), tmp_path / "canonical", tmp_path / "prepared")
    positives = sum(1 for line in lines if float(line.split(separator)[2]) >= 4)
    labelled = sum(part["samples"] * part["label_rate"] for part in summary["samples"].values() if part["samples"])
    assert round(labelled) == positives


def test_taobao_positives_negatives_and_history_rules(tmp_path):
    lines = _raw_lines(FIXTURES / "taobao" / "UserBehavior.csv", False)
    result = convert_taobao(FIXTURES / "taobao", tmp_path / "canonical", negatives=2, seed=1)
    frame = pl.read_parquet(tmp_path / "canonical" / "*.parquet")
    pv = sum(1 for line in lines if line.split(",")[3] == "pv")
    assert result.input_rows == len(lines)
    assert frame.height == len(lines) + 2 * pv
    assert frame.filter(pl.col("action") == "sampled_negative").height == 2 * pv
    assert (frame.filter(pl.col("action") == "pv")["label"] == 1).all()
    assert frame.filter(pl.col("action").is_in(["buy", "cart", "fav"]))["label"].null_count() == len(lines) - pv
    # Determinism of the negative sampler.
    convert_taobao(FIXTURES / "taobao", tmp_path / "again", negatives=2, seed=1)
    assert frame.equals(pl.read_parquet(tmp_path / "again" / "*.parquet"))
    summary = prepare_dataset(load_spec(SPECS / "taobao.yaml"), tmp_path / "canonical", tmp_path / "prepared")
    assert summary["history_events"] == len(lines)  # negatives never enter histories
    assert sum(p["samples"] for p in summary["samples"].values()) == 3 * pv
    assert all(summary["samples"][s]["samples"] > 0 for s in ("train", "valid", "test"))


def test_taobao_rejects_unknown_behaviors(tmp_path):
    bad = tmp_path / "UserBehavior.csv"
    bad.write_text("1,2,3,pv,1511539300\n1,2,3,like,1511539400\n")
    with pytest.raises(ConvertError, match="column 'behavior' has values outside"):
        convert_taobao(bad, tmp_path / "out")


def test_kuairand_standard_and_random_logs(tmp_path):
    result = convert_kuairand(FIXTURES / "kuairand", tmp_path / "canonical")
    files = sorted((FIXTURES / "kuairand").glob("*.csv"))
    raw = pl.concat([pl.read_csv(f) for f in files])
    frame = pl.read_parquet(tmp_path / "canonical" / "*.parquet")
    assert result.input_rows == raw.height == frame.height
    assert set(frame["log_source"].unique()) == {"standard", "random"}
    assert frame["label"].sum() == raw["is_click"].sum()
    assert frame.filter(pl.col("action") == "like").height == raw["is_like"].sum()
    summary = prepare_dataset(load_spec(SPECS / "kuairand.yaml"), tmp_path / "canonical", tmp_path / "prepared")
    assert summary["accepted_rows"] == raw.height
    # time_ms became seconds.
    from recsys.data.store import PreparedDataset

    stored = PreparedDataset(tmp_path / "prepared").sample_column("timestamp")
    assert sorted(stored.tolist()) == sorted((raw["time_ms"] // 1000).to_list())


def test_missing_input_is_a_clear_error(tmp_path):
    with pytest.raises(ConvertError, match="no such file"):
        convert_movielens(tmp_path / "nope", tmp_path / "out")
