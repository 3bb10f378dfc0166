"""`recsys run`: a pipeline file lists stages (synth or convert -> prepare -> train models ->
export -> score).

Every stage writes a stamp (`.stage.json`: the hash of its settings and of its input's stamp) next
to its output and is skipped while the stamp matches, so a re-run after a settings change redoes
exactly the stages downstream of the change. Each model trains in its own `recsys train` process
(its own process group, `--nproc` ranks) and leaves `DIR/metrics/<model>.json`. `export` writes
`DIR/export/<model>.pt` (TorchScript + bundle, parity-checked, logged to the model's MLflow run);
`score` replays the test period of the raw log as requests (`DIR/requests`) and scores them with
every exported model (`DIR/scores/<model>.parquet`); the served AUC goes into the metrics file.
"""

from __future__ import annotations

import copy
import hashlib
import json
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from recsys.data.spec import SpecError
from recsys.train.config import apply_overrides

STAMP = ".stage.json"


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class SynthStage(Strict):
    users: int = Field(gt=0)
    events_per_user: int = Field(gt=1)
    seed: int = 0


class ConvertStage(Strict):
    format: str
    input: Optional[str] = None
    negatives: int = 1
    seed: int = 0


class DataStage(Strict):
    synth: Optional[SynthStage] = None
    convert: Optional[ConvertStage] = None


class PrepareStage(Strict):
    spec: str
    on_bad_rows: str = "fail"


class TrainStage(Strict):
    base: Dict[str, Any] = Field(default_factory=dict, description="training config shared by every model")
    models: Dict[str, Dict[str, Any]] = Field(description="model name -> its training-config overrides")
    nproc: int = Field(1, ge=1)


class ExportStage(Strict):
    parity_samples: int = Field(4096, ge=0)


class ScoreStage(Strict):
    requests: Optional[int] = Field(None, gt=0, description="sample this many test-period requests (all when unset)")
    batch_size: int = Field(256, gt=0)
    seed: int = 0


class Stages(Strict):
    data: DataStage
    prepare: PrepareStage
    train: Optional[TrainStage] = None
    export: Optional[ExportStage] = None
    score: Optional[ScoreStage] = None


class Pipeline(Strict):
    name: str
    workdir: str
    stages: Stages


def load_pipeline(path: str | Path, overrides: List[str], workdir: Optional[str]) -> Pipeline:
    try:
        raw = yaml.safe_load(Path(path).read_text()) or {}
    except (OSError, yaml.YAMLError) as exc:
        raise SpecError(f"cannot read pipeline {path}: {exc}") from exc
    raw = apply_overrides(raw, overrides)
    if workdir:
        raw["workdir"] = workdir
    try:
        pipeline = Pipeline.model_validate(raw)
    except ValidationError as exc:
        lines = [f"invalid pipeline {path}:"] + [f"  {'.'.join(str(p) for p in e['loc'])}: {e['msg']}" for e in exc.errors()]
        raise SpecError("\n".join(lines)) from exc
    data = pipeline.stages.data
    if (data.synth is None) == (data.convert is None):
        raise SpecError(f"pipeline {path}: stages.data needs exactly one of synth or convert")
    if data.convert is not None and not data.convert.input:
        raise SpecError(f"pipeline {path}: set the raw input, e.g. --set stages.data.convert.input=/path/to/{data.convert.format}")
    stages = pipeline.stages
    if stages.export is not None and stages.train is None:
        raise SpecError(f"pipeline {path}: stages.export needs stages.train")
    if stages.score is not None and stages.export is None:
        raise SpecError(f"pipeline {path}: stages.score needs stages.export")
    return pipeline


def _digest(settings: Any, upstream: Optional[str]) -> str:
    blob = json.dumps({"settings": settings, "upstream": upstream}, sort_keys=True, default=str)
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


def _up_to_date(output: Path, digest: str) -> bool:
    stamp = output / STAMP
    return stamp.exists() and json.loads(stamp.read_text()).get("digest") == digest


def _stamp(output: Path, digest: str) -> None:
    (output / STAMP).write_text(json.dumps({"digest": digest}))


def _run_stage(name: str, output: Path, digest: str, action: Callable[[], None], say: Callable[[str], None]) -> None:
    if _up_to_date(output, digest):
        say(f"{name}: up to date ({output})")
        return
    if output.exists():
        shutil.rmtree(output)
    say(f"{name}: running -> {output}")
    action()
    output.mkdir(parents=True, exist_ok=True)
    _stamp(output, digest)


def _recsys(*args: str) -> None:
    subprocess.run([sys.executable, "-m", "recsys.cli", *args], check=True)


def run_pipeline(pipeline: Pipeline, say: Callable[[str], None]) -> Dict[str, dict]:
    work = Path(pipeline.workdir)
    work.mkdir(parents=True, exist_ok=True)
    stages = pipeline.stages
    logs, prepared = work / "logs", work / "prepared"

    data = stages.data
    data_digest = _digest(data.model_dump(), None)
    if data.synth is not None:
        synth = data.synth
        action = lambda: _recsys("synth", "--out", str(logs), "--users", str(synth.users), "--events-per-user", str(synth.events_per_user), "--seed", str(synth.seed))  # noqa: E731
    else:
        convert = data.convert
        assert convert is not None and convert.input is not None
        action = lambda: _recsys("convert", convert.format, convert.input, "--out", str(logs), "--negatives", str(convert.negatives), "--seed", str(convert.seed))  # noqa: E731
    _run_stage("data", logs, data_digest, action, say)

    prepare = stages.prepare
    spec_text = Path(prepare.spec).read_text()
    prepare_digest = _digest({"stage": prepare.model_dump(), "spec": spec_text}, data_digest)
    _run_stage("prepare", prepared, prepare_digest,
               lambda: _recsys("prepare", "--spec", prepare.spec, "--input", str(logs), "--out", str(prepared), "--on-bad-rows", prepare.on_bad_rows), say)

    results: Dict[str, dict] = {}
    if stages.train is None:
        return results
    (work / "configs").mkdir(exist_ok=True)
    (work / "metrics").mkdir(exist_ok=True)
    train_digests: Dict[str, str] = {}
    for model_name, model_overrides in stages.train.models.items():
        config = _model_config(stages.train.base, model_name, model_overrides, work, prepared)
        run_dir = Path(config["output_dir"])
        digest = _digest({"config": config, "nproc": stages.train.nproc}, prepare_digest)
        config_path = work / "configs" / f"{model_name}.yaml"
        config_path.write_text(yaml.safe_dump(config, sort_keys=False))
        metrics_path = work / "metrics" / f"{model_name}.json"
        _run_stage(f"train {model_name}", run_dir, digest,
                   lambda: _recsys("train", str(config_path), "--metrics-out", str(metrics_path), "--nproc", str(stages.train.nproc)), say)
        shutil.copy(run_dir / "metrics.json", metrics_path)
        results[model_name] = json.loads(metrics_path.read_text())
        train_digests[model_name] = digest
    if stages.export is not None:
        _export_and_score(pipeline, work, logs, prepared, prepare_digest, train_digests, results, say)
    return results


def _export_and_score(pipeline: Pipeline, work: Path, logs: Path, prepared: Path, prepare_digest: str, train_digests: Dict[str, str],
                      results: Dict[str, dict], say: Callable[[str], None]) -> None:
    stages = pipeline.stages
    assert stages.export is not None
    requests = work / "requests"
    score = stages.score
    requests_digest = _digest(score.model_dump() if score else None, prepare_digest)
    if score is not None:
        cutoff = json.loads((prepared / "dataset.json").read_text())["split_cutoffs"]["test_start"]
        args = ["requests", "--input", str(logs), "--spec", stages.prepare.spec, "--out", str(requests / "test.parquet"),
                "--since", str(cutoff), "--seed", str(score.seed)] + (["--limit", str(score.requests)] if score.requests else [])
        _run_stage("requests", requests, requests_digest, lambda: _recsys(*args), say)
    for model_name, train_digest in train_digests.items():
        exported = work / "export" / model_name
        model_file = exported / f"{model_name}.pt"
        export_digest = _digest(stages.export.model_dump(), train_digest)
        _run_stage(f"export {model_name}", exported, export_digest,
                   lambda: _recsys("export", str(work / "runs" / model_name), "--out", str(model_file),
                                   "--parity-samples", str(stages.export.parity_samples)), say)
        if score is None:
            continue
        scored = work / "scores" / model_name
        _run_stage(f"score {model_name}", scored, _digest(score.model_dump(), export_digest + requests_digest),
                   lambda: _recsys("score", "--model", str(model_file), "--input", str(requests / "test.parquet"),
                                   "--out", str(scored / "scores.parquet"), "--batch-size", str(score.batch_size)), say)
        results[model_name]["served"] = _served_metrics(scored / "scores.parquet")
        (work / "metrics" / f"{model_name}.json").write_text(json.dumps(results[model_name], indent=2))


def _served_metrics(scores_path: Path) -> dict:
    """AUC of the exported model on the replayed requests: equals the test AUC when serving is faithful."""
    import pyarrow.parquet as pq
    import torch
    from torchmetrics.functional import auroc

    table = pq.read_table(scores_path, columns=["score", "label"])
    scores = torch.from_numpy(table["score"].to_numpy())
    labels = torch.from_numpy(table["label"].to_numpy().astype("int64"))
    summary = json.loads(scores_path.with_suffix(".summary.json").read_text())
    return {"auc": float(auroc(scores, labels, task="binary")), "candidates": int(len(scores)), "requests_per_s": summary["requests_per_s"]}


def _model_config(base: Dict[str, Any], model_name: str, overrides: Dict[str, Any], work: Path, prepared: Path) -> Dict[str, Any]:
    config = copy.deepcopy(base)
    _merge(config, copy.deepcopy(overrides))
    config.setdefault("model", {})["name"] = config.get("model", {}).get("name", model_name)
    config.setdefault("data", {})["dataset"] = str(prepared)
    config["output_dir"] = str(work / "runs" / model_name)
    tracking = config.setdefault("tracking", {})
    tracking.setdefault("run_name", model_name)
    return config


def _merge(into: Dict[str, Any], update: Dict[str, Any]) -> None:
    for key, value in update.items():
        if isinstance(value, dict) and isinstance(into.get(key), dict):
            _merge(into[key], value)
        else:
            into[key] = value
