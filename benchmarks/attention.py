"""Attention kernels: forward+backward time, peak memory and FLOPs against history length n.

Kernels: SparseCTR's structural branches (`recsys.ops.evo_attention.evo_branches`), full causal
attention through SDPA (the yardstick, flash on GPU) and GRAB's CamA (three channels as masks,
log-bucket temporal bias, SDPA). Times are medians over repeats and reported as ratios against
full causal SDPA at the same n, measured in the same run. FLOPs: `torch.utils.flop_counter` on one
forward+backward next to the analytic count of the matmul work. Log-log slopes of time against n
show how each kernel scales (SparseCTR about 1 at fixed P, tail, window; full attention about 2).
Peak memory: CUDA's allocator peak on GPU; on CPU the RSS high-water mark of a fresh child process.

    .venv/bin/python benchmarks/attention.py                         # CPU, n = 256 .. 4096
    python benchmarks/attention.py --device cuda --dtype bfloat16 --max-n 16384 --batch-tokens 65536
"""

from __future__ import annotations

import argparse
import json
import math
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from torch.utils.flop_counter import FlopCounterMode

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from recsys.ops.cama import cama_attention, cama_mask  # noqa: E402
from recsys.ops.chunking import personalized_chunks  # noqa: E402
from recsys.ops.evo_attention import evo_branches  # noqa: E402
from recsys.ops.temporal import alibi_scales, log_bucket  # noqa: E402

KERNELS = ("full_causal_sdpa", "sparsectr_structural", "cama")


def make_inputs(kernel: str, batch: int, n: int, heads: int, head_dim: int, chunks: int, device: str, dtype: torch.dtype,
                dense_mask: bool = True):
    generator = torch.Generator().manual_seed(0)
    gaps = torch.randint(1, 120, (batch, n), generator=generator)
    gaps[:, torch.randint(0, n, (max(1, n // 64),), generator=generator)] += 40_000  # sessions
    times = (1_704_067_200 + gaps.cumsum(1)).to(device)
    q, k, v = (torch.randn(batch, heads, n, head_dim, generator=generator).to(device, dtype).requires_grad_(True) for _ in range(3))
    extra = {}
    if kernel == "sparsectr_structural":
        lengths = torch.full((batch,), n, device=device)
        extra["layout"] = personalized_chunks(times, lengths, chunks)
        extra["profile"] = [torch.randn(batch, heads, 1, head_dim, generator=generator).to(device, dtype).requires_grad_(True) for _ in range(2)]
        extra["scales"] = alibi_scales(heads).to(device, dtype).requires_grad_(True)
    if kernel == "cama":
        actions = torch.randint(1, 4, (batch, n), generator=generator).to(device)
        position = torch.arange(n, device=device).expand(batch, n)
        groups = [torch.zeros(0, dtype=torch.int64, device=device)] * (heads // 2) + [torch.tensor([2, 3], device=device)] * (heads - heads // 2)
        real = torch.ones(batch, n, dtype=torch.bool, device=device)
        extra["actions"], extra["groups"] = actions, groups
        if dense_mask:  # O(n²) memory: FlexAttention callers skip it
            extra["mask"] = cama_mask(torch.zeros_like(position), position, times, real, ~real, actions, groups, 1)
        extra["bias_table"] = (0.01 * torch.randn(129, heads, generator=generator)).to(device, dtype).requires_grad_(True)
        extra["context"] = [torch.randn(batch, heads, 1, head_dim, generator=generator).to(device, dtype).requires_grad_(True) for _ in range(2)]
    return times, q, k, v, extra


def run_once(kernel: str, times, q, k, v, extra, tail: int, window: int) -> torch.Tensor:
    if kernel == "full_causal_sdpa":
        return F.scaled_dot_product_attention(q, k, v, is_causal=True)
    if kernel == "sparsectr_structural":
        chunk_id, chunk_start, chunk_end, chunk_valid = extra["layout"]
        k_profile, v_profile = extra["profile"]
        outs = evo_branches(q, k, v, k_profile, v_profile, k, v, times, chunk_id, chunk_start, chunk_end, chunk_valid,
                            tail, window, extra["scales"], 0, 0)
        return outs[0] + outs[1] + outs[2]
    delta = (times.unsqueeze(2) - times.unsqueeze(1)).clamp_min(0)
    # As in the GRAB model: an embedding lookup, whose backward sorts indices instead of atomics.
    bias = F.embedding(log_bucket(delta), extra["bias_table"]).permute(0, 3, 1, 2)
    context_k, context_v = extra["context"]
    bias = torch.cat([bias.new_zeros(bias.shape[:3] + (1,)), bias], dim=3)
    return cama_attention(q, torch.cat([context_k, k], 2), torch.cat([context_v, v], 2), extra["mask"], bias)


def analytic_flops(kernel: str, batch: int, n: int, heads: int, head_dim: int, chunks: int, tail: int, window: int) -> float:
    """Matmul FLOPs of forward + backward (backward = 2x forward): 4·keys·head_dim per query, forward;
    only the keys a query may see count (a kernel that computes masked-out scores gets no credit)."""
    if kernel == "sparsectr_structural":
        keys_per_query = chunks + chunks * tail + 2 * window + 1
    else:  # causal: query i has i + 1 keys (CamA: plus its context token)
        keys_per_query = (n + 1) / 2 + (1 if kernel == "cama" else 0)
    return 3 * 4 * batch * heads * n * keys_per_query * head_dim


def synchronize(device: str) -> None:
    if device == "cuda":
        torch.cuda.synchronize()


def measure(kernel: str, n: int, args) -> dict:
    dtype = getattr(torch, args.dtype)
    batch = max(1, args.batch_tokens // n)
    inputs = make_inputs(kernel, batch, n, args.heads, args.head_dim, args.chunks, args.device, dtype)
    times_t, q, k, v, extra = inputs

    def step():
        out = run_once(kernel, times_t, q, k, v, extra, args.tail, args.window)
        out.float().square().mean().backward()

    step()  # warm-up
    if args.device == "cuda":
        torch.cuda.reset_peak_memory_stats()
    seconds = []
    for _ in range(args.repeats):
        synchronize(args.device)
        started = time.perf_counter()
        step()
        synchronize(args.device)
        seconds.append(time.perf_counter() - started)
    counter = FlopCounterMode(display=False)
    with counter:
        step()
    result = {
        "kernel": kernel, "n": n, "batch": batch,
        "median_ms": statistics.median(seconds) * 1e3,
        "flops_counted": counter.get_total_flops(),
        "flops_analytic": analytic_flops(kernel, batch, n, args.heads, args.head_dim, args.chunks, args.tail, args.window),
    }
    if args.device == "cuda":
        result["peak_mib"] = torch.cuda.max_memory_allocated() / 2**20
    return result


def measure_in_child(kernel: str, n: int, argv: list[str]) -> dict:
    """CPU: a fresh process per point, so its RSS high-water mark belongs to this kernel alone."""
    done = subprocess.run([sys.executable, __file__, *argv, "--single", kernel, str(n)], capture_output=True, text=True, check=True)
    return json.loads(done.stdout.strip().splitlines()[-1])


def slope(points: list[dict]) -> float:
    xs = [math.log(p["n"]) for p in points]
    ys = [math.log(p["median_ms"] / p["batch"]) for p in points]  # per sequence
    mean_x, mean_y = statistics.mean(xs), statistics.mean(ys)
    return sum((x - mean_x) * (y - mean_y) for x, y in zip(xs, ys)) / sum((x - mean_x) ** 2 for x in xs)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--dtype", default="float32")
    parser.add_argument("--min-n", type=int, default=256)
    parser.add_argument("--max-n", type=int, default=4096)
    parser.add_argument("--batch-tokens", type=int, default=4096, help="B = batch_tokens / n (at least 1)")
    parser.add_argument("--heads", type=int, default=4)
    parser.add_argument("--head-dim", type=int, default=16)
    parser.add_argument("--chunks", type=int, default=16)
    parser.add_argument("--tail", type=int, default=2)
    parser.add_argument("--window", type=int, default=64)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--kernels", default=",".join(KERNELS))
    parser.add_argument("--dense-max-n", type=int, default=8192, help="largest n for CamA (its dense mask is O(n²) memory)")
    parser.add_argument("--json", type=Path, default=ROOT / "benchmarks" / "out" / "attention.json")
    parser.add_argument("--single", nargs=2, metavar=("KERNEL", "N"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    torch.manual_seed(0)

    if args.single:
        before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        result = measure(args.single[0], int(args.single[1]), args)
        result["peak_rss_delta_mib"] = (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before) / 1024
        print(json.dumps(result))
        return

    argv = [a for a in sys.argv[1:]]
    lengths = [args.min_n * 2**i for i in range(int(math.log2(args.max_n // args.min_n)) + 1)]
    results = []
    for n in lengths:
        for kernel in args.kernels.split(","):
            if kernel == "cama" and n > args.dense_max_n:
                continue
            point = measure_in_child(kernel, n, argv) if args.device == "cpu" else measure(kernel, n, args)
            results.append(point)
            print(f"  measured {kernel:<22} n={n:>6}: {point['median_ms']:9.2f} ms", file=sys.stderr, flush=True)
    reference = {r["n"]: r["median_ms"] for r in results if r["kernel"] == "full_causal_sdpa"}
    memory_key = "peak_mib" if args.device == "cuda" else "peak_rss_delta_mib"
    print(f"\n{'kernel':<22} {'n':>6} {'B':>4} {'ms':>10} {'x full':>7} {'GFLOP counted':>14} {'GFLOP analytic':>15} {'TFLOP/s':>8} {'peak MiB':>9}")
    for r in results:
        ratio = r["median_ms"] / reference[r["n"]] if r["n"] in reference else float("nan")
        r["ratio_vs_full"] = ratio
        r["tflops_per_s"] = r["flops_analytic"] / (r["median_ms"] / 1e3) / 1e12
        print(f"{r['kernel']:<22} {r['n']:>6} {r['batch']:>4} {r['median_ms']:>10.2f} {ratio:>7.2f} {r['flops_counted'] / 1e9:>14.2f} "
              f"{r['flops_analytic'] / 1e9:>15.2f} {r['tflops_per_s']:>8.3f} {r.get(memory_key, float('nan')):>9.0f}")
    slopes = {kernel: slope([r for r in results if r["kernel"] == kernel]) for kernel in args.kernels.split(",")
              if sum(r["kernel"] == kernel for r in results) > 1}
    print("\nlog-log slope of time per sequence against n: " + ", ".join(f"{k} {v:.2f}" for k, v in slopes.items()))
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps({"device": args.device, "dtype": args.dtype, "torch": torch.__version__,
                                     "config": {k: v for k, v in vars(args).items() if k not in ("json", "single")},
                                     "results": results, "slopes": slopes}, indent=2, default=str))
    print(f"wrote {args.json}")


if __name__ == "__main__":
    main()
