"""`recsys train`: one process and two gloo processes with row-wise sharded tables agree; MLflow records."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]


def _config(tmp_path: Path, prepared: Path, name: str, batch_size: int, output: str) -> Path:
    config = {
        "data": {"dataset": str(prepared), "batch_size": batch_size, "eval_batch_size": 256, "max_history": 32, "num_chunks": 4, "workers": 0, "order": "shuffle"},
        "model": {"name": "sparsectr", "options": {"d_model": 16, "heads": 2, "layers": 1, "window": 8}},
        "optim": {"lr": 0.003, "warmup_steps": 5, "embedding_lr": 0.05},
        "sharding": {"sequence_default": "row_wise", "pooled_default": "table_wise"},
        "train": {"epochs": 1, "max_steps": 60, "eval_every": 30, "log_every": 10, "seed": 3},
        "tracking": {"experiment": "ci", "tracking_uri": f"sqlite:///{tmp_path / 'mlflow.db'}", "run_name": name},
        "output_dir": str(tmp_path / output),
    }
    path = tmp_path / f"{name}.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


def _train(config: Path, metrics: Path, *extra: str) -> dict:
    env = {**os.environ, "PYTHONWARNINGS": "ignore"}
    done = subprocess.run([sys.executable, "-m", "recsys.cli", "train", str(config), "--metrics-out", str(metrics), *extra],
                          capture_output=True, text=True, cwd=ROOT, env=env, timeout=600)
    assert done.returncode == 0, done.stderr[-4000:]
    return json.loads(metrics.read_text())


@pytest.mark.slow
def test_two_gloo_processes_match_one_process(tmp_path, prepared):
    # Global batch 64 both ways: one rank x 64, or two ranks x 32 (rank r reads samples r, r+2, ...).
    single = _train(_config(tmp_path, prepared, "single", 64, "single"), tmp_path / "single.json")
    double = _train(_config(tmp_path, prepared, "double", 32, "double"), tmp_path / "double.json", "--nproc", "2")
    assert double["world_size"] == 2 and single["world_size"] == 1
    assert single["test"]["samples"] == double["test"]["samples"]  # every test sample scored exactly once
    # Stated tolerance: the runs differ only in float summation order across ranks.
    assert abs(single["test"]["auc"] - double["test"]["auc"]) < 0.01
    assert abs(single["test"]["logloss"] - double["test"]["logloss"]) < 0.01
    assert single["test"]["auc"] > 0.55
    assert single["forward_flops_per_sample"] > 0 and single["train_flops"] > single["forward_flops_per_sample"]

    import mlflow

    mlflow.set_tracking_uri(f"sqlite:///{tmp_path / 'mlflow.db'}")
    runs = mlflow.search_runs(experiment_names=["ci"])
    assert set(runs["tags.mlflow.runName"]) == {"single", "double"}
    assert (runs["status"] == "FINISHED").all()
    run = mlflow.get_run(single["run_id"])
    assert run.data.metrics["test_auc"] == pytest.approx(single["test"]["auc"])
    assert "valid_auc" in run.data.metrics and "train_loss" in run.data.metrics
    history = mlflow.tracking.MlflowClient().get_metric_history(single["run_id"], "valid_auc")
    assert len(history) >= 2
    artifacts = {a.path for a in mlflow.tracking.MlflowClient().list_artifacts(single["run_id"])}
    assert {"config.yaml", "metrics.json", "training_curves.png", "checkpoint_best", "vocab", "dataset.json"} <= artifacts


def test_refuses_to_overwrite_a_run(tmp_path, prepared):
    config = _config(tmp_path, prepared, "again", 64, "again")
    (tmp_path / "again" / "checkpoints").mkdir(parents=True)
    done = subprocess.run([sys.executable, "-m", "recsys.cli", "train", str(config)], capture_output=True, text=True, cwd=ROOT)
    assert done.returncode != 0 and "already holds a run" in done.stderr


@pytest.mark.slow
def test_sigkill_mid_run_then_resume_matches_an_uninterrupted_run(tmp_path, prepared):
    import signal
    import time

    def config(name):
        path = _config(tmp_path, prepared, name, 64, name)
        raw = yaml.safe_load(path.read_text())
        raw["train"].update({"max_steps": 90, "eval_every": 15})
        path.write_text(yaml.safe_dump(raw))
        return path

    uninterrupted = _train(config("straight"), tmp_path / "straight.json")
    killed_config = config("killed")
    env = {**os.environ, "PYTHONWARNINGS": "ignore"}
    process = subprocess.Popen([sys.executable, "-m", "recsys.cli", "train", str(killed_config)], cwd=ROOT, env=env,
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    state = tmp_path / "killed" / "checkpoints" / "last" / "trainer_state.json"
    # Wait for the first checkpoint (an event, not a timing): poll until it exists or the run ends.
    for _ in range(6000):
        if process.poll() is not None or (state.exists() and json.loads(state.read_text())["step"] >= 15):
            break
        time.sleep(0.05)
    process.send_signal(signal.SIGKILL)
    assert process.wait() == -signal.SIGKILL, "the run finished before it could be killed"
    step_at_kill = json.loads(state.read_text())["step"]
    assert 15 <= step_at_kill < 90
    resumed = _train(killed_config, tmp_path / "resumed.json", "--resume")
    assert resumed["test"] == uninterrupted["test"]
    assert resumed["valid"] == uninterrupted["valid"]

    import mlflow

    mlflow.set_tracking_uri(f"sqlite:///{tmp_path / 'mlflow.db'}")
    run = mlflow.get_run(resumed["run_id"])
    assert run.info.status == "FINISHED" and run.info.run_name == "killed"


@pytest.mark.slow
def test_grab_sequence_training_with_sts(tmp_path, prepared):
    path = _config(tmp_path, prepared, "grab_sts", 64, "grab_sts")
    raw = yaml.safe_load(path.read_text())
    raw["model"] = {"name": "grab", "options": {"d_model": 16, "heads": 4, "layers": 1}}
    raw["train"].update({"max_steps": None, "eval_every": None})
    raw["sequence"] = {"enabled": True, "stride": 8, "stage1_steps": 30, "stage2_steps": 20}
    path.write_text(yaml.safe_dump(raw))
    result = _train(path, tmp_path / "grab_sts.json")
    assert [p["name"] for p in result["phases"]] == ["sequence", "sparse"]
    assert [p["steps"] for p in result["phases"]] == [30, 20] and result["phases"][0]["batch_size"] == 8
    state = json.loads((tmp_path / "grab_sts" / "checkpoints" / "last" / "trainer_state.json").read_text())
    assert [step for step, _ in state["history"]["valid"]["auc"]] == [30, 50]  # validated after each stage
    assert result["test"]["auc"] > 0.5


def test_a_crash_marks_the_mlflow_run_failed(tmp_path, prepared):
    path = _config(tmp_path, prepared, "crash", 64, "crash")
    raw = yaml.safe_load(path.read_text())
    raw["data"]["dataset"] = str(tmp_path / "missing")
    path.write_text(yaml.safe_dump(raw))
    done = subprocess.run([sys.executable, "-m", "recsys.cli", "train", str(path)], capture_output=True, text=True, cwd=ROOT)
    assert done.returncode != 0 and "not a prepared dataset" in done.stderr

    import mlflow

    mlflow.set_tracking_uri(f"sqlite:///{tmp_path / 'mlflow.db'}")
    runs = mlflow.search_runs(experiment_names=["ci"])
    assert list(runs["status"]) == ["FAILED"]


@pytest.mark.slow
def test_unsharded_single_device_training_and_resume(tmp_path, prepared):
    path = _config(tmp_path, prepared, "plain", 64, "plain")
    raw = yaml.safe_load(path.read_text())
    raw["sharding"] = {"enabled": False}
    raw["train"].update({"max_steps": 30, "eval_every": 15})
    path.write_text(yaml.safe_dump(raw))
    result = _train(path, tmp_path / "plain.json")
    assert result["test"]["auc"] > 0.5
    checkpoint = tmp_path / "plain" / "checkpoints" / "best"
    assert (checkpoint / "embedding_optimizer.pt").exists() and (checkpoint / "dense_optimizer.pt").exists()
    resumed = _train(path, tmp_path / "plain_resumed.json", "--resume")  # resumes at the end: same result
    assert resumed["test"] == result["test"]


@pytest.mark.slow
def test_compiled_blocks_train_as_eager_and_export_the_plain_model(tmp_path, prepared):
    from recsys.export.exporter import export_model

    results = {}
    for name, compile_blocks in (("eager", False), ("compiled", True)):
        path = _config(tmp_path, prepared, name, 64, name)
        raw = yaml.safe_load(path.read_text())
        raw["sharding"] = {"enabled": False}
        # reduce-overhead: the GPU's CUDA-graph mode; on the CPU inductor compiles the same code without graphs
        raw["train"].update({"max_steps": 8, "eval_every": None, "compile": compile_blocks, "compile_mode": "reduce-overhead"})
        path.write_text(yaml.safe_dump(raw))
        results[name] = _train(path, tmp_path / f"{name}.json")
    assert results["compiled"]["compiled_blocks"] == 1 and results["eager"]["compiled_blocks"] == 0
    assert results["compiled"]["compile_mode"] == "reduce-overhead" and results["eager"]["compile_mode"] is None
    # The FLOP counter sees through the compiled blocks.
    assert results["compiled"]["forward_flops_per_sample"] == pytest.approx(results["eager"]["forward_flops_per_sample"], rel=1e-6)
    # Stated tolerance: inductor may reorder float sums; 8 steps from the same seed stay this close.
    assert results["compiled"]["test"]["logloss"] == pytest.approx(results["eager"]["test"]["logloss"], abs=1e-3)
    assert results["compiled"]["test"]["auc"] == pytest.approx(results["eager"]["test"]["auc"], abs=2e-3)
    # The checkpoint holds the plain model's state dict: export loads it and passes its parity check.
    info = export_model(str(tmp_path / "compiled"), tmp_path / "compiled.pt", parity_samples=256)
    assert info["parity"]["samples"] > 0
