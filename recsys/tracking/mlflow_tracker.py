"""MLflow tracking for training runs (rank 0 only; other ranks get a tracker that does nothing).

The default store is a local SQLite database, `sqlite:///mlflow.db` in the working directory,
unless MLFLOW_TRACKING_URI or the config says otherwise. Runs of different models on one dataset
share an experiment, so the MLflow UI compares their curves side by side.
"""

from __future__ import annotations

import json
import os
import platform
import subprocess
from importlib import metadata as importlib_metadata
from pathlib import Path
from typing import Any, Dict, Optional

PACKAGES = ("torch", "torchrec", "fbgemm-gpu-cpu", "fbgemm-gpu", "polars", "pyarrow", "mlflow", "numpy")


def default_tracking_uri() -> str:
    return os.environ.get("MLFLOW_TRACKING_URI") or f"sqlite:///{Path.cwd() / 'mlflow.db'}"


def flatten(prefix: str, value: Any, out: Dict[str, str]) -> Dict[str, str]:
    if isinstance(value, dict):
        for key, item in value.items():
            flatten(f"{prefix}.{key}" if prefix else str(key), item, out)
    else:
        out[prefix] = json.dumps(value) if isinstance(value, (list, tuple)) else str(value)
    return out


def package_versions() -> Dict[str, str]:
    versions = {"python": platform.python_version()}
    for name in PACKAGES:
        try:
            versions[name] = importlib_metadata.version(name)
        except importlib_metadata.PackageNotFoundError:
            continue
    return versions


def git_commit() -> str:
    try:
        return subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True, check=True, cwd=Path(__file__).parent).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


class RunTracker:
    def __init__(self, enabled: bool, experiment: str, tracking_uri: Optional[str], run_name: Optional[str], resume_run_id: Optional[str] = None):
        self.enabled = enabled
        self.run_id: Optional[str] = None
        if not enabled:
            return
        import mlflow

        self._mlflow = mlflow
        mlflow.set_tracking_uri(tracking_uri or default_tracking_uri())
        mlflow.set_experiment(experiment)
        # A resumed training run continues its MLflow run (metrics keep their step axis).
        run = mlflow.start_run(run_id=resume_run_id) if resume_run_id else mlflow.start_run(run_name=run_name)
        self.run_id = run.info.run_id

    def log_params(self, params: Dict[str, Any]) -> None:
        if self.enabled:
            flat = flatten("", params, {})
            # MLflow caps a parameter value at 6000 characters; the full config is an artifact too.
            self._mlflow.log_params({k: v[:6000] for k, v in flat.items()})

    def set_tags(self, tags: Dict[str, str]) -> None:
        if self.enabled:
            self._mlflow.set_tags(tags)

    def log_metrics(self, metrics: Dict[str, float], step: int) -> None:
        if self.enabled:
            finite = {k: float(v) for k, v in metrics.items() if isinstance(v, (int, float)) and v == v}
            self._mlflow.log_metrics(finite, step=step)

    def log_artifact(self, path: str | Path, artifact_path: Optional[str] = None) -> None:
        if self.enabled:
            path = Path(path)
            if path.is_dir():
                self._mlflow.log_artifacts(str(path), artifact_path=artifact_path)
            else:
                self._mlflow.log_artifact(str(path), artifact_path=artifact_path)

    def end(self, status: str = "FINISHED") -> None:
        if self.enabled and self._mlflow.active_run() is not None:
            self._mlflow.end_run(status=status)


_SPLIT_METRICS = ("auc", "gauc", "gauc_unweighted", "logloss", "ne", "calibration", "samples")


def finished_children(parent_run_id: str, tracking_uri: Optional[str] = None) -> Dict[str, Dict[str, Any]]:
    """The finished child runs of a sweep's parent run, keyed by their `config_hash` tag, each as the
    result dict `recsys train --metrics-out` writes (run id, model, valid/test metrics, parameter
    counts, FLOPs, throughput). A sweep whose local metrics files were lost resumes from these: the
    MLflow store is the record of what finished."""
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri or default_tracking_uri())
    parent = client.get_run(parent_run_id)
    runs = client.search_runs([parent.info.experiment_id],
                              f"tags.mlflow.parentRunId = '{parent_run_id}' and attributes.status = 'FINISHED'", max_results=50_000)
    results: Dict[str, Dict[str, Any]] = {}
    for run in runs:
        metrics, params, tags = run.data.metrics, run.data.params, run.data.tags
        if "config_hash" not in tags or "test_logloss" not in metrics or "train_flops" not in metrics:
            continue
        results[tags["config_hash"]] = {
            "run_id": run.info.run_id,
            "model": tags.get("model", params.get("config.model.name")),
            **{split: {key: metrics[f"{split}_{key}"] for key in _SPLIT_METRICS if f"{split}_{key}" in metrics} for split in ("valid", "test")},
            "parameters": {kind: int(params[f"parameters.{kind}"]) for kind in ("dense", "embedding") if f"parameters.{kind}" in params},
            "train_seconds": metrics.get("train_seconds"),
            "samples_per_s": metrics.get("train_samples_per_s"),
            "forward_flops_per_sample": float(params.get("forward_flops_per_sample", "nan")),
            "analytic_forward_flops_per_sample": float(params.get("analytic_forward_flops_per_sample", "nan")),
            "train_flops": metrics["train_flops"],
            "world_size": int(params.get("world_size", 1)),
            "recovered_from_mlflow": True,
        }
    return results
