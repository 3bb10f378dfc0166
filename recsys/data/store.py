"""Read side of a prepared dataset: memory-mapped Arrow IPC tables and the dataset metadata."""

from __future__ import annotations

import json
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path

import numpy as np
import pyarrow as pa

from recsys.data.layout import CANDIDATE_PREFIX, FORMAT_VERSION, SPLITS
from recsys.data.spec import FeatureSpec, spec_from_dict


def _memory_map_table(path: Path) -> pa.Table:
    return pa.ipc.open_file(pa.memory_map(str(path), "r")).read_all()


def _column(table: pa.Table, name: str) -> np.ndarray:
    """A zero-copy NumPy view when the column is one null-free chunk (as prepare writes it)."""
    column = table.column(name)
    if column.num_chunks == 1:
        return column.chunk(0).to_numpy(zero_copy_only=column.null_count == 0 and not pa.types.is_string(column.type))
    return column.to_numpy()


@dataclass
class PreparedDataset:
    """A prepared dataset directory; the arrays are memory-mapped, so opening it is cheap."""

    root: Path

    def __post_init__(self) -> None:
        self.root = Path(self.root)
        meta_path = self.root / "dataset.json"
        if not meta_path.exists():
            raise FileNotFoundError(f"{self.root}: not a prepared dataset (no dataset.json); run `recsys prepare`")
        self.metadata = json.loads(meta_path.read_text())
        if self.metadata.get("format_version") != FORMAT_VERSION:
            raise ValueError(f"{self.root}: dataset format {self.metadata.get('format_version')} != {FORMAT_VERSION}; prepare again")

    @cached_property
    def spec(self) -> FeatureSpec:
        return spec_from_dict(self.metadata["spec"], source=str(self.root / "dataset.json"))

    @cached_property
    def events(self) -> pa.Table:
        return _memory_map_table(self.root / "events.arrow")

    @cached_property
    def samples(self) -> pa.Table:
        return _memory_map_table(self.root / "samples.arrow")

    @cached_property
    def users(self) -> pa.Table:
        return _memory_map_table(self.root / "users.arrow")

    @property
    def sequence_columns(self) -> list[str]:
        return [f.column for f in self.spec.fields_with_role("sequence")]

    @property
    def candidate_columns(self) -> list[str]:
        return [f.column for f in self.spec.fields_with_role("sequence") if f.candidate]

    @property
    def side_columns(self) -> list[str]:
        return [f.column for f in self.spec.fields if f.role in ("profile", "context")]

    def event_column(self, name: str) -> np.ndarray:
        return _column(self.events, name)

    def sample_column(self, name: str) -> np.ndarray:
        return _column(self.samples, name)

    def candidate_column(self, name: str) -> np.ndarray:
        return _column(self.samples, CANDIDATE_PREFIX + name)

    @cached_property
    def user_offsets(self) -> np.ndarray:
        return _column(self.users, "offset")

    def split_indices(self, split: str) -> np.ndarray:
        """Sample row ids of one split, in stored (user, time) order."""
        return np.flatnonzero(self.sample_column("split") == SPLITS.index(split))

    @property
    def num_embeddings(self) -> dict[str, int]:
        return dict(self.metadata["num_embeddings"])

    @property
    def utc_offset_seconds(self) -> int:
        return int(self.metadata["utc_offset_seconds"])
