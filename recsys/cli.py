"""`recsys` command line: the one place that wires the packages together."""

from __future__ import annotations

import json
import sys
import time
from enum import Enum
from pathlib import Path

import typer
from rich.console import Console

app = typer.Typer(add_completion=False, no_args_is_help=True, help="CTR ranking over long user-behavior sequences.")
console = Console(stderr=True, soft_wrap=True)


class DatasetFormat(str, Enum):
    movielens = "movielens"
    taobao = "taobao"
    kuairand = "kuairand"


class BadRows(str, Enum):
    fail = "fail"
    quarantine = "quarantine"


def _fail(message: str) -> None:
    console.print(f"[bold red]error:[/] {message}", highlight=False, markup=True)
    raise typer.Exit(code=2)


@app.command()
def synth(
    out: Path = typer.Option(..., "--out", help="Output directory for canonical Parquet."),
    users: int = typer.Option(1000, "--users", min=1),
    events_per_user: int = typer.Option(200, "--events-per-user", min=2),
    seed: int = typer.Option(0, "--seed"),
) -> None:
    """Write a synthetic behavior log with a known generating process (recsys/data/synth.py)."""
    from recsys.data.synth import SynthConfig, write_synthetic

    started = time.perf_counter()
    with console.status(f"generating {users:,} users x ~{events_per_user:,} events"):
        summary = write_synthetic(SynthConfig(users=users, events_per_user=events_per_user, seed=seed), out)
    console.print(
        f"synth: {summary['events']:,} events, {summary['users']:,} users, label rate {summary['label_rate']:.3f}, "
        f"{len(summary['files'])} file(s) in {out} ({time.perf_counter() - started:.1f}s)"
    )


@app.command()
def convert(
    fmt: DatasetFormat = typer.Argument(..., metavar="{movielens,taobao,kuairand}"),
    input_path: Path = typer.Argument(..., metavar="INPUT"),
    out: Path = typer.Option(..., "--out"),
    negatives: int = typer.Option(1, "--negatives", help="Taobao: sampled negatives per pv event."),
    seed: int = typer.Option(0, "--seed", help="Taobao: seed of the negative sampler."),
) -> None:
    """Convert a public dataset in its published format into canonical Parquet."""
    from recsys.data.convert import ConvertError, convert_kuairand, convert_movielens, convert_taobao

    try:
        with console.status(f"converting {fmt.value} from {input_path}"):
            if fmt is DatasetFormat.movielens:
                result = convert_movielens(input_path, out)
            elif fmt is DatasetFormat.taobao:
                result = convert_taobao(input_path, out, negatives=negatives, seed=seed)
            else:
                result = convert_kuairand(input_path, out)
    except ConvertError as exc:
        _fail(str(exc))
        return
    console.print(f"convert: {result.input_rows:,} input rows -> {result.output_rows:,} canonical rows in {len(result.files)} file(s) under {out}")


@app.command()
def prepare(
    spec: Path = typer.Option(..., "--spec", help="Feature spec YAML (feature_specs/)."),
    input_path: Path = typer.Option(..., "--input", help="Canonical Parquet file or directory."),
    out: Path = typer.Option(..., "--out"),
    on_bad_rows: BadRows = typer.Option(BadRows.fail, "--on-bad-rows"),
) -> None:
    """Validate, encode, sort, split and index a behavior log for training."""
    from recsys.data.prepare import format_summary, prepare_dataset
    from recsys.data.spec import SpecError, load_spec
    from recsys.data.validate import InputError

    started = time.perf_counter()
    try:
        feature_spec = load_spec(spec)
        with console.status("preparing") as status:
            summary = prepare_dataset(feature_spec, input_path, out, on_bad_rows.value, progress=lambda m: status.update(f"prepare: {m}"))
    except (SpecError, InputError) as exc:
        _fail(str(exc))
        return
    sys.stdout.write(format_summary(summary))
    if summary["rejected_rows"]:
        console.print(f"[yellow]{summary['rejected_rows']:,} rejected rows written to {out / 'quarantine.parquet'}[/]")
    console.print(f"prepare: wrote {out} in {time.perf_counter() - started:.1f}s; stages: {json.dumps(summary['stage_seconds'])}")


@app.command()
def batches(
    dataset: Path = typer.Argument(..., help="A prepared dataset directory."),
    split: str = typer.Option("train", "--split"),
    batch_size: int = typer.Option(256, "--batch-size", min=1),
    workers: int = typer.Option(2, "--workers", min=0),
    seed: int = typer.Option(0, "--seed"),
) -> None:
    """Stream one epoch of a split through the loader: layout of the first batch and throughput."""
    from tqdm import tqdm

    from recsys.data.loader import SplitBatches, make_loader

    split_batches = SplitBatches(str(dataset), split, batch_size, seed=seed)
    started, samples, first = time.perf_counter(), 0, None
    for batch in tqdm(make_loader(split_batches, num_workers=workers), total=len(split_batches), unit="batch", disable=None):
        first = first or batch
        samples += int(batch.weights.sum())
    elapsed = time.perf_counter() - started
    if first is None:
        _fail(f"split {split!r} of {dataset} has no samples")
        return
    kjt = first.sparse_features
    console.print(f"first batch: keys {kjt.keys()}, history lengths {first.history_lengths[:8].tolist()}..., "
                  f"padded width {first.history_timestamps.shape[1]}, chunks {first.chunk_valid.shape[1]}, "
                  f"label rate {first.labels.mean():.3f}")
    console.print(f"batches: {samples:,} {split} samples in {len(split_batches)} batches, {elapsed:.1f}s, {samples / elapsed:,.0f} samples/s")


def _free_port() -> int:
    import socket

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@app.command()
def train(
    config: Path = typer.Argument(..., help="Training config YAML."),
    overrides: list[str] = typer.Option([], "--set", help="Dotted override, e.g. --set optim.lr=0.001 (repeatable)."),
    nproc: int = typer.Option(1, "--nproc", min=1, help="Local processes (gloo on CPU, nccl on GPU)."),
    metrics_out: Path | None = typer.Option(None, "--metrics-out"),
    resume: bool = typer.Option(False, "--resume", help="Continue the run in output_dir from its last checkpoint."),
) -> None:
    """Train one model with TorchRec sharded embeddings, tracked in MLflow."""
    import os
    import subprocess

    if nproc > 1 and "RANK" not in os.environ:
        command = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", str(nproc), "--master_port", str(_free_port()),
                   "-m", "recsys.cli", "train", str(config), *[arg for o in overrides for arg in ("--set", o)]]
        command += ["--metrics-out", str(metrics_out)] if metrics_out else []
        command += ["--resume"] if resume else []
        raise typer.Exit(code=subprocess.run(command).returncode)
    from recsys.data.spec import SpecError
    from recsys.train.config import load_train_config
    from recsys.train.trainer import run_training

    try:
        cfg = load_train_config(config, overrides)
    except SpecError as exc:
        _fail(str(exc))
        return
    try:
        result = run_training(cfg, metrics_out, resume)
    except (FileNotFoundError, FileExistsError, SpecError) as exc:  # the MLflow run is already marked FAILED
        _fail(str(exc))
        return
    if int(os.environ.get("RANK", 0)) == 0:
        test = result["test"]
        console.print(f"train: {cfg.model.name} run {result['run_id']}: test AUC {test['auc']:.4f}, GAUC {test['gauc']:.4f}, "
                      f"logloss {test['logloss']:.4f} on {test['samples']:,} samples; {result['samples_per_s']:,.0f} samples/s")


@app.command()
def run(
    pipeline_file: Path = typer.Argument(..., metavar="PIPELINE.yaml"),
    workdir: str | None = typer.Option(None, "--workdir", help="Overrides the pipeline's workdir."),
    overrides: list[str] = typer.Option([], "--set", help="Dotted override of the pipeline file (repeatable)."),
) -> None:
    """Run a pipeline's stages (synth/convert -> prepare -> train ...), skipping what is up to date."""
    from rich.table import Table

    from recsys.data.spec import SpecError
    from recsys.pipeline import load_pipeline, run_pipeline

    try:
        pipeline = load_pipeline(pipeline_file, overrides, workdir)
    except SpecError as exc:
        _fail(str(exc))
        return
    started = time.perf_counter()
    results = run_pipeline(pipeline, say=lambda message: console.print(f"[bold]{pipeline.name}[/] {message}"))
    if results:
        table = Table(title=f"{pipeline.name}: test split")
        served = any("served" in result for result in results.values())
        columns = ["model", "AUC", "GAUC", "logloss", "samples/s", "dense params", "embedding params"] + (["served AUC", "served req/s"] if served else []) + ["MLflow run"]
        for column in columns:
            table.add_column(column, justify="left" if column in ("model", "MLflow run") else "right")
        for name, result in results.items():
            test = result["test"]
            extra = [f"{result['served']['auc']:.4f}", f"{result['served']['requests_per_s']:,.0f}"] if "served" in result else ([""] * 2 if served else [])
            table.add_row(name, f"{test['auc']:.4f}", f"{test['gauc']:.4f}", f"{test['logloss']:.4f}", f"{result['samples_per_s']:,.0f}",
                          f"{result['parameters']['dense']:,}", f"{result['parameters']['embedding']:,}", *extra, str(result["run_id"]))
        Console(width=160).print(table)
    console.print(f"run: {pipeline.name} finished in {time.perf_counter() - started:.0f}s; metrics in {Path(pipeline.workdir) / 'metrics'}")


@app.command()
def sweep(
    pipeline_file: Path = typer.Argument(..., metavar="PIPELINE.yaml"),
    workdir: str | None = typer.Option(None, "--workdir"),
    overrides: list[str] = typer.Option([], "--set", help="Dotted override of the pipeline file (repeatable)."),
    nproc: int | None = typer.Option(None, "--nproc", min=1, help="Processes per training run (overrides sweep.nproc)."),
    models: str | None = typer.Option(None, "--models", help="Comma-separated models whose points to run now (default: all)."),
) -> None:
    """Run a scaling sweep: one MLflow parent run, a child run per grid point, fitted laws and plots."""
    from rich.table import Table

    from recsys.data.spec import SpecError
    from recsys.sweep import load_sweep, run_sweep

    try:
        pipeline, sweep_section = load_sweep(pipeline_file, overrides, workdir)
    except SpecError as exc:
        _fail(str(exc))
        return
    if nproc:
        sweep_section = sweep_section.model_copy(update={"nproc": nproc})
    started = time.perf_counter()
    only = [m.strip() for m in models.split(",")] if models else None
    if only is not None and set(only) - set(sweep_section.models):
        _fail(f"--models {sorted(set(only) - set(sweep_section.models))} are not models of the sweep ({sorted(sweep_section.models)})")
    outcome = run_sweep(pipeline, sweep_section, say=lambda message: console.print(f"[bold]sweep {pipeline.name}[/] {message}"), only_models=only)
    table = Table(title=f"sweep {pipeline.name} (parent run {outcome['parent_run_id']})")
    for column in ("model", "point", "train FLOPs", "test AUC", "test logloss", "samples/s"):
        table.add_column(column)
    for result in outcome["results"]:
        point = ", ".join(f"{k.split('.')[-1]}={v}" for k, v in result["point"].items() if k != "model")
        table.add_row(result["model"], point, f"{result['train_flops']:.3g}", f"{result['test']['auc']:.4f}",
                      f"{result['test']['logloss']:.4f}", f"{result['samples_per_s']:,.0f}")
    Console(width=160).print(table)
    for axis, per_model in outcome["laws"].items():
        for model, law in per_model.items():
            console.print(f"law {axis} {model}: " + ", ".join(f"{k}={v:.4g}" for k, v in law.items()))
    console.print(f"sweep: {len(outcome['results'])} points in {time.perf_counter() - started:.0f}s")


@app.command()
def export(
    source: str = typer.Argument(..., metavar="RUN_ID_OR_CHECKPOINT", help="An MLflow run id, a run directory or a checkpoint directory."),
    out: Path = typer.Option(..., "--out", help="TorchScript file to write; the bundle goes beside it as <name>.bundle/."),
    tracking_uri: str | None = typer.Option(None, "--tracking-uri", help="MLflow store (default: MLFLOW_TRACKING_URI or ./mlflow.db)."),
    parity_samples: int = typer.Option(4096, "--parity-samples", min=0, help="Test samples compared against the eager model (0: skip)."),
) -> None:
    """Export a trained model as TorchScript for online scoring, with its serving bundle, and log both to MLflow."""
    from recsys.export.exporter import ExportError, bundle_dir, export_model

    started = time.perf_counter()
    try:
        with console.status(f"exporting {source}"):
            info = export_model(source, out, tracking_uri, parity_samples)
    except ExportError as exc:
        _fail(str(exc))
        return
    parity = info["parity"]
    check = (f"parity on {parity['samples']:,} {parity['split']} samples: max |exported - eager| = {parity['max_abs_diff_probability']:.2e}"
             if parity else "parity: skipped (dataset not on this machine)")
    console.print(f"export: {info['model_version']} -> {out} + {bundle_dir(out)}; {check}; "
                  f"MLflow run {info['mlflow_run_id'] or '-'} ({time.perf_counter() - started:.1f}s)")


@app.command()
def score(
    model: Path = typer.Option(..., "--model", help="A file written by recsys export (its bundle beside it)."),
    input_path: Path = typer.Option(..., "--input", help="Request Parquet file or directory (format: recsys/serving/requests.py)."),
    out: Path = typer.Option(..., "--out", help="Scores Parquet: one row per candidate."),
    batch_size: int = typer.Option(256, "--batch-size", min=1, help="Requests per scoring call."),
    threads: int | None = typer.Option(None, "--threads", min=1, help="torch intra-op threads."),
) -> None:
    """Score canonical requests (raw ids) with an exported model."""
    from recsys.data.validate import InputError
    from recsys.serving.score import score_requests

    try:
        summary = score_requests(model, input_path, out, batch_size, threads, progress=sys.stderr.isatty())
    except InputError as exc:
        _fail(str(exc))
        return
    result = summary.as_dict()
    console.print(f"score: {result['requests']:,} requests, {result['candidates']:,} candidates in {result['seconds']:.1f}s "
                  f"({result['requests_per_s']:,.0f} requests/s) -> {out}")
    console.print(f"score: history events kept {result['history_events_kept']:,}, excluded {result['history_events_excluded'] or 'none'}; "
                  f"unknown ids mapped to the OOV row {result['unknown_ids_mapped_to_oov'] or 'none'}")
    (out.with_suffix(".summary.json")).write_text(json.dumps(result, indent=2))


@app.command()
def requests(
    input_path: Path = typer.Option(..., "--input", help="Behavior log (canonical Parquet file or directory)."),
    spec_path: Path = typer.Option(..., "--spec", help="The feature spec YAML."),
    out: Path = typer.Option(..., "--out", help="Request Parquet to write."),
    since: int = typer.Option(..., "--since", help="First request time, in the log's timestamp unit."),
    max_history: int | None = typer.Option(None, "--max-history", min=1, help="Keep at most this many recent history events."),
    limit: int | None = typer.Option(None, "--limit", min=1, help="Sample this many requests (seeded)."),
    seed: int = typer.Option(0, "--seed"),
) -> None:
    """Replay a behavior log as scoring requests: each (user, time) group after --since is one request."""
    from recsys.data.spec import SpecError, load_spec
    from recsys.serving.requests import replay_requests

    try:
        spec = load_spec(spec_path)
    except SpecError as exc:
        _fail(str(exc))
        return
    with console.status("replaying requests"):
        summary = replay_requests(input_path, spec, since, out, max_history, limit, seed)
    console.print(f"requests: {summary['requests']:,} requests, {summary['candidates']:,} candidates, "
                  f"mean history {summary['mean_history']:.1f} -> {out}")


def main() -> None:
    app()


if __name__ == "__main__":
    main()
