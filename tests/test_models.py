"""Model properties: listwise == pointwise, causality, leakage rule, CamA channels, packing, finiteness."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from recsys.data.loader import BatchBuilder
from recsys.data.store import PreparedDataset
from recsys.models.base import history_valid, sequence_inputs
from recsys.models.registry import build_model
from recsys.ops.cama import cama_attention, cama_attention_reference, cama_mask

MODELS = ["sparsectr", "grab", "transformer", "din", "dnn"]
SMALL = {"sparsectr": {"d_model": 16, "heads": 2, "layers": 2, "window": 8},
         "transformer": {"d_model": 16, "heads": 2, "layers": 2},
         "grab": {"d_model": 16, "heads": 4, "layers": 2},
         "din": {"d_model": 16}, "dnn": {"d_model": 16}}


@pytest.fixture(scope="module")
def dataset(prepared):
    return PreparedDataset(prepared)


@pytest.fixture(scope="module")
def batch(dataset):
    ids = dataset.split_indices("test")
    rng = np.random.default_rng(0)
    train = dataset.split_indices("train")
    first_events = train[dataset.sample_column("hist_end")[train] == 0][:2]  # empty histories
    return BatchBuilder(dataset, max_history=40, num_chunks=6).build(np.concatenate([rng.choice(ids, 6, replace=False), first_events]))


def _model(name, dataset, **extra):
    torch.manual_seed(0)
    return build_model(name, dataset.metadata, {**SMALL[name], **extra}).eval()


def _embedded(model, batch):
    embedded = model.embedding(batch.sparse_features, batch.history_slots, batch.history_lengths, batch.history_timestamps.shape[1])
    return embedded, sequence_inputs(batch)


def _with_candidates(embedded, count, generator):
    content = torch.randn(embedded.candidate_content.shape[0], count, embedded.candidate_content.shape[2], generator=generator)
    return embedded._replace(candidate_content=content)


@pytest.mark.parametrize("name", MODELS)
def test_listwise_equals_pointwise(name, dataset, batch):
    model = _model(name, dataset)
    embedded, inputs = _embedded(model, batch)
    listwise = _with_candidates(embedded, 5, torch.Generator().manual_seed(1))
    together = model.score(listwise, inputs).logits
    assert together.shape == (batch.batch_size, 5)
    for m in range(5):
        alone = model.score(listwise._replace(candidate_content=listwise.candidate_content[:, m : m + 1]), inputs).logits
        torch.testing.assert_close(together[:, m : m + 1], alone, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("name", MODELS)
def test_outputs_finite_and_deterministic(name, dataset, batch):
    first, second = _model(name, dataset), _model(name, dataset)
    out_a, out_b = first(batch), second(batch)
    assert torch.isfinite(out_a.logits).all()
    assert torch.equal(out_a.logits, out_b.logits)
    (out_a.logits.sum() + (out_a.history_logits.sum() if out_a.history_logits is not None else 0)).backward()
    assert all(torch.isfinite(p.grad).all() for p in first.parameters() if p.grad is not None)


def _hidden(name, model, embedded, inputs):
    if name == "grab":
        return model.score(embedded, inputs).history_logits
    return model.encode(embedded, inputs)[:, : inputs.history_times.shape[1]]


@pytest.mark.parametrize("name", ["sparsectr", "transformer", "grab"])
def test_a_later_event_never_changes_an_earlier_position(name, dataset, batch):
    model = _model(name, dataset)
    embedded, inputs = _embedded(model, batch)
    before = _hidden(name, model, embedded, inputs)
    row = int(torch.argmax(batch.history_lengths))
    width = inputs.history_times.shape[1]
    times = inputs.history_times[row]
    # The last event of the row: perturb its content and its action.
    changed = embedded._replace(
        history_content=embedded.history_content.clone().index_put_((torch.tensor([row]), torch.tensor([width - 1])), torch.randn(embedded.history_content.shape[-1])),
        history_action=embedded.history_action.clone().index_put_((torch.tensor([row]), torch.tensor([width - 1])), torch.randn(embedded.history_action.shape[-1])),
    )
    after = _hidden(name, model, changed, inputs)
    earlier = times < times[-1]  # strictly earlier events; same-time events may see its content
    assert earlier.sum() > 0
    torch.testing.assert_close(after[row][earlier], before[row][earlier], rtol=0, atol=0)
    assert not torch.equal(after[row, -1], before[row, -1])


def test_grab_same_request_outcomes_never_leak(dataset, batch):
    model = _model("grab", dataset)
    embedded, inputs = _embedded(model, batch)
    times = inputs.history_times
    valid = history_valid(inputs)
    # Find two real events of one row that share a timestamp (one request).
    same = (times[:, 1:] == times[:, :-1]) & valid[:, 1:] & valid[:, :-1]
    row, position = [int(x) for x in same.nonzero()[0]]
    before = model.score(embedded, inputs).history_logits
    changed = embedded._replace(
        history_action=embedded.history_action.clone().index_put_((torch.tensor([row]), torch.tensor([position])), torch.randn(embedded.history_action.shape[-1])),
        history_action_ids=embedded.history_action_ids.clone().index_put_((torch.tensor([row]), torch.tensor([position])), torch.tensor(1)),
    )
    after = model.score(changed, inputs).history_logits
    same_time = times[row] == times[row, position]
    torch.testing.assert_close(after[row][same_time], before[row][same_time], rtol=0, atol=0)


def test_grab_packed_equals_padded(dataset, batch):
    padded, packed = _model("grab", dataset), _model("grab", dataset, packed=True)
    out_padded, out_packed = padded(batch), packed(batch)
    torch.testing.assert_close(out_packed.logits, out_padded.logits, rtol=1e-5, atol=1e-6)
    valid = batch.chunk_id > 0
    torch.testing.assert_close(out_packed.history_logits[valid], out_padded.history_logits[valid], rtol=1e-5, atol=1e-6)


def test_cama_channels_give_zero_weight_outside_their_group():
    generator = torch.Generator().manual_seed(torch.seed() % 2**31)
    batch, length, heads, dim = 2, 12, 3, 4
    times = torch.arange(length).repeat(batch, 1) // 2 * 60  # pairs of events share a request
    action_ids = torch.randint(1, 4, (batch, length), generator=generator)
    real = torch.ones(batch, length, dtype=torch.bool)
    is_candidate = torch.zeros(batch, length, dtype=torch.bool)
    is_candidate[:, -1] = True
    position = torch.arange(length).repeat(batch, 1)
    groups = [torch.zeros(0, dtype=torch.int64), torch.tensor([2]), torch.tensor([2, 3])]
    mask = cama_mask(torch.zeros_like(position), position, times, real, is_candidate, action_ids, groups, 1)
    q = torch.randn(batch, heads, length, dim, generator=generator)
    k, v = (torch.randn(batch, heads, length + 1, dim, generator=generator) for _ in range(2))
    bias = torch.randn(batch, heads, length, length + 1, generator=generator)
    out = cama_attention(q, k, v, mask, bias)
    torch.testing.assert_close(out, cama_attention_reference(q, k, v, mask, bias), rtol=1e-5, atol=1e-6)
    for h, group in enumerate(groups[1:], start=1):
        outside = ~(action_ids.unsqueeze(-1) == group).any(-1)
        assert not mask[:, h, :, 1:][outside.unsqueeze(1).expand(-1, length, -1)].any()
        v_changed = v.clone()
        v_changed[:, h, 1:][outside] += 100.0
        torch.testing.assert_close(cama_attention(q, k, v_changed, mask, bias)[:, h], out[:, h], rtol=0, atol=0)
        # Strictly earlier in time only: an event never sees its request partner's action.
        assert not (mask[:, h, :, 1:] & (times.unsqueeze(2) <= times.unsqueeze(1))).any()
    # The candidate is never a key of anyone else, and never of an action channel.
    assert not mask[:, :, :-1, -1].any() and not mask[:, 1:, -1, -1].any()
