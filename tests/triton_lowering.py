"""Lowers every fused attention kernel to Triton IR for sm_90 without a GPU, through the signature
tables of `benchmarks/kernel_resources.py` (one source of truth for how the kernels are specialised
at launch). Run as a script, in a process without TRITON_INTERPRET (under the interpreter
`triton.jit` builds Python functions, not compilable ones): `python -m tests.triton_lowering` prints
one JSON object, kernel -> "ok" or the compiler's error. `tests/test_triton_lowering.py` runs it."""

from __future__ import annotations

import json
import os
import sys
from typing import Dict

if os.environ.get("TRITON_INTERPRET") == "1":
    sys.exit("run without TRITON_INTERPRET: the interpreter's kernels are not compilable")

import triton  # noqa: E402
import triton.language as tl  # noqa: E402
from triton.compiler import ASTSource  # noqa: E402

from benchmarks.kernel_resources import KERNELS, kernel_source, lower_to_ttir  # noqa: E402


@triton.jit
def _rebinds_underscore(X, BLOCK: tl.constexpr):
    """The bug the check exists for: `_` bound before a loop and re-bound to a tile inside it."""
    offs = tl.arange(0, BLOCK)
    a, _ = tl.program_id(0), tl.program_id(1).to(tl.int64)
    acc = tl.zeros([BLOCK], dtype=tl.float32)
    for i in range(0, 4):
        x, _ = tl.load(X + offs), tl.load(X + offs)
        acc += x
    tl.store(X + offs, acc + a)


def _outcome(source: ASTSource) -> str:
    try:
        module = lower_to_ttir(source)
    except Exception as error:  # the compiler's message is the result
        return f"{type(error).__name__}: {error}"
    return "ok" if "tt.func public" in module else f"no kernel function in:\n{module[:1000]}"


def lower_all() -> Dict[str, str]:
    """Each kernel with its first autotune candidate (the body is the same for every tile size)."""
    results = {kernel: _outcome(kernel_source(kernel, entry[0].configs[0], constants)) for kernel, (entry, constants) in KERNELS.items()}
    bad = ASTSource(fn=_rebinds_underscore, signature={"X": "*fp32", "BLOCK": "constexpr"}, constexprs={(1,): 16})
    results["known bad: loop-carried type change"] = _outcome(bad)
    return results


if __name__ == "__main__":
    print(json.dumps(lower_all()))
