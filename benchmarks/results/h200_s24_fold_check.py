# Ran with benchmarks/results/h200_s24_folded_corners.patch applied (not kept on main: FOLD_ENV is the patch's).
"""Session 24: the forward's folded corner tiles on the GPU (window 64 = the 64 x 32 tiles' fold
condition) against the structural `local_branch` (float32) and against the unfolded kernel (bf16)."""
import os

import torch

from recsys.ops.chunking import personalized_chunks
from recsys.ops.evo_attention import evo_geometry, local_branch
from recsys.ops.evo_local_triton import FOLD_ENV, local_history_triton
from recsys.ops.temporal import alibi_scales

torch.manual_seed(0)
device = os.environ.get("CHECK_DEVICE", "cuda")
batch, length, heads, dim, window = 3, int(os.environ.get("CHECK_LENGTH", 1000)), 4, 64, 64
lengths = torch.tensor([length, 700, 64])
gaps = torch.randint(1, 200_000, (batch, length)) * torch.randint(0, 2, (batch, length))
real = torch.arange(length).view(1, -1) >= (length - lengths).view(-1, 1)
times = torch.where(real, 1_704_067_200 + gaps.cumsum(1), torch.zeros_like(gaps))
geometry = evo_geometry(times.to(device), *[x.to(device) for x in personalized_chunks(times, lengths, 16)], 0, 2, window, 0, 0)
q, k, v = (torch.randn(batch, heads, length, dim, device=device) for _ in range(3))
kp, vp = (torch.randn(batch, heads, 1, dim, device=device) for _ in range(2))
scales = (alibi_scales(heads) + 0.3 * torch.randn(3, heads)).to(device)
expected = local_branch(q, k, v, kp, vp, geometry, window, scales)
for dtype in (torch.float32, torch.bfloat16):
    outs = {}
    for fold in ("1", "0"):
        os.environ[FOLD_ENV] = fold
        outs[fold] = local_history_triton(*(x.to(dtype) for x in (q, k, v, kp, vp)), times.to(device), real.to(device), window, scales, 0, 0).float()
    scale = expected.abs().max().item()
    print(f"{dtype}: fold vs reference max abs {(outs['1'] - expected).abs().max().item() / scale:.2e} of max; unfolded vs reference "
          f"{(outs['0'] - expected).abs().max().item() / scale:.2e}; fold vs unfolded {(outs['1'] - outs['0']).abs().max().item() / scale:.2e}")
