"""Offline resource report of the fused Triton kernels for the H100 (sm_90), no GPU needed.

Compiles every autotune candidate of CamA's forward, dK/dV and dQ kernels and of SparseCTR's fused
local branch and of its keyed (global / transition) branches with Triton's own ptxas and
reads registers per thread, spill stack and shared memory from the cubin (`cuobjdump -res-usage`),
plus an instruction mix from the SASS: tensor-core ops (HGMMA), SFU ops (MUFU.EX2 / MUFU.LG2) and
local-memory traffic (LDL / STL, i.e. spills). A kernel at the 255-register cap with spills runs
its inner loop through local memory; that, not the matmuls, is what to fix first.

    .venv/bin/python benchmarks/kernel_resources.py [--out DIR]     # prints a table, writes JSON
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import NamedTuple

os.environ["TRITON_INTERPRET"] = "0"  # compile for real even where tests set the interpreter

import triton  # noqa: E402
from triton.backends.compiler import GPUTarget  # noqa: E402
from triton.compiler import ASTSource  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from recsys.ops import cama_triton, evo_key_lists_triton, evo_keyed_triton, evo_local_triton, evo_scores_backward  # noqa: E402

TARGET = GPUTarget("cuda", 90, 32)
TOOLS = Path(triton.__file__).parent / "backends" / "nvidia" / "bin"
POINTERS_AND_SCALARS = {
    "forward": (cama_triton._cama_forward_kernel,
                "Q K V T SEG POS FLAGS START HEAD_GROUP TABLE THRESH O LSE sm_scale N",
                "*bf16 *bf16 *bf16 *i32 *i32 *i32 *i32 *i32 *i32 *fp32 *i32 *bf16 *fp32 fp32 i32", {}),
    "dkdv": (cama_triton._cama_dkdv_kernel,
             "Q K V DO LSE DELTA T SEG POS FLAGS END HEAD_GROUP TABLE THRESH DK DV DTABLE sm_scale N",
             "*bf16 *bf16 *bf16 *bf16 *fp32 *fp32 *i32 *i32 *i32 *i32 *i32 *i32 *fp32 *i32 *bf16 *bf16 *fp32 fp32 i32", {"TABLE_BINS": 256}),
    "dq": (cama_triton._cama_dq_kernel,
           "Q K V DO LSE DELTA T SEG POS FLAGS START HEAD_GROUP TABLE THRESH DQ sm_scale N",
           "*bf16 *bf16 *bf16 *bf16 *fp32 *fp32 *i32 *i32 *i32 *i32 *i32 *i32 *fp32 *i32 *bf16 fp32 i32", {}),
}
# The (batch, head, row) strides of a strided operand: q/k/v (QB QH QT), outputs (OB OH OT), dO (GB GH GT).
_STRIDES = " i32 i32 i32"
# SparseCTR's global and transition branches (keys: chunk summaries or chunk tails), both lists inside
# the local forward and dQ kernels as the fused node runs them: a list's keys, values, times, ends, flags, clock and output
# (forward), or keys .. clock, dO, output, log-sum-exp and row term (dQ).
_KEY_LIST = " *bf16 *bf16 *i32 *i32 *i32 *fp32 *bf16 *fp32"
_KEY_LIST_GRAD = " *bf16 *bf16 *i32 *i32 *i32 *fp32 *bf16 *bf16 *fp32 *fp32"
# SparseCTR's fused local branch (window 64, 4 heads); dK/dV with the keyed branches' key gradients added; all
# compiled as the model runs them, with the branches' gated sum (GATED).
LOCAL = {
    "local fwd": (evo_local_triton._local_forward_kernel,
                  "Q K V KP VP T FLAGS CLOCK SCALES O LSE K0 V0 TK0 KEND0 KFLAGS0 KCLOCK0 O0 LSE0 K1 V1 TK1 KEND1 KFLAGS1 KCLOCK1 O1 LSE1"
                  " GATES FUSED sm_scale L ROWS NK0 NK1 QB QH QT OB OH OT",
                  "*bf16 *bf16 *bf16 *bf16 *bf16 *i32 *i32 *fp32 *fp32 *bf16 *fp32" + _KEY_LIST * 2 + " *fp32 *bf16 fp32 i32 i32 i32 i32"
                  + _STRIDES * 2, {"KEYED": True, "KEY_BLOCK": 16, "GATED": True}),
    "local dkdv": (evo_local_triton._local_dkdv_kernel,
                   "Q K V DO LSE DELTA GATE T FLAGS CLOCK SCALES DK DV CHUNK_ID DKC DVC P TAIL_SLOT DKT DVT NT DS DS_ROWS sm_scale L ROWS"
                   " QB QH QT GB GH GT",
                   "*bf16 *bf16 *bf16 *bf16 *fp32 *fp32 *fp32 *i32 *i32 *fp32 *fp32 *bf16 *bf16 *i32 *fp32 *fp32 i32 *i32 *fp32 *fp32 i32 *bf16"
                   " i32 fp32 i32 i32" + _STRIDES * 2,
                   {"CHUNK_GRADS": True, "TAIL_GRADS": True, "GATED": True, "STORE_SCORES": False, "SCORE_BLOCK": 64}),
    "local dq": (evo_local_triton._local_dq_kernel,
                 "Q K V KP VP DO O LSE DELTA T FLAGS CLOCK SCALES DQ DKP DVP DSCALES K0 V0 TK0 KEND0 KFLAGS0 KCLOCK0 DO0 O0 LSE0 DELTA0 K1 V1 TK1"
                 " KEND1 KFLAGS1 KCLOCK1 DO1 O1 LSE1 DELTA1 GATES DGATES sm_scale L ROWS NK0 NK1 FIRST_ROW QB QH QT OB OH OT GB GH GT GB0 GH0 GT0"
                 " GB1 GH1 GT1",
                 "*bf16 *bf16 *bf16 *bf16 *bf16 *bf16 *bf16 *fp32 *fp32 *i32 *i32 *fp32 *fp32 *bf16 *fp32 *fp32 *fp32"
                 + _KEY_LIST_GRAD * 2 + " *fp32 *fp32 fp32 i32 i32 i32 i32 i32" + _STRIDES * 5, {"KEYED": True, "KEY_BLOCK": 16, "GATED": True}),
}
# SparseCTR's global and transition branches (keys: chunk summaries or chunk tails).
KEYED = {
    "keyed dkdv": (evo_keyed_triton._keyed_dkdv_kernel,
                   "Q TQ QFLAGS QCLOCK SCALES K0 V0 DO0 LSE0 DELTA0 GATE0 TK0 KEND0 KFLAGS0 KCLOCK0 DK0 DV0 DKO0 DVO0 DS0 K1 V1 DO1 LSE1 DELTA1"
                   " GATE1 TK1 KEND1 KFLAGS1 KCLOCK1 DK1 DV1 DKO1 DVO1 DS1 DSCALES SIZES0 ARRIVED sm_scale T L NK0 NK1 QUERIES DS_ROWS SPLIT_STRIDE"
                   " QB QH QT GB0 GH0 GT0 GB1 GH1 GT1",
                   "*bf16 *i32 *i32 *fp32 *fp32" + " *bf16 *bf16 *bf16 *fp32 *fp32 *fp32 *i32 *i32 *i32 *fp32 *fp32 *fp32 *fp32 *fp32 *bf16" * 2
                   + " *fp32 *fp32 *fp32 fp32 i32 i32 i32 i32 i32 i32 i32" + _STRIDES * 3, {"GATED": True, "STORE_SCORES": False, "MEANS0": True}),
}
# The stored-score backward (`recsys.ops.evo_scores_backward`): the dK/dV kernels as it runs them
# (they store dS; the keyed one sums its pairs' share of the scales' gradient), its row-term pass, its dQ
# pass and the window's scale sums.
STORED = {
    "local dkdv stored": ((evo_local_triton._local_dkdv_stored_kernel,) + LOCAL["local dkdv"][1:3] + ({**LOCAL["local dkdv"][3], "STORE_SCORES": True},)),
    "keyed dkdv stored": (KEYED["keyed dkdv"][:3] + ({**KEYED["keyed dkdv"][3], "STORE_SCORES": True},)),
    "row terms": (evo_scores_backward._row_terms_kernel,
                  "Q KP VP DO O LSE DELTA DO0 O0 DELTA0 DO1 O1 DELTA1 GATES DGATES DKP DVP DSP sm_scale ROWS QB QH QT OB OH OT GB GH GT"
                  " GB0 GH0 GT0 GB1 GH1 GT1",
                  "*bf16 *bf16 *bf16 *bf16 *bf16 *fp32 *fp32" + " *bf16 *bf16 *fp32" * 2 + " *fp32 *fp32 *fp32 *fp32 *fp32 fp32 i32"
                  + _STRIDES * 5,
                  {"GATED": True, "SHARED_DO": True}),
    "dq from scores": (evo_scores_backward._dq_from_scores_kernel,
                       "DS DSP K KP DSK0 K0 KEND0 KFLAGS0 DSK1 K1 KEND1 KFLAGS1 DQ sm_scale ROWS SCORE_ROWS NK0 NK1 QB QH QT",
                       "*bf16 *fp32 *bf16 *bf16" + " *bf16 *bf16 *i32 *i32" * 2 + " *bf16 fp32 i32 i32 i32 i32" + _STRIDES,
                       {"SCORE_BLOCK": 64, "KEY_BLOCK": 16}),
    "window scale sums": (evo_scores_backward._window_scale_sums_kernel, "DS T FLAGS CLOCK PARTIAL SLOTS ROWS SCORE_ROWS",
                          "*bf16 *i32 *i32 *fp32 *fp32 i32 i32 i32", {"SCORE_BLOCK": 64, "BAND": 64}),
}
class Launched(NamedTuple):
    """A kernel launched without the autotuner, with its one launch configuration (the tables' shape)."""

    fn: object
    configs: list


# SparseCTR's key lists (`recsys.ops.evo_key_lists_triton`): the chunk sums over the k and v rows, then
# the means, sizes and tails.
_KEY_LIST_SUMS = evo_key_lists_triton._SUM_TILE
KEY_LISTS = {
    "chunk sums": (Launched(evo_key_lists_triton._chunk_sum_kernel,
                            [triton.Config({"BLOCK_L": _KEY_LIST_SUMS["BLOCK_L"], "BLOCK_C": _KEY_LIST_SUMS["BLOCK_C"]},
                                           num_warps=_KEY_LIST_SUMS["num_warps"], num_stages=_KEY_LIST_SUMS["num_stages"])]),
                   "KV CHUNK_ID PARTS COUNTS L STRIDE_B STRIDE_T", "*bf16 *i32 *fp32 *fp32 i32 i32 i32",
                   {"WIDTH": 1024, "P": 16, "P_PAD": 16, "SLICE": evo_key_lists_triton._SLICE_ROWS, "PRECISION": "tf32"}),
    "chunk finish": (Launched(evo_key_lists_triton._chunk_finish_kernel, [triton.Config({}, num_warps=4)]),
                     "PARTS COUNTS KV TAIL_POSITIONS K_CHUNKS V_CHUNKS SIZES K_TAILS V_TAILS SLICES STRIDE_B STRIDE_T NT",
                     "*fp32 *fp32 *bf16 *i64 *bf16 *bf16 *fp32 *bf16 *bf16 i32 i32 i32 i32", {"H": 8, "D": 64, "P": 16, "HD_PAD": 512}),
}

SASS_OPS = ("HGMMA", "MUFU.EX2", "MUFU.LG2", "LDL", "STL", "LDS", "BAR", "LDGSTS")


# What each kernel family is compiled with (head dim 64; `main` takes another with --head-dim).
CAMA_CONSTANTS = dict(H=4, D=64, TABLE_STRIDE=1, HEAD_STRIDE=129, NUM_BUCKETS=128, BUCKET_SCALE=cama_triton.LOG_BUCKET_PER_OCTAVE,
                      PRECISION="tf32", PACKED=False, FAST_LOG2=True, STEPS=cama_triton.ABLATION["bias_steps"],
                      SINGLE=cama_triton.ABLATION["single_bucket"], BIAS=True, TABLE_GRAD=True)
LOCAL_CONSTANTS = dict(H=4, D=64, WINDOW=64, CANDIDATES=True, WEEKEND_BOTH=False, PRECISION="tf32", FAST_MATH=True)
KEYED_CONSTANTS = dict(H=4, D=64, WEEKEND_BOTH=False, PRECISION="tf32", FAST_MATH=True)
STORED_CONSTANTS = {"local dkdv stored": LOCAL_CONSTANTS, "keyed dkdv stored": KEYED_CONSTANTS, "row terms": dict(H=4, D=64),
                    "dq from scores": dict(H=4, D=64, WINDOW=64, PRECISION="tf32"),
                    "window scale sums": dict(H=4, WINDOW=64, WEEKEND_BOTH=False, FAST_MATH=True)}
KERNELS = {**{name: (entry, CAMA_CONSTANTS) for name, entry in POINTERS_AND_SCALARS.items()},
           **{name: (entry, LOCAL_CONSTANTS) for name, entry in LOCAL.items()},
           **{name: (entry, KEYED_CONSTANTS) for name, entry in KEYED.items()},
           **{name: (entry, STORED_CONSTANTS[name]) for name, entry in STORED.items()},
           **{name: (entry, {}) for name, entry in KEY_LISTS.items()}}


# Lengths and strides the launch specialises as multiples of 16 (see `kernel_source`).
_DIVISIBLE = {"N", "L", "T", "NK", "NK0", "NK1", "ROWS", "SCORE_ROWS", "QB", "QH", "QT", "OB", "OH", "OT", "GB", "GH", "GT", "GB0", "GH0", "GT0", "GB1", "GH1",
              "GT1"}


def kernel_source(kernel: str, config: triton.Config, constants: dict) -> ASTSource:
    """A kernel of the tables above, specialised as the JIT does at launch."""
    (autotuned, names, types, extra), _ = KERNELS[kernel]
    fn = autotuned.fn
    constexprs = {**constants, **extra, **config.kwargs}
    signature = dict(zip(names.split(), types.split())) | {name: "constexpr" for name in constexprs}
    missing = set(fn.arg_names) - set(signature)
    if missing:
        raise ValueError(f"{kernel}: the table lacks arguments {sorted(missing)} of {fn.__name__}")
    # As the JIT specialises at launch: pointers (16-byte aligned allocations), N (a multiple of 16
    # at the benchmarked lengths) and strides divisible by 16. Without these hints the compiler cannot
    # vectorise or pipeline the tile loads (no cp.async) and the report is far more pessimistic than the GPU.
    hinted = {(fn.arg_names.index(name),): [["tt.divisibility", 16]] for name, kind in zip(names.split(), types.split())
              if kind.startswith("*") or name in _DIVISIBLE}
    return ASTSource(fn=fn, signature=signature, constexprs={(fn.arg_names.index(c),): v for c, v in constexprs.items()}, attrs=hinted)


def lower_to_ttir(source: ASTSource) -> str:
    """The compiler's front end only (Triton IR): it type-checks the kernel body, needs neither a GPU
    nor ptxas, and takes a second where a full compile takes many (`tests/test_triton_lowering.py`)."""
    from triton._C.libtriton import ir
    from triton.backends.nvidia.compiler import CUDABackend

    backend = CUDABackend(TARGET)
    options = backend.parse_options({})
    context = ir.context()
    ir.load_dialects(context)
    backend.load_dialects(context)
    return str(source.make_ir(TARGET, options, backend.get_codegen_implementation(options), backend.get_module_map(), context))


def compile_report(kernel: str, config: triton.Config, constants: dict) -> dict:
    source = kernel_source(kernel, config, constants)
    options = {"num_warps": config.num_warps, "num_stages": config.num_stages, **({"maxnreg": config.maxnreg} if config.maxnreg else {})}
    compiled = triton.compile(source, target=TARGET, options=options)
    with tempfile.NamedTemporaryFile(suffix=".cubin", delete=False) as handle:
        handle.write(compiled.asm["cubin"])
    usage = subprocess.run([TOOLS / "cuobjdump", "-res-usage", handle.name], capture_output=True, text=True, check=True).stdout
    sass = subprocess.run([TOOLS / "cuobjdump", "-sass", handle.name], capture_output=True, text=True, check=True).stdout
    os.unlink(handle.name)

    def field(name: str) -> int:
        found = re.search(rf"{name}:(\d+)", usage)
        return int(found.group(1)) if found else 0

    return {"kernel": kernel, **config.kwargs, "warps": config.num_warps, "stages": config.num_stages,
            "registers": field("REG"), "spill_stack_bytes": field("STACK"), "shared_bytes": compiled.metadata.shared,
            **{op: len(re.findall(rf"\b{re.escape(op)}\b", sass)) for op in SASS_OPS}}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "out")
    parser.add_argument("--head-dim", type=int, default=64)
    parser.add_argument("--only", default="", help="compile only the kernels whose name starts with this (e.g. 'keyed')")
    args = parser.parse_args()
    base = dict(CAMA_CONSTANTS, D=args.head_dim)
    variants = {"bias": dict(BIAS=True, TABLE_GRAD=True), "no bias (ablation)": dict(BIAS=False, TABLE_GRAD=False)}
    rows = []
    for kernel, (autotuned, *_rest) in POINTERS_AND_SCALARS.items() if "cama".startswith(args.only) or not args.only else ():
        for config in autotuned.configs:
            for variant, flags in variants.items():
                rows.append({"variant": variant, **compile_report(kernel, config, base | flags)})
    local = dict(LOCAL_CONSTANTS, D=args.head_dim)
    for kernel, (autotuned, *_rest) in LOCAL.items() if "local".startswith(args.only) or not args.only else ():
        for config in autotuned.configs:
            rows.append({"variant": "composite bias", **compile_report(kernel, config, local)})
    keyed = dict(KEYED_CONSTANTS, D=args.head_dim)
    for kernel, (autotuned, *_rest) in KEYED.items() if "keyed".startswith(args.only) or not args.only else ():
        for config in autotuned.configs:
            rows.append({"variant": "composite bias", **compile_report(kernel, config, keyed)})
    for kernel, (autotuned, *_rest) in STORED.items() if "stored".startswith(args.only) or not args.only else ():
        for config in autotuned.configs:
            constants = dict(STORED_CONSTANTS[kernel], **({"D": args.head_dim} if "D" in STORED_CONSTANTS[kernel] else {}))
            rows.append({"variant": "stored scores", **compile_report(kernel, config, constants)})
    for kernel, (launched, *_rest) in KEY_LISTS.items() if "chunk".startswith(args.only) or not args.only else ():
        rows.append({"variant": "key lists", **compile_report(kernel, launched.configs[0], {})})
    print(f"{'kernel':<10} {'variant':<19} {'BM':>4} {'BN':>4} {'warps':>5} {'regs':>5} {'spill B':>8} {'smem KiB':>9} "
          + " ".join(f"{op:>9}" for op in SASS_OPS))
    for r in rows:
        print(f"{r['kernel']:<10} {r['variant']:<19} {r.get('BLOCK_M', '-'):>4} {r.get('BLOCK_N', '-'):>4} {r['warps']:>5} {r['registers']:>5} "
              f"{r['spill_stack_bytes']:>8} {r['shared_bytes'] / 1024:>9.1f} " + " ".join(f"{r[op]:>9}" for op in SASS_OPS))
    args.out.mkdir(parents=True, exist_ok=True)
    report = {"target": "sm_90", "triton": triton.__version__, "head_dim": args.head_dim, "rows": rows}
    (args.out / "kernel_resources.json").write_text(json.dumps(report, indent=2))
    print(f"wrote {args.out / 'kernel_resources.json'}")


if __name__ == "__main__":
    main()
