"""GPU suite: correctness against the references, attention kernels and full training steps, with
achieved TFLOP/s next to the measured bf16 matmul ceiling.

1. Ceiling: a bf16 8192³ matmul (median of repeats) — the yardstick for "fraction of peak".
2. Correctness on the GPU: SparseCTR's structural branches (eager and torch.compile'd) against the
   dense-mask reference, CamA (dense, FlexAttention, fused Triton kernel) against its reference;
   forward and gradients (the bias table's included), float32; the fused kernel's bucket mismatches.
3. Attention forward + backward (bf16, B·n tokens fixed, CUDA events, warm-up, median):
   full causal flash attention (SDPA, the yardstick), SparseCTR structural eager, compiled and with
   the fused local-branch kernel (`sparsectr_structural_triton`), all three branches fused
   (`sparsectr_fused`: the keyed kernel for global and transition, as `attention: triton` trains,
   with the batch's geometry built in every call and the three outputs summed for one dO;
   `sparsectr_fused_layer`: the node as a layer runs it, the geometry built once outside the timed
   call (the model builds it once per batch for all its layers), each output taking dO;
   `sparsectr_fused_layer_gated`: as the model runs it, the branches' gated sum done in the kernels,
   one output and one dO; both layer variants take the temporal scales in float32, as the model's parameter),
   CamA with its temporal bias (dense: n ≤ --dense-max-n; cama_flex; cama_triton). Suffixes:
   `_fwd` times the forward alone (against flash's forward), `cama_triton_nobias` /
   `cama_triton_notablegrad` switch the bias or its table gradient off, `cama_triton_exactlog2` uses
   libdevice's log2 for the bucket instead of the SFU's, `cama_triton_threshold` takes the bias of
   off-diagonal tiles spanning at most 6 bucket edges by threshold compares instead of the per-pair
   log2 and table gather (faster until session 7 made the gather direct), `cama_triton_bucketmajor`
   reads the bias table `[buckets, H]` row-major (what the head-major layout saves), `cama_triton_nosingle`
   gathers per pair in tiles that lie in one bucket too (what their scalar bias saves), `_graph` replays forward +
   backward as one CUDA graph (what the host's launches cost). The backward takes a fixed random dO.
   Useful FLOPs only: a causal query counts the keys it may see. `--profile`: top GPU kernels and
   the GPU-kernel vs host totals of each row (and of each training step).
4. Training step (embeddings + model + AdamW + embedding optimizer, bf16 autocast, unsharded tables)
   for sparsectr and grab at history 1,024 and 4,096: samples/s with the data loader in the loop,
   without it (one resident batch), the loader alone, peak memory and model FLOPs utilisation
   (3 × analytic forward FLOPs per sample × samples/s ÷ the measured ceiling).

    python benchmarks/gpu_suite.py --dataset PREPARED_DIR [--out DIR]     # on the GPU machine
    TRITON_INTERPRET=1 .venv/bin/python benchmarks/gpu_suite.py --device cpu --quick --dataset DIR   # smoke test here
                                            # (the Triton kernels interpreted; times mean nothing)
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
import triton
import triton.language as tl

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

from attention import analytic_flops, make_inputs, run_once  # noqa: E402

from recsys.ops.cama import cama_attention, cama_attention_reference  # noqa: E402
from recsys.ops.chunking import personalized_chunks  # noqa: E402
from recsys.ops.cama_flex import cama_block_mask, cama_flex_attention, head_channels  # noqa: E402
from recsys.ops.cama_triton import ABLATION as cama_triton_ablation  # noqa: E402
from recsys.ops.cama_triton import _bucket, cama_meta, cama_triton_attention, channel_bits  # noqa: E402
from recsys.ops.evo_attention import (evo_attend_fused, evo_attend_packed, evo_attend_packed_gated, evo_branches,  # noqa: E402
                                      evo_branches_reference, evo_geometry)
from recsys.ops.temporal import LOG_BUCKET_PER_OCTAVE, log_bucket  # noqa: E402
from recsys.ops.triton_tiles import INTERPRETED  # noqa: E402

CAMA_BIAS_STEPS = cama_triton_ablation["bias_steps"]  # the default (0: every tile by table gather)
CAMA_THRESHOLD_STEPS = 6  # `cama_triton_threshold`: off-diagonal tiles spanning <= 6 bucket edges by thresholds
NOMINAL_H100_BF16 = 989.4e12  # dense, SXM, without sparsity


def timer(fn, repeats: int, warmup: int, device: str) -> float:
    """Median seconds per call: CUDA events on GPU, perf_counter on CPU."""
    for _ in range(warmup):
        fn()
    samples = []
    for _ in range(repeats):
        if device == "cuda":
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            fn()
            end.record()
            torch.cuda.synchronize()
            samples.append(start.elapsed_time(end) / 1e3)
        else:
            started = time.perf_counter()
            fn()
            samples.append(time.perf_counter() - started)
    return statistics.median(samples)


def back_to_back(fn, repeats: int, warmup: int, device: str) -> float:
    """Mean seconds per call of `repeats` calls run back to back with one sync at the end, as a
    training loop runs its steps: `timer`'s sync per call starts every call on an empty GPU queue,
    which exposes the host's time to its first launch (session 10: with the step's own sync gone,
    the loader-fed loop outran a `timer`-timed resident step)."""
    for _ in range(warmup):
        fn()
    if device == "cuda":
        torch.cuda.synchronize()
    started = time.perf_counter()
    for _ in range(repeats):
        fn()
    if device == "cuda":
        torch.cuda.synchronize()
    return (time.perf_counter() - started) / repeats


def matmul_ceiling(device: str, size: int) -> float:
    dtype = torch.bfloat16 if device == "cuda" else torch.float32
    a, b = torch.randn(size, size, device=device, dtype=dtype), torch.randn(size, size, device=device, dtype=dtype)
    seconds = timer(lambda: a @ b, 10, 3, device)
    return 2 * size**3 / seconds


# -- correctness ---------------------------------------------------------------------------------
def _max_rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).abs().max() / b.abs().max().clamp_min(1e-12))


def check_correctness(device: str, sparsectr: bool = True, cama: bool = True, report: dict | None = None) -> dict:
    """Each check's max relative errors into `report` (a `LoggedResults` prints and saves each as it
    lands). The fused kernels' checks, what a GPU run is for, come before the torch.compile'd
    structural one and its inductor build, so a run cut short keeps them first."""
    report = {} if report is None else report
    torch.manual_seed(0)
    batch, n, heads, dim, chunks, tail, window = 2, 256, 4, 16, 8, 2, 32
    times, q, k, v, extra = make_inputs("sparsectr_structural", batch, n, heads, dim, chunks, device, torch.float32)
    layout, (kp, vp), scales = extra["layout"], extra["profile"], extra["scales"]
    args = (q, k, v, kp, vp, k, v, times, *layout, tail, window, scales, 0, 0)
    leaves = [q, k, v, kp, vp, scales]
    reference = evo_branches_reference(*args)
    reference_grads = torch.autograd.grad(sum(r.square().sum() for r in reference), leaves)

    def check_structural(name: str, fn) -> None:
        out = fn(*args)
        grads = torch.autograd.grad(sum(o.square().sum() for o in out), leaves)
        report[name] = {"forward_max_rel": max(_max_rel(o, r) for o, r in zip(out, reference)),
                        "grad_max_rel": max(_max_rel(g, r) for g, r in zip(grads, reference_grads))}

    if sparsectr:
        check_structural("sparsectr_structural", evo_branches)
    if (device == "cuda" or INTERPRETED) and sparsectr:
        for name, keyed in (("sparsectr_structural_triton", False), ("sparsectr_fused", True)):
            out = fused_branches(q, k, v, kp, vp, times, layout, tail, window, scales, keyed)
            grads = torch.autograd.grad(sum(o.square().sum() for o in out), leaves)
            report[name] = {"forward_max_rel": max(_max_rel(o, r) for o, r in zip(out, reference)),
                            "grad_max_rel": max(_max_rel(g, r) for g, r in zip(grads, reference_grads))}
    if device == "cuda" and sparsectr:  # as training runs them: bf16 q, k, v under autocast, against the float32 reference
        half = [x.detach().bfloat16().requires_grad_() for x in (q, k, v, kp, vp)]
        with torch.autocast("cuda", dtype=torch.bfloat16):
            out = fused_branches(*half, times, layout, tail, window, scales, True)
        grads = torch.autograd.grad(sum(o.float().square().sum() for o in out), half + [scales])
        report["sparsectr_fused_bf16"] = {"forward_max_rel": max(_max_rel(o.float(), r) for o, r in zip(out, reference)),
                                          "grad_max_rel": max(_max_rel(g.float(), r) for g, r in zip(grads, reference_grads))}
    if (device == "cuda" or INTERPRETED) and sparsectr:  # the branches' gated sum inside the kernels, as the model runs them
        gates = torch.rand(3, batch, heads, n, device=device, requires_grad=True)
        expected = sum(gate.unsqueeze(-1) * branch for gate, branch in zip(gates, evo_branches_reference(*args)))
        expected_grads = torch.autograd.grad(expected.square().sum(), leaves + [gates])
        packed = torch.stack([x.detach().transpose(1, 2) for x in (q, k, v)], dim=2).requires_grad_()
        geometry = evo_geometry(times, *layout, n - layout[0].shape[1], tail, window, 0, 0, fused=True)
        out = evo_attend_packed_gated(packed, kp, vp, None, None, geometry, window, scales, 0, gates)
        d_packed, *grads = torch.autograd.grad(out.square().sum(), [packed, kp, vp, scales, gates])
        grads = [d_packed[:, :, part].transpose(1, 2) for part in range(3)] + grads
        report["sparsectr_fused_gated"] = {"forward_max_rel": _max_rel(out, expected),
                                           "grad_max_rel": max(_max_rel(g, r) for g, r in zip(grads, expected_grads))}
    if (device == "cuda" or INTERPRETED) and sparsectr:  # the last 5 positions as candidates (the local kernels' candidate window)
        history = n - 5
        history_layout = personalized_chunks(times[:, :history], torch.full((batch,), history, device=device), chunks)
        expected = evo_branches_reference(q, k, v, kp, vp, k, v, times, *history_layout, tail, window, scales, 0, 0)
        expected_grads = torch.autograd.grad(sum(r.square().sum() for r in expected), leaves)
        out = fused_branches(q, k, v, kp, vp, times, history_layout, tail, window, scales, True)
        grads = torch.autograd.grad(sum(o.square().sum() for o in out), leaves)
        report["sparsectr_fused_candidates"] = {"forward_max_rel": max(_max_rel(o, r) for o, r in zip(out, expected)),
                                                "grad_max_rel": max(_max_rel(g, r) for g, r in zip(grads, expected_grads))}
    if sparsectr:
        check_structural("sparsectr_structural_compiled", torch.compile(evo_branches, dynamic=False))
    if not cama:
        return report
    times, q, k, v, extra = make_inputs("cama", batch, n, heads, dim, chunks, device, torch.float32)
    delta = (times.unsqueeze(2) - times.unsqueeze(1)).clamp_min(0)
    bias = F.embedding(log_bucket(delta), extra["bias_table"]).permute(0, 3, 1, 2)
    bias = torch.cat([bias.new_zeros(bias.shape[:3] + (1,)), bias], dim=3)
    keys, values = torch.cat([extra["context"][0], k], 2), torch.cat([extra["context"][1], v], 2)
    out, ref = cama_attention(q, keys, values, extra["mask"], bias), cama_attention_reference(q, keys, values, extra["mask"], bias)
    grads = torch.autograd.grad(out.square().sum(), [q, k, v])
    ref_grads = torch.autograd.grad(ref.square().sum(), [q, k, v])
    report["cama"] = {"forward_max_rel": _max_rel(out, ref), "grad_max_rel": max(_max_rel(g, r) for g, r in zip(grads, ref_grads))}
    flex_inputs = cama_flex_inputs(times, extra, device)
    block_mask = cama_block_mask(*flex_inputs, 1)
    table = extra["bias_table"]
    leaves = [q, k, v, table]
    if device == "cuda":
        flex_out = cama_flex_attention(q, keys, values, block_mask, times, table, 1, 128)
        flex_grads = torch.autograd.grad(flex_out.square().sum(), leaves)
        dense_grads = torch.autograd.grad(cama_attention(q, keys, values, extra["mask"], _cama_bias(times, table)).square().sum(), leaves)
        grad_error = max(_max_rel(g, r) for g, r in zip(flex_grads, dense_grads))
    else:  # FlexAttention has no backward on CPU: forward only
        with torch.no_grad():
            flex_out = cama_flex_attention(q.detach(), keys.detach(), values.detach(), block_mask, times, table.detach(), 1, 128)
        grad_error = float("nan")
    report["cama_flex"] = {"forward_max_rel": _max_rel(flex_out, ref), "grad_max_rel": grad_error}
    if device == "cuda" or INTERPRETED:
        leaves = [q, k, v, *extra["context"], table]
        meta = cama_triton_meta(times, extra, device)
        fused = cama_triton_attention(q, k, v, *extra["context"], meta, table, 128, packed=False)
        fused_grads = torch.autograd.grad(fused.square().sum(), leaves)
        dense = cama_attention(q, keys, values, extra["mask"], _cama_bias(times, table))
        dense_grads = torch.autograd.grad(dense.square().sum(), leaves)
        report["cama_triton"] = {"forward_max_rel": _max_rel(fused, dense), "grad_max_rel": max(_max_rel(g, r) for g, r in zip(fused_grads, dense_grads)),
                                 "bucket_mismatch_rate": _bucket_mismatch_rate(times)}
        cama_triton_ablation.update(fast_log2=False)
        exact = cama_triton_attention(q, k, v, *extra["context"], meta, table, 128, packed=False)
        exact_grads = torch.autograd.grad(exact.square().sum(), leaves)
        cama_triton_ablation.update(fast_log2=True)
        report["cama_triton_exactlog2"] = {"forward_max_rel": _max_rel(exact, dense),
                                           "grad_max_rel": max(_max_rel(g, r) for g, r in zip(exact_grads, dense_grads))}
    if device == "cuda":  # bf16 q, k, v as GRAB trains them, against the float32 dense path
        half = [x.detach().bfloat16().requires_grad_() for x in (q, k, v, *extra["context"])]
        out = cama_triton_attention(*half, meta, table, 128, packed=False)
        grads = torch.autograd.grad(out.float().square().sum(), half + [table])
        report["cama_triton_bf16"] = {"forward_max_rel": _max_rel(out.float(), dense),
                                      "grad_max_rel": max(_max_rel(g.float(), r) for g, r in zip(grads, dense_grads))}
    return report


@triton.jit
def _kernel_buckets(delta_ptr, out_ptr, count, scale: tl.constexpr, FAST: tl.constexpr, BLOCK: tl.constexpr):
    """The fused kernels' bucket of each Δ (module level: Triton resolves a kernel's names in its module)."""
    offs = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
    delta = tl.load(delta_ptr + offs, mask=offs < count, other=1)
    tl.store(out_ptr + offs, _bucket(delta, 128, scale, FAST), mask=offs < count)


def _bucket_mismatch_rate(times: torch.Tensor) -> float:
    """Share of (query, key) pairs that the kernels' bucket (SFU lg2.approx) puts elsewhere than `log_bucket`."""
    delta = (times.unsqueeze(2) - times.unsqueeze(1)).clamp(1, 2**31 - 1).flatten().int().contiguous()
    fused = torch.empty_like(delta)
    _kernel_buckets[(triton.cdiv(delta.numel(), 1024),)](delta, fused, delta.numel(), LOG_BUCKET_PER_OCTAVE, not INTERPRETED, 1024)
    return float((fused.long() != log_bucket(delta.long())).float().mean())


def fused_branches(q, k, v, k_profile, v_profile, times, layout, tail: int, window: int, scales, keyed: bool):
    """SparseCTR's three branches with the local one fused and, if `keyed`, the global and transition
    ones too (geometry built per call, as `evo_branches` does)."""
    geometry = evo_geometry(times, *layout, q.shape[2] - layout[0].shape[1], tail, window, 0, 0, fused=keyed)
    return evo_attend_fused(q, k, v, k_profile, v_profile, k, v, geometry, window, scales, times, 0, 0, keyed=keyed)


def fused_branches_packed(packed, k_profile, v_profile, times, layout, tail: int, window: int, scales):
    """`fused_branches` (keyed) as the model runs it: q, k, v read in place from one packed `[B, T, 3,
    H, D]` projection, their gradients written into one packed tensor."""
    geometry = evo_geometry(times, *layout, packed.shape[1] - layout[0].shape[1], tail, window, 0, 0, fused=True)
    return evo_attend_packed(packed, k_profile, v_profile, None, None, geometry, window, scales, 0)


def cama_triton_meta(times: torch.Tensor, extra: dict, device: str):
    segment, position, times, real, is_candidate, actions, _, _ = cama_flex_inputs(times, extra, device)
    return cama_meta(segment, position, times, real, is_candidate, actions, *channel_bits(extra["groups"]), 128)


def cama_flex_inputs(times: torch.Tensor, extra: dict, device: str):
    """CamA's layout as `benchmarks/attention.make_inputs` draws it (one user per row, no candidates)."""
    batch, n = times.shape
    position = torch.arange(n, device=device).expand(batch, n)
    real = torch.ones(batch, n, dtype=torch.bool, device=device)
    content, in_group = head_channels(extra["groups"], 5, torch.device(device))
    return torch.zeros_like(position), position, times, real, ~real, extra["actions"], content, in_group


def _cama_bias(times: torch.Tensor, table: torch.Tensor) -> torch.Tensor:
    delta = (times.unsqueeze(2) - times.unsqueeze(1)).clamp_min(0)
    bias = F.embedding(log_bucket(delta), table).permute(0, 3, 1, 2)
    return torch.cat([bias.new_zeros(bias.shape[:3] + (1,)), bias], dim=3)


# -- attention -----------------------------------------------------------------------------------
def profile_step(step, device: str, top: int = 15) -> dict:
    """Where one call's time goes: the `top` kernels (CUDA) or operators (CPU) by self time over 3
    profiled calls, per call, printed and returned for the JSON; with the GPU kernels' total and the
    CPU's total, so a step the host cannot feed (GPU idle between launches) shows as kernels << wall."""
    from torch.autograd import DeviceType
    from torch.profiler import ProfilerActivity, profile

    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device == "cuda" else [])
    with profile(activities=activities) as profiler:
        for _ in range(3):
            step()
        if device == "cuda":
            torch.cuda.synchronize()
    averages = profiler.key_averages()
    kernels = [e for e in averages if e.device_type == DeviceType.CUDA]
    host_ops = [e for e in averages if e.device_type == DeviceType.CPU]

    def ranked(events, key: str) -> list[dict]:
        events = sorted(events, key=lambda e: getattr(e, key), reverse=True)[:top]
        return [{"name": e.key, "ms_per_call": getattr(e, key) / 3e3, "calls_per_call": e.count / 3} for e in events]

    # Kernels and the host operators that launched them are separate lists: ranked together, an
    # inductor kernel appeared twice (its launch record and the kernel) next to aten ops' totals.
    rows = ranked(kernels, "self_device_time_total") if device == "cuda" else ranked(host_ops, "self_cpu_time_total")
    operators = ranked(host_ops, "device_time_total") if device == "cuda" else []
    # Where the host's time goes (Python and dispatch included in each operator's self time): a step
    # whose host time exceeds its kernels' runs at the host's pace.
    host = ranked(host_ops, "self_cpu_time_total") if device == "cuda" else []
    totals = {"gpu_kernel_ms": sum(e.self_device_time_total for e in kernels) / 3e3, "gpu_kernels": sum(e.count for e in kernels) / 3,
              "cpu_ms": sum(e.self_cpu_time_total for e in host_ops) / 3e3}
    for title, listed in (("kernels" if device == "cuda" else "operators", rows), ("operators by the GPU time under them", operators),
                          ("operators by host (self CPU) time", host)):
        if listed:
            print(f"    {title}:", file=sys.stderr, flush=True)
        for row in listed:
            print(f"    {row['ms_per_call']:8.3f} ms  x{row['calls_per_call']:<5.0f} {row['name'][:90]}", file=sys.stderr, flush=True)
    print(f"    GPU kernels {totals['gpu_kernel_ms']:.3f} ms in {totals['gpu_kernels']:.0f} launches; host {totals['cpu_ms']:.3f} ms",
          file=sys.stderr, flush=True)
    return {"top": rows, "top_operators": operators, "top_host": host, **totals}


def sync_sites(step) -> list[dict]:
    """Where one call makes the host wait for the GPU (`torch.cuda.set_sync_debug_mode`): each
    synchronising operation's innermost frame in this repository and innermost frame overall, with a
    count. A sync drains the GPU's queue, so whatever the host does next before its first launch is
    GPU idle time: in a host-bound step these are the bubbles."""
    import collections
    import traceback
    import warnings

    sites: collections.Counter = collections.Counter()
    stepping = [False]  # leaving the debug mode warns once itself: count only the step's syncs

    def record(message, category, filename, lineno, file=None, line=None) -> None:
        if not stepping[0]:
            return
        frames = traceback.extract_stack()[:-1]
        ours = [f for f in frames if (f"{os.sep}recsys{os.sep}" in f.filename or f"{os.sep}benchmarks{os.sep}" in f.filename)
                and f.name != "sync_sites"]
        mine = ours[-1] if ours else frames[-1]
        where = f"{Path(mine.filename).name}:{mine.lineno} {mine.name}"
        sites[f"{where} <- {Path(filename).name}:{lineno}" if frames and mine is not frames[-1] else where] += 1

    torch.cuda.synchronize()
    with warnings.catch_warnings():
        warnings.simplefilter("always")
        warnings.showwarning = record
        torch.cuda.set_sync_debug_mode("warn")
        try:
            stepping[0] = True
            step()
        finally:
            stepping[0] = False
            torch.cuda.set_sync_debug_mode("default")
    rows = [{"site": site, "count": count} for site, count in sites.most_common()]
    for row in rows:
        print(f"    sync x{row['count']:<3} {row['site'][:150]}", file=sys.stderr, flush=True)
    return rows


def capture_graph(step):
    """`step` (forward + backward) captured as one CUDA graph after warm-up on a side stream (which
    also runs the Triton autotuners outside the capture); returns its replay."""
    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):
        for _ in range(3):
            step()
    torch.cuda.current_stream().wait_stream(side)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        step()
    return graph.replay


def attention_table(args) -> list[dict]:
    dtype = torch.bfloat16 if args.device == "cuda" else torch.float32
    compiled = torch.compile(evo_branches, dynamic=False)
    rows = []
    n = args.min_n
    while n <= args.max_n:
        batch = max(1, args.batch_tokens // n)
        for kernel in args.kernels:
            if (kernel == "cama" and n > args.dense_max_n) or (kernel.endswith("_compiled") and n not in args.compile_ns):
                continue
            if ("cama_flex" in kernel or (("_triton" in kernel or "_fused" in kernel) and not INTERPRETED)) and args.device != "cuda":
                continue  # FlexAttention has no backward on CPU; Triton runs there only interpreted
            forward_only = kernel.endswith("_fwd")
            graphed = kernel.endswith("_graph")  # replayed as one CUDA graph: what launch overhead costs
            if graphed and args.device != "cuda":
                continue
            variant = kernel.removesuffix("_fwd").removesuffix("_graph")
            if variant.startswith("cama_triton"):  # _nobias / _notablegrad: what the bias and its gradient cost
                cama_triton_ablation.update(bias=not variant.endswith("_nobias"), table_grad=not variant.endswith("_notablegrad"),
                                            fast_log2=not variant.endswith("_exactlog2"),
                                            bias_steps=CAMA_THRESHOLD_STEPS if variant.endswith("_threshold") else CAMA_BIAS_STEPS,
                                            table_layout="bucket_major" if variant.endswith("_bucketmajor") else "head_major",
                                            single_bucket=not variant.endswith("_nosingle"))
            fused_sparsectr = variant in ("sparsectr_fused", "sparsectr_fused_layer", "sparsectr_fused_layer_gated")
            base = "sparsectr_structural" if fused_sparsectr else variant.replace("_compiled", "").split("_flex")[0].split("_triton")[0]
            times, q, k, v, extra = make_inputs(base, batch, n, args.heads, args.head_dim, args.chunks, args.device, dtype,
                                                dense_mask=variant == base)
            # A fixed random dO, as flash-attention benchmarks do: a loss would add its own elementwise
            # passes over the output to every row (about 1 ms at B·n = 65,536 in the session-4 profiles).
            upstream = torch.randn_like(q)
            packed = None
            if fused_sparsectr:  # the projection's layout, as training feeds the node
                packed = torch.stack([x.detach().transpose(1, 2) for x in (q, k, v)], dim=2).requires_grad_()
            if variant.startswith("sparsectr_fused_layer"):
                layer_geometry = evo_geometry(times, *extra["layout"], 0, args.tail, args.window, 0, 0, fused=True)
                # as the model holds them: a float32 parameter, which autocast leaves alone (bf16 scales
                # added a cast each way, 2 + 4 us in session 25, that training never runs)
                extra["scales"] = extra["scales"].detach().float().requires_grad_()
            if variant == "sparsectr_fused_layer_gated":
                extra["gates"] = torch.rand(3, batch, args.heads, n, device=args.device, requires_grad=True)
            fused_cama = base == "cama" and variant != base
            if fused_cama:
                started = time.perf_counter()
                if variant == "cama_flex":
                    block_mask = cama_block_mask(*cama_flex_inputs(times, extra, args.device), 1)
                else:
                    meta = cama_triton_meta(times, extra, args.device)
                if args.device == "cuda":
                    torch.cuda.synchronize()
                mask_ms = (time.perf_counter() - started) * 1e3

            def step() -> None:
                if variant.startswith("cama_triton"):
                    out = cama_triton_attention(q, k, v, *extra["context"], meta, extra["bias_table"], 128, packed=False)
                elif variant == "cama_flex":
                    keys, values = torch.cat([extra["context"][0], k], 2), torch.cat([extra["context"][1], v], 2)
                    out = cama_flex_attention(q, keys, values, block_mask, times, extra["bias_table"], 1, 128)
                elif variant == "sparsectr_fused":
                    outs = fused_branches_packed(packed, *extra["profile"], times, extra["layout"], args.tail, args.window, extra["scales"])
                    out = outs[0] + outs[1] + outs[2]
                elif variant == "sparsectr_fused_layer":  # the node alone: its three outputs take dO, no summing pass
                    outs = evo_attend_packed(packed, *extra["profile"], None, None, layer_geometry, args.window, extra["scales"], 0)
                    if not forward_only:
                        for leaf in leaves:
                            leaf.grad = None
                        torch.autograd.backward(outs, [upstream] * 3)
                    return
                elif variant == "sparsectr_fused_layer_gated":  # the node as the model runs it: the branches' gated sum in the kernels
                    out = evo_attend_packed_gated(packed, *extra["profile"], None, None, layer_geometry, args.window, extra["scales"], 0,
                                                  extra["gates"])
                elif variant == "sparsectr_structural_triton":
                    outs = fused_branches(q, k, v, *extra["profile"], times, extra["layout"], args.tail, args.window, extra["scales"], False)
                    out = outs[0] + outs[1] + outs[2]
                elif variant == "sparsectr_structural_compiled":
                    chunk_id, chunk_start, chunk_end, chunk_valid = extra["layout"]
                    outs = compiled(q, k, v, *extra["profile"], k, v, times, chunk_id, chunk_start, chunk_end, chunk_valid,
                                    args.tail, args.window, extra["scales"], 0, 0)
                    out = outs[0] + outs[1] + outs[2]
                else:
                    out = run_once(base, times, q, k, v, extra, args.tail, args.window)
                if forward_only:
                    return
                for leaf in leaves:  # as a training step after zero_grad: gradients assigned, not accumulated
                    leaf.grad = None
                out.backward(upstream)

            leaves = [x for x in [*([q, k, v] if packed is None else [packed]), *extra.get("profile", []), *extra.get("context", []), extra.get("scales"),
                                  extra.get("bias_table"), extra.get("gates")] if x is not None]
            if args.device == "cuda":
                torch.cuda.reset_peak_memory_stats()
            try:
                if graphed:
                    step = capture_graph(step)
                seconds = timer(step, args.repeats, 3, args.device)
            except torch.OutOfMemoryError:
                rows.append({"kernel": kernel, "n": n, "batch": batch, "error": "out of memory"})
                torch.cuda.empty_cache()
                continue
            flops = analytic_flops(base, batch, n, args.heads, args.head_dim, args.chunks, args.tail, args.window) / (3 if forward_only else 1)
            rows.append({"kernel": kernel, "n": n, "batch": batch, "ms": seconds * 1e3, "tflops_per_s": flops / seconds / 1e12,
                         "peak_gib": torch.cuda.max_memory_allocated() / 2**30 if args.device == "cuda" else None,
                         **({"block_mask_ms": mask_ms} if fused_cama else {})})
            if args.profile:
                rows[-1]["profile"] = profile_step(step, args.device, top=32)
            print(f"  attention {kernel:<30} n={n:>6}: {seconds * 1e3:9.2f} ms", file=sys.stderr, flush=True)
            del times, q, k, v, extra, upstream, packed
            cama_triton_ablation.update(bias=True, table_grad=True, fast_log2=True, bias_steps=CAMA_BIAS_STEPS, table_layout="head_major",
                                        single_bucket=True)
        n *= 2
    flash = {(r["n"], r["kernel"].endswith("_fwd")): r["ms"] for r in rows if r["kernel"].startswith("full_causal_sdpa") and "ms" in r}
    for r in rows:
        reference = flash.get((r["n"], r["kernel"].endswith("_fwd")))
        if "ms" in r and reference:  # against flash in the same direction (forward only or forward + backward)
            r["x_flash"] = r["ms"] / reference
            r["flash_speedup"] = reference / r["ms"]
    return rows


# -- training step -------------------------------------------------------------------------------
def training_table(args) -> list[dict]:
    from recsys.data.loader import BatchBuilder, make_loader
    from recsys.data.store import PreparedDataset
    from recsys.train.config import TrainConfig
    from recsys.train.distributed import init_distributed
    from recsys.train.trainer import Trainer

    ctx = init_distributed(args.device)
    dataset = PreparedDataset(args.dataset)
    hist_end = dataset.sample_column("hist_end")
    train_ids = dataset.split_indices("train")
    rows = []
    for label in args.train_models:
        # e.g. sparsectr:triton+compile: train.compile on; +graphs: compile_mode reduce-overhead (CUDA graphs); +autotune:
        # max-autotune (CUDA graphs, and matmuls from Triton templates where they win, with elementwise epilogues fused)
        suffixes = {"+compile": "default", "+graphs": "reduce-overhead", "+autotune": "max-autotune"}
        suffix = next((ending for ending in suffixes if label.endswith(ending)), "")
        compile_mode, compile_blocks = suffixes.get(suffix, "default"), bool(suffix)
        model_name, _, attention = label.removesuffix(suffix).partition(":")
        for history in args.histories:
            tokens = args.train_tokens if model_name == "sparsectr" else args.train_tokens // 2
            batch_size = max(1, tokens // history)
            options = {"d_model": args.d_model, "heads": args.model_heads, "layers": args.layers} | ({"attention": attention} if attention else {})
            cfg = TrainConfig.model_validate({
                "data": {"dataset": str(args.dataset), "batch_size": batch_size, "eval_batch_size": batch_size, "max_history": history,
                         "num_chunks": 16, "workers": args.workers, "order": "shuffle"},
                "model": {"name": model_name, "options": options}, "sharding": {"enabled": False},
                "train": {"epochs": 1, "device": args.device, "bf16": True, "seed": 0, "compile": compile_blocks,
                          "compile_mode": compile_mode},
                "output_dir": tempfile.mkdtemp(prefix="gpu-suite-"),
            })
            trainer = Trainer(cfg, ctx)
            trainer.model.train()
            phase = trainer.phases[0]
            flops_per_sample = 3 * trainer.analytic_flops_per_sample
            # A resident batch of full-length histories: the model's rate without the loader.
            full = train_ids[hist_end[train_ids] >= history][:batch_size]
            resident_ids = full if len(full) == batch_size else train_ids[:batch_size]
            resident = BatchBuilder(dataset, history, 16).build(np.asarray(resident_ids)).to(ctx.device)
            if args.device == "cuda":
                torch.cuda.reset_peak_memory_stats()
            try:
                step_seconds = back_to_back(lambda: trainer._train_step(resident, phase), args.train_repeats, 3, args.device)
            except torch.OutOfMemoryError:
                rows.append({"model": label, "history": history, "batch": batch_size, "error": "out of memory"})
                torch.cuda.empty_cache()
                continue
            except Exception as exc:  # e.g. a +compile variant torch.compile cannot handle: keep the other rows
                rows.append({"model": label, "history": history, "batch": batch_size, "error": f"{type(exc).__name__}: {exc}"[:300]})
                print(f"  train {label} L={history}: {rows[-1]['error']}", file=sys.stderr, flush=True)
                continue
            peak = torch.cuda.max_memory_allocated() / 2**30 if args.device == "cuda" else None
            mean_length = float(resident.history_lengths.float().mean())
            loader = make_loader(trainer._batches("train", phase), args.workers, pin_memory=trainer._pin_memory)  # as the trainer's
            loader_rate = _loader_rate(loader, args.loader_batches, batch_size)
            loader = make_loader(trainer._batches("train", phase), args.workers, pin_memory=trainer._pin_memory)
            with_loader = _train_rate(trainer, loader, phase, args.loader_batches, batch_size, args.device)
            rate = batch_size / step_seconds
            if args.profile:  # where the resident step's time goes, as for the attention kernels
                print(f"  profile {label} L={history}:", file=sys.stderr, flush=True)
                step_profile = profile_step(lambda: trainer._train_step(resident, phase), args.device, top=25)
            if args.sync_sites and args.device == "cuda":
                print(f"  host-device syncs of one {label} L={history} step:", file=sys.stderr, flush=True)
                step_syncs = sync_sites(lambda: trainer._train_step(resident, phase))
            rows.append({
                **({"profile": step_profile} if args.profile else {}),
                **({"sync_sites": step_syncs} if args.sync_sites and args.device == "cuda" else {}),
                "model": label, "history": history, "batch": batch_size, "d_model": args.d_model, "heads": args.model_heads,
                "layers": args.layers, "mean_history_resident": mean_length,
                "samples_per_s_resident": rate, "samples_per_s_with_loader": with_loader, "samples_per_s_loader_alone": loader_rate,
                "peak_gib": peak, "model_flops_per_sample": flops_per_sample, "loader_workers": args.workers,
                "mfu_measured_ceiling": flops_per_sample * rate / args.ceiling, "mfu_nominal": flops_per_sample * rate / NOMINAL_H100_BF16,
                "loader_bound": loader_rate < rate,
            })
            print(f"  train {label} L={history}: {rate:,.0f} samples/s resident, {with_loader:,.0f} with loader, "
                  f"loader alone {loader_rate:,.0f}", file=sys.stderr, flush=True)
            del trainer, resident
            if args.device == "cuda":
                torch.cuda.empty_cache()
    return rows


def _loader_rate(loader, batches: int, batch_size: int) -> float:
    iterator = iter(loader)
    next(iterator)  # workers started
    started = time.perf_counter()
    count = 0
    for count, _ in enumerate(iterator, start=1):
        if count >= batches:
            break
    return count * batch_size / (time.perf_counter() - started)


def _train_rate(trainer, loader, phase, batches: int, batch_size: int, device: str) -> float:
    """Samples/s of steps fed by the loader, as the trainer's loop runs them: no host sync per step
    (the loss stays on the device), one at the end."""
    iterator = iter(loader)
    trainer._train_step(next(iterator), phase)
    if device == "cuda":
        torch.cuda.synchronize()
    started = time.perf_counter()
    count = 0
    for count, batch in enumerate(iterator, start=1):
        trainer._train_step(batch, phase)
        if count >= batches:
            break
    if device == "cuda":
        torch.cuda.synchronize()
    return count * batch_size / (time.perf_counter() - started)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--dataset", type=Path, required=True, help="prepared dataset with long histories (training step)")
    parser.add_argument("--out", type=Path, default=Path(os.environ.get("OUT", ROOT / "benchmarks" / "out")))
    parser.add_argument("--quick", action="store_true", help="tiny sizes: a smoke test of the suite itself")
    parser.add_argument("--parts", default="correctness,attention,training")
    parser.add_argument("--train-models", default="sparsectr,sparsectr:triton,grab:triton",
                        help="model[:attention][+compile|+graphs|+autotune] labels for the training part (blocks torch.compile'd by "
                             "train.compile with compile_mode default, reduce-overhead or max-autotune)")
    parser.add_argument("--skip-sparsectr-checks", action="store_true", help="correctness of the CamA kernels only (no compile)")
    parser.add_argument("--skip-cama-checks", action="store_true", help="correctness of the SparseCTR kernels only")
    parser.add_argument("--min-n", type=int, default=None, help="smallest n of the attention table")
    parser.add_argument("--max-n", type=int, default=None, help="largest n of the attention table")
    parser.add_argument("--histories", default=None, help="comma-separated history lengths of the training table (default 1024,4096)")
    parser.add_argument("--workers", type=int, default=None,
                        help="loader worker processes of the training part (default 12): the main process's host time competes with them")
    parser.add_argument("--sync-sites", action="store_true",
                        help="training part: list where one step makes the host wait for the GPU (torch.cuda.set_sync_debug_mode)")
    parser.add_argument("--profile", action="store_true", help="also profile each timed kernel: its top kernels by self time")
    parser.add_argument("--kernels", default="full_causal_sdpa,sparsectr_structural,sparsectr_structural_compiled,sparsectr_structural_triton,"
                                              "sparsectr_fused,sparsectr_fused_graph,sparsectr_fused_layer_graph,cama,cama_flex,cama_triton",
                        help="attention rows; a name ending in _graph replays that kernel's forward + backward as one CUDA graph")
    parser.add_argument("--d-model", type=int, default=None, help="training models' width (default 256; --quick 16)")
    parser.add_argument("--model-heads", type=int, default=None, help="training models' heads (default d_model / 64; --quick 2)")
    parser.add_argument("--layers", type=int, default=None, help="training models' blocks (default 4; --quick 1)")
    args = parser.parse_args()
    quick = args.quick
    args.min_n, args.max_n = (256, 512) if quick else (args.min_n or 1024, args.max_n or 32768)
    args.train_models = args.train_models.split(",")
    args.kernels = args.kernels.split(",")
    args.batch_tokens, args.heads, args.head_dim = (1024, 2, 16) if quick else (65536, 8, 64)
    args.chunks, args.tail, args.window, args.dense_max_n = 16, 2, 64, (512 if quick else 4096)
    args.compile_ns = {256, 512} if quick else {2048, 8192}  # each shape compiles once: keep the suite short
    args.repeats, args.train_repeats, args.loader_batches = (2, 2, 2) if quick else (10, 30, 30)
    args.histories = [64] if quick else [int(h) for h in (args.histories or "1024,4096").split(",")]
    args.train_tokens = 4096 if quick else 262144
    width = args.d_model or (16 if quick else 256)
    args.d_model, args.model_heads = width, args.model_heads or (2 if quick else max(1, width // 64))
    args.layers = args.layers or (1 if quick else 4)
    args.workers = 0 if quick else (12 if args.workers is None else args.workers)
    parts = args.parts.split(",")
    torch.manual_seed(0)
    report = {"device": torch.cuda.get_device_name() if args.device == "cuda" else "cpu", "torch": torch.__version__}
    args.ceiling = matmul_ceiling(args.device, 1024 if quick else 8192)
    report["matmul_ceiling_tflops"] = args.ceiling / 1e12
    print(f"{report['device']}, torch {torch.__version__}: bf16 matmul ceiling {args.ceiling / 1e12:.0f} TFLOP/s", flush=True)
    args.out.mkdir(parents=True, exist_ok=True)

    def save() -> None:  # after every part: a run cut short keeps what it measured
        (args.out / "gpu_suite.json").write_text(json.dumps(report, indent=2, default=str))

    if "correctness" in parts:
        report["correctness"] = LoggedResults(save)
        check_correctness(args.device, sparsectr=not args.skip_sparsectr_checks, cama=not args.skip_cama_checks, report=report["correctness"])
    if "attention" in parts:
        report["attention"] = attention_table(args)
        save()
        print(f"\n{'kernel':<30} {'n':>6} {'B':>4} {'ms':>9} {'x flash':>8} {'TFLOP/s':>8} {'% ceiling':>9} {'peak GiB':>9}")
        for r in report["attention"]:
            if "ms" not in r:
                print(f"{r['kernel']:<30} {r['n']:>6} {r['batch']:>4} {r['error']}")
                continue
            print(f"{r['kernel']:<30} {r['n']:>6} {r['batch']:>4} {r['ms']:>9.2f} {r.get('x_flash', float('nan')):>8.2f} {r['tflops_per_s']:>8.1f} "
                  f"{100 * r['tflops_per_s'] * 1e12 / args.ceiling:>8.1f}% {r['peak_gib'] or 0:>9.1f}")
    if "training" in parts:
        report["training"] = training_table(args)
        save()
        print(f"\nwidth {args.d_model}, {args.model_heads} heads, {args.layers} layers")
        print(f"{'model':<12} {'L':>5} {'B':>4} {'resident/s':>11} {'with loader/s':>14} {'loader/s':>9} {'MFU':>6} {'peak GiB':>9}")
        for r in report["training"]:
            if "error" in r:
                print(f"{r['model']:<12} {r['history']:>5} {r['batch']:>4} {r['error']}")
                continue
            print(f"{r['model']:<12} {r['history']:>5} {r['batch']:>4} {r['samples_per_s_resident']:>11,.0f} {r['samples_per_s_with_loader']:>14,.0f} "
                  f"{r['samples_per_s_loader_alone']:>9,.0f} {100 * r['mfu_measured_ceiling']:>5.1f}% {r['peak_gib'] or 0:>9.1f}")
    report["autotuned"] = autotuned_configs()
    save()
    print(f"wrote {args.out / 'gpu_suite.json'}")


class LoggedResults(dict):
    """Correctness checks by name: each is printed and the report saved as it lands, so a run its time
    limit cuts keeps every check that finished (H200 session 15: a correctness part killed at 110 s
    had printed and saved nothing)."""

    def __init__(self, save) -> None:
        super().__init__()
        self._save, self._start = save, time.perf_counter()

    def __setitem__(self, name: str, errors: dict) -> None:
        super().__setitem__(name, errors)
        print(f"correct {name:<32} forward max rel {errors['forward_max_rel']:.2e}, grads {errors['grad_max_rel']:.2e} "
              f"({time.perf_counter() - self._start:.0f} s)", flush=True)
        self._save()


def autotuned_configs() -> dict:
    """The tile each autotuned Triton kernel chose in this run (its last tuned shape): the tables'
    times belong to these."""
    from recsys.ops import cama_triton, evo_keyed_triton, evo_local_triton, evo_scores_backward

    def described(config) -> dict:
        return {**config.kwargs, "num_warps": config.num_warps, "num_stages": config.num_stages, "maxnreg": config.maxnreg}

    chosen = {}
    for module in (cama_triton, evo_keyed_triton, evo_local_triton, evo_scores_backward):
        for name, kernel in vars(module).items():
            best = getattr(kernel, "best_config", None)
            if isinstance(kernel, triton.runtime.Autotuner) and best is not None:
                chosen[name] = described(best)
                timings = getattr(kernel, "configs_timings", None)
                if timings:  # every candidate's time (ms) where it tuned more than one
                    chosen[name]["candidates"] = [{**described(config), "ms": list(ms) if isinstance(ms, (list, tuple)) else ms}
                                                  for config, ms in timings.items()]
    return chosen


if __name__ == "__main__":
    main()
