"""Time every tile configuration of SparseCTR's (or, with --family cama, CamA's) fused kernels on the
GPU, each kernel on its own, in the attention table's shape (B·n = 65,536, 8 heads of 64, bf16,
forward + backward).

Triton's autotuner picks one configuration per kernel from one short timing, and that timing
includes its hooks (`restore_value` clones a full-size dQ around every keyed dQ launch): across
processes it picked different tiles for the same kernel (session 11: local dQ 64x32 in one run,
the spilling 128x64, 25 % slower, in the next). This sweep runs config index i of every kernel
for i = 0, 1, ... and reads each kernel's device time from the profiler over many steps, so the
tiles the kernels keep can be chosen from medians rather than from one autotuning pass.

    python3 benchmarks/tile_sweep.py [--family cama] [--cases sparsectr:8192] [--steps 20] [--variants]   # on the GPU machine

`--grid FILE` (JSON: kernel name -> `[BLOCK_M, BLOCK_N, warps, stages, register cap]` lists, null
for a size the kernel does not take or for no cap) times those tiles after each named kernel's own.
`--family sparsectr_stored` sweeps the kernels of the stored-score backward (the default), `--family
sparsectr` those of the recomputing one (`RECSYS_EVO_BACKWARD=recompute`, set by the sweep).
Cases: `sparsectr:N` (the node's three outputs summed), `sparsectr_gated:N` (the gated sum inside the
kernels, as the model runs them), `cama:N`.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections import defaultdict
from pathlib import Path

import torch
import triton

sys.path.insert(0, str(Path(__file__).resolve().parent))

from ncu_kernels import attention_steps  # noqa: E402

from recsys.ops import cama_triton, evo_keyed_triton, evo_local_triton, evo_scores_backward  # noqa: E402
from recsys.ops.evo_branches_triton import BACKWARD_ENV  # noqa: E402

FAMILIES = {
    "sparsectr": ((evo_local_triton, ("_local_forward_kernel", "_local_dq_kernel", "_local_dkdv_kernel")),
                  (evo_keyed_triton, ("_keyed_dkdv_kernel",))),
    # the stored-score backward (the node's default; set by this family): the dK/dV kernels store dS
    "sparsectr_stored": ((evo_local_triton, ("_local_forward_kernel", "_local_dq_kernel", "_local_dkdv_stored_kernel")),
                         (evo_keyed_triton, ("_keyed_dkdv_kernel",)),
                         (evo_scores_backward, ("_row_terms_kernel", "_dq_from_scores_kernel", "_window_scale_sums_kernel"))),
    "cama": ((cama_triton, ("_cama_forward_kernel", "_cama_dq_kernel", "_cama_dkdv_kernel")),),
}
# Tiles beyond a kernel's own list that --variants also times (kernels not yet swept on the GPU).
EXTRA_TILES = {"_window_scale_sums_kernel": [triton.Config({"BLOCK_M": m, "BLOCK_N": 64}, num_warps=w, num_stages=1)
                                             for m, w in ((4, 1), (16, 1), (32, 1), (16, 2))]}
KERNELS: dict = {}  # the swept family's autotuned kernels by name, and their tile lists
ALL_CONFIGS: dict = {}


def with_variants(configs: list) -> list:
    """The kernel's tiles, then its first tile with other pipeline depths and warp counts (and, where
    it has a register cap, without it)."""
    first = configs[0]
    variants = [triton.Config(dict(first.kwargs), num_warps=warps, num_stages=stages)
                for warps, stages in ((first.num_warps, 1), (first.num_warps, 2), (first.num_warps, 4), (8, first.num_stages),
                                      (2, first.num_stages))
                if (warps, stages) != (first.num_warps, first.num_stages) or first.maxnreg]
    return configs + variants


def grid_configs(path: Path) -> dict:
    """The tiles of a `--grid` file, as Triton configurations by kernel name."""
    grid = json.loads(path.read_text())
    unknown = sorted(set(grid) - set(KERNELS))
    if unknown:
        raise SystemExit(f"{path}: no kernel {unknown} in this family (it has {sorted(KERNELS)})")
    return {name: [triton.Config({} if m is None else {"BLOCK_M": m, "BLOCK_N": n}, num_warps=w, num_stages=st, maxnreg=cap)
                   for m, n, w, st, cap in tiles] for name, tiles in grid.items()}


def describe(config) -> str:
    cap = f"r{config.maxnreg}" if config.maxnreg else ""
    tile = f"{config.kwargs['BLOCK_M']}x{config.kwargs['BLOCK_N']}" if "BLOCK_M" in config.kwargs else "-"
    return f"{tile}w{config.num_warps}s{config.num_stages}{cap}"


def kernel_times(step, steps: int) -> dict:
    """Device microseconds per step of each Triton kernel (summed over its launches in a step)."""
    for _ in range(3):
        step()
    torch.cuda.synchronize()
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CUDA]) as profiler:
        for _ in range(steps):
            step()
        torch.cuda.synchronize()
    totals = defaultdict(float)
    for event in profiler.key_averages():
        for name, kernel in KERNELS.items():  # the profiler names a launch by its jit function (one may back two autotuners)
            if event.key.startswith(kernel.fn.__name__):
                totals[name] += event.device_time_total / steps
    return dict(totals)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--family", choices=sorted(FAMILIES), default="sparsectr", help="which fused kernels to sweep")
    parser.add_argument("--cases", default=None, help="default sparsectr:8192 (also sparsectr_gated:N), or cama:4096 for --family cama")
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--variants", action="store_true", help="also the first tile at 1, 2, 4 stages and 2, 8 warps")
    parser.add_argument("--grid", type=Path, default=None, help="JSON of further tiles per kernel (see above)")
    parser.add_argument("--out", type=Path, default=Path(os.environ.get("OUT", "benchmarks/out")))
    args = parser.parse_args()
    report = {"device": torch.cuda.get_device_name(), "torch": torch.__version__, "cases": {}}
    KERNELS.update({name: getattr(module, name) for module, names in FAMILIES[args.family] for name in names})
    ALL_CONFIGS.update({name: list(kernel.configs) for name, kernel in KERNELS.items()})
    args.cases = args.cases or {"sparsectr": "sparsectr:8192", "sparsectr_stored": "sparsectr_gated:8192", "cama": "cama:4096"}[args.family]
    if args.family.startswith("sparsectr"):  # the recomputing family's dQ kernel runs only with the recomputing backward
        os.environ[BACKWARD_ENV] = "stored" if args.family == "sparsectr_stored" else "recompute"
    if args.variants:
        ALL_CONFIGS.update({name: with_variants(configs) + EXTRA_TILES.get(name, []) for name, configs in ALL_CONFIGS.items()})
    if args.grid:
        ALL_CONFIGS.update({name: ALL_CONFIGS[name] + tiles for name, tiles in grid_configs(args.grid).items()})
    for case in args.cases.split(","):
        step = attention_steps([case])[0]
        rows = defaultdict(dict)
        for index in range(max(len(c) for c in ALL_CONFIGS.values())):
            for name, kernel in KERNELS.items():
                kernel.configs, kernel.cache = [ALL_CONFIGS[name][min(index, len(ALL_CONFIGS[name]) - 1)]], {}
            try:
                measured = kernel_times(step, args.steps)
            except Exception as error:  # a variant that does not compile or fit: the others still count
                print(f"  config set {index} failed: {type(error).__name__}: {str(error)[:200]}", flush=True)
                continue
            for name, micros in measured.items():
                rows[name][describe(KERNELS[name].configs[0])] = micros
            # as it goes, so that a run cut short still says what it measured
            print(f"  set {index}: " + "  ".join(f"{name} {describe(KERNELS[name].configs[0])} {us:.1f}" for name, us in measured.items()),
                  flush=True)
        report["cases"][case] = rows
        print(f"\n{case}: device us per forward + backward (a kernel's launches in one step summed)")
        for name, by_config in rows.items():
            best = min(by_config, key=by_config.get)
            print(f"  {name:<24} " + "  ".join(f"{c} {us:7.1f}{'*' if c == best else ' '}" for c, us in by_config.items()))
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "tile_sweep.json").write_text(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
