"""Diagnose the fused SparseCTR local kernel on the GPU: its error against the structural
`local_branch` per tile configuration and with the SFU sine on or off, and where the error sits.

    python3 benchmarks/probe_local_triton.py [--quick]          # on the GPU machine
"""

from __future__ import annotations

import sys
from pathlib import Path

import torch
import triton
import triton.language as tl

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import recsys.ops.evo_local_triton as fused  # noqa: E402
from recsys.ops.chunking import personalized_chunks  # noqa: E402
from recsys.ops.evo_attention import evo_geometry, local_branch  # noqa: E402
from recsys.ops.temporal import alibi_scales, temporal_components  # noqa: E402


def inputs(batch: int, length: int, heads: int, dim: int, window: int, device: str):
    generator = torch.Generator().manual_seed(0)
    gaps = torch.randint(1, 120, (batch, length), generator=generator)
    gaps[:, torch.randint(0, length, (max(1, length // 64),), generator=generator)] += 40_000
    times = 1_704_067_200 + gaps.cumsum(1)
    real = torch.ones(batch, length, dtype=torch.bool)
    layout = personalized_chunks(times, torch.full((batch,), length), 8)
    leaves = [torch.randn(batch, heads, length, dim, generator=generator) for _ in range(3)]
    leaves += [torch.randn(batch, heads, 1, dim, generator=generator) for _ in range(2)]
    leaves.append(alibi_scales(heads))
    geometry = evo_geometry(times.to(device), *[x.to(device) for x in layout], 0, 2, window, 0, 0)
    return times.to(device), real.to(device), [x.to(device).requires_grad_() for x in leaves], geometry


def error_report(got: torch.Tensor, expected: torch.Tensor) -> str:
    error = (got - expected).abs().amax(dim=(0, 1, 3))
    worst = int(error.argmax())
    bad = (error > 1e-4 * expected.abs().max()).nonzero().flatten().tolist()
    return f"max rel {float(error.max() / expected.abs().max()):.2e}, worst position {worst}, bad positions {len(bad)}: {bad[:12]}"


def main(quick: bool) -> None:
    window = 32
    times, real, leaves, geometry = inputs(2, 256, 4, 16, window, "cpu" if fused.INTERPRETED else "cuda")
    q, k, v, kp, vp, scales = leaves
    expected = local_branch(q, k, v, kp, vp, geometry, window, scales)
    launch = fused._launch
    all_tiles = list(fused._local_forward_kernel.configs)[: 1 if quick else None]
    for fast in (False,) if fused.INTERPRETED else (True,) if quick else (True, False):
        fused._launch = lambda q, w, r, fast=fast: {**launch(q, w, r), "FAST_MATH": fast}
        for config in all_tiles:
            for kernel in (fused._local_forward_kernel, fused._local_dkdv_kernel, fused._local_dq_kernel):
                kernel.configs, kernel.cache = [config], {}
            got = fused.local_history_triton(q, k, v, kp, vp, times, real, window, scales, 0, 0)
            print(f"FAST_MATH={fast} {config}: {error_report(got, expected)}", flush=True)
    fused._launch = launch
    # the bias terms alone: zero q, k so the scores are the bias
    zeros = [torch.zeros_like(q), torch.zeros_like(k)]
    expected = local_branch(*zeros, v, kp, vp, geometry, window, scales)
    for scale_row in range(3):
        only = torch.zeros_like(scales)
        only[scale_row] = 1.0
        expected = local_branch(*zeros, v, kp, vp, geometry, window, only)
        got = fused.local_history_triton(*zeros, v, kp, vp, times, real, window, only, 0, 0)
        print(f"bias term {('time', 'hour', 'weekend')[scale_row]} alone: {error_report(got, expected)}", flush=True)




@triton.jit
def _floor_log2_kernel(X, Y, N, BLOCK: tl.constexpr):
    offs = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
    delta = tl.load(X + offs, mask=offs < N, other=1)
    magnitude = tl.maximum(tl.abs(delta), 1)
    exponent = ((magnitude.to(tl.float32).to(tl.int32, bitcast=True) >> 23) & 0xFF) - 127
    exponent -= ((magnitude >> exponent) == 0).to(tl.int32)
    tl.store(Y + offs, exponent, mask=offs < N)


def device_checks() -> None:
    """Is the reference the same on both devices, and is the kernel's integer log2 right in isolation?"""
    window = 32
    results = {}
    for device in ("cpu", "cuda"):
        times, real, leaves, geometry = inputs(2, 256, 4, 16, window, device)
        q, k, v, kp, vp, scales = leaves
        only = torch.zeros_like(scales)
        only[0] = 1.0
        results[device] = local_branch(torch.zeros_like(q), torch.zeros_like(k), v, kp, vp, geometry, window, only).detach().cpu()
    print(f"reference cpu vs cuda, time term alone: {error_report(results['cuda'], results['cpu'])}", flush=True)
    delta = (times.unsqueeze(2) - times.unsqueeze(1)).abs().clamp(1, 2**31 - 1).flatten().int().contiguous()
    got = torch.empty_like(delta)
    _floor_log2_kernel[(triton.cdiv(delta.numel(), 1024),)](delta, got, delta.numel(), 1024)
    expected = (torch.frexp(delta.double())[1] - 1).int()  # exact; CUDA's float64 log2 is not at powers of two
    wrong = (got != expected).nonzero().flatten()
    print(f"integer floor(log2) kernel: {len(wrong)} of {delta.numel()} wrong; first: "
          f"{[(int(delta[i]), int(got[i]), int(expected[i])) for i in wrong[:5]]}", flush=True)
    components = temporal_components(times.cpu(), times.cpu(), 0, 0)[:, 0]
    components_cuda = temporal_components(times, times, 0, 0)[:, 0].cpu()
    print(f"temporal_components time term cpu vs cuda: {int((components != components_cuda).sum())} differ", flush=True)


if __name__ == "__main__":
    if not fused.INTERPRETED:
        device_checks()
    main(quick="--quick" in sys.argv)
