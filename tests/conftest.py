from __future__ import annotations

import os
from pathlib import Path

# Before anything imports triton: with no GPU here, the fused kernels run in Triton's interpreter.
os.environ.setdefault("TRITON_INTERPRET", "1")

import pytest

from recsys.data.prepare import prepare_dataset
from recsys.data.spec import load_spec
from recsys.data.synth import SynthConfig, write_synthetic

ROOT = Path(__file__).resolve().parents[1]
SPECS = ROOT / "feature_specs"


@pytest.fixture(scope="session")
def synthetic_spec():
    return load_spec(SPECS / "synthetic.yaml")


@pytest.fixture(scope="session")
def synthetic_log(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("synthetic_log")
    write_synthetic(SynthConfig(users=120, events_per_user=150, seed=7), out)
    return out


@pytest.fixture(scope="session")
def prepared(tmp_path_factory, synthetic_log, synthetic_spec) -> Path:
    out = tmp_path_factory.mktemp("prepared")
    prepare_dataset(synthetic_spec, synthetic_log, out)
    return out
