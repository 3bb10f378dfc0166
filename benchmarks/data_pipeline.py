"""Data pipeline benchmark: prepare 10 M synthetic events, then loader throughput at history 1024.

Timings are reported next to a reference measured in the same run:
  * prepare against a plain polars read of the same Parquet input (I/O + decode floor);
  * the DataLoader with W workers against the batch builder called in-process (no IPC).
Peak memory of prepare is the child process's max RSS. Polars' share is measured with cProfile:
the self time of calls into polars, numpy, pyarrow and torch versus everything else.

    .venv/bin/python benchmarks/data_pipeline.py            # full size (10 M events)
    .venv/bin/python benchmarks/data_pipeline.py --users 500 --events-per-user 200 --batches 10   # smoke
"""

from __future__ import annotations

import argparse
import cProfile
import json
import pstats
import resource
import subprocess
import sys
import tempfile
import time
from collections import defaultdict
from pathlib import Path

import numpy as np
import polars as pl
from rich.console import Console
from rich.table import Table

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from recsys.data.loader import BatchBuilder, SplitBatches, make_loader  # noqa: E402
from recsys.data.prepare import prepare_dataset  # noqa: E402
from recsys.data.spec import load_spec  # noqa: E402
from recsys.data.store import PreparedDataset  # noqa: E402
from recsys.data.synth import SynthConfig, write_synthetic  # noqa: E402

SPEC = ROOT / "feature_specs" / "synthetic.yaml"


POLARS_NATIVE = ("PyDataFrame", "PyLazyFrame", "PySeries", "PyExpr", "polars")


def _library_of(filename: str, function: str) -> str:
    """Attribute a profiler entry to a library; native methods carry their class in the name."""
    if filename == "~":
        if any(name in function for name in POLARS_NATIVE):
            return "polars"
        for library in ("pyarrow", "numpy", "torch"):
            if library in function:
                return library
        return "other native"
    for library in ("polars", "pyarrow", "numpy", "torch"):
        if f"/{library}/" in filename:
            return library
    return "recsys (Python)" if "/recsys/" in filename else "other Python"


def profile_shares(spec, logs: Path, out: Path) -> dict[str, float]:
    profiler = cProfile.Profile()
    profiler.enable()
    prepare_dataset(spec, logs, out)
    profiler.disable()
    shares: dict[str, float] = defaultdict(float)
    for (filename, _, function), (_, _, self_time, _, _) in pstats.Stats(profiler).stats.items():  # type: ignore[attr-defined]
        shares[_library_of(filename, function)] += self_time
    total = sum(shares.values())
    return {library: round(seconds / total, 3) for library, seconds in sorted(shares.items(), key=lambda kv: -kv[1])}


def prepare_in_child(logs: Path, out: Path) -> tuple[float, float, dict]:
    started = time.perf_counter()
    subprocess.run(
        [sys.executable, "-m", "recsys.cli", "prepare", "--spec", str(SPEC), "--input", str(logs), "--out", str(out)],
        check=True, cwd=ROOT, capture_output=True,
    )
    wall = time.perf_counter() - started
    peak_gib = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 2**20
    summary = json.loads((out / "summary.json").read_text())
    return wall, peak_gib, summary


def loader_rates(prepared: Path, history: int, batch_size: int, batches: int, workers: int) -> tuple[float, float]:
    dataset = PreparedDataset(prepared)
    builder = BatchBuilder(dataset, max_history=history)
    train = dataset.split_indices("train")
    rng = np.random.default_rng(0)
    picks = [rng.choice(train, size=batch_size, replace=False) for _ in range(batches)]
    builder.build(picks[0])
    started = time.perf_counter()
    for ids in picks:
        builder.build(ids)
    in_process = batches * batch_size / (time.perf_counter() - started)

    loader = iter(make_loader(SplitBatches(str(prepared), "train", batch_size, max_history=history), num_workers=workers))
    next(loader)  # worker start-up is not throughput
    started, seen = time.perf_counter(), 0
    for index, batch in enumerate(loader):
        seen += batch.batch_size
        if index + 1 == batches:
            break
    return in_process, seen / (time.perf_counter() - started)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--users", type=int, default=10_000)
    parser.add_argument("--events-per-user", type=int, default=1_000)
    parser.add_argument("--history", type=int, default=1024)
    parser.add_argument("--batch-size", type=int, default=512)
    parser.add_argument("--batches", type=int, default=80)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--json", type=Path, default=ROOT / "benchmarks" / "out" / "data_pipeline.json")
    args = parser.parse_args()

    spec = load_spec(SPEC)
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        started = time.perf_counter()
        synth = write_synthetic(SynthConfig(users=args.users, events_per_user=args.events_per_user, seed=0), work / "logs")
        synth_s = time.perf_counter() - started

        started = time.perf_counter()
        pl.read_parquet(work / "logs" / "*.parquet")
        read_s = time.perf_counter() - started

        prepare_s, peak_gib, summary = prepare_in_child(work / "logs", work / "prepared")
        shares = profile_shares(spec, work / "logs", work / "profiled")
        in_process, loader = loader_rates(work / "prepared", args.history, args.batch_size, args.batches, args.workers)

    results = {
        "events": synth["events"],
        "synth_seconds": round(synth_s, 2),
        "read_reference_seconds": round(read_s, 2),
        "prepare_seconds": round(prepare_s, 2),
        "prepare_over_read": round(prepare_s / read_s, 1),
        "prepare_peak_rss_gib": round(peak_gib, 2),
        "prepare_stage_seconds": summary["stage_seconds"],
        "prepare_self_time_share": shares,
        "loader_history": args.history,
        "loader_batch_size": args.batch_size,
        "loader_workers": args.workers,
        "builder_in_process_samples_per_s": round(in_process),
        "loader_samples_per_s": round(loader),
        "loader_over_in_process": round(loader / in_process, 2),
    }
    table = Table(title=f"data pipeline, {synth['events']:,} events")
    table.add_column("measure")
    table.add_column("value", justify="right")
    table.add_column("reference / ratio", justify="right")
    table.add_row("synth", f"{synth_s:.1f} s", "")
    table.add_row("prepare (child process, wall)", f"{prepare_s:.1f} s", f"{results['prepare_over_read']}x polars read ({read_s:.2f} s)")
    table.add_row("prepare peak RSS", f"{peak_gib:.2f} GiB", "target < 4 GiB")
    for stage, seconds in summary["stage_seconds"].items():
        table.add_row(f"  stage {stage}", f"{seconds:.2f} s", "")
    for library, share in shares.items():
        table.add_row(f"  self time in {library}", f"{share:.0%}", "")
    table.add_row(f"builder in-process, L={args.history}", f"{in_process:,.0f} samples/s", "reference")
    table.add_row(f"DataLoader {args.workers} workers, L={args.history}", f"{loader:,.0f} samples/s", f"{results['loader_over_in_process']}x in-process")
    Console().print(table)
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(results, indent=2))
    print(f"wrote {args.json}")


if __name__ == "__main__":
    main()
