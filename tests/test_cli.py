"""The stable CLI: later checks call exactly these commands."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _recsys(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "recsys.cli", *args], capture_output=True, text=True, cwd=ROOT, env={**os.environ, "COLUMNS": "200"})


def test_synth_convert_prepare_commands(tmp_path):
    done = _recsys("synth", "--out", str(tmp_path / "logs"), "--users", "30", "--events-per-user", "40", "--seed", "2")
    assert done.returncode == 0, done.stderr
    assert "events" in done.stderr
    done = _recsys("prepare", "--spec", "feature_specs/synthetic.yaml", "--input", str(tmp_path / "logs"), "--out", str(tmp_path / "prepared"))
    assert done.returncode == 0, done.stderr
    assert "accepted rows" in done.stdout and "train" in done.stdout
    summary = json.loads((tmp_path / "prepared" / "summary.json").read_text())
    assert summary["accepted_rows"] == summary["input_rows"]
    done = _recsys("convert", "movielens", "tests/fixtures/movielens_100k/u.data", "--out", str(tmp_path / "ml"))
    assert done.returncode == 0, done.stderr
    assert (tmp_path / "ml" / "u.parquet").exists()


def test_bad_input_exits_2_with_a_message(tmp_path):
    (tmp_path / "logs").mkdir()
    (tmp_path / "logs" / "x.parquet").write_bytes(b"garbage")
    done = _recsys("prepare", "--spec", "feature_specs/synthetic.yaml", "--input", str(tmp_path / "logs"), "--out", str(tmp_path / "p"))
    assert done.returncode == 2
    assert "x.parquet: unreadable Parquet" in done.stderr
    done = _recsys("prepare", "--spec", "feature_specs/nope.yaml", "--input", str(tmp_path / "logs"), "--out", str(tmp_path / "p"))
    assert done.returncode == 2 and "cannot read feature spec" in done.stderr
