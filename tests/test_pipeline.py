"""`recsys run`: stages run, are skipped while up to date, and rerun downstream of a change."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]


def _run(pipeline: Path, workdir: Path, *overrides: str) -> subprocess.CompletedProcess:
    args = [arg for o in overrides for arg in ("--set", o)]
    env = {**os.environ, "PYTHONWARNINGS": "ignore", "MLFLOW_TRACKING_URI": f"sqlite:///{workdir / 'mlflow.db'}"}
    done = subprocess.run([sys.executable, "-m", "recsys.cli", "run", str(pipeline), "--workdir", str(workdir), *args],
                          capture_output=True, text=True, cwd=ROOT, env=env, timeout=900)
    assert done.returncode == 0, done.stderr[-3000:]
    return done


@pytest.mark.slow
def test_pipeline_stages_and_skipping(tmp_path):
    pipeline = yaml.safe_load((ROOT / "pipelines" / "quickstart.yaml").read_text())
    pipeline["stages"]["data"]["synth"] = {"users": 60, "events_per_user": 80, "seed": 1}
    pipeline["stages"]["train"]["base"]["train"].update({"max_steps": 10, "eval_every": 5})
    pipeline["stages"]["train"]["base"]["data"]["workers"] = 0
    pipeline["stages"]["train"]["models"] = {"dnn": {"model": {"options": {"d_model": 8}}}, "din": {"model": {"options": {"d_model": 8}}}}
    path = tmp_path / "tiny.yaml"
    path.write_text(yaml.safe_dump(pipeline))
    work = tmp_path / "work"
    first = _run(path, work)
    assert "dnn" in first.stdout and "din" in first.stdout
    for model in ("dnn", "din"):
        metrics = json.loads((work / "metrics" / f"{model}.json").read_text())
        assert set(metrics) >= {"run_id", "model", "valid", "test"} and set(metrics["test"]) >= {"auc", "gauc", "logloss", "samples"}
        assert (work / "export" / model / f"{model}.pt").exists() and (work / "export" / model / f"{model}.bundle" / "contract.json").exists()
        # The exported model on the replayed raw test period reproduces the eager test metrics.
        assert metrics["served"]["candidates"] == metrics["test"]["samples"]
        assert abs(metrics["served"]["auc"] - metrics["test"]["auc"]) < 1e-6
    second = _run(path, work)
    assert second.stderr.count("up to date") == 9  # data, prepare, requests, 2 x (train, export, score)
    third = _run(path, work, "stages.train.models.din.train.max_steps=12")
    assert "train din: running" in third.stderr and "train dnn: up to date" in third.stderr and "prepare: up to date" in third.stderr
    assert "export din: running" in third.stderr and "score din: running" in third.stderr and "export dnn: up to date" in third.stderr
    notebook = _execute_notebook(f"sqlite:///{work / 'mlflow.db'}", pipeline["stages"]["train"]["base"]["tracking"]["experiment"])
    table = notebook.cells[2].outputs[0]["data"]["text/plain"]
    assert "dnn" in table and "din" in table


def _execute_notebook(tracking_uri: str, experiment: str):
    """notebooks/compare_runs.ipynb runs top to bottom against the runs the pipeline just made."""
    import nbformat
    from nbclient import NotebookClient

    notebook = nbformat.read(ROOT / "notebooks" / "compare_runs.ipynb", as_version=4)
    os.environ["RECSYS_TRACKING_URI"], os.environ["RECSYS_EXPERIMENT"] = tracking_uri, experiment
    try:
        NotebookClient(notebook, timeout=300, kernel_name="python3", resources={"metadata": {"path": str(ROOT)}}).execute()
    finally:
        del os.environ["RECSYS_TRACKING_URI"], os.environ["RECSYS_EXPERIMENT"]
    return notebook


def test_convert_pipelines_need_their_input(tmp_path):
    done = subprocess.run([sys.executable, "-m", "recsys.cli", "run", "pipelines/movielens.yaml", "--workdir", str(tmp_path)],
                          capture_output=True, text=True, cwd=ROOT)
    assert done.returncode == 2 and "stages.data.convert.input" in done.stderr


@pytest.mark.parametrize("name", ["quickstart", "synthetic", "movielens", "taobao", "kuairand"])
def test_shipped_pipelines_validate(name):
    from recsys.pipeline import load_pipeline

    pipeline = load_pipeline(ROOT / "pipelines" / f"{name}.yaml", ["stages.data.convert.input=/data"] if name in ("movielens", "taobao", "kuairand") else [], None)
    assert pipeline.stages.train is not None
