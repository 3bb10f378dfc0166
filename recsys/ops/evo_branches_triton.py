"""SparseCTR's three branches as one autograd node over the fused Triton kernels, so that the
branches' gradients of the shared q, k and v are summed inside the kernels.

As three separate nodes (`evo_keyed_triton` twice, `evo_local_triton` once) autograd adds the
branches' full-size dQ, dK and dV afterwards, and the transition branch's key gather and the global
branch's chunk means scatter theirs into zero-filled full-size tensors first: at B·n = 65,536 and
8 heads of 64 those passes took ~0.6 of 2.7 ms on the H100 (session 5 profile). Here the backward
runs the dQ kernels first, each storing its branch's row term rowsum(dO·O) from the dO and O tiles
it loads (no separate row-term pass), then the dK/dV kernels:
- dQ: the local kernel writes it (history and candidates: the local kernels handle the candidates'
  window too), then the global and transition dQ kernels add in place (`ACCUMULATE`);
- dK, dV: the keyed dK/dV kernels give small float32 per-chunk and per-tail gradients; the local
  dK/dV kernel gathers them per key (`KeyGradientsIn`) and writes each key's whole gradient once.
When the chunk summaries average something other than k and v (SparseCTR's `compression: mlp`), the
per-chunk gradient goes to those tensors instead (`chunk_summary_gradient`).

Equal to `recsys.ops.evo_attention.evo_attend` (the tests compare outputs and every gradient).
Runs on CUDA; on CPU under Triton's interpreter (`TRITON_INTERPRET=1`), which the tests use.
"""

from __future__ import annotations

import math
from typing import List, Tuple

import torch
from torch import Tensor

from recsys.ops.evo_attention import EvoGeometry, FusedTimes, _gather_positions, chunk_membership, chunk_summaries_matmul
from recsys.ops.evo_keyed_triton import KeyTimes, keyed_forward, keyed_key_gradients, keyed_query_gradients
from recsys.ops.evo_local_triton import KeyGradientsIn, local_forward, local_key_gradients, local_query_gradients
from recsys.ops.triton_tiles import INTERPRETED, pad_head_dim, padded_head_dim


def chunk_summary_gradient(d_chunks: Tensor, chunk_id: Tensor, total: int) -> Tensor:
    """Per-chunk gradients `[B, H, P, D]` (already divided by the chunk sizes) spread to the chunks'
    positions: `[B, H, total, D]`, zeros at padding and past the history."""
    batch, heads, _, dim = d_chunks.shape
    length = chunk_id.shape[1]
    padded = torch.cat([d_chunks.new_zeros(batch, heads, 1, dim), d_chunks], dim=2)  # row 0: padding positions
    spread = padded.gather(2, chunk_id.long().view(batch, 1, length, 1).expand(batch, heads, length, dim))
    return torch.nn.functional.pad(spread, (0, 0, 0, total - length))


# The node is two torch.library custom ops (forward, backward) with a registered autograd formula
# rather than an autograd.Function: torch.compile traces a custom op as one opaque call from its fake
# (shape-only) implementation, so an encoder block compiles as one graph around it (train.compile
# with reduce-overhead can then replay the whole block as a CUDA graph) where an autograd.Function
# over autotuned Triton launches was a graph break.


@torch.library.custom_op("recsys::evo_branches_forward", mutates_args=())
def _forward(q: Tensor, k: Tensor, v: Tensor, k_profile: Tensor, v_profile: Tensor, k_summary: Tensor, v_summary: Tensor,
             scales32: Tensor, times: List[Tensor], chunk_id: Tensor, tail_positions: Tensor, window: int, weekend_rule: int,
             sm_scale: float, shared_summary: bool) -> Tuple[Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, Tensor]:
    """(global, transition, local outputs; their natural log-sum-exps; k and v chunk summaries and
    tails; chunk sizes): the last eight are what the backward reads."""
    # The kernels index dense rows: a no-op for the eager caller's tensors, a guard against a
    # compiled graph handing over other strides.
    q, k, v, k_profile, v_profile = (x.contiguous() for x in (q, k, v, k_profile, v_profile))
    timing = FusedTimes(*times)
    length, num_chunks = chunk_id.shape[1], timing.chunk_end.shape[1]
    local = torch.empty_like(q)
    local_lse = torch.empty(q.shape[:3], device=q.device, dtype=torch.float32)
    local_forward(q, k, v, k_profile, v_profile, timing.query_times, timing.query_flags, scales32, local, local_lse, length, window,
                  weekend_rule, sm_scale)

    membership = chunk_membership(chunk_id, num_chunks)
    k_chunks = chunk_summaries_matmul(k_summary[:, :, :length], membership).contiguous()
    v_chunks = chunk_summaries_matmul(v_summary[:, :, :length], membership).contiguous()
    chunk_keys = KeyTimes(timing.chunk_times, timing.chunk_end, timing.chunk_flags)
    global_out, global_lse = keyed_forward(q, k_chunks, v_chunks, timing.query_times, timing.query_flags, chunk_keys, scales32, length,
                                           weekend_rule, sm_scale)
    k_tails, v_tails = _gather_positions(k, tail_positions).contiguous(), _gather_positions(v, tail_positions).contiguous()
    tail_keys = KeyTimes(timing.tail_times, timing.tail_end, timing.tail_flags)
    transition_out, transition_lse = keyed_forward(q, k_tails, v_tails, timing.query_times, timing.query_flags, tail_keys, scales32,
                                                   length, weekend_rule, sm_scale)
    chunk_sizes = membership.sum(-1).clamp_min(1).float()
    return global_out, transition_out, local, global_lse, transition_lse, local_lse, k_chunks, v_chunks, k_tails, v_tails, chunk_sizes


@_forward.register_fake
def _forward_shapes(q, k, v, k_profile, v_profile, k_summary, v_summary, scales32, times, chunk_id, tail_positions, window, weekend_rule,
                    sm_scale, shared_summary):
    batch, heads, _, dim = q.shape
    num_chunks, num_tails = FusedTimes(*times).chunk_end.shape[1], tail_positions.shape[1]
    lse = [q.new_empty(q.shape[:3], dtype=torch.float32) for _ in range(3)]
    chunks = [q.new_empty(batch, heads, num_chunks, dim, dtype=x.dtype) for x in (k_summary, v_summary)]
    tails = [q.new_empty(batch, heads, num_tails, dim, dtype=x.dtype) for x in (k, v)]
    outs = [q.new_empty(q.shape) for _ in range(3)]  # contiguous, as the kernels write them
    return (*outs, *lse, *chunks, *tails, q.new_empty(batch, num_chunks, dtype=torch.float32))


@torch.library.custom_op("recsys::evo_branches_backward", mutates_args=())
def _backward(grads: List[Tensor], saved: List[Tensor], times: List[Tensor], window: int, weekend_rule: int, sm_scale: float,
              shared_summary: bool) -> Tuple[Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, Tensor]:
    """(dq, dk, dv, d k_profile, d v_profile, d k_summary, d v_summary, d scales); the summaries'
    gradients are empty when they are k and v themselves (summed into dk and dv in the kernels)."""
    (q, k, v, k_profile, v_profile, k_chunks, v_chunks, k_tails, v_tails, global_out, transition_out, local, *lse, scales32,
     chunk_sizes) = (x.contiguous() for x in saved)
    timing = FusedTimes(*times)
    length, total = timing.history_chunk.shape[1], q.shape[2]
    grads = [g.contiguous() for g in grads]
    dscales = torch.zeros(3, *scales32.shape, device=q.device, dtype=torch.float32)  # one per kernel: autotuning zeroes its own
    keyed = (timing.query_times, timing.query_flags)
    chunk_keys = KeyTimes(timing.chunk_times, timing.chunk_end, timing.chunk_flags)
    tail_keys = KeyTimes(timing.tail_times, timing.tail_end, timing.tail_flags)
    shape = (length, weekend_rule, sm_scale)
    query_words = (timing.query_times, timing.query_flags, scales32)
    local_shape = (length, window, weekend_rule, sm_scale)

    # dQ first: each dQ kernel also stores its branch's row term rowsum(dO·O) for the dK/dV kernels.
    dq = torch.empty_like(q)
    dk_profile = torch.zeros(k_profile.shape, device=q.device, dtype=torch.float32)
    dv_profile = torch.zeros_like(dk_profile)
    local_delta = local_query_gradients(q, k, v, k_profile, v_profile, grads[2], local, lse[2], *query_words, dq, dk_profile, dv_profile,
                                        dscales[2], *local_shape)
    global_delta = keyed_query_gradients(q, k_chunks, v_chunks, grads[0], global_out, lse[0], *keyed, chunk_keys, scales32, dq,
                                         dscales[0], True, *shape)
    tail_delta = keyed_query_gradients(q, k_tails, v_tails, grads[1], transition_out, lse[1], *keyed, tail_keys, scales32, dq,
                                       dscales[1], True, *shape)

    dk_chunks, dv_chunks = keyed_key_gradients(q, k_chunks, v_chunks, grads[0], lse[0], global_delta, *keyed, chunk_keys, scales32, *shape)
    sizes = chunk_sizes.view(chunk_sizes.shape[0], 1, -1, 1)
    dk_chunks, dv_chunks = dk_chunks / sizes, dv_chunks / sizes
    dk_tails, dv_tails = keyed_key_gradients(q, k_tails, v_tails, grads[1], lse[1], tail_delta, *keyed, tail_keys, scales32, *shape)
    tail_in = KeyGradientsIn(tail_slot=timing.tail_slot, d_tail_keys=dk_tails, d_tail_values=dv_tails)
    extra = tail_in._replace(chunk_id=timing.history_chunk, d_chunk_keys=dk_chunks, d_chunk_values=dv_chunks) if shared_summary else tail_in
    dk, dv = torch.empty_like(k), torch.empty_like(v)
    local_key_gradients(q, k, v, grads[2], lse[2], local_delta, *query_words, dk, dv, *local_shape, extra=extra)

    if shared_summary:
        dk_summary, dv_summary = q.new_empty(0), q.new_empty(0)  # two tensors: a custom op's returns may not alias
    else:
        dk_summary = chunk_summary_gradient(dk_chunks, timing.history_chunk, total).to(k.dtype)
        dv_summary = chunk_summary_gradient(dv_chunks, timing.history_chunk, total).to(v.dtype)
    return dq, dk, dv, dk_profile.to(k_profile.dtype), dv_profile.to(v_profile.dtype), dk_summary, dv_summary, dscales.sum(0)


@_backward.register_fake
def _backward_shapes(grads, saved, times, window, weekend_rule, sm_scale, shared_summary):
    q, k, v, k_profile, v_profile = saved[:5]
    dense = [x.new_empty(x.shape) for x in (q, k, v, k_profile, v_profile)]  # contiguous, as the real ones
    summaries = (q.new_empty(0), q.new_empty(0)) if shared_summary else (k.new_empty(k.shape), v.new_empty(v.shape))
    return (*dense, *summaries, saved[-2].new_empty(saved[-2].shape, dtype=torch.float32))


_SAVED_OUTPUTS = slice(3, 11)  # the forward's outputs the backward reads besides the branch outputs
# What `_backward` takes as `saved`: q, k, v, the two profile tensors, chunk and tail keys and values,
# the three outputs, their log-sum-exps, the scales and the chunk sizes; the batch's times follow.
_SAVED_TENSORS = 17


def _setup_context(ctx, inputs, output) -> None:
    (q, k, v, k_profile, v_profile, _, _, scales32, times, _, _, window, weekend_rule, sm_scale, shared_summary) = inputs
    global_lse, transition_lse, local_lse, k_chunks, v_chunks, k_tails, v_tails, chunk_sizes = output[_SAVED_OUTPUTS]
    ctx.save_for_backward(q, k, v, k_profile, v_profile, k_chunks, v_chunks, k_tails, v_tails, *output[:3], global_lse, transition_lse,
                          local_lse, scales32, chunk_sizes, *times)
    ctx.mark_non_differentiable(*output[_SAVED_OUTPUTS])
    ctx.window, ctx.weekend_rule, ctx.sm_scale, ctx.shared_summary = window, weekend_rule, sm_scale, shared_summary


def _backward_formula(ctx, grad_global, grad_transition, grad_local, *_unused_grads):
    saved = list(ctx.saved_tensors)
    times = saved[_SAVED_TENSORS:]
    dq, dk, dv, dk_profile, dv_profile, dk_summary, dv_summary, dscales = _backward(
        [grad_global, grad_transition, grad_local], saved[:_SAVED_TENSORS], times, ctx.window, ctx.weekend_rule, ctx.sm_scale,
        ctx.shared_summary)
    summaries = (None, None) if ctx.shared_summary else (dk_summary, dv_summary)
    no_grads = [None] * len(times)  # a list input takes a list of gradients
    return (dq, dk, dv, dk_profile, dv_profile, *summaries, dscales, no_grads, None, None, None, None, None, None)


_forward.register_autograd(_backward_formula, setup_context=_setup_context)


def evo_branches_triton(q: Tensor, k: Tensor, v: Tensor, k_profile: Tensor, v_profile: Tensor, k_summary: Tensor, v_summary: Tensor,
                        geometry: EvoGeometry, window: int, scales: Tensor, weekend_rule: int) -> Tuple[Tensor, Tensor, Tensor]:
    """(global, transition, local) outputs `[B, H, T, D]` as `evo_attend` computes them, from the
    fused kernels; `geometry` from `evo_geometry(..., fused=True)`. k_summary / v_summary are what the
    chunk summaries average: pass k and v themselves (the same tensors) to have their gradients
    summed in the kernels."""
    if not q.is_cuda and not INTERPRETED:
        raise RuntimeError("the fused SparseCTR kernels run on CUDA (on the CPU only under TRITON_INTERPRET=1); use attention 'structural'")
    if geometry.fused_times.query_times.numel() == 0:
        raise ValueError("evo_branches_triton needs a geometry from evo_geometry(..., fused=True)")
    dim = q.shape[-1]
    padded = padded_head_dim(dim)
    shared_summary = k_summary is k and v_summary is v
    q, k, v, k_profile, v_profile = (pad_head_dim(x.to(q.dtype), padded) for x in (q, k, v, k_profile, v_profile))
    if shared_summary:
        k_summary, v_summary = k, v
    else:
        k_summary, v_summary = (pad_head_dim(x.to(q.dtype), padded) for x in (k_summary, v_summary))
    outs = _forward(q, k, v, k_profile, v_profile, k_summary, v_summary, scales.float().contiguous(), list(geometry.fused_times),
                    geometry.chunk_id, geometry.tail_positions, window, weekend_rule, 1.0 / math.sqrt(dim), shared_summary)
    return outs[0][..., :dim], outs[1][..., :dim], outs[2][..., :dim]
