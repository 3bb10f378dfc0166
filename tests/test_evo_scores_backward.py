"""The stored-score backward of SparseCTR's node (`recsys.ops.evo_scores_backward`, Triton's
interpreter here) gives the recomputing backward's gradients: the packed projection, the profile key
and value, the chunk summaries, the temporal scales and the gates, gated and not, with and without
candidates, with a history that ends inside a score block and one that fills its blocks exactly (no
recomputed rows left). The dS buffers start as NaN, so an entry the dQ pass reads but no dK/dV kernel
wrote, or a visibility mask that lets one through, fails the test."""

from __future__ import annotations

import pytest
import torch

import recsys.ops.evo_branches_triton as branches_module
from recsys.ops.evo_attention import evo_attend_packed, evo_attend_packed_gated, evo_geometry
from recsys.ops.evo_branches_triton import BACKWARD_ENV, stored_score_backward
from recsys.ops.evo_scores_backward import score_rows
from recsys.ops.temporal import alibi_scales
from tests.test_evo_keyed_triton import _histories


def _poisoned_stores(monkeypatch) -> list:
    """Make `score_stores` hand out NaN-filled buffers; returns the list of stores it handed out."""
    real = branches_module.score_stores
    handed = []

    def poisoned(*args, **kwargs):
        stores = real(*args, **kwargs)
        for store in stores:
            for buffer in store.scores:
                buffer.fill_(float("nan"))
        handed.append(stores)
        return stores

    monkeypatch.setattr(branches_module, "score_stores", poisoned)
    return handed


def _gradients(backward: str, monkeypatch, inputs, gated: bool):
    monkeypatch.setenv(BACKWARD_ENV, backward)
    qkv, kp, vp, summaries, geometry, window, scales, gates, upstream = inputs
    leaves = [qkv, kp, vp, scales] + ([gates] if gated else []) + [x for x in summaries if x is not None]
    if gated:
        out = evo_attend_packed_gated(qkv, kp, vp, *summaries, geometry, window, scales, 0, gates)
        loss = (out * upstream[0]).sum()
    else:
        outs = evo_attend_packed(qkv, kp, vp, *summaries, geometry, window, scales, 0)
        if upstream[0] is upstream[1]:  # one tensor handed to the three outputs, as a layer summing them gives it (one dO load)
            return torch.autograd.grad(outs, leaves, list(upstream))
        loss = sum((o * u).sum() for o, u in zip(outs, upstream))
    return torch.autograd.grad(loss, leaves)


# one case with three heads: the window scale sums unroll their head loop
# one_upstream (ungated): the three outputs take one dO tensor, which the row-term pass loads once
# 40 chunks: the global list has 40 keys and the transition list (2 tail keys per chunk) 80, so the dQ
# pass walks each in several key blocks, the last one partly past the list's end
@pytest.mark.parametrize("length,candidates,gated,shared_summary,heads,one_upstream,chunks",
                         [(37, 3, True, True, 2, False, 4), (32, 0, False, True, 2, False, 4), (45, 2, True, False, 3, False, 4),
                          (40, 21, False, True, 2, False, 4), (35, 2, False, True, 2, True, 4), (90, 2, False, True, 2, False, 40)])
def test_stored_score_backward_equals_the_recomputing_one(monkeypatch, length, candidates, gated, shared_summary, heads, one_upstream,
                                                          chunks):
    generator = torch.Generator().manual_seed(torch.seed() % 2**31)
    batch, dim, window, tail = 3, 16, 8, 2
    times, layout = _histories(generator, batch, length, candidates, chunks)
    total = length + candidates
    geometry = evo_geometry(times, *layout, candidates, tail, window, 0, 0, fused=True)
    qkv = torch.randn(batch, total, 3, heads, dim, generator=generator).requires_grad_()
    kp, vp = (torch.randn(batch, heads, 1, dim, generator=generator).requires_grad_() for _ in range(2))
    summaries = [None, None] if shared_summary else [torch.randn(batch, heads, total, dim, generator=generator).requires_grad_()
                                                     for _ in range(2)]
    scales = (alibi_scales(heads) + 0.3 * torch.randn(3, heads, generator=generator)).requires_grad_()
    gates = torch.rand(3, batch, heads, total, generator=generator).requires_grad_()
    upstream = [torch.randn(batch, heads, total, dim, generator=generator) for _ in range(3)]
    upstream = [upstream[0]] * 3 if one_upstream else upstream
    inputs = (qkv, kp, vp, summaries, geometry, window, scales, gates, upstream)

    expected = _gradients("recompute", monkeypatch, inputs, gated)
    handed = _poisoned_stores(monkeypatch)
    got = _gradients("stored", monkeypatch, inputs, gated)

    assert len(handed) == 1 and handed[0][0].rows == score_rows(length, window)
    names = ["qkv", "k_profile", "v_profile", "scales"] + (["gates"] if gated else []) + ([] if shared_summary else ["k_summary", "v_summary"])
    for name, g, e in zip(names, got, expected):
        assert torch.isfinite(g).all(), name
        # a scale's gradient is one float32 sum over every pair, summed here by other kernels in another order
        tolerance = 1e-4 if name == "scales" else 1e-5
        torch.testing.assert_close(g, e, rtol=tolerance, atol=tolerance, msg=lambda m, name=name: f"grad of {name}: {m}")


def test_the_backward_switch_names_its_choices(monkeypatch):
    monkeypatch.delenv(BACKWARD_ENV, raising=False)
    assert stored_score_backward(64)  # the default
    monkeypatch.setenv(BACKWARD_ENV, "stored")
    assert stored_score_backward(64) and not stored_score_backward(256)  # a window past one dQ tile falls back
    monkeypatch.setenv(BACKWARD_ENV, "recompute")
    assert not stored_score_backward(64)
    monkeypatch.setenv(BACKWARD_ENV, "fast")
    with pytest.raises(ValueError, match=BACKWARD_ENV):
        stored_score_backward(64)
