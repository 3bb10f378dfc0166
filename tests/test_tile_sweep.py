"""benchmarks/tile_sweep.py's `--grid` files: read into Triton configurations, and a file naming a
kernel outside the swept family is refused by name (the sweep itself runs on the GPU only)."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

BENCHMARKS = Path(__file__).resolve().parents[1] / "benchmarks"
sys.path.insert(0, str(BENCHMARKS))

import tile_sweep  # noqa: E402


def _family_kernels(family: str) -> dict:
    return {name: getattr(module, name) for module, names in tile_sweep.FAMILIES[family] for name in names}


def test_a_grid_file_becomes_configurations(tmp_path, monkeypatch):
    monkeypatch.setattr(tile_sweep, "KERNELS", _family_kernels("sparsectr_stored"))
    path = tmp_path / "grid.json"
    path.write_text(json.dumps({"_local_forward_kernel": [[32, 16, 2, 1, 168], [64, 32, 4, 3, None]],
                                "_dq_from_scores_kernel": [[None, None, 8, 2, None]]}))
    grid = tile_sweep.grid_configs(path)
    capped, uncapped = grid["_local_forward_kernel"]
    assert capped.kwargs == {"BLOCK_M": 32, "BLOCK_N": 16} and (capped.num_warps, capped.num_stages, capped.maxnreg) == (2, 1, 168)
    assert tile_sweep.describe(capped) == "32x16w2s1r168" and tile_sweep.describe(uncapped) == "64x32w4s3"
    dq, = grid["_dq_from_scores_kernel"]
    assert dq.kwargs == {} and (dq.num_warps, dq.num_stages, dq.maxnreg) == (8, 2, None)
    assert tile_sweep.describe(dq) == "-w8s2"


def test_a_grid_naming_another_familys_kernel_is_refused(tmp_path, monkeypatch):
    monkeypatch.setattr(tile_sweep, "KERNELS", _family_kernels("sparsectr"))
    path = tmp_path / "grid.json"
    path.write_text(json.dumps({"_dq_from_scores_kernel": [[None, None, 4, 1, None]]}))
    with pytest.raises(SystemExit, match="_dq_from_scores_kernel"):
        tile_sweep.grid_configs(path)


@pytest.mark.parametrize("name", ["h200_s26_grid.json", "h200_s26_grid2.json"])
def test_the_recorded_grids_name_kernels_of_the_stored_family(name, monkeypatch):
    monkeypatch.setattr(tile_sweep, "KERNELS", _family_kernels("sparsectr_stored"))
    grid = tile_sweep.grid_configs(BENCHMARKS / "results" / name)
    assert grid and all(grid.values())
