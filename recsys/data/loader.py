"""Batches for TorchRec from a prepared dataset.

A batch holds one `KeyedJaggedTensor` with every sparse feature (history fields `hist_<col>` are
jagged with the history lengths; candidate fields `cand_<col>` and profile/context fields have one
id per sample), plus dense tensors: left-padded history timestamps, the padded slot of every jagged
history value, the personalized chunk layout, labels, weights and user ids for GAUC.

Sharding and order: `ShardPlan` orders a split's samples (shuffled by `seed + epoch`, or by time),
deals them to ranks round-robin (disjoint and, with padding, complete: every rank gets the same
number of samples so all ranks run the same number of steps; padding samples have weight 0), and
cuts each rank's share into batches; loader worker `w` builds batches `w, w + W, ...`, which the
DataLoader returns in order, so the stream is deterministic whatever the worker count.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, fields
from typing import Iterator, Literal

import numpy as np
import torch
from torch.utils.data import DataLoader, IterableDataset, get_worker_info
from torchrec.sparse.jagged_tensor import KeyedJaggedTensor

from recsys.data.layout import CANDIDATE_PREFIX, HISTORY_PREFIX
from recsys.data.ragged import ranges_to_indices
from recsys.data.store import PreparedDataset
from recsys.ops.chunking import personalized_chunks


@dataclass
class Batch:
    sparse_features: KeyedJaggedTensor
    history_lengths: torch.Tensor  # [B] int64
    history_timestamps: torch.Tensor  # [B, L] int64, left-padded with 0
    history_slots: torch.Tensor  # [sum(lengths)] int64: b * L + padded position of each jagged value
    chunk_id: torch.Tensor  # [B, L] int64, 0 = padding chunk, 1..P
    chunk_start: torch.Tensor  # [B, P] int64
    chunk_end: torch.Tensor  # [B, P] int64
    chunk_valid: torch.Tensor  # [B, P] bool
    history_labels: torch.Tensor  # [B, L] float32 labels of history events (dense supervision), -1 = none
    history_targets: torch.Tensor  # [B, L] bool: history events this batch supervises (sequence mode only)
    request_timestamps: torch.Tensor  # [B] int64, the candidate's time
    labels: torch.Tensor  # [B] float32
    weights: torch.Tensor  # [B] float32, 0 for rank-padding samples
    user_ids: torch.Tensor  # [B] int64 dense user index, for GAUC
    sample_ids: torch.Tensor  # [B] int64 row of samples.arrow

    @property
    def batch_size(self) -> int:
        return int(self.labels.shape[0])

    def to(self, device: torch.device, non_blocking: bool = False) -> Batch:
        return Batch(**{f.name: getattr(self, f.name).to(device=device, non_blocking=non_blocking) for f in fields(self)})

    def record_stream(self, stream: torch.Stream) -> None:
        for f in fields(self):
            getattr(self, f.name).record_stream(stream)

    def pin_memory(self) -> Batch:
        return Batch(**{f.name: getattr(self, f.name).pin_memory() for f in fields(self)})


@dataclass(frozen=True)
class ShardPlan:
    """Which samples, in which order, one rank reads in one epoch."""

    num_samples: int
    batch_size: int
    rank: int = 0
    world_size: int = 1
    seed: int = 0
    epoch: int = 0
    order: Literal["shuffle", "time", "stored"] = "shuffle"
    drop_last: bool = False

    @property
    def samples_per_rank(self) -> int:
        return math.ceil(self.num_samples / self.world_size) if self.num_samples else 0

    @property
    def num_batches(self) -> int:
        if self.drop_last:
            return self.samples_per_rank // self.batch_size
        return math.ceil(self.samples_per_rank / self.batch_size)

    def rank_positions(self, timestamps: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
        """Positions into the split (and their weights) this rank reads, in reading order."""
        if self.order == "shuffle":
            order = np.random.default_rng([self.seed, self.epoch]).permutation(self.num_samples)
        elif self.order == "time":
            if timestamps is None:
                raise ValueError("order='time' needs the samples' timestamps")
            order = np.argsort(timestamps, kind="stable")
        else:
            order = np.arange(self.num_samples)
        mine = order[self.rank :: self.world_size]
        weights = np.ones(self.samples_per_rank, dtype=np.float32)
        missing = self.samples_per_rank - len(mine)
        if missing:
            mine = np.concatenate([mine, order[:missing]])
            weights[-missing:] = 0.0
        return mine, weights


class BatchBuilder:
    """Turns sample row ids into a `Batch`; holds memory-mapped columns (one per worker)."""

    def __init__(self, dataset: PreparedDataset, max_history: int | None = None, num_chunks: int | None = None):
        spec = dataset.spec
        self.max_history = max_history or spec.history.max_length
        self.num_chunks = num_chunks or spec.chunking.num_chunks
        self.sequence_columns = dataset.sequence_columns
        self.candidate_columns = dataset.candidate_columns
        self.side_columns = dataset.side_columns
        self.event_columns = {c: dataset.event_column(c) for c in self.sequence_columns}
        self.event_timestamps = dataset.event_column("timestamp")
        self.event_labels = dataset.event_column("label")
        self.user_offsets = dataset.user_offsets
        self.sample_user = dataset.sample_column("user_index")
        self.sample_hist_end = dataset.sample_column("hist_end")
        self.sample_timestamp = dataset.sample_column("timestamp")
        self.sample_label = dataset.sample_column("label")
        self.sample_candidates = {c: dataset.candidate_column(c) for c in self.candidate_columns}
        self.sample_sides = {c: dataset.sample_column(c) for c in self.side_columns}

    @property
    def keys(self) -> list[str]:
        return (
            [HISTORY_PREFIX + c for c in self.sequence_columns]
            + [CANDIDATE_PREFIX + c for c in self.candidate_columns]
            + list(self.side_columns)
        )

    def build(self, sample_ids: np.ndarray, weights: np.ndarray | None = None, target_starts: np.ndarray | None = None) -> Batch:
        """`target_starts` `[B, 2]`: per sample, the first event index (in its user's store) that is a
        dense supervision target, and one index to skip (-1: none). None: no targets."""
        batch_size, width = len(sample_ids), self.max_history
        users = self.sample_user[sample_ids]
        hist_end = self.sample_hist_end[sample_ids]
        # The most recent `max_history` events strictly before the sample's time.
        lengths = np.minimum(hist_end, width).astype(np.int64)
        starts = self.user_offsets[users] + hist_end - lengths
        event_rows = ranges_to_indices(starts, lengths)
        lengths_t = torch.from_numpy(lengths)

        slots = ranges_to_indices(np.arange(batch_size, dtype=np.int64) * width + width - lengths, lengths)
        slots_t = torch.from_numpy(slots)
        padded_times = torch.zeros(batch_size * width, dtype=torch.int64)
        padded_times[slots_t] = torch.from_numpy(self.event_timestamps[event_rows])
        padded_times = padded_times.view(batch_size, width)
        chunk_id, chunk_start, chunk_end, chunk_valid = personalized_chunks(padded_times, lengths_t, self.num_chunks)
        padded_labels = torch.full((batch_size * width,), -1.0)
        event_labels = self.event_labels[event_rows]
        padded_labels[slots_t] = torch.from_numpy(event_labels.astype(np.float32))
        padded_targets = torch.zeros(batch_size * width, dtype=torch.bool)
        if target_starts is not None:
            event_index = event_rows - np.repeat(self.user_offsets[users], lengths)
            first, skip = np.repeat(target_starts[:, 0], lengths), np.repeat(target_starts[:, 1], lengths)
            is_target = (event_index >= first) & (event_index != skip) & (event_labels >= 0)
            padded_targets[slots_t] = torch.from_numpy(is_target)

        ones = np.ones(batch_size, dtype=np.int64)
        values = [self.event_columns[c][event_rows] for c in self.sequence_columns]
        values += [self.sample_candidates[c][sample_ids] for c in self.candidate_columns]
        values += [self.sample_sides[c][sample_ids] for c in self.side_columns]
        kjt_lengths = [lengths] * len(self.sequence_columns) + [ones] * (len(self.candidate_columns) + len(self.side_columns))
        # Each key's total length, known here on the host: a KJT computes it on first access with a
        # `.tolist()` of its lengths, which on a GPU batch is the step's one host-device sync (it
        # drained the GPU's queue every step; benchmarks/RESULTS.md session 10). `to` and
        # `pin_memory` carry it to the device batch.
        features = KeyedJaggedTensor(
            keys=self.keys,
            values=torch.from_numpy(np.concatenate(values).astype(np.int64)),
            lengths=torch.from_numpy(np.concatenate(kjt_lengths)),
            length_per_key=[int(key_lengths.sum()) for key_lengths in kjt_lengths],
        )
        weight = np.ones(batch_size, dtype=np.float32) if weights is None else weights
        return Batch(
            sparse_features=features,
            history_lengths=lengths_t,
            history_timestamps=padded_times,
            history_slots=slots_t,
            chunk_id=chunk_id,
            chunk_start=chunk_start,
            chunk_end=chunk_end,
            chunk_valid=chunk_valid,
            history_labels=padded_labels.view(batch_size, width),
            history_targets=padded_targets.view(batch_size, width),
            request_timestamps=torch.from_numpy(self.sample_timestamp[sample_ids].astype(np.int64)),
            labels=torch.from_numpy(self.sample_label[sample_ids].astype(np.float32)),
            weights=torch.from_numpy(np.ascontiguousarray(weight, dtype=np.float32)),
            user_ids=torch.from_numpy(users.astype(np.int64)),
            sample_ids=torch.from_numpy(np.asarray(sample_ids, dtype=np.int64)),
        )


def _rank_within_user(users: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """For rows grouped by user: each row's index within its user, and whether it is the user's last."""
    first = np.ones(len(users), dtype=bool)
    first[1:] = users[1:] != users[:-1]
    starts = np.maximum.accumulate(np.where(first, np.arange(len(users)), 0))
    last = np.ones(len(users), dtype=bool)
    last[:-1] = first[1:]
    return np.arange(len(users)) - starts, last


def sequence_windows(dataset: PreparedDataset, split_ids: np.ndarray, stride: int) -> tuple[np.ndarray, np.ndarray]:
    """GRAB's packed user sequences: every `stride`-th sample of each user (and its last).

    Returns the chosen sample ids and, per chosen sample, `(first, skip)`: it supervises its user's
    history events from index `first` (the previous chosen sample's history end) on, except `skip`,
    the previous chosen sample's own event, already supervised as that sample's candidate. The
    windows' targets plus the candidates then cover each user's labelled events once per epoch
    (given stride <= history length).
    """
    users = dataset.sample_column("user_index")[split_ids]
    within, last = _rank_within_user(users)
    chosen = ((within + 1) % stride == 0) | last
    ids = split_ids[chosen]
    chosen_users = users[chosen]
    event_pos = dataset.sample_column("event_pos")[ids]
    hist_end = dataset.sample_column("hist_end")[ids]
    previous_same_user = np.zeros(len(ids), dtype=bool)
    previous_same_user[1:] = chosen_users[1:] == chosen_users[:-1]
    first = np.zeros(len(ids), dtype=np.int64)
    skip = np.full(len(ids), -1, dtype=np.int64)
    first[1:], skip[1:] = hist_end[:-1], event_pos[:-1]
    return ids, np.stack([np.where(previous_same_user, first, 0), np.where(previous_same_user, skip, -1)], axis=1)


def user_capped_order(users: np.ndarray, seed: int, epoch: int, max_per_user: int) -> np.ndarray:
    """A shuffle that spreads each user's samples: the first `max_per_user` of every user come first,
    then the next ones, so a batch rarely holds more than `max_per_user` samples of one user."""
    permutation = np.random.default_rng([seed, epoch]).permutation(len(users))
    shuffled_users = users[permutation]
    order_by_user = np.argsort(shuffled_users, kind="stable")
    occurrence = np.empty(len(users), dtype=np.int64)
    occurrence[order_by_user] = _rank_within_user(shuffled_users[order_by_user])[0]
    return permutation[np.lexsort((np.arange(len(users)), occurrence // max_per_user))]


class SplitBatches(IterableDataset):
    """Yields whole `Batch`es of one split for one rank; use with `DataLoader(batch_size=None)`.

    `sequence_stride` switches to GRAB's packed user sequences (`sequence_windows`) with dense
    supervision targets; `order="user_capped"` is GRAB's de-correlated STS stage-2 order.
    """

    def __init__(
        self,
        dataset_dir: str,
        split: str,
        batch_size: int,
        *,
        rank: int = 0,
        world_size: int = 1,
        seed: int = 0,
        epoch: int = 0,
        order: Literal["shuffle", "time", "stored", "user_capped"] = "shuffle",
        drop_last: bool = False,
        start_batch: int = 0,
        max_history: int | None = None,
        num_chunks: int | None = None,
        sequence_stride: int | None = None,
        max_per_user: int = 2,
        fraction: float = 1.0,
    ):
        super().__init__()
        self.dataset_dir = str(dataset_dir)
        dataset = PreparedDataset(self.dataset_dir)
        self.split_ids = dataset.split_indices(split)
        if fraction < 1.0:
            # A fixed subset (its own seed, not the run's), so runs at one fraction see the same data.
            self.split_ids = self.split_ids[np.random.default_rng(12345).random(len(self.split_ids)) < fraction]
        self.target_starts: np.ndarray | None = None
        if sequence_stride is not None:
            self.split_ids, self.target_starts = sequence_windows(dataset, self.split_ids, sequence_stride)
        if order == "user_capped":
            reorder = user_capped_order(dataset.sample_column("user_index")[self.split_ids], seed, epoch, max_per_user)
            self.split_ids = self.split_ids[reorder]
            self.target_starts = self.target_starts[reorder] if self.target_starts is not None else None
            order = "stored"
        self.split_timestamps = dataset.sample_column("timestamp")[self.split_ids] if order == "time" else None
        self.plan = ShardPlan(len(self.split_ids), batch_size, rank, world_size, seed, epoch, order, drop_last)
        self.start_batch = start_batch
        self.max_history = max_history
        self.num_chunks = num_chunks

    def __len__(self) -> int:
        return max(0, self.plan.num_batches - self.start_batch)

    def batch_sample_ids(self) -> Iterator[tuple[int, np.ndarray, np.ndarray, np.ndarray | None]]:
        positions, weights = self.plan.rank_positions(self.split_timestamps)
        size = self.plan.batch_size
        for index in range(self.start_batch, self.plan.num_batches):
            chunk = positions[index * size : (index + 1) * size]
            starts = self.target_starts[chunk] if self.target_starts is not None else None
            yield index, self.split_ids[chunk], weights[index * size : (index + 1) * size], starts

    def __iter__(self) -> Iterator[Batch]:
        worker = get_worker_info()
        worker_id, num_workers = (worker.id, worker.num_workers) if worker else (0, 1)
        builder = BatchBuilder(PreparedDataset(self.dataset_dir), self.max_history, self.num_chunks)
        for index, sample_ids, weights, target_starts in self.batch_sample_ids():
            if (index - self.start_batch) % num_workers == worker_id:
                yield builder.build(sample_ids, weights, target_starts)


def _single_threaded_worker(worker_id: int) -> None:
    # Workers are processes already; intra-op threads in each would fight over the same cores.
    torch.set_num_threads(1)


def make_loader(batches: SplitBatches, num_workers: int = 2, pin_memory: bool = False) -> DataLoader:
    return DataLoader(
        batches,
        batch_size=None,
        num_workers=num_workers,
        pin_memory=pin_memory,
        persistent_workers=False,
        prefetch_factor=4 if num_workers else None,
        worker_init_fn=_single_threaded_worker if num_workers else None,
    )
