"""`recsys sweep`: a grid of training runs under one MLflow parent run, and the scaling laws.

The pipeline file's `sweep` section gives a base training config, the models and a grid of dotted
config keys (`model.options.layers`, `model.options.d_model`, `model.options.heads`,
`data.max_history`, `data.train_fraction`, ...). Each point is a child run (tag
`mlflow.parentRunId`, one tag per grid coordinate) in its own directory named by the hash of its
config, so an interrupted sweep resumes by skipping finished points. At the end the parent run gets
the fitted laws — test logloss against training compute, `L(C) = a·C^(−b) + c`, and test AUC against
log history length — with their uncertainties, R² and PNG plots.
"""

from __future__ import annotations

import copy
import hashlib
import itertools
import json
import math
import subprocess
import sys
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional

import numpy as np
import yaml
from pydantic import BaseModel, ConfigDict, Field, field_validator

from recsys.data.spec import SpecError
from recsys.data.store import PreparedDataset
from recsys.pipeline import Pipeline, _merge, run_pipeline
from recsys.train.config import apply_overrides
from recsys.tracking.mlflow_tracker import RunTracker, finished_children


class SweepSection(BaseModel):
    model_config = ConfigDict(extra="forbid")

    experiment: str = "scaling"
    nproc: int = Field(1, ge=1)
    base: Dict[str, Any] = Field(default_factory=dict)
    models: Dict[str, Dict[str, Any]]
    grid: Dict[str, List[Any]] = Field(default_factory=dict, description="dotted config key -> values")

    @field_validator("grid", mode="before")
    @classmethod
    def _dotted_keys(cls, grid: Any) -> Any:
        """`--set sweep.grid.data.max_history=[..]` nests the key; the grid is keyed by dotted paths."""
        if not isinstance(grid, dict):
            return grid
        flat: Dict[str, Any] = {}

        def walk(prefix: str, value: Any) -> None:
            if isinstance(value, dict):
                for key, item in value.items():
                    walk(f"{prefix}.{key}" if prefix else str(key), item)
            else:
                flat[prefix] = value

        walk("", grid)
        return flat


def load_sweep(path: str | Path, overrides: List[str], workdir: Optional[str]) -> tuple[Pipeline, SweepSection]:
    raw = yaml.safe_load(Path(path).read_text()) or {}
    raw = apply_overrides(raw, overrides)
    if workdir:
        raw["workdir"] = workdir
    if "sweep" not in raw:
        raise SpecError(f"{path}: no 'sweep' section")
    sweep = SweepSection.model_validate(raw.pop("sweep"))
    raw.setdefault("stages", {}).pop("train", None)
    return Pipeline.model_validate(raw), sweep


def grid_points(sweep: SweepSection) -> List[Dict[str, Any]]:
    keys = sorted(sweep.grid)
    points = []
    for model in sweep.models:
        for values in itertools.product(*(sweep.grid[k] for k in keys)):
            points.append({"model": model, **dict(zip(keys, values))})
    return points


def point_config(sweep: SweepSection, point: Dict[str, Any], dataset: Path) -> Dict[str, Any]:
    config = copy.deepcopy(sweep.base)
    _merge(config, copy.deepcopy(sweep.models[point["model"]]))
    config.setdefault("model", {}).setdefault("name", point["model"])
    apply_overrides(config, [f"{key}={json.dumps(value)}" for key, value in point.items() if key != "model"])
    config.setdefault("data", {})["dataset"] = str(dataset)
    return config


def config_hash(config: Dict[str, Any]) -> str:
    return hashlib.sha256(json.dumps(config, sort_keys=True, default=str).encode()).hexdigest()[:12]


def saturating_power_law(compute: np.ndarray, a: float, b: float, c: float) -> np.ndarray:
    return a * np.power(compute, -b) + c


def fit_power_law(compute: np.ndarray, loss: np.ndarray) -> Dict[str, float]:
    """Fit `L(C) = a·C^(−b) + c` on C normalised by its minimum (keeps a well scaled)."""
    from scipy.optimize import curve_fit

    scale = compute.min()
    x = compute / scale
    guess = (max(loss.max() - loss.min(), 1e-3), 0.3, max(loss.min() - 1e-3, 0.0))
    params, covariance = curve_fit(saturating_power_law, x, loss, p0=guess, bounds=([0, 0, 0], [np.inf, 5, np.inf]), maxfev=20000)
    errors = np.sqrt(np.clip(np.diag(covariance), 0, None)) if np.all(np.isfinite(covariance)) else np.full(3, np.nan)
    predicted = saturating_power_law(x, *params)
    ss_res, ss_tot = float(((loss - predicted) ** 2).sum()), float(((loss - loss.mean()) ** 2).sum())
    a, b, c = params
    return {"a": float(a * scale ** b), "b": float(b), "c": float(c), "a_err": float(errors[0] * scale ** b), "b_err": float(errors[1]),
            "c_err": float(errors[2]), "r2": 1 - ss_res / ss_tot if ss_tot > 0 else float("nan"), "points": int(len(x))}


def compute_frontier(compute: np.ndarray, loss: np.ndarray) -> np.ndarray:
    """Indices of the compute-optimal points: each has a lower loss than every point with less compute.

    A grid mixes under-trained points (little data for a large model) with well-balanced ones; the
    law of how loss falls with compute is the law of this envelope, not of every point."""
    order = np.argsort(compute, kind="stable")
    best, keep = np.inf, []
    for index in order:
        if loss[index] < best:
            best = loss[index]
            keep.append(int(index))
    return np.array(keep, dtype=np.int64)


def fit_log_linear(lengths: np.ndarray, auc: np.ndarray) -> Dict[str, float]:
    """AUC = slope · log2(L) + intercept, with the slope's standard error and R²."""
    x = np.log2(lengths)
    design = np.stack([x, np.ones_like(x)], axis=1)
    coef = np.linalg.lstsq(design, auc, rcond=None)[0]
    predicted = design @ coef
    ss_res, ss_tot = float(((auc - predicted) ** 2).sum()), float(((auc - auc.mean()) ** 2).sum())
    dof = len(x) - 2  # two lengths fit the line exactly: no error estimate (NaN, not a misleading 0)
    slope_err = math.sqrt(ss_res / dof / max(float(((x - x.mean()) ** 2).sum()), 1e-12)) if dof > 0 else float("nan")
    return {"slope_per_doubling": float(coef[0]), "slope_err": slope_err, "intercept": float(coef[1]),
            "r2": 1 - ss_res / ss_tot if ss_tot > 0 else float("nan"), "points": int(len(x))}


def _best_auc_per_length(results: List[dict]) -> tuple[List[int], List[float]]:
    """Best test AUC at each history length: the other grid axes are marginalised by the max."""
    lengths = sorted({r["history"] for r in results})
    return lengths, [max(r["test"]["auc"] for r in results if r["history"] == length) for length in lengths]


def _plot(results: List[dict], out: Path, laws: Dict[str, Dict[str, Dict[str, float]]]) -> List[Path]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    models = sorted({r["model"] for r in results})
    compute_figure, compute_axis = plt.subplots(figsize=(6, 4))
    history_figure, history_axis = plt.subplots(figsize=(6, 4))
    for index, model in enumerate(models):
        color = f"C{index}"  # a model's points and its fitted curves share one colour
        mine = [r for r in results if r["model"] == model]
        flops = np.array([r["train_flops"] for r in mine])
        compute_axis.scatter(flops, [r["test"]["logloss"] for r in mine], label=model, color=color)
        grid = np.geomspace(flops.min(), flops.max(), 100)
        for axis_name, style in (("compute", "-"), ("frontier", "--")):
            law = laws.get(axis_name, {}).get(model, {})
            if "b" in law:
                compute_axis.plot(grid, saturating_power_law(grid, law["a"], law["b"], law["c"]), style, color=color,
                                  label=f"{model} {'all points' if axis_name == 'compute' else 'frontier'}: b={law['b']:.2f}, R²={law['r2']:.2f}")
        lengths, best = _best_auc_per_length(mine)
        history_axis.scatter(lengths, best, label=model, color=color)
        law = laws.get("history", {}).get(model, {})
        if "slope_per_doubling" in law:
            span = np.geomspace(min(lengths), max(lengths), 50)
            history_axis.plot(span, law["slope_per_doubling"] * np.log2(span) + law["intercept"], "--", color=color,
                              label=f"{model}: {law['slope_per_doubling']:+.4f} AUC per doubling")
    compute_axis.set(xscale="log", xlabel="training FLOPs", ylabel="test logloss", title="logloss vs compute")
    history_axis.set(xscale="log", xlabel="history length", ylabel="best test AUC", title="AUC vs history length")
    paths = []
    for figure, axis, name in ((compute_figure, compute_axis, "scaling_compute.png"), (history_figure, history_axis, "scaling_history.png")):
        axis.legend(fontsize=7)
        figure.tight_layout()
        paths.append(out / name)
        figure.savefig(paths[-1], dpi=100)
        plt.close(figure)
    return paths


def fit_laws(results: List[dict]) -> Dict[str, Dict[str, Dict[str, float]]]:
    """`compute`: the power law over every point; `frontier`: over the compute-optimal envelope (needs
    four envelope points: three would fit the three parameters exactly); `history`: AUC vs log length."""
    laws: Dict[str, Dict[str, Dict[str, float]]] = {"compute": {}, "frontier": {}, "history": {}}
    for model in sorted({r["model"] for r in results}):
        mine = [r for r in results if r["model"] == model]
        flops, loss = np.array([r["train_flops"] for r in mine]), np.array([r["test"]["logloss"] for r in mine])
        envelope = compute_frontier(flops, loss)
        for axis, x, y, needed in (("compute", flops, loss, 3), ("frontier", flops[envelope], loss[envelope], 4)):
            if len(x) < needed:
                continue
            try:
                laws[axis][model] = fit_power_law(x, y)
            except RuntimeError:  # curve_fit found no optimum: leave this model's law out, say so in the log
                laws[axis][model] = {"failed": 1.0}
        lengths, best = _best_auc_per_length(mine)
        if len(lengths) >= 2:
            laws["history"][model] = fit_log_linear(np.array(lengths, dtype=float), np.array(best))
    return laws


def run_sweep(pipeline: Pipeline, sweep: SweepSection, say: Callable[[str], None], only_models: Optional[List[str]] = None) -> Dict[str, Any]:
    """Run (or resume) the grid. `only_models` runs the points of those models alone, so one sweep can be
    split over machines or sessions; the laws and plots then cover the models whose points exist."""
    run_pipeline(pipeline, say)  # data and prepare stages (stamped, skipped when up to date)
    work = Path(pipeline.workdir)
    dataset = work / "prepared"
    sweep_dir = work / "sweep"
    sweep_dir.mkdir(parents=True, exist_ok=True)
    state_path = sweep_dir / "sweep_state.json"
    state = json.loads(state_path.read_text()) if state_path.exists() else {}
    parent = RunTracker(True, sweep.experiment, None, f"sweep:{pipeline.name}", state.get("parent_run_id"))
    state["parent_run_id"] = parent.run_id
    state_path.write_text(json.dumps(state))
    try:
        parent.log_params({"grid": {k: json.dumps(v) for k, v in sweep.grid.items()}, "models": list(sweep.models)})
        results = []
        points = grid_points(sweep)
        default_history = PreparedDataset(dataset).spec.history.max_length
        logged = finished_children(parent.run_id)  # finished points whose metrics files are gone (another machine)
        for index, point in enumerate(points, start=1):
            config = point_config(sweep, point, dataset)
            digest = config_hash(config)
            run_dir = sweep_dir / f"{point['model']}-{digest}"
            metrics_path = run_dir / "metrics.json"
            if not metrics_path.exists() and digest in logged:
                run_dir.mkdir(parents=True, exist_ok=True)
                metrics_path.write_text(json.dumps(logged[digest]))
                say(f"point {index}/{len(points)}: {run_dir.name} recovered from its finished MLflow run {logged[digest]['run_id']}")
            if only_models is not None and point["model"] not in only_models:
                if metrics_path.exists():
                    say(f"point {index}/{len(points)}: {point} done before ({run_dir.name})")
                    result = json.loads(metrics_path.read_text())
                    result["point"], result["history"] = point, int(config["data"].get("max_history") or default_history)
                    results.append(result)
                else:
                    say(f"point {index}/{len(points)}: {point} left out (--models {','.join(only_models)})")
                continue
            if not metrics_path.exists():
                say(f"point {index}/{len(points)}: {point} -> {run_dir.name}")
                config["output_dir"] = str(run_dir / "run")
                config.setdefault("tracking", {}).update({
                    "experiment": sweep.experiment, "parent_run_id": parent.run_id, "run_name": f"{point['model']}-{digest}",
                    "tags": {f"grid.{k}": str(v) for k, v in point.items()} | {"config_hash": digest},
                })
                run_dir.mkdir(parents=True, exist_ok=True)
                config_path = run_dir / "config.yaml"
                config_path.write_text(yaml.safe_dump(config, sort_keys=False))
                resume = ["--resume"] if (run_dir / "run" / "checkpoints" / "last").exists() else []
                subprocess.run([sys.executable, "-m", "recsys.cli", "train", str(config_path), "--metrics-out", str(metrics_path),
                                "--nproc", str(sweep.nproc), *resume], check=True)
            else:
                say(f"point {index}/{len(points)}: {point} done before ({run_dir.name})")
            result = json.loads(metrics_path.read_text())
            result["point"], result["history"] = point, int(config["data"].get("max_history") or default_history)
            results.append(result)
        laws = fit_laws(results)
        (sweep_dir / "laws.json").write_text(json.dumps(laws, indent=2))
        (sweep_dir / "results.json").write_text(json.dumps(results, indent=2, default=str))
        flat = {f"{axis}.{model}.{key}": value for axis, per_model in laws.items() for model, law in per_model.items() for key, value in law.items()}
        parent.log_metrics(flat, step=0)
        parent.log_artifact(sweep_dir / "laws.json")
        parent.log_artifact(sweep_dir / "results.json")
        for plot in _plot(results, sweep_dir, laws):
            parent.log_artifact(plot)
        parent.end("FINISHED")
        return {"parent_run_id": parent.run_id, "results": results, "laws": laws}
    except BaseException:
        parent.end("FAILED")
        raise
