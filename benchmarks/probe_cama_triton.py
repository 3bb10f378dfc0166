"""Dissect the fused CamA forward on the GPU: where do its ~10x over flash go?

A ladder of forward kernels, each rung adding one thing the CamA tile does on top of a plain
causal flash-attention kernel written the way Triton's tutorial writes it, timed at fixed tile
configurations next to SDPA's flash forward and the production kernel (`recsys.ops.cama_triton`,
bias on and off) at the same configurations:

  0 tutorial: unmasked loads, off-diagonal / diagonal loops, the causal mask on the diagonal only
  1 + masked loads (runtime N), as `triton_tiles.load_tile` does
  2 + the content channel's per-key mask from the flag word and the -inf-safe online softmax
  3 + the action channel's per-pair time rule (t_j < t_i) on every tile
  4 + the temporal bias per pair: bucket by log2, table gather
  5 rung 3 + the bias through the tile's bucket range: comparisons of Δ against bucket thresholds
    (no log2, no gather per pair off the diagonal's few boundaries)
  6 rung 4 with the SFU's lg2.approx (the production kernel's FAST_LOG2) instead of libdevice's log2
  7 rung 6 with the table head-major (`[H, buckets]`: a head's entries in a few cache lines instead
    of one per 32 bytes; measured no faster: the layout was not what cost)
  8 rung 6 without the gather: the bias is a linear function of the bucket (what the log2 costs alone)
  9 rung 3 with the keys' times and flags loaded one tile ahead by hand (the hypothesis that these
    loads wait a global-memory latency every tile; refuted: Triton already stages them through
    shared memory, and the rung is no faster)
 10 rung 7 with the same prefetch
 11 rung 7 with the gather as one `ld.global.nc` per pair in registers (inline PTX): Triton's pipeliner
    turns a 32-bit `tl.load` gather into 4-byte cp.async copies through shared memory and a layout
    round trip per tile
 12 rung 7 with a volatile `tl.load` (which the pipeliner leaves alone)

Prints a table (ms, x flash forward, registers, spill bytes) and writes JSON to --out.

    python3 benchmarks/probe_cama_triton.py --out $OUT      # on the GPU machine
    TRITON_INTERPRET=1 .venv/bin/python benchmarks/probe_cama_triton.py --check   # rungs' parity, CPU
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch
import torch.nn.functional as F
import triton
import triton.language as tl

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

from recsys.ops import cama_triton  # noqa: E402
from recsys.ops.temporal import LOG_BUCKET_PER_OCTAVE, log_bucket  # noqa: E402
from recsys.ops.triton_tiles import INTERPRETED, LOG2E  # noqa: E402

INTERPRETED_JIT: tl.constexpr = tl.constexpr(INTERPRETED)
LINEAR_STEP_VALUE = 0.01 * LOG2E  # rung 8's bias per bucket, log2 units
LINEAR_STEP: tl.constexpr = tl.constexpr(LINEAR_STEP_VALUE)
RUNGS = 13



@triton.jit
def _rung_tile(q, K, V, base, b, N, offs_m, t_i, start_n, group_bit, TIMES, FLAGS, TABLE, TABLE_T, THRESHOLDS, h, qk_scale,
               H: tl.constexpr, D: tl.constexpr, NUM_BUCKETS: tl.constexpr, BUCKET_SCALE: tl.constexpr, RUNG: tl.constexpr,
               BLOCK_N: tl.constexpr, DIAGONAL: tl.constexpr, t_pre, flags_pre, PREFETCHED: tl.constexpr):
    offs_n = start_n + tl.arange(0, BLOCK_N)
    offs_d = tl.arange(0, D)
    if RUNG >= 1:
        cols = offs_n < N
        k = tl.load(K + base + offs_n[:, None] * D + offs_d[None, :], mask=cols[:, None], other=0.0)
        v = tl.load(V + base + offs_n[:, None] * D + offs_d[None, :], mask=cols[:, None], other=0.0)
    else:
        k = tl.load(K + base + offs_n[:, None] * D + offs_d[None, :])
        v = tl.load(V + base + offs_n[:, None] * D + offs_d[None, :])
    scores = tl.dot(q, tl.trans(k)) * qk_scale
    if RUNG < 2 and not DIAGONAL:  # the tutorial's off-diagonal tile: no mask at all
        return scores, v
    ok = (offs_m[:, None] >= offs_n[None, :]) | (not DIAGONAL)
    if RUNG >= 2:
        if PREFETCHED:
            flags_j = flags_pre
        else:
            flags_j = tl.load(FLAGS + b * N + offs_n, mask=offs_n < N, other=0)
        ok = ok & ((flags_j & 2) != 0)[None, :]
        if RUNG >= 3:
            if PREFETCHED:
                t_j = t_pre
            else:
                t_j = tl.load(TIMES + b * N + offs_n, mask=offs_n < N, other=0)
            if group_bit >= 0:
                ok = ok & (((flags_j >> group_bit) & 1) != 0)[None, :] & (t_j[None, :] < t_i[:, None])
            delta = t_i[:, None] - t_j[None, :]
            if RUNG == 4:
                bucket = tl.minimum(tl.log2(tl.maximum(delta, 1).to(tl.float32)) * BUCKET_SCALE, NUM_BUCKETS).to(tl.int32)
                scores += tl.load(TABLE + bucket * H + h)
            if RUNG >= 6:
                fast = not INTERPRETED_JIT
                bucket = cama_triton._bucket(delta, NUM_BUCKETS, BUCKET_SCALE, fast)
                if RUNG == 6:
                    scores += tl.load(TABLE + bucket * H + h)
                if RUNG == 7:
                    scores += tl.load(TABLE_T + h * (NUM_BUCKETS + 1) + bucket)
                if RUNG == 11:
                    scores += cama_triton._gather(TABLE_T + h * (NUM_BUCKETS + 1) + bucket, not INTERPRETED_JIT)
                if RUNG == 12:
                    scores += tl.load(TABLE_T + h * (NUM_BUCKETS + 1) + bucket, volatile=True)
                if RUNG == 8:
                    scores += bucket.to(tl.float32) * LINEAR_STEP
            if RUNG == 5:
                # Buckets are monotone in Δ: the tile spans bucket(min Δ) .. bucket(max Δ).
                low_delta = tl.maximum(tl.min(t_i, 0) - tl.max(t_j, 0), 1)
                high_delta = tl.maximum(tl.max(t_i, 0) - tl.min(t_j, 0), 1)
                # One bucket of slack each side: the fast log2 may round a range end across an edge.
                low = tl.maximum(tl.minimum(tl.log2(low_delta.to(tl.float32)) * BUCKET_SCALE, NUM_BUCKETS).to(tl.int32) - 1, 0)
                high = tl.minimum(tl.minimum(tl.log2(high_delta.to(tl.float32)) * BUCKET_SCALE, NUM_BUCKETS).to(tl.int32) + 1,
                                  NUM_BUCKETS)
                bias = tl.zeros_like(scores) + tl.load(TABLE + low * H + h)
                for value in range(low + 1, high + 1):
                    step = tl.load(TABLE + value * H + h) - tl.load(TABLE + (value - 1) * H + h)
                    bias += tl.where(delta >= tl.load(THRESHOLDS + value), step, 0.0)
                scores += bias
    return tl.where(ok, scores, float("-inf")), v


@triton.jit
def _rung_loop(acc, l_i, m_i, q, K, V, base, b, N, offs_m, t_i, lo, hi, group_bit, TIMES, FLAGS, TABLE, TABLE_T, THRESHOLDS, h, qk_scale,
               H: tl.constexpr, D: tl.constexpr, NUM_BUCKETS: tl.constexpr, BUCKET_SCALE: tl.constexpr, RUNG: tl.constexpr,
               BLOCK_N: tl.constexpr, DIAGONAL: tl.constexpr):
    PREFETCHED: tl.constexpr = RUNG >= 9
    TILE_RUNG: tl.constexpr = 3 if RUNG == 9 else (7 if RUNG == 10 else RUNG)
    offs_next = lo + tl.arange(0, BLOCK_N)
    t_pre = tl.load(TIMES + b * N + offs_next, mask=offs_next < N, other=0)
    flags_pre = tl.load(FLAGS + b * N + offs_next, mask=offs_next < N, other=0)
    for start_n in range(lo, hi, BLOCK_N):
        t_j, flags_j = t_pre, flags_pre
        if PREFETCHED:  # the next tile's, so their latency overlaps this tile's work
            offs_next = start_n + BLOCK_N + tl.arange(0, BLOCK_N)
            t_pre = tl.load(TIMES + b * N + offs_next, mask=offs_next < N, other=0)
            flags_pre = tl.load(FLAGS + b * N + offs_next, mask=offs_next < N, other=0)
        scores, v = _rung_tile(q, K, V, base, b, N, offs_m, t_i, start_n, group_bit, TIMES, FLAGS, TABLE, TABLE_T, THRESHOLDS, h, qk_scale,
                               H, D, NUM_BUCKETS, BUCKET_SCALE, TILE_RUNG, BLOCK_N, DIAGONAL, t_j, flags_j, PREFETCHED)
        if RUNG >= 2:  # -inf-safe: a row may see no key in a tile (the channel masks)
            m_new = tl.maximum(m_i, tl.max(scores, 1))
            m_safe = tl.where(m_new == float("-inf"), 0.0, m_new)
            p = tl.exp2(scores - m_safe[:, None])
            alpha = tl.exp2(m_i - m_safe)
        else:
            m_new = tl.maximum(m_i, tl.max(scores, 1))
            p = tl.exp2(scores - m_new[:, None])
            alpha = tl.exp2(m_i - m_new)
        l_i = l_i * alpha + tl.sum(p, 1)
        acc = tl.dot(p.to(v.dtype), v, acc * alpha[:, None])
        m_i = m_new
    return acc, l_i, m_i


@triton.jit
def _rung_forward(Q, K, V, TIMES, FLAGS, HEAD_GROUP, TABLE, TABLE_T, THRESHOLDS, O, sm_scale, N, H: tl.constexpr, D: tl.constexpr,
                  NUM_BUCKETS: tl.constexpr, BUCKET_SCALE: tl.constexpr, RUNG: tl.constexpr, BLOCK_M: tl.constexpr,
                  BLOCK_N: tl.constexpr):
    start_m = tl.program_id(0) * BLOCK_M
    pid_bh = tl.program_id(1)
    b, h = pid_bh // H, pid_bh % H
    base = pid_bh.to(tl.int64) * N * D
    offs_m = start_m + tl.arange(0, BLOCK_M)
    offs_d = tl.arange(0, D)
    rows = offs_m < N
    q = tl.load(Q + base + offs_m[:, None] * D + offs_d[None, :], mask=rows[:, None], other=0.0)
    t_i = tl.load(TIMES + b * N + offs_m, mask=rows, other=0)
    group_bit = tl.load(HEAD_GROUP + h)
    qk_scale = sm_scale * 1.4426950408889634
    m_i = tl.full([BLOCK_M], float("-inf"), dtype=tl.float32)
    l_i = tl.zeros([BLOCK_M], dtype=tl.float32)
    acc = tl.zeros([BLOCK_M, D], dtype=tl.float32)
    acc, l_i, m_i = _rung_loop(acc, l_i, m_i, q, K, V, base, b, N, offs_m, t_i, 0, start_m, group_bit, TIMES, FLAGS, TABLE, TABLE_T, THRESHOLDS,
                               h, qk_scale, H, D, NUM_BUCKETS, BUCKET_SCALE, RUNG, BLOCK_N, False)
    acc, l_i, m_i = _rung_loop(acc, l_i, m_i, q, K, V, base, b, N, offs_m, t_i, start_m, tl.minimum(start_m + BLOCK_M, N), group_bit,
                               TIMES, FLAGS, TABLE, TABLE_T, THRESHOLDS, h, qk_scale, H, D, NUM_BUCKETS, BUCKET_SCALE, RUNG, BLOCK_N, True)
    out = acc / tl.where(l_i > 0, l_i, 1.0)[:, None]
    tl.store(O + base + offs_m[:, None] * D + offs_d[None, :], out.to(O.dtype.element_ty), mask=rows[:, None])


def rung_inputs(batch: int, n: int, heads: int, dim: int, device: str, dtype: torch.dtype, table_scale: float = 0.01):
    generator = torch.Generator().manual_seed(0)
    gaps = torch.randint(1, 120, (batch, n), generator=generator)
    gaps[:, torch.randint(0, n, (max(1, n // 64),), generator=generator)] += 40_000
    times = gaps.cumsum(1).int()
    history = (torch.rand(batch, n, generator=generator) > 0.1).int()
    flags = 1 | (history << 1) | (torch.randint(0, 2, (batch, n), generator=generator).int() << 3)
    head_group = torch.tensor([-1] * (heads // 2) + [3] * (heads - heads // 2), dtype=torch.int32)
    table = table_scale * torch.randn(129, heads, generator=generator) * LOG2E
    q, k, v = (torch.randn(batch, heads, n, dim, generator=generator).to(dtype) for _ in range(3))
    return [x.to(device) for x in (q, k, v, times, flags, head_group, table, cama_triton.bucket_thresholds(128, torch.device(device)),
                                   table.t().contiguous())]


def run_rung(rung: int, inputs, block_m: int, block_n: int, warps: int, stages: int):
    q, k, v, times, flags, head_group, table, thresholds, table_t = inputs
    batch, heads, n, dim = q.shape
    out = torch.empty_like(q)
    kernel = _rung_forward[(triton.cdiv(n, block_m), batch * heads)](
        q, k, v, times, flags, head_group, table, table_t, thresholds, out, dim**-0.5, n, H=heads, D=dim, NUM_BUCKETS=128,
        BUCKET_SCALE=LOG_BUCKET_PER_OCTAVE, RUNG=rung, BLOCK_M=block_m, BLOCK_N=block_n, num_warps=warps, num_stages=stages)
    return out, kernel


def reference(rung: int, inputs) -> torch.Tensor:
    """What rung `rung` computes, densely in float32."""
    q, k, v, times, flags, head_group, table = inputs[:7]
    if rung == 8:
        table = LINEAR_STEP_VALUE * torch.arange(table.shape[0], device=q.device, dtype=torch.float32)[:, None].expand_as(table)
    n = q.shape[2]
    scores = (q.float() @ k.float().transpose(-1, -2)) * q.shape[-1] ** -0.5
    index = torch.arange(n, device=q.device)
    ok = (index[:, None] >= index[None, :]).expand(q.shape[0], q.shape[1], n, n)
    if rung >= 2:
        history = ((flags & 2) != 0)[:, None, None, :]
        ok = ok & history
    if rung >= 3:
        action = head_group >= 0
        in_group = ((flags[:, None, :] >> head_group.clamp_min(0)[None, :, None]) & 1) != 0  # [B, H, N]
        earlier = times[:, None, :, None] > times[:, None, None, :]
        action_ok = in_group[:, :, None, :] & earlier
        ok = ok & torch.where(action[None, :, None, None], action_ok, torch.ones_like(action_ok))
    if rung >= 4:  # 8: the linear table set above
        bucket = log_bucket((times[:, :, None] - times[:, None, :]).long(), 128)  # [B, N, N]
        scores = scores + (table / LOG2E)[bucket].permute(0, 3, 1, 2)
    scores = scores.masked_fill(~ok, float("-inf"))
    weights = torch.nan_to_num(torch.softmax(scores, -1), nan=0.0)
    return weights @ v.float()


def check(device: str) -> None:
    inputs = rung_inputs(2, 256, 4, 16, device, torch.float32, table_scale=0.5)
    for rung in range(RUNGS):
        out, _ = run_rung(rung, inputs, 32, 16, 1, 1)
        expected = reference({8: 8, 9: 3}.get(rung, min(rung, 4)), inputs)
        error = float((out - expected).abs().max() / expected.abs().max())
        # Rung 1 changes no arithmetic; the others must differ from what the rung below computes.
        below = {2: 1, 3: 2, 4: 3, 5: 3, 6: 3, 7: 3, 8: 4, 9: 2, 10: 3, 11: 3, 12: 3}.get(rung)
        previous = float((out - reference(below, inputs)).abs().max() / expected.abs().max()) if below else 1.0
        print(f"rung {rung}: max rel error {error:.2e} (against the rung below: {previous:.2e})")
        assert error < 1e-4 < previous, rung


def backward_rows(n: int, batch: int, heads: int, dim: int, device: str, q, k, v, meta, table32, flash_forward_ms: float,
                  step_values: list) -> list:
    """The production dK/dV and dQ kernels at each of their autotune candidates (bias on and off),
    against flash's backward (its forward + backward minus its forward, same call)."""
    from gpu_suite import timer  # noqa: E402

    q, k, v = (x.detach().requires_grad_() for x in (q, k, v))
    upstream = torch.randn_like(q)

    def flash_step():
        q.grad = k.grad = v.grad = None
        F.scaled_dot_product_attention(q, k, v, is_causal=True).backward(upstream)
    flash_backward_ms = timer(flash_step, 20, 5, device) * 1e3 - flash_forward_ms
    rows = [{"kernel": "flash (SDPA) backward", "ms": flash_backward_ms}]
    print(f"flash backward {flash_backward_ms:.3f} ms", flush=True)
    out = torch.empty_like(q)
    lse = torch.empty(q.shape[:3], device=device, dtype=torch.float32)
    common = dict(H=heads, D=dim, TABLE_STRIDE=table32.stride(0), HEAD_STRIDE=table32.stride(1), NUM_BUCKETS=128, BUCKET_SCALE=LOG_BUCKET_PER_OCTAVE, PRECISION="tf32", PACKED=False, FAST_LOG2=not INTERPRETED,
                  SINGLE=cama_triton.ABLATION["single_bucket"])
    thresholds = cama_triton.bucket_thresholds(128, torch.device(device))
    cama_triton._cama_forward_kernel[lambda m: (triton.cdiv(n, m["BLOCK_M"]), batch * heads)](
        q, k, v, meta.times, meta.segment, meta.position, meta.flags, meta.block_start, meta.head_group, table32, thresholds, out, lse,
        dim**-0.5, n, BIAS=True, TABLE_GRAD=True, STEPS=0, **common)
    delta = cama_triton.backward_row_term(upstream, out, None)
    dq, dk, dv, dtable = (torch.empty_like(x) for x in (q, k, v, table32))
    for name, kernel, grid_block in (("dkdv", cama_triton._cama_dkdv_kernel, "BLOCK_N"), ("dq", cama_triton._cama_dq_kernel, "BLOCK_M")):
        for config in kernel.configs:
            tiles = config.kwargs
            variants = [(False, 0, False)] + [(True, x, True) for x in step_values]
            if name == "dkdv":  # what the table gradient costs
                variants += [(True, 0, False)]
            for bias, steps, table_grad in variants:
                def launch():
                    grid = (triton.cdiv(n, tiles[grid_block]), batch * heads)
                    if name == "dkdv":
                        dtable.zero_()
                        return kernel.fn[grid](q, k, v, upstream, lse, delta, meta.times, meta.segment, meta.position, meta.flags,
                                               meta.segment_end, meta.head_group, table32, thresholds, dk, dv, dtable, dim**-0.5, n, TABLE_BINS=256,
                                               BIAS=bias, TABLE_GRAD=table_grad, STEPS=steps, **common, **tiles, num_warps=config.num_warps,
                                               num_stages=config.num_stages)
                    return kernel.fn[grid](q, k, v, upstream, lse, delta, meta.times, meta.segment, meta.position, meta.flags,
                                           meta.block_start, meta.head_group, table32, thresholds, dq, dim**-0.5, n, BIAS=bias, TABLE_GRAD=bias, STEPS=steps,
                                           **common, **tiles, num_warps=config.num_warps, num_stages=config.num_stages)
                label = [tiles["BLOCK_M"], tiles["BLOCK_N"], config.num_warps, config.num_stages]
                try:
                    compiled = launch()
                    ms = timer(launch, 20, 3, device) * 1e3
                except Exception as error:
                    rows.append({"kernel": f"production {name} bias={bias} steps={steps} grad={table_grad}", "config": label, "error": str(error)[:200]})
                    continue
                rows.append({"kernel": f"production {name} bias={bias} steps={steps} grad={table_grad}", "config": label, "ms": ms, "x_flash": ms / flash_backward_ms,
                             "registers": getattr(compiled, 'n_regs', None), "spills": getattr(compiled, 'n_spills', None)})
                print(f"production {name} bias={bias} steps={steps} grad={table_grad} {label}: {ms:.3f} ms regs {getattr(compiled, 'n_regs', None)} spills {getattr(compiled, 'n_spills', None)}", flush=True)
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "out")
    parser.add_argument("--check", action="store_true", help="only the rungs' parity (small, float32)")
    parser.add_argument("--n", type=int, default=4096)
    parser.add_argument("--batch-tokens", type=int, default=65536)
    parser.add_argument("--configs", default="64x64x4x3,128x64x8x3,128x128x8x3,128x64x4x3,64x32x4x3")
    parser.add_argument("--skip-rungs", action="store_true", help="time only the production kernels")
    parser.add_argument("--steps", default="0,6", help="production kernels' bias_steps values to time (0: every tile by gather)")
    args = parser.parse_args()
    device = "cuda" if torch.cuda.is_available() else "cpu"
    if args.check:
        check(device)
        return
    from gpu_suite import timer  # noqa: E402

    heads, dim = 8, 64
    batch = args.batch_tokens // args.n
    inputs = rung_inputs(batch, args.n, heads, dim, device, torch.bfloat16)
    q, k, v = inputs[:3]
    flash_ms = timer(lambda: F.scaled_dot_product_attention(q, k, v, is_causal=True), 20, 5, device) * 1e3
    rows = [{"kernel": "flash (SDPA) forward", "ms": flash_ms}]
    print(f"flash forward {flash_ms:.3f} ms", flush=True)
    configs = [tuple(int(x) for x in c.split("x")) for c in args.configs.split(",")]
    # The production forward at the same tiles: one segment per row, every event real history.
    from gpu_suite import cama_triton_meta  # noqa: E402
    from attention import make_inputs  # noqa: E402

    times64, cq, ck, cv, extra = make_inputs("cama", batch, args.n, heads, dim, 8, device, torch.bfloat16, dense_mask=False)
    meta = cama_triton_meta(times64, extra, device)
    table32 = cama_triton._kernel_table(extra["bias_table"])
    thresholds = cama_triton.bucket_thresholds(128, torch.device(device))
    for block_m, block_n, warps, stages in configs:
        for rung in range(0 if args.skip_rungs else RUNGS):
            try:
                _, compiled = run_rung(rung, inputs, block_m, block_n, warps, stages)
                ms = timer(lambda: run_rung(rung, inputs, block_m, block_n, warps, stages), 20, 3, device) * 1e3
            except Exception as error:  # a tile that does not fit shared memory: report, go on
                rows.append({"kernel": f"rung {rung}", "config": [block_m, block_n, warps, stages], "error": str(error)[:200]})
                continue
            rows.append({"kernel": f"rung {rung}", "config": [block_m, block_n, warps, stages], "ms": ms, "x_flash": ms / flash_ms,
                         "registers": getattr(compiled, 'n_regs', None), "spills": getattr(compiled, 'n_spills', None)})
            print(f"rung {rung} {block_m}x{block_n} w{warps} s{stages}: {ms:.3f} ms ({ms / flash_ms:.2f}x flash) "
                  f"regs {getattr(compiled, 'n_regs', None)} spills {getattr(compiled, 'n_spills', None)}", flush=True)
        for bias, steps in [(False, 0)] + [(True, int(x)) for x in args.steps.split(",")]:
            out = torch.empty_like(cq)
            lse = torch.empty(cq.shape[:3], device=device, dtype=torch.float32)

            def production():
                return cama_triton._cama_forward_kernel.fn[(triton.cdiv(args.n, block_m), batch * heads)](
                    cq, ck, cv, meta.times, meta.segment, meta.position, meta.flags, meta.block_start, meta.head_group, table32,
                    thresholds, out, lse, dim**-0.5, args.n, H=heads, D=dim, TABLE_STRIDE=table32.stride(0),
                    HEAD_STRIDE=table32.stride(1), NUM_BUCKETS=128, BUCKET_SCALE=LOG_BUCKET_PER_OCTAVE,
                    PRECISION="tf32", BIAS=bias, TABLE_GRAD=bias, PACKED=False, FAST_LOG2=not INTERPRETED, STEPS=steps,
                    SINGLE=cama_triton.ABLATION["single_bucket"], BLOCK_M=block_m, BLOCK_N=block_n,
                    num_warps=warps, num_stages=stages)
            try:
                compiled = production()
                ms = timer(production, 20, 3, device) * 1e3
            except Exception as error:
                rows.append({"kernel": f"production bias={bias} steps={steps}", "config": [block_m, block_n, warps, stages], "error": str(error)[:200]})
                continue
            rows.append({"kernel": f"production bias={bias} steps={steps}", "config": [block_m, block_n, warps, stages], "ms": ms,
                         "x_flash": ms / flash_ms, "registers": getattr(compiled, 'n_regs', None), "spills": getattr(compiled, 'n_spills', None)})
            print(f"production bias={bias} steps={steps} {block_m}x{block_n} w{warps} s{stages}: {ms:.3f} ms ({ms / flash_ms:.2f}x flash) "
                  f"regs {getattr(compiled, 'n_regs', None)} spills {getattr(compiled, 'n_spills', None)}", flush=True)
    rows += backward_rows(args.n, batch, heads, dim, device, cq, ck, cv, meta, table32, flash_ms, [int(x) for x in args.steps.split(",")])
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "probe_cama_triton.json").write_text(json.dumps({"n": args.n, "batch": batch, "rows": rows}, indent=2))
    print(f"{'kernel':<44} {'config':<16} {'ms':>8} {'x flash':>8} {'regs':>5} {'spills':>6}")
    for r in rows:
        config = "x".join(map(str, r.get("config", []))) or "-"
        print(f"{r['kernel']:<44} {config:<16} {r.get('ms', float('nan')):>8.3f} {r.get('x_flash', 1.0):>8.2f} "
              f"{r.get('registers', '-')!s:>5} {r.get('spills', '-')!s:>6}")


if __name__ == "__main__":
    main()
