"""Probe: SparseCTR's local-window dK/dV (history rows) as a Gluon kernel, against the library's
Triton kernel (`evo_local_triton._local_dkdv_kernel`, 32 x 32 tiles on two warps) on the same inputs.

The Triton kernel is latency-bound (Nsight, benchmarks/RESULTS.md session 20: 15 % of its stall
samples wait for the q/dO tile loads, 22 % on shared-memory operands) and computes 1.5x the window's
pairs. This probe does what `gluon_local_forward.py` does for the forward, transposed: one warpgroup
per 64-key block (keys are the warpgroup MMA's rows), every q/dO tile of the rows that reach the block
fetched by cp.async at the start, and with FOLD the two corner query tiles, each of which reaches
only one half of the block's keys, computed as one tile.

    python3 benchmarks/gluon_local_dkdv.py --n 8192 --batch 8 --heads 8
"""

from __future__ import annotations

import json
import math
import sys
from pathlib import Path

import triton
from triton.experimental import gluon
from triton.experimental.gluon import language as gl
from triton.experimental.gluon.language.nvidia.hopper import async_copy, fence_async_shared, warpgroup_mma, warpgroup_mma_wait

sys.path.insert(0, str(Path(__file__).resolve().parent))

from gluon_local_forward import (_block_barrier, _key_terms, _pair_bias, compile_offline, make_inputs, parse_variants, prefetch_window_tiles,  # noqa: E402
                                 probe_arguments, time_ms, weekend_coefficients)


@gluon.jit
def _query_terms(start_q, T_row, FLAGS_row, CLOCK_row, LSE_row, DELTA_row, s_weekend, L, WEEKEND_BOTH: gl.constexpr,
                 BLOCK_M: gl.constexpr, cols_layout: gl.constexpr):
    """A query tile's positions, times, clock words, weekend coefficients (times the weekend scale),
    log2-unit log-sum-exps (+inf past the end, so its probabilities are 0) and row terms `[BM]`."""
    offs_q = start_q + gl.arange(0, BLOCK_M, layout=cols_layout)
    rows = offs_q < L
    t_i = gl.load(T_row + offs_q, mask=rows, other=0)
    sin_i = gl.load(CLOCK_row + offs_q, mask=rows, other=0.0)
    cos_i = gl.load(CLOCK_row + L + offs_q, mask=rows, other=1.0)
    w_i = ((gl.load(FLAGS_row + offs_q, mask=rows, other=0) >> 1) & 1).to(gl.float32)
    gamma_i, delta_i = weekend_coefficients(w_i, s_weekend, WEEKEND_BOTH)
    lse = gl.load(LSE_row + offs_q, mask=rows, other=float("inf")) * 1.4426950408889634
    return offs_q, t_i, sin_i, cos_i, gamma_i, delta_i, lse, gl.load(DELTA_row + offs_q, mask=rows, other=0.0)


@gluon.jit
def _gluon_local_dkdv_kernel(Q, K, V, DO, LSE, DELTA, T, FLAGS, CLOCK, SCALES, DK, DV, sm_scale, L,
                             H: gl.constexpr, D: gl.constexpr, WINDOW: gl.constexpr, WEEKEND_BOTH: gl.constexpr,
                             BLOCK_N: gl.constexpr, BLOCK_M: gl.constexpr, FOLD: gl.constexpr, num_warps: gl.constexpr):
    """One BLOCK_N-key block per program (one warpgroup); q, k, v, dO, dK, dV dense `[B, H, L, D]`
    bf16, LSE (natural) and DELTA (rowsum(dO·O)) float32 `[B·H, L]`. Tiles are keys x queries."""
    NT: gl.constexpr = (BLOCK_N + WINDOW) // BLOCK_M
    gl.static_assert((not FOLD) or (WINDOW == BLOCK_N and BLOCK_M * 2 == BLOCK_N), "folding pairs the two corner query tiles")
    s_layout: gl.constexpr = gl.NVMMADistributedLayout(version=[3, 0], warps_per_cta=[4, 1], instr_shape=[16, BLOCK_M, 16])
    g_layout: gl.constexpr = gl.NVMMADistributedLayout(version=[3, 0], warps_per_cta=[4, 1], instr_shape=[16, D, 16])
    a_layout: gl.constexpr = gl.DotOperandLayout(operand_index=0, parent=g_layout, k_width=2)
    keys_layout: gl.constexpr = gl.SliceLayout(1, s_layout)
    cols_layout: gl.constexpr = gl.SliceLayout(0, s_layout)
    load_layout: gl.constexpr = gl.BlockedLayout(size_per_thread=[1, 8], threads_per_warp=[4, 8], warps_per_cta=[4, 1], order=[1, 0])
    smem_layout: gl.constexpr = gl.NVMMASharedLayout(swizzle_byte_width=128, element_bitwidth=16, rank=2)

    pid_bh = gl.program_id(1)
    b = pid_bh // H
    h = pid_bh % H
    start_n = gl.program_id(0) * BLOCK_N
    base = pid_bh.to(gl.int64) * L * D

    # every q/dO tile of the rows that reach the block first
    q_smem, do_smem = prefetch_window_tiles(Q, DO, base, start_n, L, NT, BLOCK_M, D, FOLD, load_layout, smem_layout)
    dims = gl.arange(0, D, layout=gl.SliceLayout(0, load_layout))

    key_rows = start_n + gl.arange(0, BLOCK_N, layout=gl.SliceLayout(1, load_layout))
    key_valid = (key_rows < L)[:, None] & (dims < D)[None, :]
    key_offsets = base + key_rows.to(gl.int64)[:, None] * D + dims[None, :]
    k_smem = gl.allocate_shared_memory(gl.bfloat16, [BLOCK_N, D], smem_layout, gl.load(K + key_offsets, mask=key_valid, other=0.0))
    v_smem = gl.allocate_shared_memory(gl.bfloat16, [BLOCK_N, D], smem_layout, gl.load(V + key_offsets, mask=key_valid, other=0.0))

    T_row = T + b * L
    FLAGS_row = FLAGS + b * L
    CLOCK_row = CLOCK + b * 2 * L
    LSE_row = LSE + pid_bh.to(gl.int64) * L
    DELTA_row = DELTA + pid_bh.to(gl.int64) * L
    offs_k, t_j, sin_j, cos_j, w_j, reach_j = _key_terms(start_n, T_row, FLAGS_row, CLOCK_row, L, WINDOW, BLOCK_N, keys_layout)
    t_j, sin_j, cos_j, w_j, reach_j = t_j[:, None], sin_j[:, None], cos_j[:, None], w_j[:, None], reach_j[:, None]
    s_time = gl.load(SCALES + h) * 1.4426950408889634
    s_hour = gl.load(SCALES + H + h) * 1.4426950408889634
    s_weekend = gl.load(SCALES + 2 * H + h) * 1.4426950408889634
    qk_scale = sm_scale * 1.4426950408889634
    zero_tile = gl.zeros([BLOCK_N, BLOCK_M], gl.float32, s_layout)
    dk = gl.zeros([BLOCK_N, D], gl.float32, g_layout)
    dv = gl.zeros([BLOCK_N, D], gl.float32, g_layout)
    fence_async_shared()

    GROUPS: gl.constexpr = NT - 1 if FOLD else NT
    for g in gl.static_range(GROUPS):
        async_copy.wait_group(GROUPS - 1 - g)
        _block_barrier()
        fence_async_shared()
        if FOLD and g == GROUPS - 1:  # the first query tile against the block's top keys, the last against its bottom keys
            top = ((offs_k - start_n) < BLOCK_N // 2)[:, None]
            s_first = warpgroup_mma(k_smem, q_smem.index(0).permute((1, 0)), zero_tile, use_acc=False, is_async=True)
            s_last = warpgroup_mma(k_smem, q_smem.index(NT - 1).permute((1, 0)), zero_tile, use_acc=False, is_async=True)
            dp_first = warpgroup_mma(v_smem, do_smem.index(0).permute((1, 0)), zero_tile, use_acc=False, is_async=True)
            dp_last = warpgroup_mma(v_smem, do_smem.index(NT - 1).permute((1, 0)), zero_tile, use_acc=False, is_async=True)
            q0, t0, sin0, cos0, gamma0, delta0, lse0, row0 = _query_terms(start_n, T_row, FLAGS_row, CLOCK_row, LSE_row, DELTA_row,
                                                                          s_weekend, L, WEEKEND_BOTH, BLOCK_M, cols_layout)
            q1, t1, sin1, cos1, gamma1, delta1, lse1, row1 = _query_terms(start_n + (NT - 1) * BLOCK_M, T_row, FLAGS_row, CLOCK_row,
                                                                          LSE_row, DELTA_row, s_weekend, L, WEEKEND_BOTH, BLOCK_M,
                                                                          cols_layout)
            bias = _pair_bias(gl.where(top, q0[None, :], q1[None, :]), gl.where(top, t0[None, :], t1[None, :]),
                              gl.where(top, sin0[None, :], sin1[None, :]), gl.where(top, cos0[None, :], cos1[None, :]),
                              gl.where(top, gamma0[None, :], gamma1[None, :]), gl.where(top, delta0[None, :], delta1[None, :]),
                              offs_k[:, None], t_j, sin_j, cos_j, w_j, reach_j, s_time, s_hour)
            lse = gl.where(top, lse0[None, :], lse1[None, :])
            row_term = gl.where(top, row0[None, :], row1[None, :])
            s_first, s_last, dp_first, dp_last, dk, dv = warpgroup_mma_wait(num_outstanding=0,
                                                                            deps=(s_first, s_last, dp_first, dp_last, dk, dv))
            scores = gl.where(top, s_first, s_last)
            dp = gl.where(top, dp_first, dp_last)
        else:
            t = g + 1 if FOLD else g
            s_token = warpgroup_mma(k_smem, q_smem.index(t).permute((1, 0)), zero_tile, use_acc=False, is_async=True)
            dp_token = warpgroup_mma(v_smem, do_smem.index(t).permute((1, 0)), zero_tile, use_acc=False, is_async=True)
            offs_q, t_i, sin_i, cos_i, gamma_i, delta_i, lse_q, row_q = _query_terms(start_n + t * BLOCK_M, T_row, FLAGS_row, CLOCK_row,
                                                                                     LSE_row, DELTA_row, s_weekend, L, WEEKEND_BOTH,
                                                                                     BLOCK_M, cols_layout)
            bias = _pair_bias(offs_q[None, :], t_i[None, :], sin_i[None, :], cos_i[None, :], gamma_i[None, :], delta_i[None, :],
                              offs_k[:, None], t_j, sin_j, cos_j, w_j, reach_j, s_time, s_hour)
            lse = lse_q[None, :]
            row_term = row_q[None, :]
            scores, dp, dk, dv = warpgroup_mma_wait(num_outstanding=0, deps=(s_token, dp_token, dk, dv))
        p = gl.exp2(scores * qk_scale + bias - lse)
        ds = p * (dp - row_term)
        p16 = p.to(gl.bfloat16)
        ds16 = ds.to(gl.bfloat16)
        if FOLD and g == GROUPS - 1:
            dv = warpgroup_mma(gl.convert_layout(gl.where(top, p16, 0.0), a_layout), do_smem.index(0), dv, is_async=True)
            dv = warpgroup_mma(gl.convert_layout(gl.where(top, 0.0, p16), a_layout), do_smem.index(NT - 1), dv, is_async=True)
            dk = warpgroup_mma(gl.convert_layout(gl.where(top, ds16, 0.0), a_layout), q_smem.index(0), dk, is_async=True)
            dk = warpgroup_mma(gl.convert_layout(gl.where(top, 0.0, ds16), a_layout), q_smem.index(NT - 1), dk, is_async=True)
        else:
            dv = warpgroup_mma(gl.convert_layout(p16, a_layout), do_smem.index(t), dv, is_async=True)
            dk = warpgroup_mma(gl.convert_layout(ds16, a_layout), q_smem.index(t), dk, is_async=True)
    dk, dv = warpgroup_mma_wait(num_outstanding=0, deps=(dk, dv))
    gl.store(DK + key_offsets, gl.convert_layout((dk * sm_scale).to(gl.bfloat16), load_layout), mask=key_valid)
    gl.store(DV + key_offsets, gl.convert_layout(dv.to(gl.bfloat16), load_layout), mask=key_valid)


def gluon_local_dkdv(q, k, v, grad_out, lse, delta, times, flags, clock, scales32, dk, dv, window: int, weekend_rule: int, sm_scale: float,
                     fold: bool = True, maxnreg=None, block_m: int = 32):
    batch, heads, length, dim = q.shape
    options = {"num_warps": 4, **({"maxnreg": maxnreg} if maxnreg else {})}
    _gluon_local_dkdv_kernel[(triton.cdiv(length, 64), batch * heads)](
        q, k, v, grad_out, lse, delta, times, flags, clock, scales32, dk, dv, sm_scale, length, H=heads, D=dim, WINDOW=window,
        WEEKEND_BOTH=weekend_rule == 1, BLOCK_N=64, BLOCK_M=block_m, FOLD=fold, **options)


# (query rows per tile, corner tiles folded into one, register cap)
VARIANTS = [(32, False, None), (32, True, None), (32, False, 168), (32, True, 168), (16, False, None), (16, False, 128)]


def variant_name(block_m: int, fold: bool, cap) -> str:
    return f"gluon 64 keys x {block_m} rows{' folded' if fold else ''}{f' cap {cap}' if cap else ''}"


def run_gpu(args) -> dict:
    import torch

    from recsys.ops.evo_local_triton import local_forward, local_key_gradients

    q, k, v, kp, vp, times, flags, clock, scales = make_inputs(args.batch, args.heads, args.n, 64, args.seed)
    sm_scale = 1.0 / math.sqrt(64)
    out, lse = torch.empty_like(q), torch.empty(args.batch, args.heads, args.n, device="cuda")
    local_forward(q, k, v, kp, vp, times, flags, clock, scales, out, lse, args.n, 64, 0, sm_scale)
    generator = torch.Generator(device="cuda").manual_seed(args.seed + 1)  # the upstream gradient: seeded like the inputs
    grad_out = torch.randn(q.shape, generator=generator, device="cuda").to(q.dtype)
    delta = (grad_out.float() * out.float()).sum(-1).contiguous()
    reference_dk, reference_dv = torch.empty_like(q), torch.empty_like(q)
    triton_step = lambda: local_key_gradients(q, k, v, grad_out, lse, delta, times, flags, clock, scales, reference_dk, reference_dv, args.n,
                                              64, 0, sm_scale)
    triton_step()
    scale_dk, scale_dv = reference_dk.float().abs().max().item(), reference_dv.float().abs().max().item()
    rows = [{"kernel": "triton local dK/dV (library)", "ms": time_ms(triton_step, args.steps), "dk_err": 0.0, "dv_err": 0.0}]
    for block_m, fold, cap in VARIANTS:
        dk, dv = torch.full_like(q, float("nan")), torch.full_like(q, float("nan"))
        step = lambda: gluon_local_dkdv(q, k, v, grad_out, lse, delta, times, flags, clock, scales, dk, dv, 64, 0, sm_scale, fold, cap,
                                      block_m)
        name = variant_name(block_m, fold, cap)
        try:
            step()
            torch.cuda.synchronize()
        except Exception as error:  # a variant that does not compile is a result, not a crash
            rows.append({"kernel": name, "error": f"{type(error).__name__}: {str(error)[:300]}"})
            continue
        rows.append({"kernel": name, "ms": time_ms(step, args.steps),
                     "dk_err": (dk.float() - reference_dk.float()).abs().max().item() / scale_dk,
                     "dv_err": (dv.float() - reference_dv.float()).abs().max().item() / scale_dv})
    for row in rows:
        if "ms" in row:
            row["x_triton"] = row["ms"] / rows[0]["ms"]
    return {"device": torch.cuda.get_device_name(), "n": args.n, "batch": args.batch, "heads": args.heads, "rows": rows}


def main() -> None:
    parser = probe_arguments(__doc__)
    args = parser.parse_args()
    if args.variants:
        VARIANTS[:] = args.variants
    if args.check_only:
        pointers = {name: "*bf16" for name in ("Q", "K", "V", "DO", "DK", "DV")}
        pointers |= {"T": "*i32", "FLAGS": "*i32", "CLOCK": "*fp32", "SCALES": "*fp32", "LSE": "*fp32", "DELTA": "*fp32"}
        for block_m, fold, cap in VARIANTS:
            constexprs = {"H": 8, "D": 64, "WINDOW": 64, "WEEKEND_BOTH": False, "BLOCK_N": 64, "BLOCK_M": block_m, "FOLD": fold,
                          "num_warps": 4}
            print(f"{variant_name(block_m, fold, cap)}: {compile_offline(_gluon_local_dkdv_kernel, pointers, constexprs, cap)['usage']}")
        return
    result = run_gpu(args)
    print(f"{'kernel':<40} {'ms':>8} {'x triton':>9} {'dK err':>9} {'dV err':>9}  (max |error| / max |reference|)")
    for row in result["rows"]:
        if "ms" in row:
            print(f"{row['kernel']:<40} {row['ms']:>8.4f} {row['x_triton']:>9.3f} {row['dk_err']:>9.2e} {row['dv_err']:>9.2e}")
        else:
            print(f"{row['kernel']:<40} {row['error']}")
    Path(args.out).mkdir(parents=True, exist_ok=True)
    (Path(args.out) / "gluon_local_dkdv.json").write_text(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
