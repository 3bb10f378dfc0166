"""Personalized chunking: the vectorised op against its plain-Python twin."""

import numpy as np
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from recsys.ops.chunking import personalized_chunks, personalized_chunks_reference


def _pad(histories, width):
    times = torch.zeros(len(histories), width, dtype=torch.int64)
    for row, history in enumerate(histories):
        if history:
            times[row, width - len(history) :] = torch.tensor(history)
    return times, torch.tensor([len(h) for h in histories])


def _chunks_from_op(chunk_start, chunk_end, length, width):
    offset = width - length
    return [list(range(s - offset, e - offset)) for s, e in zip(chunk_start.tolist(), chunk_end.tolist())]


history_strategy = st.lists(st.integers(0, 50), min_size=0, max_size=40).map(
    lambda gaps: list(np.cumsum([1_700_000_000] + gaps[1:]).tolist()) if gaps else []
)


@settings(max_examples=200, deadline=None)
@given(histories=st.lists(history_strategy, min_size=1, max_size=6), num_chunks=st.integers(1, 12))
def test_chunks_equal_reference_and_cut_at_largest_gaps(histories, num_chunks):
    width = max(40, max(len(h) for h in histories))
    times, lengths = _pad(histories, width)
    chunk_id, chunk_start, chunk_end, chunk_valid = personalized_chunks(times, lengths, num_chunks)
    for row, history in enumerate(histories):
        expected = personalized_chunks_reference(history, num_chunks)
        got = _chunks_from_op(chunk_start[row], chunk_end[row], len(history), width)
        assert [c for c in got] == expected
        assert chunk_valid[row].tolist() == [len(c) > 0 for c in expected]
        # Padding is chunk 0; every real event carries its chunk's number.
        assert (chunk_id[row, : width - len(history)] == 0).all()
        for number, events in enumerate(expected, start=1):
            for event in events:
                assert chunk_id[row, width - len(history) + event] == number
        # Boundaries are exactly the P-1 largest gaps: every cut gap >= every gap inside a chunk.
        cut_gaps = [history[c[0]] - history[c[0] - 1] for c in expected if c and c[0] > 0]
        inner_gaps = [history[i + 1] - history[i] for c in expected for i in c[:-1]]
        assert len(cut_gaps) == min(num_chunks - 1, max(len(history) - 1, 0))
        if cut_gaps and inner_gaps:
            assert min(cut_gaps) >= max(inner_gaps)


def test_bursts_are_never_split_and_empty_chunks_come_first():
    # Three sessions: gaps of seconds inside, hours between.
    history = [0, 5, 9, 7200, 7203, 20000, 20001, 20002]
    times, lengths = _pad([history, []], 10)
    _, start3, end3, valid3 = personalized_chunks(times, lengths, 3)
    assert _chunks_from_op(start3[0], end3[0], 8, 10) == [[0, 1, 2], [3, 4], [5, 6, 7]]
    # P = 5: the two session gaps, then the two largest in-session gaps (5 s, 4 s).
    _, start5, end5, _ = personalized_chunks(times, lengths, 5)
    assert _chunks_from_op(start5[0], end5[0], 8, 10) == [[0], [1], [2], [3, 4], [5, 6, 7]]
    # 8 events, P = 12: 7 cuts, 4 empty chunks first.
    _, start12, end12, valid12 = personalized_chunks(times, lengths, 12)
    assert valid12[0].tolist() == [False] * 4 + [True] * 8
    assert (end12[0, :4] == start12[0, :4]).all()
    # An empty history: every chunk empty, everything padding.
    assert not valid3[1].any() and (start3[1] == end3[1]).all()


def test_equal_gaps_break_ties_toward_the_later_position():
    history = [0, 10, 20, 30]
    times, lengths = _pad([history], 4)
    _, start, end, _ = personalized_chunks(times, lengths, 2)
    assert _chunks_from_op(start[0], end[0], 4, 4) == [[0, 1, 2], [3]]


def test_scripted_matches_eager():
    scripted = torch.jit.script(personalized_chunks)
    generator = torch.Generator().manual_seed(0)
    lengths = torch.randint(0, 64, (8,), generator=generator)
    gaps = torch.randint(0, 1000, (8, 64), generator=generator)
    times = gaps.cumsum(1) * (torch.arange(64) >= 64 - lengths[:, None])
    for eager, jit in zip(personalized_chunks(times, lengths, 8), scripted(times, lengths, 8)):
        assert torch.equal(eager, jit)
