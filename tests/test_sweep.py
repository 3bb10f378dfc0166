"""`recsys sweep`: child runs under a parent, resume by config hash, fitted laws."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import yaml

from recsys.sweep import compute_frontier, fit_laws, fit_log_linear, fit_power_law, saturating_power_law

ROOT = Path(__file__).resolve().parents[1]


def test_power_law_fit_recovers_known_parameters():
    compute = np.geomspace(1e9, 1e13, 12)
    rng = np.random.default_rng(0)
    loss = saturating_power_law(compute, 40.0, 0.2, 0.45) * (1 + 0.001 * rng.standard_normal(12))
    law = fit_power_law(compute, loss)
    assert law["b"] == pytest.approx(0.2, rel=0.05) and law["c"] == pytest.approx(0.45, abs=0.01)
    assert law["r2"] > 0.99 and np.isfinite(law["b_err"])
    linear = fit_log_linear(np.array([16, 32, 64, 128.0]), np.array([0.70, 0.71, 0.72, 0.73]))
    assert linear["slope_per_doubling"] == pytest.approx(0.01) and linear["r2"] == pytest.approx(1.0)
    noisy = fit_log_linear(np.array([16, 32, 64, 128.0]), np.array([0.70, 0.712, 0.719, 0.731]))
    assert 0 < noisy["slope_err"] < 0.002
    two_lengths = fit_log_linear(np.array([64, 256.0]), np.array([0.70, 0.72]))
    assert two_lengths["slope_per_doubling"] == pytest.approx(0.01) and math.isnan(two_lengths["slope_err"])


def test_frontier_law_ignores_under_trained_points():
    seed = int(np.random.SeedSequence().entropy % 2**31)
    rng = np.random.default_rng(seed)
    compute = np.geomspace(1e10, 1e14, 9)
    frontier_loss = saturating_power_law(compute, 30.0, 0.15, 0.5)
    # Under-trained points: more compute than a frontier point, higher loss.
    starved_compute = compute[1:-1] * 1.5
    starved_loss = frontier_loss[1:-1] + rng.uniform(0.05, 0.1, len(starved_compute))
    all_compute, all_loss = np.concatenate([compute, starved_compute]), np.concatenate([frontier_loss, starved_loss])
    envelope = compute_frontier(all_compute, all_loss)
    assert sorted(envelope.tolist()) == list(range(9)), seed
    results = [{"model": "m", "train_flops": c, "test": {"logloss": l, "auc": 0.7}, "history": 16} for c, l in zip(all_compute, all_loss)]
    laws = fit_laws(results)
    assert laws["frontier"]["m"]["b"] == pytest.approx(0.15, rel=0.02) and laws["frontier"]["m"]["r2"] > 0.999
    assert laws["compute"]["m"]["r2"] < laws["frontier"]["m"]["r2"]


@pytest.mark.slow
def test_tiny_sweep_runs_resumes_and_fits(tmp_path):
    pipeline = yaml.safe_load((ROOT / "pipelines" / "scaling_cpu.yaml").read_text())
    pipeline["stages"]["data"]["synth"] = {"users": 60, "events_per_user": 80, "seed": 2}
    pipeline["sweep"]["base"]["train"] = {"max_steps": 8, "log_every": 4}
    pipeline["sweep"]["base"]["data"]["workers"] = 0
    pipeline["sweep"]["models"] = {"dnn": {"model": {"options": {}}}}
    pipeline["sweep"]["grid"] = {"model.options.d_model": [8, 16], "data.max_history": [8, 16]}
    path = tmp_path / "tiny_sweep.yaml"
    path.write_text(yaml.safe_dump(pipeline))
    env = {**os.environ, "PYTHONWARNINGS": "ignore", "MLFLOW_TRACKING_URI": f"sqlite:///{tmp_path / 'mlflow.db'}"}
    command = [sys.executable, "-m", "recsys.cli", "sweep", str(path), "--workdir", str(tmp_path / "work")]
    first = subprocess.run(command, capture_output=True, text=True, cwd=ROOT, env=env, timeout=900)
    assert first.returncode == 0, first.stderr[-3000:]
    second = subprocess.run(command, capture_output=True, text=True, cwd=ROOT, env=env, timeout=900)
    assert second.returncode == 0 and second.stderr.count("done before") == 4
    only = subprocess.run(command + ["--models", "dnn"], capture_output=True, text=True, cwd=ROOT, env=env, timeout=900)
    assert only.returncode == 0 and only.stderr.count("done before") == 4
    # A point whose metrics file is lost (the sweep dir stayed on another machine) is recovered from
    # its finished MLflow child run, not trained again.
    lost = sorted((tmp_path / "work" / "sweep").glob("dnn-*/metrics.json"))[0]
    kept = json.loads(lost.read_text())
    lost.unlink()
    recovered = subprocess.run(command, capture_output=True, text=True, cwd=ROOT, env=env, timeout=900)
    assert recovered.returncode == 0 and recovered.stderr.count("recovered from its finished MLflow run") == 1, recovered.stderr[-3000:]
    restored = json.loads(lost.read_text())
    assert restored["run_id"] == kept["run_id"] and restored["model"] == "dnn"
    assert restored["test"]["logloss"] == pytest.approx(kept["test"]["logloss"]) and restored["train_flops"] == pytest.approx(kept["train_flops"])
    unknown = subprocess.run(command + ["--models", "nosuch"], capture_output=True, text=True, cwd=ROOT, env=env, timeout=900)
    assert unknown.returncode == 2 and "nosuch" in unknown.stderr
    laws = json.loads((tmp_path / "work" / "sweep" / "laws.json").read_text())
    assert "dnn" in laws["compute"] and "dnn" in laws["history"]

    import mlflow

    mlflow.set_tracking_uri(env["MLFLOW_TRACKING_URI"])
    runs = mlflow.search_runs(experiment_names=["scaling_cpu"])
    parents = runs[runs["tags.mlflow.runName"] == "sweep:scaling_cpu"]
    children = runs[runs["tags.mlflow.parentRunId"].notna()]
    assert len(parents) == 1 and len(children) == 4
    assert set(children["tags.mlflow.parentRunId"]) == {parents["run_id"].iloc[0]}
    assert set(children["tags.grid.data.max_history"]) == {"8", "16"}
    assert children["params.analytic_forward_flops_per_sample"].astype(float).gt(0).all()
    artifacts = {a.path for a in mlflow.tracking.MlflowClient().list_artifacts(parents["run_id"].iloc[0])}
    assert {"laws.json", "results.json", "scaling_compute.png", "scaling_history.png"} <= artifacts

    from tests.test_pipeline import _execute_notebook

    notebook = _execute_notebook(env["MLFLOW_TRACKING_URI"], "scaling_cpu")
    scaling_output = "".join(str(output) for output in notebook.cells[-1].outputs)
    assert "slope_per_doubling" in scaling_output and "dnn" in scaling_output
