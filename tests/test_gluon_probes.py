"""The Gluon probes of the local window's kernels (`benchmarks/gluon_local_forward.py`,
`benchmarks/gluon_local_dkdv.py`) still compile for the H100 (sm_90) with this environment's Triton.

Gluon is experimental and its API moves between Triton releases (3.6 on the GPU image, 3.9 here:
the cp.async copy and the block barrier were renamed), and it has no CPU interpreter, so this is
the check that runs without a GPU: a full compile (ptxas included) of one variant of each, whose
SASS must hold what the probes exist to measure, warpgroup MMAs fed by cp.async copies. Their parity
with the library's Triton kernels is checked on the GPU by the probes themselves (RESULTS.md, session 21).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
_COMPILE = """
import json, sys
sys.path.insert(0, "benchmarks")
import gluon_local_dkdv as backward
import gluon_local_forward as forward
reports = {"forward": forward.check_offline(32, True, True, None),
           "dkdv": forward.compile_offline(backward._gluon_local_dkdv_kernel,
                                           {**{n: "*bf16" for n in ("Q", "K", "V", "DO", "DK", "DV")},
                                            **{n: "*fp32" for n in ("CLOCK", "SCALES", "LSE", "DELTA")}, "T": "*i32", "FLAGS": "*i32"},
                                           {"H": 8, "D": 64, "WINDOW": 64, "WEEKEND_BOTH": False, "BLOCK_N": 64, "BLOCK_M": 32,
                                            "FOLD": False, "num_warps": 4}, 168)}
print(json.dumps({name: {"usage": r["usage"], "hgmma": r["sass"].count("HGMMA"), "ldgsts": r["sass"].count("LDGSTS"),
                         "cp_async_waits": r["sass"].count("DEPBAR.LE SB0")} for name, r in reports.items()}))
"""


@pytest.fixture(scope="module")
def compiled() -> dict:
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    done = subprocess.run([sys.executable, "-c", _COMPILE], cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads(done.stdout.strip().splitlines()[-1])


@pytest.mark.parametrize("kernel", ["forward", "dkdv"])
def test_gluon_probe_compiles_to_wgmma_fed_by_cp_async(compiled, kernel):
    report = compiled[kernel]
    assert report["hgmma"] > 0, report
    assert report["ldgsts"] > 0, report
    assert report["cp_async_waits"] > 0, report
