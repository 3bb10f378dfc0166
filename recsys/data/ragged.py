"""Vectorised index arithmetic for ragged rows (numpy only: shared by the loader and serving)."""

from __future__ import annotations

import numpy as np


def ranges_to_indices(starts: np.ndarray, lengths: np.ndarray) -> np.ndarray:
    """Concatenated `arange(start, start + length)` for all rows, without a Python loop."""
    lengths = np.asarray(lengths, dtype=np.int64)
    total = int(lengths.sum())
    row_first = np.cumsum(lengths) - lengths
    return np.arange(total, dtype=np.int64) + np.repeat(np.asarray(starts, dtype=np.int64) - row_first, lengths)


def positions_within_rows(lengths: np.ndarray) -> np.ndarray:
    """For rows of the given lengths laid end to end: each element's index inside its row."""
    return ranges_to_indices(np.zeros(len(lengths), dtype=np.int64), lengths)
