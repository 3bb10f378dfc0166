"""The per-pair pieces of SparseCTR's temporal bias inside the Triton kernels (`recsys.ops.evo_bias_triton`,
interpreted here) equal their PyTorch twins exactly: the time octave floor(log2(max(|t_i - t_j|, 1))) over the
whole int32 range, and a key's weekend value from its flag word. The kernels' parity tests see only the gaps
of their synthetic histories; these see every octave, the powers of two and their neighbours, where a float
conversion or a rounding would be one octave off. The interpreter runs the portable octave (`FAST_MATH` off);
the GPU's `bfind` form is checked by `benchmarks/gpu_suite.py --parts correctness`."""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from recsys.ops.evo_bias_triton import time_octaves, weekend_value
from recsys.ops.temporal import floor_log2

_BLOCK = 32


@triton.jit
def _octave_tile_kernel(TI, TJ, OCTAVES, BLOCK: tl.constexpr):
    rows = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
    cols = tl.arange(0, BLOCK)
    octaves = time_octaves(tl.load(TI + rows), tl.load(TJ + cols), False)
    tl.store(OCTAVES + rows[:, None] * BLOCK + cols[None, :], octaves)


@triton.jit
def _weekend_kernel(FLAGS, VALUES, BLOCK: tl.constexpr):
    offs = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
    tl.store(VALUES + offs, weekend_value(tl.load(FLAGS + offs)))


def _edge_times() -> torch.Tensor:
    """Times whose pairwise differences hit 0, ±1, every ±2^k and ±(2^k ± 1), and the int32 extremes."""
    powers = [2**k for k in range(31)]
    values = {0, 1, 2**31 - 1, 2**31 - 2}
    for p in powers:
        values |= {p - 1, p, p + 1, 2**31 - 1 - p}
    return torch.tensor(sorted(values), dtype=torch.int64)


def _octaves(t_i: torch.Tensor, t_j: torch.Tensor) -> torch.Tensor:
    rows = t_i.numel()
    out = torch.empty(rows, _BLOCK, dtype=torch.float32)
    _octave_tile_kernel[(rows // _BLOCK,)](t_i.to(torch.int32), t_j.to(torch.int32), out, BLOCK=_BLOCK)
    return out


def test_time_octaves_equal_floor_log2_over_the_int32_range():
    generator = torch.Generator().manual_seed(torch.seed() % 2**31)
    edges = _edge_times()
    edges = torch.cat([edges, edges[: -edges.numel() % _BLOCK]])  # whole tiles
    random = torch.randint(0, 2**31 - 1, (4 * _BLOCK,), generator=generator, dtype=torch.int64)
    checked = 0
    for t_i in (edges, random, torch.cat([edges[:_BLOCK], random[:_BLOCK]])):
        for start in range(0, edges.numel(), _BLOCK):
            for t_j in (edges[start:start + _BLOCK], random[start % random.numel():][:_BLOCK]):
                expected = floor_log2(t_i[:, None] - t_j[None, :]).to(torch.float32)
                got = _octaves(t_i, t_j)
                torch.testing.assert_close(got, expected, rtol=0, atol=0)
                checked += got.numel()
    # every octave 0..30 appears among the checked pairs
    assert checked > 10_000
    assert set(floor_log2(edges[:, None] - edges[None, :]).unique().tolist()) == set(range(31))


def test_weekend_value_reads_bit_two_of_the_flag_word():
    generator = torch.Generator().manual_seed(torch.seed() % 2**31)
    flags = torch.randint(0, 2**16, (4 * _BLOCK,), generator=generator, dtype=torch.int32)
    values = torch.empty(flags.numel(), dtype=torch.float32)
    _weekend_kernel[(flags.numel() // _BLOCK,)](flags, values, BLOCK=_BLOCK)
    torch.testing.assert_close(values, ((flags >> 1) & 1).to(torch.float32), rtol=0, atol=0)
    assert 0 < values.sum() < values.numel()
