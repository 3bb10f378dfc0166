"""The three SparseCTR branches as one fused autograd node (Triton's interpreter here) equal the
structural `evo_attend`: all three outputs and the gradients of q, k, v, the profile key and value,
the chunk-summary sources and the temporal scales, with and without candidates, with the summaries
averaging k and v themselves (gradients summed in the kernels) or separate tensors."""

from __future__ import annotations

import pytest
import torch

from recsys.ops.evo_attention import evo_attend, evo_attend_fused, evo_attend_packed, evo_attend_packed_gated, evo_geometry, tail_slots
from recsys.ops.evo_branches_triton import chunk_summary_gradient
from recsys.ops.temporal import alibi_scales
from tests.test_evo_keyed_triton import _histories


@pytest.mark.parametrize("candidates,shared_summary,dim,tail", [(3, True, 16, 2), (0, True, 8, 3), (2, False, 16, 1), (21, True, 16, 2)])
def test_fused_node_equals_structural_branches_with_every_gradient(candidates, shared_summary, dim, tail):
    generator = torch.Generator().manual_seed(torch.seed() % 2**31)
    batch, length, heads, chunks, window, utc_offset, weekend_rule = 4, 37, 2, 5, 8, 3600, 0
    times, layout = _histories(generator, batch, length, candidates, chunks)
    total = length + candidates
    structural = evo_geometry(times, *layout, candidates, tail, window, utc_offset, weekend_rule)
    fused = evo_geometry(times, *layout, candidates, tail, window, utc_offset, weekend_rule, fused=True)
    q, k, v = (torch.randn(batch, heads, total, dim, generator=generator).requires_grad_() for _ in range(3))
    profile = [torch.randn(batch, heads, 1, dim, generator=generator).requires_grad_() for _ in range(2)]
    scales = (alibi_scales(heads) + 0.3 * torch.randn(3, heads, generator=generator)).requires_grad_()
    summary = [k, v] if shared_summary else [torch.randn(batch, heads, total, dim, generator=generator).requires_grad_() for _ in range(2)]
    leaves = [q, k, v, *profile, scales] + ([] if shared_summary else summary)
    upstream = [torch.randn(batch, heads, total, dim, generator=generator) for _ in range(3)]

    expected = evo_attend(q, k, v, *profile, *summary, structural, window, scales)
    expected_grads = torch.autograd.grad(sum((e * u).sum() for e, u in zip(expected, upstream)), leaves)
    got = evo_attend_fused(q, k, v, *profile, *summary, fused, window, scales, times, utc_offset, weekend_rule)
    got_grads = torch.autograd.grad(sum((g * u).sum() for g, u in zip(got, upstream)), leaves)

    for name, g, e in zip(("global", "transition", "local"), got, expected):
        torch.testing.assert_close(g, e, rtol=1e-4, atol=1e-5, msg=lambda m, name=name: f"{name}: {m}")
    names = ("q", "k", "v", "k_profile", "v_profile", "scales", "k_summary", "v_summary")
    for name, g, e in zip(names, got_grads, expected_grads):
        # A scale's gradient is one float32 sum over every (query, key) pair of the batch, in another
        # order in the kernels than in the reference: at seed 311111475 they differed by 2.0e-4 on a
        # gradient of 0.4 (1 case in ~50 seeds over 1e-4), so it gets a looser bound.
        tolerance = 1e-3 if name == "scales" else 1e-4
        torch.testing.assert_close(g, e, rtol=tolerance, atol=tolerance, msg=lambda m, name=name: f"grad of {name}: {m}")


def test_tail_slots_name_each_valid_tail_position_once():
    # Chunk 1 = [0, 3), chunk 2 = [3, 4): chunk 2's second tail entry (position 2) is invalid and must
    # not take position 2 from chunk 1's valid last event.
    positions = torch.tensor([[1, 2, 2, 3]])
    valid = torch.tensor([[True, True, False, True]])
    assert tail_slots(positions, valid, 5).tolist() == [[-1, 0, 1, 3, -1]]


def test_chunk_summary_gradient_spreads_each_chunk_row_to_its_positions():
    d_chunks = torch.arange(2 * 1 * 2 * 3, dtype=torch.float32).view(2, 1, 2, 3)
    chunk_id = torch.tensor([[0, 1, 1, 2], [1, 2, 2, 2]], dtype=torch.int32)
    spread = chunk_summary_gradient(d_chunks, chunk_id, 6)
    assert spread.shape == (2, 1, 6, 3)
    torch.testing.assert_close(spread[0, 0, :4], torch.stack([torch.zeros(3), d_chunks[0, 0, 0], d_chunks[0, 0, 0], d_chunks[0, 0, 1]]))
    torch.testing.assert_close(spread[1, 0, :4], d_chunks[1, 0, [0, 1, 1, 1]])
    assert spread[:, :, 4:].abs().sum() == 0


def test_fused_node_trains_under_half_precision_autocast():
    """A half-precision training step, backward outside autocast as trainers run it: results stay
    within half rounding of the float32 structural branches. float16, not bf16: Triton's interpreter
    computes tl.dot of bf16 operands wrongly (bf16 is checked on the GPU by benchmarks/gpu_suite.py)."""
    generator = torch.Generator().manual_seed(torch.seed() % 2**31)
    batch, length, heads, dim, candidates, window = 3, 29, 2, 16, 2, 8
    times, layout = _histories(generator, batch, length, candidates, 4)
    leaves32 = [torch.randn(batch, heads, length + candidates, dim, generator=generator) for _ in range(3)]
    leaves32 += [torch.randn(batch, heads, 1, dim, generator=generator) for _ in range(2)]
    leaves16 = [x.half().requires_grad_() for x in leaves32]
    leaves32 = [x.requires_grad_() for x in leaves32]
    upstream = torch.randn(batch, heads, length + candidates, dim, generator=generator)
    scales = alibi_scales(heads)

    q, k, v, kp, vp = leaves32
    expected = evo_attend(q, k, v, kp, vp, k, v, evo_geometry(times, *layout, candidates, 2, window, 0, 0), window, scales)
    expected_grads = torch.autograd.grad(sum((e * upstream).sum() for e in expected), leaves32)
    q, k, v, kp, vp = leaves16
    with torch.autocast("cpu", dtype=torch.float16):
        got = evo_attend_fused(q, k, v, kp, vp, k, v, evo_geometry(times, *layout, candidates, 2, window, 0, 0, fused=True), window,
                               scales, times, 0, 0)
    got_grads = torch.autograd.grad(sum((g.float() * upstream).sum() for g in got), leaves16)  # backward outside autocast, as trainers run it
    for g, e in zip(got, expected):
        assert g.dtype == torch.float16
        torch.testing.assert_close(g.float(), e, rtol=1e-2, atol=1e-2)
    for g, e in zip(got_grads, expected_grads):
        torch.testing.assert_close(g.float(), e, rtol=2e-2, atol=2e-2)


def _small_layer(generator, shared_summary: bool, candidates: int = 2):
    batch, length, heads, dim, window = 2, 21, 2, 16, 8
    times, layout = _histories(generator, batch, length, candidates, 3)
    geometry = evo_geometry(times, *layout, candidates, 2, window, 0, 0, fused=True)
    total = length + candidates
    q, k, v = (torch.randn(batch, heads, total, dim, generator=generator).requires_grad_() for _ in range(3))
    profile = [torch.randn(batch, heads, 1, dim, generator=generator).requires_grad_() for _ in range(2)]
    summary = [k, v] if shared_summary else [torch.randn(batch, heads, total, dim, generator=generator).requires_grad_() for _ in range(2)]
    scales = alibi_scales(heads).requires_grad_()
    return (q, k, v, *profile, *summary), geometry, window, scales, times


@pytest.mark.parametrize("shared_summary,gated", [(True, False), (False, False), (True, True)])
def test_custom_op_registration_passes_opcheck(shared_summary, gated):
    """The forward op's schema, fake (shape-only) implementation and autograd formula agree with what
    it computes: what torch.compile relies on to trace the node as one call."""
    generator = torch.Generator().manual_seed(torch.seed() % 2**31)
    tensors, geometry, window, scales, _ = _small_layer(generator, shared_summary)
    q, k, v, kp, vp, k_summary, v_summary = tensors
    qkv = torch.stack([x.detach().transpose(1, 2) for x in (q, k, v)], dim=2).requires_grad_()
    summaries = (q.new_empty(0), q.new_empty(0)) if shared_summary else (k_summary, v_summary)
    gates = torch.rand(3, *q.shape[:3], generator=generator).requires_grad_() if gated else torch.empty(0)
    args = (qkv, kp, vp, *summaries, scales.detach().float().requires_grad_(), gates, list(geometry.fused_times), geometry.chunk_id,
            geometry.tail_positions, window, 0, 0.25, shared_summary)
    torch.library.opcheck(torch.ops.recsys.evo_branches_forward.default, args,
                          test_utils=("test_schema", "test_autograd_registration", "test_faketensor", "test_aot_dispatch_dynamic"))


def test_layer_compiles_as_one_graph_with_the_same_gradients():
    """torch.compile(fullgraph=True) traces a layer around the node without a graph break (train.compile
    can then capture a whole block as one CUDA graph), and outputs and gradients match eager."""
    generator = torch.Generator().manual_seed(torch.seed() % 2**31)
    tensors, geometry, window, scales, times = _small_layer(generator, shared_summary=True)
    q, k, v, kp, vp, _, _ = tensors
    weight = torch.randn(q.shape[-1], q.shape[-1], generator=generator).requires_grad_()

    def layer(q, k, v, kp, vp, weight, scales):
        k = k @ weight  # a projection around the node, as in a block
        outs = evo_attend_fused(q, k, v, kp, vp, k, v, geometry, window, scales, times, 0, 0)
        return (outs[0] * outs[1]).tanh() + outs[2]

    leaves = [q, k, v, kp, vp, weight, scales]
    upstream = torch.randn(q.shape, generator=generator)
    expected = layer(*leaves)
    expected_grads = torch.autograd.grad((expected * upstream).sum(), leaves)
    compiled = torch.compile(layer, fullgraph=True, backend="aot_eager")
    got = compiled(*leaves)
    got_grads = torch.autograd.grad((got * upstream).sum(), leaves)
    torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-6)
    for g, e in zip(got_grads, expected_grads):
        torch.testing.assert_close(g, e, rtol=1e-5, atol=1e-5)


def test_packed_projection_is_read_and_written_in_place():
    """The model's path: q, k, v as views of one packed `[B, T, 3, H, D]` projection. The outputs equal
    the split-operand node's, come back stored as `[B, T, H, D]` (the output projection reads them
    without a transposing copy), and the projection's gradient is one packed tensor equal to the
    split path's dq, dk, dv."""
    generator = torch.Generator().manual_seed(torch.seed() % 2**31)
    tensors, geometry, window, scales, times = _small_layer(generator, shared_summary=True)
    q, k, v, kp, vp, _, _ = tensors
    batch, heads, total, dim = q.shape
    packed = torch.stack([x.detach().transpose(1, 2) for x in (q, k, v)], dim=2).requires_grad_()
    upstream = [torch.randn(q.shape, generator=generator) for _ in range(3)]

    expected = evo_attend_fused(q, k, v, kp, vp, k, v, geometry, window, scales, times, 0, 0)
    expected_grads = torch.autograd.grad(sum((e * u).sum() for e, u in zip(expected, upstream)), [q, k, v, kp, vp, scales])
    got = evo_attend_packed(packed, kp, vp, None, None, geometry, window, scales, 0)
    got_grads = torch.autograd.grad(sum((g * u).sum() for g, u in zip(got, upstream)), [packed, kp, vp, scales])

    for g, e in zip(got, expected):
        assert g.transpose(1, 2).is_contiguous(), g.stride()
        torch.testing.assert_close(g, e, rtol=1e-5, atol=1e-6)
    d_packed = got_grads[0]
    assert d_packed.shape == (batch, total, 3, heads, dim) and d_packed.is_contiguous()
    for part, e in enumerate(expected_grads[:3]):
        torch.testing.assert_close(d_packed[:, :, part].transpose(1, 2), e, rtol=1e-5, atol=1e-6)
    for g, e in zip(got_grads[1:], expected_grads[3:]):
        torch.testing.assert_close(g, e, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("shared_summary", [True, False])
def test_gated_sum_in_the_kernels_equals_the_structural_fusion(shared_summary):
    """SparseCTR's fusion inside the node (`evo_attend_packed_gated`): the gated sum of the three
    branches and the gradients of the projection, profile, summaries, scales and gates equal the
    three branches summed with the same gates in PyTorch, as the model's other paths do."""
    generator = torch.Generator().manual_seed(torch.seed() % 2**31)
    tensors, geometry, window, scales, times = _small_layer(generator, shared_summary)
    q, k, v, kp, vp, k_summary, v_summary = tensors
    packed = torch.stack([x.detach().transpose(1, 2) for x in (q, k, v)], dim=2).requires_grad_()
    gates = torch.rand(3, *q.shape[:3], generator=generator).requires_grad_()
    upstream = torch.randn(q.shape, generator=generator)
    summaries = [k, v] if shared_summary else [k_summary, v_summary]
    leaves = [q, k, v, kp, vp, scales, gates] + ([] if shared_summary else summaries)

    # the ungated node, itself equal to the structural branches (the first test), summed in PyTorch
    branches = evo_attend_fused(q, k, v, kp, vp, *summaries, geometry, window, scales, times, 0, 0)
    expected = sum(gate.unsqueeze(-1) * branch for gate, branch in zip(gates, branches))
    expected_grads = torch.autograd.grad((expected * upstream).sum(), leaves)
    got = evo_attend_packed_gated(packed, kp, vp, *(None, None) if shared_summary else summaries, geometry, window, scales, 0, gates)
    got_leaves = [packed, kp, vp, scales, gates] + ([] if shared_summary else summaries)
    got_grads = torch.autograd.grad((got * upstream).sum(), got_leaves)

    assert got.transpose(1, 2).is_contiguous(), got.stride()
    torch.testing.assert_close(got, expected, rtol=1e-4, atol=1e-5)
    d_packed = got_grads[0]
    for part, e in enumerate(expected_grads[:3]):
        torch.testing.assert_close(d_packed[:, :, part].transpose(1, 2), e, rtol=1e-4, atol=1e-4, msg=lambda m, part=part: f"d qkv[{part}]: {m}")
    names = ("k_profile", "v_profile", "scales", "gates", "k_summary", "v_summary")
    for name, g, e in zip(names, got_grads[1:], expected_grads[3:]):
        tolerance = 1e-3 if name == "scales" else 1e-4  # one float32 sum over every pair, as in the ungated test
        torch.testing.assert_close(g, e, rtol=tolerance, atol=tolerance, msg=lambda m, name=name: f"grad of {name}: {m}")
