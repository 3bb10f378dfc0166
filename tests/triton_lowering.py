"""Lowers the fused attention kernels to Triton IR for sm_90 without a GPU (the compiler's front end,
which type-checks kernel bodies). Run as a script in a process without TRITON_INTERPRET, where
`triton.jit` builds compilable functions (under the interpreter it builds Python ones):
`python -m tests.triton_lowering` prints one JSON object, case -> "ok" or the compiler's error.
`tests/test_triton_lowering.py` runs it."""

from __future__ import annotations

import json
import os
import sys
from typing import Dict, Iterable

if os.environ.get("TRITON_INTERPRET") == "1":
    sys.exit("run without TRITON_INTERPRET: the interpreter's kernels are not compilable")

import triton  # noqa: E402
import triton.language as tl  # noqa: E402
from triton._C.libtriton import ir  # noqa: E402
from triton.backends.compiler import GPUTarget  # noqa: E402
from triton.backends.nvidia.compiler import CUDABackend  # noqa: E402
from triton.compiler import ASTSource  # noqa: E402

from recsys.ops import cama_triton, evo_keyed_triton, evo_local_triton  # noqa: E402
from recsys.ops.temporal import LOG_BUCKET_PER_OCTAVE  # noqa: E402

_INT32_POINTERS = {"T", "FLAGS", "TQ", "QFLAGS", "TK", "KEND", "KFLAGS", "CHUNK_ID", "TAIL_SLOT", "SEG", "POS", "START", "END",
                   "HEAD_GROUP", "THRESH"}
_FLOAT32_POINTERS = {"SCALES", "LSE", "DELTA", "DKP", "DVP", "DSCALES", "DKC", "DVC", "DKT", "DVT", "TABLE", "DTABLE"}
_FLOAT_SCALARS = {"sm_scale"}


def _jit_function(kernel) -> triton.runtime.jit.JITFunction:
    while not isinstance(kernel, triton.runtime.jit.JITFunction):  # through @triton.autotune
        kernel = kernel.fn
    return kernel


def _lower(kernel, constexprs: Dict[str, object], int_scalars: Iterable[str]) -> str:
    """The kernel's TTIR for sm_90: bf16 tensors, int32 / float32 metadata as the launchers pass them."""
    jit = _jit_function(kernel)
    scalars = set(int_scalars)
    signature = {}
    for name in jit.arg_names:
        if name in constexprs:
            signature[name] = "constexpr"
        elif name in scalars:
            signature[name] = "i32"
        elif name in _FLOAT_SCALARS:
            signature[name] = "fp32"
        elif name in _INT32_POINTERS:
            signature[name] = "*i32"
        elif name in _FLOAT32_POINTERS:
            signature[name] = "*fp32"
        else:
            signature[name] = "*bf16"
    source = ASTSource(fn=jit, signature=signature, constexprs={(jit.arg_names.index(k),): v for k, v in constexprs.items()})
    backend = CUDABackend(GPUTarget("cuda", 90, 32))
    options = backend.parse_options({})
    context = ir.context()
    ir.load_dialects(context)
    backend.load_dialects(context)
    module = source.make_ir(GPUTarget("cuda", 90, 32), options, backend.get_codegen_implementation(options), backend.get_module_map(),
                            context)
    return str(module)


_STRIDES = ("QB", "QH", "QT", "OB", "OH", "OT", "GB", "GH", "GT")
_LOCAL = dict(H=4, D=64, WINDOW=64, WEEKEND_BOTH=False, PRECISION="tf32", FAST_MATH=True, BLOCK_M=64, BLOCK_N=64)
_KEYED = dict(H=4, D=64, WEEKEND_BOTH=False, PRECISION="tf32", FAST_MATH=True, BLOCK_M=64, BLOCK_N=32)
_CAMA = dict(H=4, D=64, TABLE_STRIDE=1, HEAD_STRIDE=41, NUM_BUCKETS=40, BUCKET_SCALE=LOG_BUCKET_PER_OCTAVE, PRECISION="tf32", BIAS=True,
             TABLE_GRAD=True, FAST_LOG2=True, STEPS=0, SINGLE=True, BLOCK_M=64, BLOCK_N=64)

_CASES = {
    "local_forward": (evo_local_triton._local_forward_kernel, dict(_LOCAL, CANDIDATES=True), ("L", "ROWS", *_STRIDES)),
    "local_dq": (evo_local_triton._local_dq_kernel, dict(_LOCAL, CANDIDATES=True), ("L", "ROWS", *_STRIDES)),
    "local_dkdv": (evo_local_triton._local_dkdv_kernel, dict(_LOCAL, CANDIDATES=True, CHUNK_GRADS=True, TAIL_GRADS=True, BLOCK_M=32),
                   ("L", "ROWS", "P", "NT", *_STRIDES)),
    "local_history_dkdv": (evo_local_triton._local_dkdv_kernel, dict(_LOCAL, CANDIDATES=False, CHUNK_GRADS=False, TAIL_GRADS=False,
                                                                     BLOCK_M=32), ("L", "ROWS", "P", "NT", *_STRIDES)),
    "keyed_forward": (evo_keyed_triton._keyed_forward_kernel, _KEYED, ("T", "L", "NK", *_STRIDES)),
    "keyed_dq": (evo_keyed_triton._keyed_dq_kernel, dict(_KEYED, ACCUMULATE=True), ("T", "L", "NK", *_STRIDES)),
    "keyed_dkdv": (evo_keyed_triton._keyed_dkdv_kernel, dict(_KEYED, BLOCK_M=32), ("T", "L", "NK", "QUERIES", *_STRIDES)),
    "cama_forward": (cama_triton._cama_forward_kernel, dict(_CAMA, PACKED=True), ("N",)),
    "cama_dq": (cama_triton._cama_dq_kernel, dict(_CAMA, PACKED=False), ("N",)),
    "cama_dkdv": (cama_triton._cama_dkdv_kernel, dict(_CAMA, PACKED=True, TABLE_BINS=64, BLOCK_M=32), ("N",)),
}


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


_CASES["known_bad_loop_carried_type"] = (_rebinds_underscore, dict(BLOCK=16), ())


def lower_all() -> Dict[str, str]:
    results = {}
    for case, (kernel, constexprs, scalars) in _CASES.items():
        try:
            module = _lower(kernel, constexprs, scalars)
            results[case] = "ok" if "tt.func public" in module else f"no kernel function in:\n{module[:1000]}"
        except Exception as error:  # the compiler's message is the result
            results[case] = f"{type(error).__name__}: {error}"
    return results


if __name__ == "__main__":
    print(json.dumps(lower_all()))
