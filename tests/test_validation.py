"""Bad input: a clear error naming file, column, row and count; quarantine loses nothing."""

from __future__ import annotations

import polars as pl
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from recsys.data.prepare import prepare_dataset
from recsys.data.validate import InputError, validate_log

T0 = 1_704_067_200


def _good_rows(n: int = 12) -> dict:
    return {
        "user_id": [i % 3 for i in range(n)],
        "item_id": [100 + i for i in range(n)],
        "category_id": [i % 4 for i in range(n)],
        "timestamp": [T0 + 60 * i for i in range(n)],
        "action": ["click" if i % 2 else "impression" for i in range(n)],
        "label": [i % 2 for i in range(n)],
        "user_segment": [1] * n,
        "device": ["ios"] * n,
    }


def _write(path, rows: dict, schema: pa.Schema | None = None):
    pq.write_table(pa.table(rows, schema=schema), path)
    return path


def test_missing_column_names_file_and_column(tmp_path, synthetic_spec):
    rows = _good_rows()
    del rows["action"]
    path = _write(tmp_path / "a.parquet", rows)
    with pytest.raises(InputError, match=r"a\.parquet: missing column 'action'"):
        validate_log(path, synthetic_spec)


def test_mistyped_columns_name_file_and_column(tmp_path, synthetic_spec):
    rows = _good_rows()
    rows["timestamp"] = [str(t) for t in rows["timestamp"]]
    path = _write(tmp_path / "b.parquet", rows)
    with pytest.raises(InputError, match=r"b\.parquet: column 'timestamp' has type string"):
        validate_log(path, synthetic_spec)
    rows = _good_rows()
    rows["item_id"] = [float(x) for x in rows["item_id"]]
    path = _write(tmp_path / "c.parquet", rows)
    with pytest.raises(InputError, match=r"c\.parquet: column 'item_id' has type double"):
        validate_log(path, synthetic_spec)


def test_bad_rows_fail_with_rows_and_counts(tmp_path, synthetic_spec):
    rows = _good_rows()
    rows["user_id"][3] = None
    rows["timestamp"][5] = 42  # 1970: a unit mix-up, not an event
    rows["label"][7] = 2
    rows["label"][8] = 5
    path = _write(tmp_path / "bad.parquet", rows)
    with pytest.raises(InputError) as info:
        validate_log(path, synthetic_spec)
    message = str(info.value)
    assert "4 of 12 input rows are invalid" in message
    assert "column 'user_id': null user_id: 1 rows (first: " in message and "bad.parquet row 3" in message
    assert "column 'timestamp': implausible timestamp" in message and "bad.parquet row 5" in message
    assert "column 'label': label outside {0,1}: 2 rows" in message and "row 7" in message and "row 8" in message


def test_empty_and_unreadable_files(tmp_path, synthetic_spec):
    schema = pa.table(_good_rows()).schema
    empty = tmp_path / "empty"
    empty.mkdir()
    _write(empty / "a.parquet", _good_rows())
    pq.write_table(schema.empty_table(), empty / "b.parquet")
    with pytest.raises(InputError, match=r"b\.parquet: empty file"):
        validate_log(empty, synthetic_spec)
    validated = validate_log(empty, synthetic_spec, "quarantine")
    assert validated.empty_files == [str(empty / "b.parquet")] and validated.accepted.height == 12
    broken = tmp_path / "broken.parquet"
    broken.write_bytes(b"PAR1 this is not parquet")
    with pytest.raises(InputError, match=r"broken\.parquet: unreadable Parquet"):
        validate_log(broken, synthetic_spec)


def test_ids_mixing_types_across_files_fail(tmp_path, synthetic_spec):
    folder = tmp_path / "mixed"
    folder.mkdir()
    _write(folder / "a.parquet", _good_rows())
    rows = _good_rows()
    rows["item_id"] = [f"i{x}" for x in rows["item_id"]]
    _write(folder / "b.parquet", rows)
    with pytest.raises(InputError, match="column 'item_id' mixes integer and string ids"):
        validate_log(folder, synthetic_spec)


def test_quarantine_keeps_every_row(tmp_path, synthetic_spec, synthetic_log):
    # The synthetic log plus a file of broken rows: accepted + quarantined == input, exactly.
    folder = tmp_path / "input"
    folder.mkdir()
    good = pl.read_parquet(synthetic_log / "part-00000.parquet")
    good.write_parquet(folder / "a.parquet")
    bad = good.head(50).with_columns(
        pl.when(pl.int_range(pl.len()) % 5 == 0).then(None).otherwise(pl.col("item_id")).alias("item_id"),
        pl.when(pl.int_range(pl.len()) % 5 == 1).then(pl.lit(3, dtype=pl.Int8)).otherwise(pl.col("label")).alias("label"),
        pl.when(pl.int_range(pl.len()) % 5 == 2).then(pl.lit(-5)).otherwise(pl.col("timestamp")).alias("timestamp"),
    )
    bad.write_parquet(folder / "b.parquet")
    out = tmp_path / "prepared"
    summary = prepare_dataset(synthetic_spec, folder, out, on_bad_rows="quarantine")
    quarantine = pl.read_parquet(out / "quarantine.parquet")
    assert summary["input_rows"] == good.height + 50
    assert summary["accepted_rows"] + quarantine.height == summary["input_rows"]
    assert quarantine.height == 30 and summary["rejected_rows"] == 30
    assert summary["rejected_by_reason"] == {
        "null item_id": 10,
        "label outside {0,1}": 10,
        "implausible timestamp (outside 1990..2100 in the spec's unit)": 10,
    }
    # Rows are unchanged, with reason and provenance.
    original = bad.with_row_index("source_row").with_columns(pl.col("source_row").cast(pl.Int64))
    joined = quarantine.join(original, on="source_row", suffix="_orig")
    assert joined.height == 30
    for column in ["user_id", "timestamp", "action", "label", "device"]:
        assert joined[column].equals(joined[f"{column}_orig"], check_names=False)
    assert set(quarantine["source_file"]) == {str(folder / "b.parquet")}
    # Without quarantine the same input is refused.
    with pytest.raises(InputError, match="30 of"):
        prepare_dataset(synthetic_spec, folder, tmp_path / "refused")
