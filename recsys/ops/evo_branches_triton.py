"""SparseCTR's three branches as one autograd node over the fused Triton kernels, so that the
branches' gradients of the shared q, k and v are summed inside the kernels.

As three separate nodes (`evo_keyed_triton` twice, `evo_local_triton` once) autograd adds the
branches' full-size dQ, dK and dV afterwards, and the transition branch's key gather and the global
branch's chunk means scatter theirs into zero-filled full-size tensors first: at B·n = 65,536 and
8 heads of 64 those passes took ~0.6 of 2.7 ms on the H100 (session 5 profile). The forward runs the
local forward kernel, which also attends over both key lists (the query tile is loaded once for
the three branches). The backward runs one dQ kernel, storing each
branch's row term rowsum(dO·O) from the dO and O tiles it loads (no separate row-term pass), then
the dK/dV kernels:
- dQ: the local dQ kernel walks the window (history and candidates: the local kernels handle the
  candidates' window too), then the global and transition key lists, and writes dQ once;
- dK, dV: the keyed dK/dV kernel (both lists in one launch) gives small float32 per-chunk and per-tail gradients; the local
  dK/dV kernel gathers them per key (`KeyGradientsIn`) and writes each key's whole gradient once.
When the chunk summaries average something other than k and v (SparseCTR's `compression: mlp`), the
per-chunk gradient goes to those tensors instead (`chunk_summary_gradient`).

With gates (`evo_branches_triton_gated`, what SparseCTR's layer calls) the node returns the
branches' gated sum instead of the three outputs: the forward kernel sums them in registers and
writes the sum once, and the backward kernels read the sum's one gradient, scale it per branch and
row, and write the gates' gradient (rowsum(dO·O) of each branch, which the dQ kernel computes for
the row terms anyway). Without it a layer ran two more passes over the three outputs, one each way
(about 2 of the 42 ms of a training step at L = 4,096, d_model 256: session 10 profile).

Layouts: the node takes the packed projection `[B, T, 3, H, D]` (what `nn.Linear(d, 3·d)` writes)
and the kernels read each head of q, k and v through its strides, write dq, dk and dv into one
packed gradient, and store the branch outputs as `[B, T, H, D]`. With dense `[B, H, T, D]` operands
the layer paid a transposing copy of q, k and v each way, the concatenation of dq, dk and dv, and a
transposed read of the outputs: about 7 of 60 ms of a training step at L = 4,096 on the H100
(session 10 profile, `triton_poi_fused_cat_clone_transpose` and bf16 copies).

By default the backward runs without the dQ kernel: the dK/dV kernels store their score gradients
and dQ is a banded matmul over them (`recsys.ops.evo_scores_backward`; 1.09 against 1.24 ms at
n = 8,192 on the H200). `RECSYS_EVO_BACKWARD=recompute` runs the dQ kernel that recomputes them.

Equal to `recsys.ops.evo_attention.evo_attend` (the tests compare outputs and every gradient).
Runs on CUDA; on CPU under Triton's interpreter (`TRITON_INTERPRET=1`), which the tests use.
"""

from __future__ import annotations

import math
import os
from typing import List, Optional, Sequence, Tuple

import torch
from torch import Tensor

from recsys.ops import evo_key_lists_triton as key_lists
from recsys.ops.evo_attention import EvoGeometry, FusedTimes, _gather_positions, chunk_membership, chunk_summaries_matmul
from recsys.ops.evo_keyed_triton import KeyList, KeyListBackward, KeyTimes, arrival_counters, keyed_key_gradients
from recsys.ops.evo_local_triton import KeyGradientsIn, local_forward, local_key_gradients, local_query_gradients, score_block
from recsys.ops.evo_scores_backward import SideStream, query_gradients_from_scores, row_terms, score_stores, window_scale_gradients
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


def split_heads(qkv: Tensor) -> Tuple[Tensor, Tensor, Tensor]:
    """q, k, v `[B, H, T, D]` as views of a packed `[B, T, 3, H, D]` projection (`nn.Linear(d, 3·d)`
    viewed per head): the kernels read them in place."""
    return qkv[:, :, 0].transpose(1, 2), qkv[:, :, 1].transpose(1, 2), qkv[:, :, 2].transpose(1, 2)


def _branch_output(qkv: Tensor) -> Tensor:
    """A branch output `[B, H, T, D]` stored as `[B, T, H, D]`: the gates' combination and the output
    projection read it as rows, with no transposing copy."""
    batch, total, _, heads, dim = qkv.shape
    return torch.empty_strided((batch, heads, total, dim), (total * heads * dim, dim, heads * dim, 1), device=qkv.device, dtype=qkv.dtype)


# Which backward the node runs: "stored" (`evo_scores_backward`: dQ from the dS the dK/dV kernels
# store; the default) or "recompute" (a dQ kernel that recomputes every score). Read per backward
# call, so a benchmark or test can switch it; the stored path needs the window's block to fit one
# dQ tile (`STORED_SCORE_MAX_BLOCK`), and falls back to recomputing otherwise.
BACKWARD_ENV = "RECSYS_EVO_BACKWARD"
# "0" runs the stored-score backward's window scale sums in order with its dQ pass instead of beside
# it (`SideStream`): the benchmarks' same-run reference for the overlap.
OVERLAP_ENV = "RECSYS_EVO_OVERLAP"
STORED_SCORE_MAX_BLOCK = 64


def stored_score_backward(window: int) -> bool:
    choice = os.environ.get(BACKWARD_ENV, "stored")
    if choice not in ("recompute", "stored"):
        raise ValueError(f"{BACKWARD_ENV} must be 'recompute' or 'stored', got {choice!r}")
    return choice == "stored" and score_block(window) <= STORED_SCORE_MAX_BLOCK


def _unit_inner(x: Tensor) -> Tensor:
    return x if x.stride(-1) == 1 else x.contiguous()


def _zeroed_float32(device: torch.device, *shapes: Sequence[int]) -> List[Tensor]:
    """Zeroed float32 tensors of `shapes`, views of one buffer cleared by one launch."""
    sizes = [math.prod(shape) for shape in shapes]
    buffer = torch.zeros(sum(sizes), device=device, dtype=torch.float32)
    return [piece.view(shape) for piece, shape in zip(buffer.split(sizes), shapes)]


def packed_chunk_summaries(qkv: Tensor, membership: Tensor, chunk_sizes: Tensor) -> Tuple[Tensor, Tensor]:
    """The k and v chunk means `[B, H, P, D]` of a packed projection, as `chunk_summaries_matmul` gives
    them, in one batched matmul over its k and v rows (a position's k and v are adjacent, so they
    read as one `[B, L, 2·H·D]` operand without a copy); `chunk_sizes` `[B, P]` at least 1."""
    batch, _, _, heads, dim = qkv.shape
    length, num_chunks = membership.shape[2], membership.shape[1]
    rows = qkv[:, :length, 1:].reshape(batch, length, 2 * heads * dim)
    sums = torch.bmm(membership.to(qkv.dtype), rows)
    means = (sums / chunk_sizes.to(qkv.dtype).unsqueeze(-1)).view(batch, num_chunks, 2, heads, dim)
    return means[:, :, 0].transpose(1, 2).contiguous(), means[:, :, 1].transpose(1, 2).contiguous()


@torch.library.custom_op("recsys::evo_branches_forward", mutates_args=())
def _forward(qkv: Tensor, k_profile: Tensor, v_profile: Tensor, k_summary: Tensor, v_summary: Tensor, scales32: Tensor, gates: Tensor,
             times: List[Tensor], chunk_id: Tensor, tail_positions: Tensor, window: int, weekend_rule: int, sm_scale: float,
             shared_summary: bool) -> Tuple[Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, Tensor]:
    """(global, transition, local outputs; their gated sum; their natural log-sum-exps; k and v chunk
    summaries and tails; chunk sizes): the last eight are what the backward reads. `qkv` the packed
    `[B, T, 3, H, D]` projection; with `shared_summary` the chunks average its k and v (k_summary,
    v_summary unused). `gates` float32 `[3, B, H, T]` (global, transition, local), or empty: no sum
    (the fourth output is then empty)."""
    # A no-op for the projection's output; a guard against a compiled graph handing over other strides.
    qkv, k_profile, v_profile = qkv.contiguous(), k_profile.contiguous(), v_profile.contiguous()
    q, k, v = split_heads(qkv)
    timing = FusedTimes(*times)
    length, num_chunks = chunk_id.shape[1], timing.chunk_end.shape[1]
    global_out, transition_out, local = (_branch_output(qkv) for _ in range(3))
    if shared_summary and key_lists.fits(num_chunks):  # two launches where the PyTorch ops below took about a dozen
        k_chunks, v_chunks, k_tails, v_tails, chunk_sizes = key_lists.packed_key_lists(qkv, timing.history_chunk, num_chunks, tail_positions)
    else:
        membership = chunk_membership(chunk_id, num_chunks)
        chunk_sizes = membership.sum(-1).clamp_min(1).float()
        if shared_summary:
            k_chunks, v_chunks = packed_chunk_summaries(qkv, membership, chunk_sizes)
        else:
            k_chunks = chunk_summaries_matmul(k_summary[:, :, :length], membership).contiguous()
            v_chunks = chunk_summaries_matmul(v_summary[:, :, :length], membership).contiguous()
        k_tails, v_tails = _gather_positions(k, tail_positions).contiguous(), _gather_positions(v, tail_positions).contiguous()
    chunk_keys = KeyTimes(timing.chunk_times, timing.chunk_end, timing.chunk_flags, timing.chunk_clock)
    tail_keys = KeyTimes(timing.tail_times, timing.tail_end, timing.tail_flags, timing.tail_clock)
    local_lse = torch.empty(q.shape[:3], device=q.device, dtype=torch.float32)
    gated = gates.numel() > 0
    fused = _branch_output(qkv) if gated else qkv.new_empty(0)
    global_lse, transition_lse = local_forward(q, k, v, k_profile, v_profile, timing.query_times, timing.query_flags, timing.query_clock,
                                               scales32, local, local_lse, length, window, weekend_rule, sm_scale,
                                               keyed=[KeyList(k_chunks, v_chunks, chunk_keys, global_out),
                                                      KeyList(k_tails, v_tails, tail_keys, transition_out)],
                                               gates=gates.contiguous() if gated else None, fused=fused if gated else None)
    return (global_out, transition_out, local, fused, global_lse, transition_lse, local_lse, k_chunks, v_chunks, k_tails, v_tails,
            chunk_sizes)


@_forward.register_fake
def _forward_shapes(qkv, k_profile, v_profile, k_summary, v_summary, scales32, gates, times, chunk_id, tail_positions, window,
                    weekend_rule, sm_scale, shared_summary):
    batch, total, _, heads, dim = qkv.shape
    num_chunks, num_tails = FusedTimes(*times).chunk_end.shape[1], tail_positions.shape[1]
    lse = [qkv.new_empty(batch, heads, total, dtype=torch.float32) for _ in range(3)]
    chunks = [qkv.new_empty(batch, heads, num_chunks, dim, dtype=qkv.dtype if shared_summary else x.dtype) for x in (k_summary, v_summary)]
    tails = [qkv.new_empty(batch, heads, num_tails, dim) for _ in range(2)]
    outs = [_branch_output(qkv) for _ in range(3)]  # the strides the kernels write
    fused = _branch_output(qkv) if gates.numel() > 0 else qkv.new_empty(0)
    return (*outs, fused, *lse, *chunks, *tails, qkv.new_empty(batch, num_chunks, dtype=torch.float32))


@torch.library.custom_op("recsys::evo_branches_backward", mutates_args=())
def _backward(grads: List[Tensor], saved: List[Tensor], times: List[Tensor], window: int, weekend_rule: int, sm_scale: float,
              shared_summary: bool, stored_scores: bool) -> Tuple[Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, Tensor]:
    """(d qkv, d k_profile, d v_profile, d k_summary, d v_summary, d scales, d gates); the summaries'
    gradients are empty when the chunks average qkv's k and v (summed into d qkv in the kernels), the
    gates' when the forward summed no branches (`grads` are then the three outputs' gradients, else
    the sum's, three times). d qkv is one packed tensor, so the projection's backward reads it
    without a concatenating copy. `stored_scores`: dQ from the dS the dK/dV kernels store
    (`evo_scores_backward`) instead of a dQ kernel that recomputes every score."""
    (qkv, k_profile, v_profile, k_chunks, v_chunks, k_tails, v_tails, global_out, transition_out, local, *lse, scales32, gates,
     chunk_sizes) = (_unit_inner(x) for x in saved)
    qkv, k_profile, v_profile = qkv.contiguous(), k_profile.contiguous(), v_profile.contiguous()
    q, k, v = split_heads(qkv)
    timing = FusedTimes(*times)
    length, total = timing.history_chunk.shape[1], q.shape[2]
    grads = [_unit_inner(g) for g in grads]
    keyed = (timing.query_times, timing.query_flags, timing.query_clock)
    chunk_keys = KeyTimes(timing.chunk_times, timing.chunk_end, timing.chunk_flags, timing.chunk_clock)
    tail_keys = KeyTimes(timing.tail_times, timing.tail_end, timing.tail_flags, timing.tail_clock)
    shape = (length, weekend_rule, sm_scale)
    query_words = (*keyed, scales32)
    local_shape = (length, window, weekend_rule, sm_scale)
    d_qkv = torch.empty_like(qkv)
    dq, dk, dv = split_heads(d_qkv)

    # what the kernels add into (the profile key's and value's gradients, the scales', the keyed kernel's
    # arrival counters and the recomputed rows' scratch) in one zeroed buffer: one launch where there were up to eight
    counters = (arrival_counters(q.shape[0], q.shape[1], [k_chunks.shape[2], k_tails.shape[2]]),)
    scratch_shapes = [k_profile.shape] * 2 + [scales32.shape] if stored_scores else []
    dk_profile, dv_profile, dscales, arrived, *scratch = _zeroed_float32(q.device, k_profile.shape, k_profile.shape, scales32.shape,
                                                                         counters, *scratch_shapes)
    keyed_lists = [KeyList(k_chunks, v_chunks, chunk_keys, global_out, grads[0], lse[0]),
                   KeyList(k_tails, v_tails, tail_keys, transition_out, grads[1], lse[1])]
    gated = gates.numel() > 0
    gates = gates.contiguous()
    d_gates = torch.empty_like(gates)  # written by the dQ kernel (or the row-term pass) where gated
    branch_gates = list(gates) if gated else [None] * 3
    dq_inputs = dict(keyed=keyed_lists, gates=gates if gated else None, d_gates=d_gates if gated else None)
    if stored_scores:  # the row terms first; dQ after the dK/dV kernels, from the dS they store (`evo_scores_backward`)
        (local_delta, global_delta, tail_delta), ds_profile = row_terms(q, k_profile, v_profile, grads, [global_out, transition_out, local],
                                                                        lse, sm_scale, dk_profile, dv_profile, gates, d_gates)
        local_store, keyed_store = score_stores(q, [k_chunks.shape[2], k_tails.shape[2]], length, window, dscales)
    else:  # dQ first, one kernel for the three branches: it also stores each branch's row term rowsum(dO·O) for the dK/dV kernels.
        local_delta, global_delta, tail_delta = local_query_gradients(q, k, v, k_profile, v_profile, grads[2], local, lse[2], *query_words, dq,
                                                                      dk_profile, dv_profile, dscales, *local_shape, **dq_inputs)
        local_store = keyed_store = None

    (dk_chunks, dv_chunks), (dk_tails, dv_tails) = keyed_key_gradients(
        q, [KeyListBackward(keyed_lists[0], global_delta, branch_gates[0]), KeyListBackward(keyed_lists[1], tail_delta, branch_gates[1])],
        *keyed, scales32, *shape, arrived, store=keyed_store, chunk_sizes=chunk_sizes)
    tail_in = KeyGradientsIn(tail_slot=timing.tail_slot, d_tail_keys=dk_tails, d_tail_values=dv_tails)
    extra = tail_in._replace(chunk_id=timing.history_chunk, d_chunk_keys=dk_chunks, d_chunk_values=dv_chunks) if shared_summary else tail_in
    local_key_gradients(q, k, v, grads[2], lse[2], local_delta, *query_words, dk, dv, *local_shape, extra=extra, gate=branch_gates[2],
                        store=local_store)
    if stored_scores:
        side = SideStream(q.device if os.environ.get(OVERLAP_ENV, "1") == "1" else torch.device("cpu"))
        # the profile gradients in their dtype: final since the row-term pass, so cast beside the dQ pass too (into memory of the
        # caller's stream, which the side stream only writes before its join)
        profile_grads = [torch.empty_like(k_profile), torch.empty_like(v_profile)]
        with side:  # beside the dQ pass: both only read the stored dS, and neither fills the chip (benchmarks/RESULTS.md, session 18)
            window_scale_gradients(local_store, *keyed, heads=q.shape[1], window=window, weekend_rule=weekend_rule)
            for cast, grad in zip(profile_grads, (dk_profile, dv_profile)):
                cast.copy_(grad)
        query_gradients_from_scores(q, k, k_profile, dq, local_store, keyed_store, keyed_lists, ds_profile, window, sm_scale)
        side.join()
        if local_store.rows < total:  # the history's remainder and the candidates, recomputed: their rows' share of the scales'
            # gradient (the passes above summed the rows before; a buffer of its own, as this kernel's autotuning run zeroes
            # what it adds into), the profile key's gradients into scratch (row_terms summed them)
            local_query_gradients(q, k, v, k_profile, v_profile, grads[2], local, lse[2], *query_words, dq, *scratch, *local_shape,
                                  first_row=local_store.rows, **dq_inputs)
            dscales += scratch[2]
    else:  # the recomputing dQ kernel added into the profile gradients
        profile_grads = [dk_profile.to(k_profile.dtype, copy=True), dv_profile.to(v_profile.dtype, copy=True)]

    if shared_summary:
        dk_summary, dv_summary = q.new_empty(0), q.new_empty(0)  # two tensors: a custom op's returns may not alias
    else:
        dk_summary = chunk_summary_gradient(dk_chunks, timing.history_chunk, total).to(k.dtype)
        dv_summary = chunk_summary_gradient(dv_chunks, timing.history_chunk, total).to(v.dtype)
    # the profile gradients are copies: they and dscales are views of one buffer, and a custom op's returns may not alias
    return d_qkv, *profile_grads, dk_summary, dv_summary, dscales, d_gates


@_backward.register_fake
def _backward_shapes(grads, saved, times, window, weekend_rule, sm_scale, shared_summary, stored_scores):
    qkv, k_profile, v_profile = saved[:3]
    batch, total, _, heads, dim = qkv.shape
    dense = [x.new_empty(x.shape) for x in (qkv, k_profile, v_profile)]  # contiguous, as the real ones
    summaries = [qkv.new_empty(0), qkv.new_empty(0)] if shared_summary else [qkv.new_empty(batch, heads, total, dim) for _ in range(2)]
    scales32, gates = saved[-3], saved[-2]
    return (*dense, *summaries, scales32.new_empty(scales32.shape, dtype=torch.float32), gates.new_empty(gates.shape))


_BRANCH_OUTPUTS, _FUSED_OUTPUT = slice(0, 3), 3
_SAVED_OUTPUTS = slice(4, 12)  # the forward's outputs the backward reads besides the branch outputs
_SAVED_BRANCHES = slice(7, 10)  # where `_setup_context` saves the three branch outputs
# What `_backward` takes as `saved`: the packed qkv, the two profile tensors, chunk and tail keys and
# values, the three outputs, their log-sum-exps, the scales, the gates and the chunk sizes; the batch's times follow.
_SAVED_TENSORS = 16


def _setup_context(ctx, inputs, output) -> None:
    (qkv, k_profile, v_profile, _, _, scales32, gates, times, _, _, window, weekend_rule, sm_scale, shared_summary) = inputs
    global_lse, transition_lse, local_lse, k_chunks, v_chunks, k_tails, v_tails, chunk_sizes = output[_SAVED_OUTPUTS]
    ctx.save_for_backward(qkv, k_profile, v_profile, k_chunks, v_chunks, k_tails, v_tails, *output[_BRANCH_OUTPUTS], global_lse,
                          transition_lse, local_lse, scales32, gates, chunk_sizes, *times)
    ctx.gated = gates.numel() > 0
    # Gated, the sum is the node's one differentiable output (the branches are what its backward reads); otherwise the branches are.
    ctx.mark_non_differentiable(*output[_SAVED_OUTPUTS], *(output[_BRANCH_OUTPUTS] if ctx.gated else [output[_FUSED_OUTPUT]]))
    ctx.set_materialize_grads(False)  # no zero-filled full-size gradients for the outputs nobody differentiates (7 fills, 68 us)
    ctx.window, ctx.weekend_rule, ctx.sm_scale, ctx.shared_summary = window, weekend_rule, sm_scale, shared_summary


def _backward_formula(ctx, grad_global, grad_transition, grad_local, grad_fused, *_unused_grads):
    saved = list(ctx.saved_tensors)
    times = saved[_SAVED_TENSORS:]
    outputs = saved[_SAVED_BRANCHES]  # a missing gradient is zeros of its branch output's shape
    grads = [grad_fused] * 3 if ctx.gated else [grad_global, grad_transition, grad_local]
    grads = [torch.zeros_like(out) if grad is None else grad for grad, out in zip(grads, outputs)]
    d_qkv, dk_profile, dv_profile, dk_summary, dv_summary, dscales, d_gates = _backward(
        grads, saved[:_SAVED_TENSORS], times, ctx.window, ctx.weekend_rule, ctx.sm_scale, ctx.shared_summary, stored_score_backward(ctx.window))
    summaries = (None, None) if ctx.shared_summary else (dk_summary, dv_summary)
    no_grads = [None] * len(times)  # a list input takes a list of gradients
    return (d_qkv, dk_profile, dv_profile, *summaries, dscales, d_gates if ctx.gated else None, no_grads, None, None, None, None, None, None)


_forward.register_autograd(_backward_formula, setup_context=_setup_context)


def _node(qkv: Tensor, k_profile: Tensor, v_profile: Tensor, k_summary: Optional[Tensor], v_summary: Optional[Tensor], geometry: EvoGeometry,
          window: int, scales: Tensor, weekend_rule: int, gates: Optional[Tensor]) -> Tuple[Tensor, ...]:
    if not qkv.is_cuda and not INTERPRETED:
        raise RuntimeError("the fused SparseCTR kernels run on CUDA (on the CPU only under TRITON_INTERPRET=1); use attention 'structural'")
    if geometry.fused_times.query_times.numel() == 0:
        raise ValueError("evo_branches_triton needs a geometry from evo_geometry(..., fused=True)")
    if (k_summary is None) != (v_summary is None):
        raise ValueError("pass both chunk-summary tensors or neither")
    batch, total, _, heads, dim = qkv.shape
    if gates is not None and gates.shape != (3, batch, heads, total):
        raise ValueError(f"gates must be [3, B, H, T] = {[3, batch, heads, total]}, got {list(gates.shape)}")
    padded = padded_head_dim(dim)
    shared_summary = k_summary is None
    qkv = pad_head_dim(qkv, padded)
    k_profile, v_profile = (pad_head_dim(x.to(qkv.dtype), padded) for x in (k_profile, v_profile))
    if shared_summary:
        k_summary, v_summary = qkv.new_empty(0), qkv.new_empty(0)
    else:
        k_summary, v_summary = (pad_head_dim(x.to(qkv.dtype), padded) for x in (k_summary, v_summary))
    gates32 = gates.float().contiguous() if gates is not None else qkv.new_empty(0, dtype=torch.float32)
    return _forward(qkv, k_profile, v_profile, k_summary, v_summary, scales.float().contiguous(), gates32, list(geometry.fused_times),
                    geometry.chunk_id, geometry.tail_positions, window, weekend_rule, 1.0 / math.sqrt(dim), shared_summary)


def evo_branches_triton(qkv: Tensor, k_profile: Tensor, v_profile: Tensor, k_summary: Optional[Tensor], v_summary: Optional[Tensor],
                        geometry: EvoGeometry, window: int, scales: Tensor, weekend_rule: int) -> Tuple[Tensor, Tensor, Tensor]:
    """(global, transition, local) outputs `[B, H, T, D]` (stored as `[B, T, H, D]`) as `evo_attend`
    computes them, from the fused kernels; `geometry` from `evo_geometry(..., fused=True)`. `qkv` is
    the packed projection `[B, T, 3, H, D]`: q, k and v are read from it and their gradients written
    into one tensor of its shape. k_summary / v_summary `[B, H, T, D]` are what the chunk summaries
    average; None for qkv's own k and v (their gradients then summed in the kernels)."""
    outs = _node(qkv, k_profile, v_profile, k_summary, v_summary, geometry, window, scales, weekend_rule, None)
    dim = qkv.shape[-1]
    return outs[0][..., :dim], outs[1][..., :dim], outs[2][..., :dim]


def evo_branches_triton_gated(qkv: Tensor, k_profile: Tensor, v_profile: Tensor, k_summary: Optional[Tensor], v_summary: Optional[Tensor],
                              geometry: EvoGeometry, window: int, scales: Tensor, weekend_rule: int, gates: Tensor) -> Tensor:
    """SparseCTR's fusion `g_glob·o_glob + g_trans·o_trans + g_loc·o_loc` of `evo_branches_triton`'s
    outputs with per-position, per-head `gates` `[3, B, H, T]` (global, transition, local), summed
    in the forward kernel: `[B, H, T, D]` (stored as `[B, T, H, D]`). The backward kernels read the
    sum's one gradient, scale it per branch and row, and write the gates' gradient from the row terms
    they compute anyway, so neither direction runs a separate pass over the three outputs."""
    outs = _node(qkv, k_profile, v_profile, k_summary, v_summary, geometry, window, scales, weekend_rule, gates)
    return outs[_FUSED_OUTPUT][..., :qkv.shape[-1]]
