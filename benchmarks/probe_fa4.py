"""Probe: how fast FlashAttention-4's CuTe-DSL SM90 kernels run CamA's and SparseCTR's attention
patterns, as upper bounds for the issue-7 targets (route 2 of RESULTS "Routes left").

FA4 (`flash-attn-4`) runs an FA3-structured forward and backward (TMA producer warps, wgmma
consumers) and takes `score_mod` / `score_mod_bwd` callbacks over `aux_tensors`. Its backward has
no way to return gradients for tensors the callbacks read, so the learnable parts of both biases
(CamA's bucket table, SparseCTR's temporal scales) get none here: every FA4 row is a bound on what
this route gives before that gradient is added, not a replacement for the library's kernels.

Rows (bf16, B·n = 65,536 tokens, 8 heads of 64, forward + backward with a fixed random dO):
  sdpa_causal       SDPA causal flash attention, the issue's yardstick
  fa4_causal        FA4 causal, no callbacks
  fa4_cama_bias     FA4 causal + CamA's log-bucket bias `table[h, bucket(t_q - t_k)]`
  fa4_cama_full     + CamA's channel masks (content heads causal; action heads: keys whose action is
                    in the head's group and whose time is strictly earlier; the diagonal always kept)
  fa4_local         FA4 sliding window of 64 keys (SparseCTR's local branch without its bias)
  fa4_local_bias    + SparseCTR's composite temporal bias (time octave, hour of day, weekend)
  fa4_keyed         SparseCTR's global and transition branches as one call over 2B rows of 32 keys
                    (16 chunk summaries; 16 chunks x 2 tail events), visibility and bias by callback
Correctness first (fp32 reference through an explicit bias, small shapes, bf16 kernels): output and
q/k/v gradients of fa4_cama_full and fa4_local_bias, relative to the reference's magnitude, next to
SDPA-bf16's own error on the same inputs.

    python3 benchmarks/probe_fa4.py --out $OUT/fa4          # on the GPU machine, FA4 on the path
    .venv/bin/python benchmarks/probe_fa4.py --compile-only  # here: compiles every kernel for sm_90a
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
import time
from pathlib import Path

COMPILE_ONLY = "--compile-only" in sys.argv
if COMPILE_ONLY:  # CPU-only compilation, as flash_attn.cute.interface._get_device_arch documents
    os.environ.setdefault("FLASH_ATTENTION_ARCH", "sm_90a")
    os.environ.setdefault("CUTE_DSL_ARCH", "sm_90a")
    os.environ.setdefault("FLASH_ATTENTION_NUM_SMS", "132")

import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402
import cutlass.cute as cute  # noqa: E402
from cutlass import Float32, Int32  # noqa: E402
from flash_attn.cute.interface import _flash_attn_bwd, _flash_attn_fwd, flash_attn_func  # noqa: E402

from gpu_suite import timer  # noqa: E402  (median seconds per call, CUDA events)

from recsys.ops.temporal import LOG_BUCKET_PER_OCTAVE, log_bucket  # noqa: E402

NUM_BUCKETS = 128  # log_bucket's default: table rows 0 .. 128
MASKED = -1.0e30  # additive: exp underflows to 0; no row here is fully masked but the keyed ones


# -- callbacks (CuTe DSL; with aux tensors FA4 calls them one score at a time) ---------------------
def _scalar(ssa, dtype):
    frag = cute.make_rmem_tensor(1, dtype)
    frag.store(ssa)
    return frag[0]


def _as_ssa(value, dtype):
    frag = cute.make_rmem_tensor(1, dtype)
    frag[0] = value
    return frag.load()


@cute.jit
def _log_bucket(delta):
    octave = cute.math.log2(Float32(max(delta, 1)), fastmath=True)
    return min(Int32(cute.math.floor(octave * Float32(LOG_BUCKET_PER_OCTAVE))), NUM_BUCKETS)


@cute.jit
def cama_bias_mod(tSrS_ssa, b_idx, h_idx, q_idx, kv_idx, seqlen_info, aux_tensors):
    """aux: times int32 [B, n], table float32 [H, 129]."""
    times, table = aux_tensors[0], aux_tensors[1]
    b, h, q, kv = _scalar(b_idx, Int32), _scalar(h_idx, Int32), _scalar(q_idx, Int32), _scalar(kv_idx, Int32)
    bias = table[h, _log_bucket(times[b, q] - times[b, kv])]
    return tSrS_ssa + _as_ssa(bias, Float32)


@cute.jit
def cama_full_mod(tSrS_ssa, b_idx, h_idx, q_idx, kv_idx, seqlen_info, aux_tensors):
    """aux: times int32 [B, n], table float32 [H, 129], actions int32 [B, n], group bits int32 [H]
    (bit a set: action a in the head's group; 0: the content channel)."""
    times, table, actions, groups = aux_tensors[0], aux_tensors[1], aux_tensors[2], aux_tensors[3]
    b, h, q, kv = _scalar(b_idx, Int32), _scalar(h_idx, Int32), _scalar(q_idx, Int32), _scalar(kv_idx, Int32)
    tq, tk = times[b, q], times[b, kv]
    bits = groups[h]
    in_group = (bits >> actions[b, kv]) & 1
    allowed = (bits == 0) | (q == kv) | ((in_group != 0) & (tk < tq))
    bias = table[h, _log_bucket(tq - tk)]
    if not allowed:
        bias = Float32(MASKED)
    return tSrS_ssa + _as_ssa(bias, Float32)


@cute.jit
def _composite_bias(tq, tk, weekend_q, weekend_k, scales, h):
    """SparseCTR's RelTemporal terms (recsys.ops.temporal.temporal_components) for Δ = tq - tk >= 0."""
    delta = tq - tk
    octave = -cute.math.floor(cute.math.log2(Float32(max(delta, 1)), fastmath=True))
    hour = -cute.math.sin(Float32(delta % 86400) * Float32(math.pi / 86400.0), fastmath=True)
    weekend = Float32(0.0)
    if weekend_q != weekend_k:
        weekend = Float32(-1.0)
    return scales[0, h] * octave + scales[1, h] * hour + scales[2, h] * weekend


@cute.jit
def local_bias_mod(tSrS_ssa, b_idx, h_idx, q_idx, kv_idx, seqlen_info, aux_tensors):
    """aux: times int32 [B, n] (seconds since the row's first event), weekend int32 [B, n], scales float32 [3, H]."""
    times, weekend, scales = aux_tensors[0], aux_tensors[1], aux_tensors[2]
    b, h, q, kv = _scalar(b_idx, Int32), _scalar(h_idx, Int32), _scalar(q_idx, Int32), _scalar(kv_idx, Int32)
    bias = _composite_bias(times[b, q], times[b, kv], weekend[b, q], weekend[b, kv], scales, h)
    return tSrS_ssa + _as_ssa(bias, Float32)


@cute.jit
def keyed_mod(tSrS_ssa, b_idx, h_idx, q_idx, kv_idx, seqlen_info, aux_tensors):
    """aux: query times, query weekend int32 [2B, n]; key times, key weekend, key end int32 [2B, 32]
    (a key is visible to queries at or after the position its chunk ends); scales float32 [3, H]."""
    q_times, q_weekend, k_times, k_weekend, k_end, scales = (aux_tensors[0], aux_tensors[1], aux_tensors[2], aux_tensors[3],
                                                             aux_tensors[4], aux_tensors[5])
    b, h, q, kv = _scalar(b_idx, Int32), _scalar(h_idx, Int32), _scalar(q_idx, Int32), _scalar(kv_idx, Int32)
    bias = _composite_bias(q_times[b, q], k_times[b, kv], q_weekend[b, q], k_weekend[b, kv], scales, h)
    if k_end[b, kv] > q:
        bias = Float32(MASKED)
    return tSrS_ssa + _as_ssa(bias, Float32)


@cute.jit
def additive_bwd(grad, score, b_idx, h_idx, q_idx, kv_idx, seqlen_info, aux_tensors):
    """d(score + bias)/d(score) = 1 (the bias's own gradient is what FA4 cannot return)."""
    return grad


# -- inputs -----------------------------------------------------------------------------------------
def event_times(batch: int, n: int, generator: torch.Generator) -> torch.Tensor:
    """As benchmarks/attention.make_inputs: 1-120 s gaps, a ~11 h session break every 64 events."""
    gaps = torch.randint(1, 120, (batch, n), generator=generator)
    gaps[:, torch.randint(0, n, (max(1, n // 64),), generator=generator)] += 40_000
    return gaps.cumsum(1)


def qkv(batch: int, n: int, heads: int, dim: int, device: str, generator: torch.Generator, keys: int | None = None):
    q = torch.randn(batch, n, heads, dim, generator=generator)
    k, v = (torch.randn(batch, keys or n, heads, dim, generator=generator) for _ in range(2))
    return [x.to(device, torch.bfloat16).requires_grad_() for x in (q, k, v)]


def cama_aux(batch: int, n: int, heads: int, device: str, generator: torch.Generator, full: bool) -> list:
    times = event_times(batch, n, generator).to(torch.int32)
    table = 0.01 * torch.randn(heads, NUM_BUCKETS + 1, generator=generator)
    aux = [times, table]
    if full:
        actions = torch.randint(1, 4, (batch, n), generator=generator, dtype=torch.int32)
        groups = torch.tensor([0] * (heads // 2) + [0b1100] * (heads - heads // 2), dtype=torch.int32)  # actions {2, 3}
        aux += [actions, groups]
    return [a.to(device) for a in aux]


def weekend_flags(times: torch.Tensor, start: int = 1_704_067_200) -> torch.Tensor:
    days = torch.div(times.to(torch.int64) + start, 86_400, rounding_mode="floor")
    return (torch.remainder(days + 3, 7) >= 5).to(torch.int32)


def local_aux(batch: int, n: int, heads: int, device: str, generator: torch.Generator) -> list:
    times = event_times(batch, n, generator).to(torch.int32)
    scales = torch.tensor([2.0 ** (-8.0 * (h + 1) / heads) for h in range(heads)]).repeat(3, 1)
    return [a.to(device) for a in (times, weekend_flags(times), scales)]


def keyed_aux(batch: int, n: int, heads: int, device: str, generator: torch.Generator, chunks: int = 16, tail: int = 2) -> list:
    """2B rows: the global branch's 16 summary keys (padded to 32 by never-visible keys), then the
    transition branch's 16 x 2 tail keys, with chunks of equal length."""
    times = event_times(batch, n, generator).to(torch.int32)
    chunk_end = torch.arange(1, chunks + 1) * (n // chunks)  # exclusive end position of each chunk
    summary_end = torch.cat([chunk_end, torch.full((32 - chunks,), 2**30)]).expand(batch, 32)
    tail_end = chunk_end.repeat_interleave(tail).expand(batch, chunks * tail)
    key_pos = torch.cat([chunk_end - 1, chunk_end - 1]).expand(batch, 32)
    tail_pos = (chunk_end.repeat_interleave(tail) - torch.arange(tail, 0, -1).repeat(chunks)).expand(batch, chunks * tail)
    q_times = torch.cat([times, times])
    k_times = torch.cat([times.gather(1, key_pos), times.gather(1, tail_pos)])
    k_end = torch.cat([summary_end, tail_end]).to(torch.int32)
    scales = torch.tensor([2.0 ** (-8.0 * (h + 1) / heads) for h in range(heads)]).repeat(3, 1)
    aux = (q_times, weekend_flags(q_times), k_times, weekend_flags(k_times), k_end, scales)
    return [a.contiguous().to(device) for a in aux]


# -- references (fp32, explicit bias) -------------------------------------------------------------------
def cama_bias_reference(aux: list, heads: int, full: bool) -> torch.Tensor:
    times, table = aux[0].long(), aux[1].float()
    bucket = log_bucket(times.unsqueeze(2) - times.unsqueeze(1), NUM_BUCKETS)
    bias = table[torch.arange(heads, device=times.device).view(1, -1, 1, 1), bucket.unsqueeze(1)]  # [B, H, n, n]
    n = times.shape[1]
    causal = torch.ones(n, n, dtype=torch.bool, device=times.device).tril()
    allowed = causal.expand_as(bias)
    if full:
        actions, groups = aux[2].long(), aux[3].long()
        in_group = (groups.view(1, -1, 1) >> actions.unsqueeze(1)) & 1  # [B, H, n] per key
        earlier = times.unsqueeze(1) < times.unsqueeze(2)  # key time < query time, [B, n(q), n(k)]
        action_ok = (in_group.unsqueeze(2) != 0) & earlier.unsqueeze(1)
        eye = torch.eye(n, dtype=torch.bool, device=times.device)
        allowed = causal & ((groups.view(1, -1, 1, 1) == 0) | eye | action_ok)
    return bias.masked_fill(~allowed, float("-inf"))


def local_bias_reference(aux: list, heads: int, window: int) -> torch.Tensor:
    times, weekend, scales = aux[0].long(), aux[1], aux[2].float()
    delta = (times.unsqueeze(2) - times.unsqueeze(1)).clamp_min(0)
    octave = -torch.floor(torch.log2(delta.clamp_min(1).float()))
    hour = -torch.sin(torch.remainder(delta, 86_400).float() * (math.pi / 86_400))
    weekend_term = -(weekend.unsqueeze(2) != weekend.unsqueeze(1)).float()
    terms = torch.stack([octave, hour, weekend_term], 1)  # [B, 3, n, n]
    bias = torch.einsum("bcqk,ch->bhqk", terms, scales)
    n = times.shape[1]
    i, j = torch.arange(n, device=times.device).view(-1, 1), torch.arange(n, device=times.device).view(1, -1)
    return bias.masked_fill(~((j <= i) & (j > i - window)), float("-inf"))


def attention_reference(q, k, v, bias):
    """[B, n, H, D] inputs, fp32, explicit softmax."""
    qf, kf, vf = (x.float().transpose(1, 2) for x in (q, k, v))
    logits = qf @ kf.transpose(-1, -2) / math.sqrt(q.shape[-1]) + bias
    return (logits.softmax(-1) @ vf).transpose(1, 2)


def relative_error(got: torch.Tensor, want: torch.Tensor) -> float:
    return ((got.float() - want.float()).abs().max() / want.float().abs().max()).item()


def check(name: str, fa4_call, bias_fn, batch: int, n: int, heads: int, dim: int, device: str) -> dict:
    generator = torch.Generator().manual_seed(1)
    q, k, v = qkv(batch, n, heads, dim, device, generator)
    aux, bias = bias_fn(generator)
    upstream = torch.randn(q.shape, generator=generator).to(device)
    out = fa4_call(q, k, v, aux)
    grads = torch.autograd.grad(out, (q, k, v), upstream.to(out.dtype))
    leaves = [x.detach().float().requires_grad_() for x in (q, k, v)]
    want = attention_reference(*leaves, bias)
    want_grads = torch.autograd.grad(want, leaves, upstream)
    sdpa_leaves = [x.detach().transpose(1, 2).requires_grad_() for x in (q, k, v)]
    sdpa = F.scaled_dot_product_attention(*sdpa_leaves, attn_mask=bias.to(torch.bfloat16)).transpose(1, 2)
    sdpa_grads = [g.transpose(1, 2) for g in torch.autograd.grad(sdpa, sdpa_leaves, upstream.to(sdpa.dtype))]
    row = {"check": name, "batch": batch, "n": n,
           "fa4_rel_err": {"out": relative_error(out, want), **{f"d{x}": relative_error(g, w) for x, g, w in zip("qkv", grads, want_grads)}},
           "sdpa_bf16_rel_err": {"out": relative_error(sdpa, want), **{f"d{x}": relative_error(g, w) for x, g, w in zip("qkv", sdpa_grads, want_grads)}}}
    print(f"  check {name}: fa4 {row['fa4_rel_err']}  sdpa-bf16 {row['sdpa_bf16_rel_err']}", flush=True)
    return row


# -- the experiments ------------------------------------------------------------------------------------
def fa4(score_mod=None, aux=None, causal=True, window=None):
    def call(q, k, v, aux_tensors=aux):
        out = flash_attn_func(q, k, v, causal=causal, window_size=(window - 1, 0) if window else (None, None),
                              score_mod=score_mod, score_mod_bwd=additive_bwd if score_mod else None,
                              aux_tensors=aux_tensors)
        return out[0] if isinstance(out, tuple) else out
    return call


def experiments(n_cama: int, n_sparse: int, heads: int, device: str, generator: torch.Generator, tokens: int) -> list:
    """(row name, n, batch, keys, call, aux)."""
    b_cama, b_sparse = tokens // n_cama, tokens // n_sparse
    rows = []
    for n in sorted({n_cama, n_sparse}):
        rows.append(("sdpa_causal", n, tokens // n, None, "sdpa", None))
        rows.append(("fa4_causal", n, tokens // n, None, fa4(), None))
    rows.append(("fa4_cama_bias", n_cama, b_cama, None, None, ("cama", False)))
    rows.append(("fa4_cama_full", n_cama, b_cama, None, None, ("cama", True)))
    rows.append(("fa4_local", n_sparse, b_sparse, None, fa4(causal=True, window=64), None))
    rows.append(("fa4_local_bias", n_sparse, b_sparse, None, None, ("local",)))
    rows.append(("fa4_keyed", n_sparse, 2 * b_sparse, 32, None, ("keyed",)))
    return rows


def build(kind: tuple, batch: int, n: int, heads: int, device: str, generator: torch.Generator):
    if kind[0] == "cama":
        aux = cama_aux(batch, n, heads, device, generator, kind[1])
        return fa4(cama_full_mod if kind[1] else cama_bias_mod, aux), aux
    if kind[0] == "local":
        aux = local_aux(batch, n, heads, device, generator)
        return fa4(local_bias_mod, aux, causal=True, window=64), aux
    aux = keyed_aux(batch // 2, n, heads, device, generator)
    return fa4(keyed_mod, aux, causal=False), aux


def compile_only(heads: int, dim: int) -> None:
    """Compile every experiment's forward and backward for sm_90a on fake tensors (no GPU needed)."""
    from torch._subclasses.fake_tensor import FakeTensorMode
    generator = torch.Generator().manual_seed(0)
    cases = [("plain causal", None, None, True, None, 8192, None), ("cama_bias", cama_bias_mod, ("cama", False), True, None, 4096, None),
             ("cama_full", cama_full_mod, ("cama", True), True, None, 4096, None), ("local", None, None, True, 64, 8192, None),
             ("local_bias", local_bias_mod, ("local",), True, 64, 8192, None), ("keyed", keyed_mod, ("keyed",), False, None, 8192, 32)]
    for name, mod, kind, causal, window, n, keys in cases:
        batch = 65536 // n * (2 if keys else 1)
        aux_real = None
        if kind:
            aux_real = {"cama": lambda: cama_aux(batch, n, heads, "cpu", generator, kind[1]),
                        "local": lambda: local_aux(batch, n, heads, "cpu", generator),
                        "keyed": lambda: keyed_aux(batch // 2, n, heads, "cpu", generator)}[kind[0]]()
        with FakeTensorMode():
            q = torch.empty(batch, n, heads, dim, dtype=torch.bfloat16, device="cuda")
            k = torch.empty(batch, keys or n, heads, dim, dtype=torch.bfloat16, device="cuda")
            v = torch.empty_like(k)
            aux = [torch.empty(a.shape, dtype=a.dtype, device="cuda") for a in aux_real] if aux_real else None
            started = time.time()
            window_args = dict(window_size_left=window - 1, window_size_right=0) if window else {}
            out, lse = _flash_attn_fwd(q, k, v, causal=causal, score_mod=mod, aux_tensors=aux, return_lse=True, **window_args)[:2]
            _flash_attn_bwd(q, k, v, out, torch.empty_like(out), lse, causal=causal, score_mod=mod,
                            score_mod_bwd=additive_bwd if mod else None, aux_tensors=aux, **window_args)
            print(f"  compiled {name}: forward + backward in {time.time() - started:.1f} s", flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, default=Path(os.environ.get("OUT", ".")) / "fa4")
    parser.add_argument("--compile-only", action="store_true")
    parser.add_argument("--repeats", type=int, default=10)
    args = parser.parse_args()
    heads, dim, tokens = 8, 64, 65536
    if args.compile_only:
        compile_only(heads, dim)
        return
    args.out.mkdir(parents=True, exist_ok=True)
    report = {"device": torch.cuda.get_device_name(), "torch": torch.__version__, "checks": [], "rows": []}

    def save() -> None:
        (args.out / "probe_fa4.json").write_text(json.dumps(report, indent=2))

    generator = torch.Generator().manual_seed(0)
    try:
        report["checks"].append(check("fa4_cama_full", lambda q, k, v, aux: fa4(cama_full_mod)(q, k, v, aux),
                                      lambda g: (lambda aux: (aux, cama_bias_reference(aux, heads, True)))(cama_aux(2, 512, heads, "cuda", g, True)),
                                      2, 512, heads, dim, "cuda"))
        report["checks"].append(check("fa4_local_bias", lambda q, k, v, aux: fa4(local_bias_mod, causal=True, window=64)(q, k, v, aux),
                                      lambda g: (lambda aux: (aux, local_bias_reference(aux, heads, 64)))(local_aux(2, 512, heads, "cuda", g)),
                                      2, 512, heads, dim, "cuda"))
    except Exception as error:  # noqa: BLE001 - a probe: record what failed and go on to the timings
        report["checks"].append({"error": repr(error)[:2000]})
        print(f"  check failed: {error!r}"[:2000], flush=True)
    save()
    for name, n, batch, keys, call, kind in experiments(4096, 8192, heads, "cuda", generator, tokens):
        try:
            q, k, v = qkv(batch, n, heads, dim, "cuda", generator, keys)
            aux = None
            if kind:
                call, aux = build(kind, batch, n, heads, "cuda", generator)
            upstream = torch.randn_like(q)
            if call == "sdpa":
                qt, kt, vt = (x.detach().transpose(1, 2).contiguous().requires_grad_() for x in (q, k, v))
                step_inputs = (qt, kt, vt)

                def forward():
                    return F.scaled_dot_product_attention(qt, kt, vt, is_causal=True)
                upstream = upstream.transpose(1, 2).contiguous()
            else:
                step_inputs = (q, k, v)

                def forward(call=call, aux=aux):
                    return call(q, k, v, aux)

            def step(forward=forward, step_inputs=step_inputs, upstream=upstream):
                for x in step_inputs:
                    x.grad = None
                forward().backward(upstream)

            started = time.time()
            step()
            torch.cuda.synchronize()
            first_s = time.time() - started
            ms = timer(step, args.repeats, 3, "cuda") * 1e3
            fwd_ms = timer(lambda forward=forward: forward(), args.repeats, 3, "cuda") * 1e3
            report["rows"].append({"row": name, "n": n, "batch": batch, "keys": keys or n, "ms": ms, "fwd_ms": fwd_ms, "first_call_s": first_s})
            print(f"  {name:<16} n={n:>5} B={batch:>3}: {ms:8.3f} ms fwd+bwd, {fwd_ms:8.3f} ms fwd (first call {first_s:.1f} s)", flush=True)
        except Exception as error:  # noqa: BLE001
            report["rows"].append({"row": name, "n": n, "error": repr(error)[:2000]})
            print(f"  {name} n={n}: failed {error!r}"[:2000], flush=True)
        save()
    flash = {r["n"]: r["ms"] for r in report["rows"] if r["row"] == "sdpa_causal" and "ms" in r}
    print(f"\n{'row':<16} {'n':>5} {'B':>4} {'keys':>5} {'ms':>8} {'fwd ms':>8} {'x sdpa':>7}")
    for r in report["rows"]:
        if "ms" in r:
            r["x_sdpa"] = r["ms"] / flash[r["n"]] if r["n"] in flash else None
            print(f"{r['row']:<16} {r['n']:>5} {r['batch']:>4} {r['keys']:>5} {r['ms']:>8.3f} {r['fwd_ms']:>8.3f} {r['x_sdpa'] or float('nan'):>7.2f}")
    save()


if __name__ == "__main__":
    main()
