"""Loader: KJT layout, sharding (disjoint, complete, equal steps), determinism, worker invariance."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from recsys.data.loader import BatchBuilder, ShardPlan, SplitBatches, make_loader
from recsys.data.store import PreparedDataset
from recsys.ops.chunking import personalized_chunks


@pytest.mark.parametrize("num_samples,world_size,batch_size", [(103, 1, 10), (103, 2, 10), (103, 3, 7), (5, 4, 2), (64, 4, 16)])
def test_ranks_are_disjoint_complete_and_equal_length(num_samples, world_size, batch_size):
    real, steps = [], set()
    for rank in range(world_size):
        plan = ShardPlan(num_samples, batch_size, rank, world_size, seed=3, epoch=1)
        positions, weights = plan.rank_positions()
        assert len(positions) == plan.samples_per_rank
        real.append(positions[weights > 0])
        steps.add(plan.num_batches)
    everything = np.concatenate(real)
    assert len(everything) == num_samples and len(np.unique(everything)) == num_samples
    assert len(steps) == 1  # every rank runs the same number of steps


def test_order_depends_on_seed_and_epoch_only():
    a = ShardPlan(50, 8, seed=1, epoch=0).rank_positions()[0]
    assert np.array_equal(a, ShardPlan(50, 8, seed=1, epoch=0).rank_positions()[0])
    assert not np.array_equal(a, ShardPlan(50, 8, seed=1, epoch=1).rank_positions()[0])
    assert not np.array_equal(a, ShardPlan(50, 8, seed=2, epoch=0).rank_positions()[0])
    times = np.array([5, 1, 4, 1, 3])
    assert ShardPlan(5, 2, order="time").rank_positions(times)[0].tolist() == [1, 3, 4, 2, 0]


def _stream(prepared, workers, **kwargs):
    batches = SplitBatches(prepared, "train", 64, seed=5, **kwargs)
    return [b for b in make_loader(batches, num_workers=workers)]


def test_worker_count_does_not_change_the_stream(prepared):
    single = _stream(prepared, 0)
    double = _stream(prepared, 2)
    assert len(single) == len(double) == len(SplitBatches(prepared, "train", 64))
    for a, b in zip(single, double):
        assert torch.equal(a.sample_ids, b.sample_ids)
        assert torch.equal(a.sparse_features.values(), b.sparse_features.values())
        assert torch.equal(a.chunk_id, b.chunk_id)


def test_resume_from_a_batch_continues_the_same_stream(prepared):
    full = _stream(prepared, 0)
    resumed = _stream(prepared, 2, start_batch=3)
    assert [b.sample_ids.tolist() for b in full[3:]] == [b.sample_ids.tolist() for b in resumed]


def test_ranks_cover_the_split_exactly_once(prepared):
    seen = []
    steps = set()
    for rank in range(3):
        batches = list(make_loader(SplitBatches(prepared, "valid", 32, rank=rank, world_size=3, order="stored"), 0))
        steps.add(len(batches))
        for batch in batches:
            seen.append(batch.sample_ids[batch.weights > 0])
    seen = torch.cat(seen).numpy()
    expected = PreparedDataset(prepared).split_indices("valid")
    assert len(steps) == 1
    assert np.array_equal(np.sort(seen), expected)


def test_batch_layout_is_consistent(prepared):
    dataset = PreparedDataset(prepared)
    builder = BatchBuilder(dataset)
    ids = dataset.split_indices("test")[:50]
    batch = builder.build(ids)
    width = dataset.spec.history.max_length
    kjt = batch.sparse_features
    assert kjt.keys() == ["hist_item_id", "hist_category_id", "hist_action", "cand_item_id", "cand_category_id", "user_segment", "device"]
    for key in ["hist_item_id", "hist_category_id", "hist_action"]:
        assert torch.equal(kjt[key].lengths(), batch.history_lengths)
    for key in ["cand_item_id", "user_segment", "device"]:
        assert (kjt[key].lengths() == 1).all()
    for key, table in [("hist_item_id", "item"), ("hist_action", "action"), ("device", "device")]:
        assert int(kjt[key].values().max()) < dataset.num_embeddings[table]
    # Slots place jagged values at the right end of each padded row.
    padded = torch.zeros(len(ids) * width, dtype=torch.int64)
    padded[batch.history_slots] = kjt["hist_item_id"].values()
    assert torch.equal(padded.view(len(ids), width), _left_pad(kjt["hist_item_id"], width))
    # The chunk layout is the chunking op applied to the padded timestamps.
    expected = personalized_chunks(batch.history_timestamps, batch.history_lengths, dataset.spec.chunking.num_chunks)
    for got, want in zip((batch.chunk_id, batch.chunk_start, batch.chunk_end, batch.chunk_valid), expected):
        assert torch.equal(got, want)
    assert (batch.labels >= 0).all() and (batch.weights == 1).all()


def _left_pad(jagged, width):
    rows = []
    for values in jagged.to_dense():
        rows.append(torch.cat([torch.zeros(width - len(values), dtype=torch.int64), values]))
    return torch.stack(rows)


def test_truncation_keeps_the_most_recent_events(prepared):
    dataset = PreparedDataset(prepared)
    long_builder = BatchBuilder(dataset, max_history=512)
    short_builder = BatchBuilder(dataset, max_history=16)
    ids = dataset.split_indices("test")[:40]
    long_batch, short_batch = long_builder.build(ids), short_builder.build(ids)
    assert (short_batch.history_lengths == long_batch.history_lengths.clamp(max=16)).all()
    assert torch.equal(short_batch.history_timestamps, long_batch.history_timestamps[:, -16:])


def test_sequence_windows_supervise_every_labelled_event_exactly_once(prepared):
    dataset = PreparedDataset(prepared)
    batches = SplitBatches(prepared, "train", 16, order="stored", max_history=64, num_chunks=4, sequence_stride=8)
    builder = BatchBuilder(dataset, max_history=64, num_chunks=4)
    seen = []
    offsets = dataset.user_offsets
    for _, sample_ids, weights, starts in batches.batch_sample_ids():
        batch = builder.build(sample_ids, weights, starts)
        width = batch.history_timestamps.shape[1]
        for row in range(len(sample_ids)):
            user = int(batch.user_ids[row])
            length = int(batch.history_lengths[row])
            hist_end = int(dataset.sample_column("hist_end")[sample_ids[row]])
            targets = batch.history_targets[row, width - length :].nonzero().flatten()
            seen += [(user, hist_end - length + int(t)) for t in targets]
        seen += [(int(batch.user_ids[row]), int(dataset.sample_column("event_pos")[sample_ids[row]])) for row in range(len(sample_ids))]
    seen_set = set(seen)
    assert len(seen) == len(seen_set)  # no event supervised twice (history target or candidate)
    # Every labelled event before the user's last chosen train sample is supervised.
    samples = dataset.split_indices("train")
    users = dataset.sample_column("user_index")[samples]
    last_hist_end = {}
    for user, end in zip(users.tolist(), dataset.sample_column("hist_end")[samples].tolist()):
        last_hist_end[user] = max(last_hist_end.get(user, 0), end)
    labels = dataset.event_column("label")
    expected = {(u, i) for u, end in last_hist_end.items() for i in range(end) if labels[offsets[u] + i] >= 0}
    assert expected <= seen_set
    # Beyond that, only candidates at the users' last request time (the last chosen samples).
    assert all(i >= last_hist_end[u] for u, i in seen_set - expected)
    assert {u for u, _ in seen_set - expected} == set(last_hist_end)


def test_user_capped_order_spreads_users():
    from recsys.data.loader import user_capped_order

    users = np.repeat(np.arange(10), 20)
    order = user_capped_order(users, seed=0, epoch=0, max_per_user=2)
    assert sorted(order.tolist()) == list(range(200))
    for start in range(0, 200, 20):  # each block of 20 holds 2 samples of each of the 10 users
        assert np.bincount(users[order[start : start + 20]], minlength=10).max() == 2


def test_batches_carry_each_keys_length_so_the_device_batch_needs_no_sync(prepared):
    """A KJT computes its per-key lengths with a `.tolist()` on first access: on a GPU batch, a
    host-device sync every step. The builder fills them in on the host, they survive `pin_memory` and
    `to`, and they equal what the KJT would compute."""
    from torchrec.sparse.jagged_tensor import KeyedJaggedTensor

    dataset = PreparedDataset(prepared)
    batch = BatchBuilder(dataset, 64, 4).build(np.arange(6))
    moved = batch.to(torch.device("cpu"))
    if torch.cuda.is_available():
        moved = batch.pin_memory().to(torch.device("cuda"))
    features = moved.sparse_features
    assert features.length_per_key_or_none() is not None
    recomputed = KeyedJaggedTensor(keys=features.keys(), values=features.values().cpu(), lengths=features.lengths().cpu())
    assert features.length_per_key() == recomputed.length_per_key()
    assert features.offset_per_key() == recomputed.offset_per_key()
