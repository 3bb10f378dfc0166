"""Probe: SparseCTR's dQ as a matmul over stored score gradients, the one component of the
"dS from the dK/dV kernels" redesign whose speed is not known (benchmarks/RESULTS.md, session 16).

Today the node's dQ kernel (514 µs of the 1.23 ms node at n = 8,192 on the H200) recomputes every
score, its bias and dP to get dS, work the dK/dV kernels also do. If the dK/dV kernels stored dS
(bf16) instead, dQ would be a block-banded matmul with no bias, softmax or exp in it:

    dQ[block m] = dS_local[m] @ K[blocks m-1, m] + dS_profile[m] ⊗ k_profile + dS_keyed[m] @ K_list

with dS_local `[BH, n, 2w]` (each 64-query block against the previous and its own key block; keys
outside the window hold zeros), dS_profile `[BH, n]` (the profile token's column), dS_keyed
`[BH, n, 64]` (the global branch's 16 summary keys and the transition branch's 32 tail keys, padded
to 64) and K_list `[BH, 64, D]` their keys. This file times that kernel (`dq_from_ds`) and the
cost of writing the stored dS (`store_ds`: the dK/dV kernels' added traffic, as one fill of the
same bytes), next to SDPA causal flash attention in the same run. It is a measurement, not a
library kernel: the dK/dV kernels do not store dS, and the scale and gate gradients the dQ kernel
also sums are not part of it.

    python3 benchmarks/probe_dq_from_ds.py --out $OUT/dq           # on the GPU machine
    TRITON_INTERPRET=1 .venv/bin/python benchmarks/probe_dq_from_ds.py --check-only   # here
"""

from __future__ import annotations

import argparse
import json
import os
from pathlib import Path

import torch
import torch.nn.functional as F
import triton
import triton.language as tl

from gpu_suite import timer  # median seconds per call, CUDA events

WINDOW = 64
KEYED = 64  # 16 summaries + 32 tails, padded


@triton.jit
def _dq_from_ds_kernel(DS, DSP, DSK, K, KP, KL, DQ, N, D: tl.constexpr, W: tl.constexpr, KW: tl.constexpr):
    block = tl.program_id(0)
    bh = tl.program_id(1)
    rows = block * W + tl.arange(0, W)
    cols = tl.arange(0, 2 * W)
    offs_d = tl.arange(0, D)
    ds = tl.load(DS + (bh * N + rows[:, None]) * (2 * W) + cols[None, :])
    key_rows = block * W - W + cols  # the previous block's keys, then the block's own
    k = tl.load(K + (bh * N + key_rows[:, None]) * D + offs_d[None, :], mask=(key_rows >= 0)[:, None], other=0.0)
    acc = tl.dot(ds, k)
    dsk = tl.load(DSK + (bh * N + rows[:, None]) * KW + tl.arange(0, KW)[None, :])
    kl = tl.load(KL + (bh * KW + tl.arange(0, KW)[:, None]) * D + offs_d[None, :])
    acc = tl.dot(dsk, kl, acc)
    dsp = tl.load(DSP + bh * N + rows).to(tl.float32)
    kp = tl.load(KP + bh * D + offs_d).to(tl.float32)
    acc += dsp[:, None] * kp[None, :]
    tl.store(DQ + (bh * N + rows[:, None]) * D + offs_d[None, :], acc.to(DQ.dtype.element_ty))


def dq_from_ds(ds_local, ds_profile, ds_keyed, k, k_profile, k_list) -> torch.Tensor:
    bh, n, d = k.shape
    dq = torch.empty_like(k)
    _dq_from_ds_kernel[(n // WINDOW, bh)](ds_local, ds_profile, ds_keyed, k, k_profile, k_list, dq, n, d, WINDOW, KEYED,
                                          num_warps=4, num_stages=2)
    return dq


def dq_from_ds_reference(ds_local, ds_profile, ds_keyed, k, k_profile, k_list) -> torch.Tensor:
    bh, n, d = k.shape
    blocks = n // WINDOW
    padded = torch.cat([k.new_zeros(bh, WINDOW, d), k], 1).float()
    windows = padded.unfold(1, 2 * WINDOW, WINDOW).transpose(-1, -2)  # [BH, blocks, 2W, D]
    local = ds_local.float().view(bh, blocks, WINDOW, 2 * WINDOW) @ windows
    keyed = ds_keyed.float() @ k_list.float()
    return local.reshape(bh, n, d) + keyed + ds_profile.float().unsqueeze(-1) * k_profile.float().unsqueeze(1)


def inputs(bh: int, n: int, d: int, device: str, dtype: torch.dtype, generator: torch.Generator):
    ds_local = torch.randn(bh, n // WINDOW, WINDOW, 2 * WINDOW, generator=generator)
    i = torch.arange(WINDOW).view(-1, 1) + WINDOW
    j = torch.arange(2 * WINDOW).view(1, -1)
    ds_local = (ds_local * ((j <= i) & (j > i - WINDOW))).reshape(bh, n, 2 * WINDOW)  # the window's pairs only
    ds_keyed = torch.randn(bh, n, KEYED, generator=generator)
    ds_keyed[..., 48:] = 0
    ds_profile = torch.randn(bh, n, generator=generator)
    k = torch.randn(bh, n, d, generator=generator)
    k_profile = torch.randn(bh, d, generator=generator)
    k_list = torch.randn(bh, KEYED, d, generator=generator)
    return [x.to(device, dtype) for x in (ds_local, ds_profile, ds_keyed, k, k_profile, k_list)]


def check(device: str) -> dict:
    generator = torch.Generator().manual_seed(3)
    dtype = torch.bfloat16 if device == "cuda" else torch.float32
    args = inputs(4, 256, 64, device, dtype, generator)
    got, want = dq_from_ds(*args).float(), dq_from_ds_reference(*args)
    error = ((got - want).abs().max() / want.abs().max()).item()
    print(f"  check dq_from_ds: max rel err {error:.2e} ({dtype})", flush=True)
    return {"max_rel_err": error, "dtype": str(dtype)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, default=Path(os.environ.get("OUT", ".")) / "dq")
    parser.add_argument("--check-only", action="store_true")
    args = parser.parse_args()
    device = "cuda" if torch.cuda.is_available() else "cpu"
    report = {"check": check(device)}
    if args.check_only:
        return
    batch, heads, n, d = 8, 8, 8192, 64
    generator = torch.Generator().manual_seed(0)
    tensors = inputs(batch * heads, n, d, device, torch.bfloat16, generator)
    ds_bytes = sum(t.numel() * t.element_size() for t in (tensors[0], tensors[1], tensors[2]))
    moved = ds_bytes + sum(t.numel() * t.element_size() for t in tensors[3:]) + tensors[3].numel() * 2
    q, kk, v = (torch.randn(batch, heads, n, d, device=device, dtype=torch.bfloat16, requires_grad=True) for _ in range(3))
    upstream = torch.randn_like(q)

    def flash():
        q.grad = kk.grad = v.grad = None
        F.scaled_dot_product_attention(q, kk, v, is_causal=True).backward(upstream)

    stores = [torch.empty_like(t) for t in tensors[:3]]
    rows = {name: timer(fn, 20, 3, device) * 1e3 for name, fn in [("sdpa_causal_fwd_bwd_ms", flash), ("dq_from_ds_ms", lambda: dq_from_ds(*tensors)),
                                                                 ("store_ds_ms", lambda: [s.fill_(1.0) for s in stores])]}
    rows["dq_from_ds_tb_per_s"] = moved / rows["dq_from_ds_ms"] / 1e9
    rows["store_ds_tb_per_s"] = ds_bytes / rows["store_ds_ms"] / 1e9
    rows["dq_from_ds_x_sdpa"] = rows["dq_from_ds_ms"] / rows["sdpa_causal_fwd_bwd_ms"]
    rows["store_ds_x_sdpa"] = rows["store_ds_ms"] / rows["sdpa_causal_fwd_bwd_ms"]
    report.update(device=torch.cuda.get_device_name(), n=n, batch=batch, heads=heads, ds_bytes=ds_bytes, dq_bytes_moved=moved, **rows)
    print(f"{'row':<14} {'ms':>8} {'x sdpa':>7} {'TB/s':>6}")
    print(f"{'sdpa_causal':<14} {rows['sdpa_causal_fwd_bwd_ms']:>8.3f} {1.0:>7.3f}")
    print(f"{'dq_from_ds':<14} {rows['dq_from_ds_ms']:>8.3f} {rows['dq_from_ds_x_sdpa']:>7.3f} {rows['dq_from_ds_tb_per_s']:>6.2f}")
    print(f"{'store_ds':<14} {rows['store_ds_ms']:>8.3f} {rows['store_ds_x_sdpa']:>7.3f} {rows['store_ds_tb_per_s']:>6.2f}")
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "probe_dq_from_ds.json").write_text(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
