"""Serving latency and throughput of exported (TorchScript) models on CPU.

For each model: one request with a 1,000-event history and 100 candidates scored listwise (one call
for all candidates: p50/p99 latency over repeats), the same request scored one candidate per call
(the pointwise way: total time per request), and batched requests (requests/s). Reported as ratios
measured in the same run: per-candidate / listwise time, and each model's p50 against `dnn`'s.
The models are built at serving width (max_history 1,024) with fresh weights: latency does not
depend on the weights' values.

    .venv/bin/python benchmarks/serving.py                 # 2 threads, writes benchmarks/results/serving.json
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from recsys.data.prepare import prepare_dataset  # noqa: E402
from recsys.data.spec import load_spec  # noqa: E402
from recsys.data.synth import SynthConfig, write_synthetic  # noqa: E402
from recsys.export.exporter import scoring_module  # noqa: E402
from recsys.models.registry import build_model  # noqa: E402

MODELS = {
    "sparsectr": {"d_model": 64, "heads": 4, "layers": 2},
    "grab": {"d_model": 64, "heads": 4, "layers": 2},
    "din": {"d_model": 64},
    "dnn": {"d_model": 64},
}


def request(metadata: dict, batch: int, history: int, candidates: int, seed: int = 0) -> dict:
    generator = torch.Generator().manual_seed(seed)
    rows = metadata["num_embeddings"]
    start = 1_756_000_000
    times = start + torch.randint(1, 3600, (batch, history), generator=generator).cumsum(1)

    def ids(table: str, *shape: int) -> torch.Tensor:
        return torch.randint(1, rows[table], shape, generator=generator)

    inputs = {"history.lengths": torch.full((batch,), history, dtype=torch.int64), "history.timestamp": times,
              "request.timestamp": times[:, -1] + 60}
    for field in metadata["spec"]["fields"]:
        column, table, role = field["column"], field["table"], field["role"]
        if role == "sequence":
            inputs[f"history.{column}"] = ids(table, batch, history)
            if field.get("candidate", True):
                inputs[f"candidate.{column}"] = ids(table, batch, candidates)
        else:
            inputs[f"{role}.{column}"] = ids(table, batch)
    return inputs


def timed(fn, repeats: int, warmup: int) -> list[float]:
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeats):
        started = time.perf_counter()
        fn()
        times.append(time.perf_counter() - started)
    return times


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(round(q * (len(ordered) - 1))))]


def bench_model(module, metadata: dict, args) -> dict:
    one = request(metadata, 1, args.history, args.candidates)
    with torch.inference_mode():
        listwise = timed(lambda: module(one), args.repeats, args.warmup)
        singles = [{**one, **{k: v[:, m : m + 1] for k, v in one.items() if k.startswith("candidate.")}} for m in range(args.candidates)]
        per_candidate = timed(lambda: [module(s) for s in singles], args.pointwise_repeats, 1)
        batched = request(metadata, args.batch, args.history, args.candidates, seed=1)
        batch_times = timed(lambda: module(batched), args.batch_repeats, 1)
        # Listwise must equal pointwise, or the comparison means nothing.
        together = module(one)
        alone = torch.cat([module(s) for s in singles[:5]], dim=1)
        torch.testing.assert_close(together[:, :5], alone, rtol=1e-5, atol=1e-6)
    p50 = statistics.median(listwise)
    return {
        "listwise_p50_ms": 1e3 * p50, "listwise_p99_ms": 1e3 * percentile(listwise, 0.99),
        "per_candidate_request_ms": 1e3 * statistics.median(per_candidate),
        "per_candidate_over_listwise": statistics.median(per_candidate) / p50,
        "batched_requests_per_s": args.batch / statistics.median(batch_times),
        "batched_candidates_per_s": args.batch * args.candidates / statistics.median(batch_times),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--history", type=int, default=1000)
    parser.add_argument("--candidates", type=int, default=100)
    parser.add_argument("--max-history", type=int, default=1024)
    parser.add_argument("--batch", type=int, default=16, help="requests per batched call")
    parser.add_argument("--repeats", type=int, default=50)
    parser.add_argument("--warmup", type=int, default=5)
    parser.add_argument("--pointwise-repeats", type=int, default=3)
    parser.add_argument("--batch-repeats", type=int, default=5)
    parser.add_argument("--models", nargs="+", default=list(MODELS))
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "serving.json")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    with tempfile.TemporaryDirectory() as scratch:
        logs, prepared = Path(scratch) / "logs", Path(scratch) / "prepared"
        write_synthetic(SynthConfig(users=300, events_per_user=100, seed=0), logs)
        prepare_dataset(load_spec(ROOT / "feature_specs" / "synthetic.yaml"), logs, prepared)
        metadata = json.loads((prepared / "dataset.json").read_text())
    num_chunks = int(metadata["spec"]["chunking"]["num_chunks"])
    results = {}
    for name in args.models:
        model = build_model(name, metadata, MODELS[name]).eval()
        module = torch.jit.script(scoring_module(model, metadata, args.max_history, num_chunks))
        results[name] = bench_model(module, metadata, args)
        print(f"  measured {name}", file=sys.stderr)
    reference = results["dnn"]["listwise_p50_ms"] if "dnn" in results else None
    header = f"{'model':<10} {'p50 ms':>8} {'p99 ms':>8} {'vs dnn':>7} {'1/cand ms':>10} {'1/cand÷list':>12} {'req/s (B=' + str(args.batch) + ')':>14} {'cand/s':>10}"
    print(f"serving: history {args.history}, {args.candidates} candidates, {args.threads} threads, torch {torch.__version__}")
    print(header)
    for name, r in results.items():
        versus = f"{r['listwise_p50_ms'] / reference:.2f}x" if reference else "-"
        r["p50_over_dnn"] = r["listwise_p50_ms"] / reference if reference else None
        print(f"{name:<10} {r['listwise_p50_ms']:>8.2f} {r['listwise_p99_ms']:>8.2f} {versus:>7} {r['per_candidate_request_ms']:>10.1f} "
              f"{r['per_candidate_over_listwise']:>11.1f}x {r['batched_requests_per_s']:>14.1f} {r['batched_candidates_per_s']:>10.0f}")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({"config": {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()},
                                    "torch": torch.__version__, "results": results}, indent=2))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
