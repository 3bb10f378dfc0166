"""Probe: SparseCTR's local-window forward (history rows) as a Gluon kernel, against the library's
Triton kernel on the same inputs (H100/H200).

The Triton forward (`recsys.ops.evo_local_triton._local_forward_kernel`) stalls on its k/v tile
loads (Nsight, benchmarks/RESULTS.md session 20): Triton issues each tile's loads when the loop
reaches it, and neither its pipeliner nor TMA hid them cheaper than the occupancy they cost. A Gluon
kernel controls that by hand: every k/v tile of a query block's window (four 32-key tiles for 64
rows and a 64-key window) goes to shared memory through cp.async at the program's start, each in its
own commit group, so the loads of later tiles overlap the work on earlier ones; and each tile's
temporal bias, which does not depend on q·k, is computed between issuing the warpgroup MMA and
waiting for it. Same arithmetic per pair as the Triton kernel (`evo_bias_triton.scores_with_bias`).

Scope: the history-only local branch (no candidates, no key lists, no gates), which is what
`local_history_triton` runs; the probe answers whether this structure is faster before the library
grows a Gluon path. `--check-only` compiles for sm_90 offline and prints the resource usage.

    python3 benchmarks/gluon_local_forward.py --n 8192 --batch 8 --heads 8
"""

from __future__ import annotations

import argparse
import json
import math
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

import triton
from triton.experimental import gluon
from triton.experimental.gluon import language as gl
from triton.experimental.gluon.language.nvidia.hopper import async_copy, fence_async_shared, warpgroup_mma, warpgroup_mma_wait

ROOT = Path(__file__).resolve().parent.parent
# Gluon's API moves between Triton releases: 3.6 (the GPU image) names the cp.async copy
# `async_copy_global_to_shared` and `thread_barrier`, 3.9 (torch 2.13's) `async_load` and `barrier`.
_async_load = getattr(async_copy, "async_load", None) or async_copy.async_copy_global_to_shared
_block_barrier = getattr(gl, "thread_barrier", None) or gl.barrier


@gluon.jit
def _floor_log2(magnitude):
    """floor(log2(m)) of int32 m >= 1: one bfind."""
    return gl.inline_asm_elementwise("bfind.u32 $0, $1;", "=r,r", [magnitude], dtype=gl.int32, is_pure=True, pack=1)


@gluon.jit
def _abs_int(x):
    return gl.inline_asm_elementwise("abs.s32 $0, $1;", "=r,r", [x], dtype=gl.int32, is_pure=True, pack=1)


@gluon.jit
def weekend_coefficients(w_i, s_weekend, WEEKEND_BOTH: gl.constexpr):
    """Per query (gamma, delta), times the weekend scale, with b_weekend = gamma·w_j + delta
    (`evo_bias_triton.weekend_coefficients`)."""
    if WEEKEND_BOTH:
        return w_i * s_weekend, (w_i * 0.0 - 1.0) * s_weekend
    else:
        return (2.0 * w_i - 1.0) * s_weekend, -w_i * s_weekend


@gluon.jit
def _key_terms(start_n, T_row, FLAGS_row, CLOCK_row, L, WINDOW: gl.constexpr, BLOCK_N: gl.constexpr, cols_layout: gl.constexpr):
    """A key tile's positions, int32 times, clock sines and cosines, weekend values and reach `[BN]`
    (a real key is visible from its row to WINDOW - 1 rows later, so visibility is one unsigned compare)."""
    offs_n = start_n + gl.arange(0, BLOCK_N, layout=cols_layout)
    cols = (offs_n >= 0) & (offs_n < L)
    flags_j = gl.load(FLAGS_row + offs_n, mask=cols, other=0)
    t_j = gl.load(T_row + offs_n, mask=cols, other=0)
    sin_j = gl.load(CLOCK_row + offs_n, mask=cols, other=0.0)
    cos_j = gl.load(CLOCK_row + L + offs_n, mask=cols, other=1.0)
    reach_j = gl.where((flags_j & 1) != 0, WINDOW, 0).to(gl.uint32)
    return offs_n, t_j, sin_j, cos_j, ((flags_j >> 1) & 1).to(gl.float32), reach_j


@gluon.jit
def _pair_bias(offs_m, t_i, sin_i, cos_i, gamma_i, delta_i, offs_n, t_j, sin_j, cos_j, w_j, reach_j, s_time, s_hour):
    """log2-unit bias (-inf where not visible), as `evo_bias_triton.scores_with_bias` adds it:
    delta_i + gamma_i·w_j - s_time·floor(log2|t_i - t_j|) - s_hour·|sin(a_i - a_j)|. Query terms
    `[BM, 1]`; key terms `[1, BN]` (a tile) or `[BM, BN]` (the folded corner tiles, keys per row)."""
    bias = delta_i + gamma_i * w_j
    bias = bias - s_time * _floor_log2(_abs_int(t_i - t_j) | 1).to(gl.float32)
    bias = bias - s_hour * gl.abs(sin_i * cos_j - cos_i * sin_j)
    return gl.where((offs_m - offs_n).to(gl.uint32) < reach_j, bias, float("-inf"))


@gluon.jit
def _tile_bias(start_n, offs_m, t_i, sin_i, cos_i, gamma_i, delta_i, T_row, FLAGS_row, CLOCK_row, s_time, s_hour, L,
               WINDOW: gl.constexpr, BLOCK_N: gl.constexpr, cols_layout: gl.constexpr):
    """A key tile's bias `[BM, BN]`."""
    offs_n, t_j, sin_j, cos_j, w_j, reach_j = _key_terms(start_n, T_row, FLAGS_row, CLOCK_row, L, WINDOW, BLOCK_N, cols_layout)
    return _pair_bias(offs_m[:, None], t_i[:, None], sin_i[:, None], cos_i[:, None], gamma_i[:, None], delta_i[:, None], offs_n[None, :],
                      t_j[None, :], sin_j[None, :], cos_j[None, :], w_j[None, :], reach_j[None, :], s_time, s_hour)


@gluon.jit
def _folded_bias(top, first_n, last_n, offs_m, t_i, sin_i, cos_i, gamma_i, delta_i, T_row, FLAGS_row, CLOCK_row, s_time, s_hour, L,
                 WINDOW: gl.constexpr, BLOCK_N: gl.constexpr, cols_layout: gl.constexpr):
    """The bias of the window's first key tile for the block's top half of rows and of its last tile
    for the bottom half, as one `[BM, BN]` tile: the other half of each corner tile sees none of its
    keys, so the two corners cost one tile of per-pair work instead of two."""
    n0, t0, sin0, cos0, w0, reach0 = _key_terms(first_n, T_row, FLAGS_row, CLOCK_row, L, WINDOW, BLOCK_N, cols_layout)
    n1, t1, sin1, cos1, w1, reach1 = _key_terms(last_n, T_row, FLAGS_row, CLOCK_row, L, WINDOW, BLOCK_N, cols_layout)
    up = top[:, None]
    return _pair_bias(offs_m[:, None], t_i[:, None], sin_i[:, None], cos_i[:, None], gamma_i[:, None], delta_i[:, None],
                      gl.where(up, n0[None, :], n1[None, :]), gl.where(up, t0[None, :], t1[None, :]),
                      gl.where(up, sin0[None, :], sin1[None, :]), gl.where(up, cos0[None, :], cos1[None, :]),
                      gl.where(up, w0[None, :], w1[None, :]), gl.where(up, reach0[None, :], reach1[None, :]), s_time, s_hour)


@gluon.jit
def prefetch_window_tiles(A, B, base, first_row, L, NT: gl.constexpr, BLOCK: gl.constexpr, D: gl.constexpr, FOLD: gl.constexpr,
                          load_layout: gl.constexpr, smem_layout: gl.constexpr):
    """Two `[NT, BLOCK, D]` shared buffers of the rows `first_row + t·BLOCK ..` of A and B (dense
    `[.., L, D]` at `base`; zeros outside [0, L)), fetched by cp.async, one commit group per tile, so a
    tile's wait leaves the later tiles' copies in flight. FOLD: the middle tiles first, then both
    corner tiles in one group, since they are used together."""
    a_smem = gl.allocate_shared_memory(gl.bfloat16, [NT, BLOCK, D], smem_layout)
    b_smem = gl.allocate_shared_memory(gl.bfloat16, [NT, BLOCK, D], smem_layout)
    tile_rows = gl.arange(0, BLOCK, layout=gl.SliceLayout(1, load_layout))
    dims = gl.arange(0, D, layout=gl.SliceLayout(0, load_layout))
    for i in gl.static_range(NT):
        t = (i + 1) % NT if FOLD else i
        rows = first_row + t * BLOCK + tile_rows
        offsets = base + rows.to(gl.int64)[:, None] * D + dims[None, :]
        valid = ((rows >= 0) & (rows < L))[:, None] & (dims < D)[None, :]
        _async_load(a_smem.index(t), A + offsets, mask=valid)
        _async_load(b_smem.index(t), B + offsets, mask=valid)
        if (not FOLD) or (i < NT - 2) or (i == NT - 1):
            async_copy.commit_group()
    return a_smem, b_smem


@gluon.jit
def _gluon_local_forward_kernel(Q, K, V, KP, VP, T, FLAGS, CLOCK, SCALES, O, LSE, sm_scale, L,
                                H: gl.constexpr, D: gl.constexpr, WINDOW: gl.constexpr, WEEKEND_BOTH: gl.constexpr,
                                BLOCK_M: gl.constexpr, BLOCK_N: gl.constexpr, FOLD: gl.constexpr, PV_ASYNC: gl.constexpr,
                                num_warps: gl.constexpr):
    """One 64-row query block per program (one warpgroup); q, k, v, o dense `[B, H, L, D]` bf16."""
    NT: gl.constexpr = (BLOCK_M + WINDOW) // BLOCK_N
    gl.static_assert((not FOLD) or (WINDOW == BLOCK_M and BLOCK_N * 2 == BLOCK_M), "folding pairs a block's two corner tiles")
    s_layout: gl.constexpr = gl.NVMMADistributedLayout(version=[3, 0], warps_per_cta=[4, 1], instr_shape=[16, BLOCK_N, 16])
    o_layout: gl.constexpr = gl.NVMMADistributedLayout(version=[3, 0], warps_per_cta=[4, 1], instr_shape=[16, D, 16])
    p_layout: gl.constexpr = gl.DotOperandLayout(operand_index=0, parent=o_layout, k_width=2)
    rows_layout: gl.constexpr = gl.SliceLayout(1, s_layout)
    cols_layout: gl.constexpr = gl.SliceLayout(0, s_layout)
    load_layout: gl.constexpr = gl.BlockedLayout(size_per_thread=[1, 8], threads_per_warp=[4, 8], warps_per_cta=[4, 1], order=[1, 0])
    smem_layout: gl.constexpr = gl.NVMMASharedLayout(swizzle_byte_width=128, element_bitwidth=16, rank=2)

    pid_bh = gl.program_id(1)
    b = pid_bh // H
    h = pid_bh % H
    start_m = gl.program_id(0) * BLOCK_M
    base = pid_bh.to(gl.int64) * L * D

    first_key = start_m - WINDOW
    k_smem, v_smem = prefetch_window_tiles(K, V, base, first_key, L, NT, BLOCK_N, D, FOLD, load_layout, smem_layout)
    dims = gl.arange(0, D, layout=gl.SliceLayout(0, load_layout))

    q_rows = start_m + gl.arange(0, BLOCK_M, layout=gl.SliceLayout(1, load_layout))
    q_valid = (q_rows < L)[:, None] & (dims < D)[None, :]
    q = gl.load(Q + base + q_rows.to(gl.int64)[:, None] * D + dims[None, :], mask=q_valid, other=0.0)
    q_smem = gl.allocate_shared_memory(gl.bfloat16, [BLOCK_M, D], smem_layout, q)

    # query terms and the profile key's start of the online softmax (bias 0, always visible)
    offs_m = start_m + gl.arange(0, BLOCK_M, layout=rows_layout)
    rows = offs_m < L
    T_row = T + b * L
    FLAGS_row = FLAGS + b * L
    CLOCK_row = CLOCK + b * 2 * L
    t_i = gl.load(T_row + offs_m, mask=rows, other=0)
    sin_i = gl.load(CLOCK_row + offs_m, mask=rows, other=0.0)
    cos_i = gl.load(CLOCK_row + L + offs_m, mask=rows, other=1.0)
    w_i = ((gl.load(FLAGS_row + offs_m, mask=rows, other=0) >> 1) & 1).to(gl.float32)
    s_time = gl.load(SCALES + h) * 1.4426950408889634
    s_hour = gl.load(SCALES + H + h) * 1.4426950408889634
    s_weekend = gl.load(SCALES + 2 * H + h) * 1.4426950408889634
    gamma_i, delta_i = weekend_coefficients(w_i, s_weekend, WEEKEND_BOTH)
    qk_scale = sm_scale * 1.4426950408889634

    kp = gl.load(KP + pid_bh.to(gl.int64) * D + dims).to(gl.float32)
    m_i = gl.convert_layout(gl.sum(q.to(gl.float32) * kp[None, :], 1) * qk_scale, rows_layout)
    vp = gl.load(VP + pid_bh.to(gl.int64) * D + gl.arange(0, D, layout=gl.SliceLayout(0, o_layout))).to(gl.float32)
    acc = gl.zeros([BLOCK_M, D], gl.float32, o_layout) + vp[None, :]
    l_i = gl.full([BLOCK_M], 1.0, gl.float32, rows_layout)
    zero_scores = gl.zeros([BLOCK_M, BLOCK_N], gl.float32, s_layout)
    fence_async_shared()

    # block 0's tiles before the first key are computed too (all masked): one block in L / 64, and no
    # runtime branch, so the async accumulator can cross iterations
    GROUPS: gl.constexpr = NT - 1 if FOLD else NT
    for g in gl.static_range(GROUPS):
        async_copy.wait_group(GROUPS - 1 - g)
        _block_barrier()
        fence_async_shared()
        if FOLD and g == GROUPS - 1:  # the two corner tiles as one: top rows against tile 0, bottom rows against the last
            top = (offs_m - start_m) < BLOCK_M // 2
            first_token = warpgroup_mma(q_smem, k_smem.index(0).permute((1, 0)), zero_scores, use_acc=False, is_async=True)
            last_token = warpgroup_mma(q_smem, k_smem.index(NT - 1).permute((1, 0)), zero_scores, use_acc=False, is_async=True)
            bias = _folded_bias(top, first_key, first_key + (NT - 1) * BLOCK_N, offs_m, t_i, sin_i, cos_i, gamma_i, delta_i, T_row,
                                FLAGS_row, CLOCK_row, s_time, s_hour, L, WINDOW, BLOCK_N, cols_layout)
            qk_first, qk_last, acc = warpgroup_mma_wait(num_outstanding=0, deps=(first_token, last_token, acc))
            qk = gl.where(top[:, None], qk_first, qk_last)
        else:
            t = g + 1 if FOLD else g
            start_n = first_key + t * BLOCK_N
            s_token = warpgroup_mma(q_smem, k_smem.index(t).permute((1, 0)), zero_scores, use_acc=False, is_async=True)
            bias = _tile_bias(start_n, offs_m, t_i, sin_i, cos_i, gamma_i, delta_i, T_row, FLAGS_row, CLOCK_row, s_time, s_hour, L,
                              WINDOW, BLOCK_N, cols_layout)
            qk, acc = warpgroup_mma_wait(num_outstanding=0, deps=(s_token, acc))
        scores = qk * qk_scale + bias
        m_new = gl.maximum(m_i, gl.max(scores, 1))
        p = gl.exp2(scores - m_new[:, None])
        alpha = gl.exp2(m_i - m_new)
        l_i = l_i * alpha + gl.sum(p, 1)
        acc = acc * gl.convert_layout(alpha, gl.SliceLayout(1, o_layout))[:, None]
        p16 = p.to(gl.bfloat16)
        # PV_ASYNC: the tile's P·V runs on while the next tile's wait, MMA issue and bias go on
        if FOLD and g == GROUPS - 1:
            up = top[:, None]
            acc = warpgroup_mma(gl.convert_layout(gl.where(up, p16, 0.0), p_layout), v_smem.index(0), acc, is_async=True)
            acc = warpgroup_mma(gl.convert_layout(gl.where(up, 0.0, p16), p_layout), v_smem.index(NT - 1), acc, is_async=PV_ASYNC)
        else:
            acc = warpgroup_mma(gl.convert_layout(p16, p_layout), v_smem.index(t), acc, is_async=PV_ASYNC)
        m_i = m_new
    acc = warpgroup_mma_wait(num_outstanding=0, deps=(acc,))

    # every row has the profile key, so l_i >= its share > 0
    out = acc / gl.convert_layout(l_i, gl.SliceLayout(1, o_layout))[:, None]
    lse = (m_i + gl.log2(l_i)) / 1.4426950408889634
    gl.store(O + base + q_rows.to(gl.int64)[:, None] * D + dims[None, :], gl.convert_layout(out.to(gl.bfloat16), load_layout), mask=q_valid)
    gl.store(LSE + pid_bh.to(gl.int64) * L + offs_m, lse, mask=rows)


def gluon_local_forward(q, k, v, k_profile, v_profile, times, flags, clock, scales32, out, lse, window: int, weekend_rule: int,
                        sm_scale: float, block_n: int = 32, fold: bool = True, pv_async: bool = True, maxnreg=None):
    """Launch the probe kernel over dense `[B, H, L, D]` bf16 q, k, v (history rows only)."""
    batch, heads, length, dim = q.shape
    options = {"num_warps": 4, **({"maxnreg": maxnreg} if maxnreg else {})}
    _gluon_local_forward_kernel[(triton.cdiv(length, 64), batch * heads)](
        q, k, v, k_profile, v_profile, times, flags, clock, scales32, out, lse, sm_scale, length, H=heads, D=dim, WINDOW=window,
        WEEKEND_BOTH=weekend_rule == 1, BLOCK_M=64, BLOCK_N=block_n, FOLD=fold, PV_ASYNC=pv_async, **options)


def compile_offline(fn, pointers: dict, constexprs: dict, maxnreg=None) -> dict:
    """Compile a Gluon kernel for sm_90 without a GPU (pointers 16-byte aligned, L a multiple of 16, as
    the launches specialise them): its resource usage line and SASS."""
    from triton.backends.compiler import GPUTarget
    from triton.experimental.gluon._runtime import GluonASTSource

    signature = {name: pointers.get(name, "constexpr" if name in constexprs else ("fp32" if name == "sm_scale" else "i32"))
                 for name in fn.arg_names}
    attrs = {(fn.arg_names.index(name),): [["tt.divisibility", 16]] for name in list(pointers) + ["L"]}
    source = GluonASTSource(fn, signature, {(fn.arg_names.index(c),): v for c, v in constexprs.items()}, attrs)
    compiled = triton.compile(source, target=GPUTarget("cuda", 90, 32), options={"num_warps": 4, **({"maxnreg": maxnreg} if maxnreg else {})})
    tools = Path(triton.__file__).parent / "backends" / "nvidia" / "bin"
    with tempfile.NamedTemporaryFile(suffix=".cubin", delete=False) as handle:
        handle.write(compiled.asm["cubin"])
    usage = subprocess.run([tools / "cuobjdump", "-res-usage", handle.name], capture_output=True, text=True, check=True).stdout
    sass = subprocess.run([tools / "cuobjdump", "-sass", handle.name], capture_output=True, text=True, check=True).stdout
    os.unlink(handle.name)
    return {"usage": usage.strip().splitlines()[-1].strip(), "sass": sass}


def check_offline(block_n: int, fold: bool, pv_async: bool, maxnreg) -> dict:
    pointers = {name: "*bf16" for name in ("Q", "K", "V", "KP", "VP", "O")}
    pointers |= {"T": "*i32", "FLAGS": "*i32", "CLOCK": "*fp32", "SCALES": "*fp32", "LSE": "*fp32"}
    constexprs = {"H": 8, "D": 64, "WINDOW": 64, "WEEKEND_BOTH": False, "BLOCK_M": 64, "BLOCK_N": block_n, "FOLD": fold,
                  "PV_ASYNC": pv_async, "num_warps": 4}
    return compile_offline(_gluon_local_forward_kernel, pointers, constexprs, maxnreg)


def make_inputs(batch: int, heads: int, length: int, dim: int, seed: int):
    """Random history rows as `local_history_triton` builds them: time-sorted, some rows left-padded."""
    import torch

    sys.path.insert(0, str(ROOT))
    from recsys.ops.evo_attention import clock_words, earliest_real_time, flag_words, relative_int32

    generator = torch.Generator(device="cpu").manual_seed(seed)
    gaps = torch.randint(1, 7_200, (batch, length), generator=generator)
    times = 1_700_000_000 + torch.cumsum(gaps, dim=1)
    pad = torch.randint(0, length // 8, (batch, 1), generator=generator)
    real = torch.arange(length)[None, :] >= pad
    q, k, v = (torch.randn(batch, heads, length, dim, generator=generator).to(torch.bfloat16) for _ in range(3))
    k_profile, v_profile = (torch.randn(batch, heads, 1, dim, generator=generator).to(torch.bfloat16) for _ in range(2))
    scales = torch.tensor([[2.0 ** (-8 * (h + 1) / heads) for h in range(heads)]] * 3) * torch.tensor([[1.0], [0.7], [0.4]])
    relative = relative_int32(times, real, earliest_real_time(times, real))
    words = (relative, flag_words(real, times, 0), clock_words(relative))
    return [x.cuda() for x in (q, k, v, k_profile, v_profile, *words, scales.float().contiguous())]


def time_ms(fn, steps: int) -> float:
    import torch

    for _ in range(5):
        fn()
    torch.cuda.synchronize()
    samples = []
    for _ in range(5):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        for _ in range(steps):
            fn()
        end.record()
        torch.cuda.synchronize()
        samples.append(start.elapsed_time(end) / steps)
    return statistics.median(samples)


# (key tile, corner tiles folded into one, P·V left running into the next tile, register cap)
VARIANTS = [(32, False, True, None), (32, True, True, None), (32, True, False, None), (32, True, True, 128), (32, True, True, 144),
            (32, True, False, 128), (64, False, False, 168)]


def parse_variants(text: str) -> list:
    """'32,1,0,128;64,0,0,0' -> VARIANTS entries (0 as a register cap: none)."""
    variants = []
    for item in text.split(";"):
        fields = [int(x) for x in item.split(",")]
        variants.append((fields[0], *[bool(x) for x in fields[1:-1]], fields[-1] or None))
    return variants


def variant_name(block_n: int, fold: bool, pv_async: bool, cap) -> str:
    return (f"gluon BN={block_n}{' folded' if fold else ''}{' async-PV' if pv_async else ''}"
            f"{f' cap {cap}' if cap else ''}")


def run_gpu(args) -> dict:
    import torch

    from recsys.ops.evo_local_triton import local_forward

    q, k, v, kp, vp, times, flags, clock, scales = make_inputs(args.batch, args.heads, args.n, 64, args.seed)
    sm_scale = 1.0 / math.sqrt(64)
    lse_shape = (args.batch, args.heads, args.n)
    reference_out, reference_lse = torch.empty_like(q), torch.empty(lse_shape, device="cuda")
    triton_step = lambda: local_forward(q, k, v, kp, vp, times, flags, clock, scales, reference_out, reference_lse, args.n, 64, 0, sm_scale)
    triton_step()
    rows = [{"kernel": "triton local forward (library)", "ms": time_ms(triton_step, args.steps), "max_out_err": 0.0, "max_lse_err": 0.0}]
    for block_n, fold, pv_async, cap in VARIANTS:
        out, lse = torch.full_like(q, float("nan")), torch.full(lse_shape, float("nan"), device="cuda")
        step = lambda: gluon_local_forward(q, k, v, kp, vp, times, flags, clock, scales, out, lse, 64, 0, sm_scale, block_n, fold, pv_async,
                                          cap)
        name = variant_name(block_n, fold, pv_async, cap)
        try:
            step()
            torch.cuda.synchronize()
        except Exception as error:  # a variant that does not compile is a result, not a crash
            rows.append({"kernel": name, "error": f"{type(error).__name__}: {str(error)[:300]}"})
            continue
        rows.append({"kernel": name, "ms": time_ms(step, args.steps),
                     "max_out_err": (out.float() - reference_out.float()).abs().max().item(),
                     "max_lse_err": (lse - reference_lse).abs().max().item()})
    reference = rows[0]["ms"]
    for row in rows:
        if "ms" in row:
            row["x_triton"] = row["ms"] / reference
    return {"device": torch.cuda.get_device_name(), "n": args.n, "batch": args.batch, "heads": args.heads, "rows": rows}


def probe_arguments(description: str, variants: bool = True) -> argparse.ArgumentParser:
    """The probes' common options (shape, timing, seed, output; the variants to run)."""
    parser = argparse.ArgumentParser(description=description, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--n", type=int, default=8192)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--heads", type=int, default=8)
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", default=os.environ.get("OUT", "."))
    if variants:
        parser.add_argument("--variants", type=parse_variants, help="';'-separated variants in VARIANTS' order of fields, e.g. "
                            "'32,1,0,128' (0/1 for flags, 0 for no register cap)")
        parser.add_argument("--check-only", action="store_true", help="compile for sm_90 offline; no GPU")
    return parser


def main() -> None:
    parser = probe_arguments(__doc__)
    args = parser.parse_args()
    if args.variants:
        VARIANTS[:] = args.variants
    if args.check_only:
        for block_n, fold, pv_async, cap in VARIANTS:
            print(f"{variant_name(block_n, fold, pv_async, cap)}: {check_offline(block_n, fold, pv_async, cap)['usage']}")
        return
    result = run_gpu(args)
    print(f"{'kernel':<40} {'ms':>8} {'x triton':>9} {'max |dO|':>10} {'max |dLSE|':>11}")
    for row in result["rows"]:
        if "ms" in row:
            print(f"{row['kernel']:<40} {row['ms']:>8.4f} {row['x_triton']:>9.3f} {row['max_out_err']:>10.2e} {row['max_lse_err']:>11.2e}")
        else:
            print(f"{row['kernel']:<40} {row['error']}")
    Path(args.out).mkdir(parents=True, exist_ok=True)
    (Path(args.out) / "gluon_local_forward.json").write_text(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
