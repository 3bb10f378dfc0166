"""Run the attention kernels of the GPU targets once each under Nsight Compute, after warm-up and
autotuning, so that `ncu --profile-from-start off` reads only the timed launches:

    ncu --clock-control none --profile-from-start off -k regex:'_local|_keyed|_cama|flash' \\
        --section SpeedOfLight --section Occupancy --section LaunchStats -o $OUT/attn \\
        python3 benchmarks/ncu_kernels.py --cases sparsectr:8192,cama:4096,flash:4096,flash:8192
    python3 benchmarks/ncu_kernels.py --report $OUT/attn.ncu-rep     # a compact per-kernel table
    python3 benchmarks/ncu_kernels.py --report $OUT/attn.ncu-rep --pipes   # each pipe's share of its peak
                                     # (collected with --section ComputeWorkloadAnalysis)

Cases are the attention table's (`gpu_suite.attention_table`): B·n = 65,536, 8 heads of 64, bf16,
forward and backward with a fixed random dO. Hardware counters only; times come from `gpu_suite`.
"""

from __future__ import annotations

import argparse
import csv
import io
import subprocess
import sys
from collections import defaultdict
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

# Metrics of the compact table: (label, ncu metric name); the stall ratios are warps stalled per issued instruction.
METRICS = [
    ("us", "gpu__time_duration.sum"),
    ("regs", "launch__registers_per_thread"),
    ("smem_kb", "launch__shared_mem_per_block_dynamic"),
    ("grid", "launch__grid_size"),
    ("occ_th%", "sm__maximum_warps_per_active_cycle_pct"),
    ("occ%", "sm__warps_active.avg.pct_of_peak_sustained_active"),
    ("sm%", "sm__throughput.avg.pct_of_peak_sustained_elapsed"),
    ("dram%", "gpu__dram_throughput.avg.pct_of_peak_sustained_elapsed"),
    ("tensor%", "sm__pipe_tensor_op_hmma_cycles_active.avg.pct_of_peak_sustained_active"),
    ("issue%", "sm__inst_issued.avg.pct_of_peak_sustained_active"),
]
STALLS = ["long_scoreboard", "barrier", "mio_throttle", "short_scoreboard", "math_pipe_throttle", "wait", "not_selected", "lg_throttle",
          "dispatch_stall", "no_instruction", "branch_resolving"]
STALL_METRICS = [f"smsp__average_warps_issue_stalled_{s}_per_issue_active.ratio" for s in STALLS]


def ncu_metric_list() -> str:
    return ",".join([m for _, m in METRICS] + STALL_METRICS)


def attention_steps(cases: list[str]) -> list:
    """One forward + backward callable per case ("sparsectr:N", "sparsectr_gated:N": the node with the
    branches' gated sum in its kernels, as the model runs it; "cama:N", "flash:N")."""
    import torch

    import gpu_suite
    from attention import make_inputs, run_once
    from recsys.ops.cama_triton import cama_triton_attention

    heads, dim, tokens = 8, 64, 65536
    steps = []
    for case in cases:
        kind, n = case.split(":")
        n = int(n)
        batch = tokens // n
        base = {"sparsectr": "sparsectr_structural", "sparsectr_gated": "sparsectr_structural", "cama": "cama", "flash": "full_causal_sdpa"}[kind]
        times, q, k, v, extra = make_inputs(base, batch, n, heads, dim, 16, "cuda", torch.bfloat16, dense_mask=False)
        upstream = torch.randn_like(q)
        if kind.startswith("sparsectr"):  # the projection's layout, as training feeds the node
            packed = torch.stack([x.detach().transpose(1, 2) for x in (q, k, v)], dim=2).requires_grad_()
        if kind == "sparsectr":
            def step(packed=packed, times=times, extra=extra, upstream=upstream):
                outs = gpu_suite.fused_branches_packed(packed, *extra["profile"], times, extra["layout"], 2, 64, extra["scales"])
                (outs[0] + outs[1] + outs[2]).backward(upstream)
        elif kind == "sparsectr_gated":
            geometry = gpu_suite.evo_geometry(times, *extra["layout"], 0, 2, 64, 0, 0, fused=True)
            gates = torch.rand(3, batch, heads, n, device="cuda", requires_grad=True)

            def step(packed=packed, extra=extra, geometry=geometry, gates=gates, upstream=upstream):
                out = gpu_suite.evo_attend_packed_gated(packed, *extra["profile"], None, None, geometry, 64, extra["scales"], 0, gates)
                out.backward(upstream.reshape(out.shape))
        elif kind == "cama":
            meta = gpu_suite.cama_triton_meta(times, extra, "cuda")

            def step(q=q, k=k, v=v, extra=extra, meta=meta, upstream=upstream):
                cama_triton_attention(q, k, v, *extra["context"], meta, extra["bias_table"], 128, packed=False).backward(upstream)
        else:
            def step(q=q, k=k, v=v, times=times, extra=extra, upstream=upstream):
                run_once("full_causal_sdpa", times, q, k, v, extra, 2, 64).backward(upstream)
        steps.append(step)
    return steps


def run_cases(cases: list[str]) -> None:
    import torch

    steps = attention_steps(cases)
    for step in steps:  # autotuning and compilation happen here, outside the profiled range
        for _ in range(3):
            step()
    torch.cuda.synchronize()
    torch.cuda.cudart().cudaProfilerStart()
    for step in steps:
        step()
    torch.cuda.synchronize()
    torch.cuda.cudart().cudaProfilerStop()


def summarize(report: Path) -> None:
    text = subprocess.run(["ncu", "-i", str(report), "--csv", "--page", "raw", "--print-units", "base"], check=True, capture_output=True,
                          text=True).stdout
    rows = list(csv.reader(io.StringIO(text)))
    header, body = rows[0], [r for r in rows[2:] if r]  # the second row holds units
    column = {name: i for i, name in enumerate(header)}
    table = defaultdict(list)
    for row in body:
        name = row[column["Kernel Name"]].split("(")[0][:34]
        values = [row[column[m]].replace(",", "") if m in column else "-" for _, m in METRICS]  # ncu groups thousands
        stalls = {s: float(row[column[m]].replace(",", "")) for s, m in zip(STALLS, STALL_METRICS) if m in column and row[column[m]]}
        top = sorted(stalls.items(), key=lambda kv: -kv[1])[:4]
        table[name].append((values, " ".join(f"{s}={v:.1f}" for s, v in top)))
    print(f"{'kernel':<34} " + " ".join(f"{label:>8}" for label, _ in METRICS) + "  top stalls (warps per issue)")
    for name, entries in table.items():
        for values, stalls in entries:
            shown = [f"{float(v) / 1e3:8.1f}" if label == "us" else f"{float(v) / 1024:8.1f}" if label == "smem_kb" else
                     f"{float(v):8.1f}" if v not in ("-", "") else f"{'-':>8}" for (label, _), v in zip(METRICS, values)]
            print(f"{name:<34} " + " ".join(shown) + "  " + stalls)


def summarize_pipes(report: Path) -> None:
    """Per kernel, every collected pipe metric (`sm__inst_executed_pipe_*` and `sm__pipe_*`, % of peak):
    whether a pipe other than the issue slots binds, e.g. the XU pipe that runs MUFU.EX2 and the
    int-to-float conversions at an eighth of the FP32 rate."""
    text = subprocess.run(["ncu", "-i", str(report), "--csv", "--page", "raw", "--print-units", "base"], check=True, capture_output=True,
                          text=True).stdout
    rows = list(csv.reader(io.StringIO(text)))
    header, body = rows[0], [r for r in rows[2:] if r]
    pipes = [i for i, name in enumerate(header) if "pipe" in name and "pct_of_peak" in name]
    if not pipes:
        print(f"{report}: no pipe metrics collected (profile with --section ComputeWorkloadAnalysis)")
        return
    name_column = header.index("Kernel Name")
    for row in body:
        values = sorted(((header[i].replace(".avg.pct_of_peak_sustained", "~"), float(row[i].replace(",", "")))
                         for i in pipes if row[i] not in ("", "n/a")), key=lambda kv: -kv[1])
        print(row[name_column].split("(")[0][:40], " ".join(f"{name}={value:.1f}" for name, value in values if value >= 0.5))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--cases", default="sparsectr:8192,cama:4096,flash:4096,flash:8192")
    parser.add_argument("--report", type=Path, help="print the compact table of an .ncu-rep instead of running cases")
    parser.add_argument("--pipes", action="store_true", help="with --report: each pipe's utilisation per kernel")
    parser.add_argument("--metrics", action="store_true", help="print the --metrics list for ncu and exit")
    args = parser.parse_args()
    if args.metrics:
        print(ncu_metric_list())
    elif args.report and args.pipes:
        summarize_pipes(args.report)
    elif args.report:
        summarize(args.report)
    else:
        run_cases(args.cases.split(","))


if __name__ == "__main__":
    main()
