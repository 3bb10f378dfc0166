"""Every fused attention kernel lowers to Triton IR for the H100 (sm_90) with the arguments training
launches it with.

The other kernel tests run under Triton's interpreter, which executes the kernels as Python and so
accepts code the compiler rejects (session 10 lost a GPU run to one: a `_` unpacked before a loop
and re-bound inside it is a loop-carried variable whose type changes, fine in Python, a
CompilationError on the GPU). Lowering to TTIR needs no GPU: it runs the compiler's front end, the
stage that type-checks kernel bodies (`tests/triton_lowering.py`, in a process without the
interpreter, through `benchmarks/kernel_resources.py`'s signature tables, which this also keeps in
step with the kernels). Register allocation and PTX stay for that benchmark and the GPU suite.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
# The kernels of benchmarks/kernel_resources.py's tables (CamA's three, SparseCTR's local and keyed, the stored-score backward's,
# and the key lists').
KERNELS = ("forward", "dkdv", "dq", "local fwd", "local dkdv", "local dq", "keyed dkdv", "local dkdv stored", "keyed dkdv stored", "row terms",
           "dq from scores", "window scale sums", "chunk sums", "chunk finish")


@pytest.fixture(scope="module")
def lowered() -> dict:
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    done = subprocess.run([sys.executable, "-m", "tests.triton_lowering"], cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads(done.stdout.strip().splitlines()[-1])


@pytest.mark.parametrize("case", KERNELS)
def test_kernel_lowers_for_sm90(lowered, case):
    assert lowered[case] == "ok", lowered[case]


def test_lowering_rejects_a_loop_carried_type_change(lowered):
    """The check itself: the bug it exists for does not lower."""
    outcome = lowered["known bad: loop-carried type change"]
    assert "Loop-carried variable" in outcome, outcome


def test_every_kernel_of_the_tables_is_checked(lowered):
    assert set(lowered) == set(KERNELS) | {"known bad: loop-carried type change"}
