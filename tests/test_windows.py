from __future__ import annotations

from itertools import pairwise

import pytest
from hypothesis import given
from hypothesis import strategies as st

from federation.core.clock import parse_rfc3339
from federation.core.durations import DAY_NS, HOUR_NS, SECOND_NS
from federation.core.windows import (
    Window,
    align,
    coalesce,
    deadline_ns,
    last_complete_window,
    lookback_windows,
    widen,
    window_of,
    windows_between,
    within_retention,
)

T0 = parse_rfc3339("2026-11-28T10:00:00Z")
times = st.integers(min_value=-(10**18), max_value=10**18)
# Production sizes plus one-second windows and sizes that do not divide anything nicely.
sizes = st.one_of(
    st.sampled_from([SECOND_NS, 60 * SECOND_NS, 15 * 60 * SECOND_NS, HOUR_NS, DAY_NS]),
    st.integers(min_value=1, max_value=10**12),
)


def test_window_basics() -> None:
    w = Window(T0, HOUR_NS)
    assert w.end_ns == T0 + HOUR_NS
    assert w.contains(T0) and w.contains(T0 + HOUR_NS - 1)
    assert not w.contains(T0 - 1) and not w.contains(T0 + HOUR_NS)
    assert w.label == "2026-11-28T10:00:00Z"
    assert str(w) == "2026-11-28T10:00:00Z+1h"
    assert w.shifted(-2) == Window(T0 - 2 * HOUR_NS, HOUR_NS)
    assert sorted([w.shifted(1), w, w.shifted(-1)]) == [w.shifted(-1), w, w.shifted(1)]


def test_window_refuses_misalignment_and_bad_sizes() -> None:
    with pytest.raises(ValueError, match="not aligned to 1h"):
        Window(T0 + SECOND_NS, HOUR_NS)
    with pytest.raises(ValueError, match="positive"):
        Window(0, 0)
    with pytest.raises(ValueError, match="positive"):
        align(5, -1)


@given(times, sizes)
def test_align_is_the_floor_multiple(t: int, size: int) -> None:
    a = align(t, size)
    assert a % size == 0
    assert a <= t < a + size
    assert window_of(t, size).contains(t)


@given(times, st.integers(min_value=-3, max_value=300), sizes, st.integers(0, 10**12))
def test_windows_between_are_whole_aligned_contiguous_and_maximal(
    start: int, n_sizes: int, size: int, extra: int
) -> None:
    # The range spans about n_sizes windows, so the list stays small for any size.
    end = start + n_sizes * size + extra % size
    windows = windows_between(start, end, size)
    for w in windows:
        assert w.size_ns == size
        assert w.start_ns % size == 0
        assert start <= w.start_ns and w.end_ns <= end
    for before, after in pairwise(windows):
        assert before.end_ns == after.start_ns
    # Maximal: no further whole window fits at either edge.
    if windows:
        assert windows[0].start_ns - size < start
        assert windows[-1].end_ns + size > end
    else:
        first_aligned = align(start + size - 1, size)
        assert first_aligned + size > end


def test_windows_between_drops_partial_edges() -> None:
    got = windows_between(T0 + 30 * 60 * SECOND_NS, T0 + 4 * HOUR_NS - 1, HOUR_NS)
    assert [w.start_ns for w in got] == [T0 + HOUR_NS, T0 + 2 * HOUR_NS]
    assert windows_between(T0, T0 + 2 * HOUR_NS, HOUR_NS) == [
        Window(T0, HOUR_NS),
        Window(T0 + HOUR_NS, HOUR_NS),
    ]
    assert windows_between(T0 + 1, T0 + HOUR_NS + 1, HOUR_NS) == []
    assert windows_between(T0, T0 - HOUR_NS, HOUR_NS) == []


def test_windows_between_one_second_windows() -> None:
    got = windows_between(T0 + 1, T0 + 5 * SECOND_NS, SECOND_NS)
    assert [w.start_ns - T0 for w in got] == [
        SECOND_NS,
        2 * SECOND_NS,
        3 * SECOND_NS,
        4 * SECOND_NS,
    ]


@given(times, sizes)
def test_last_complete_window_has_ended_and_is_the_latest(now: int, size: int) -> None:
    w = last_complete_window(now, size)
    assert w.end_ns <= now < w.end_ns + size


def test_last_complete_window_at_a_boundary() -> None:
    assert last_complete_window(T0, HOUR_NS) == Window(T0 - HOUR_NS, HOUR_NS)
    assert last_complete_window(T0 - 1, HOUR_NS) == Window(T0 - 2 * HOUR_NS, HOUR_NS)


def test_lookback_windows_are_offsets_newest_first() -> None:
    got = lookback_windows(T0 + 5 * SECOND_NS, HOUR_NS, 3)
    assert got == [
        Window(T0 - HOUR_NS, HOUR_NS),
        Window(T0 - 2 * HOUR_NS, HOUR_NS),
        Window(T0 - 3 * HOUR_NS, HOUR_NS),
    ]
    assert lookback_windows(T0, SECOND_NS, 0) == []
    with pytest.raises(ValueError):
        lookback_windows(T0, SECOND_NS, -1)


def test_deadline_is_end_plus_lookback_plus_grace() -> None:
    w = Window(T0, HOUR_NS)
    assert deadline_ns(w, 3 * HOUR_NS, HOUR_NS) == T0 + 5 * HOUR_NS
    with pytest.raises(ValueError):
        deadline_ns(w, -1, 0)


RETENTION = 30 * DAY_NS
SHARD = DAY_NS


def test_within_retention_edges() -> None:
    w = Window(T0, HOUR_NS)
    limit = w.end_ns + RETENTION - SHARD
    assert within_retention(w, limit - 1, RETENTION, SHARD)
    # Exactly at retention minus one shard the oldest shard may already be gone.
    assert not within_retention(w, limit, RETENTION, SHARD)
    assert not within_retention(w, limit + 1, RETENTION, SHARD)
    # A window that has not ended yet is young.
    assert within_retention(w, T0, RETENTION, SHARD)


def test_within_retention_infinite_and_degenerate() -> None:
    w = Window(0, HOUR_NS)
    assert within_retention(w, T0 * 100, 0, SHARD)
    # Retention no longer than a shard: nothing that has ended is certainly still there.
    assert not within_retention(w, w.end_ns, DAY_NS, DAY_NS)
    assert not within_retention(w, w.end_ns, HOUR_NS, DAY_NS)
    with pytest.raises(ValueError):
        within_retention(w, T0, -1, SHARD)
    with pytest.raises(ValueError):
        within_retention(w, T0, RETENTION, -1)


@given(st.integers(min_value=0, max_value=10**9), st.integers(1, DAY_NS), st.integers(0, DAY_NS))
def test_within_retention_matches_the_rule(age: int, retention: int, shard: int) -> None:
    w = Window(T0, HOUR_NS)
    assert within_retention(w, w.end_ns + age, retention, shard) == (age < retention - shard)


@given(st.lists(st.integers(min_value=-50, max_value=50), max_size=40))
def test_coalesce_covers_exactly_the_same_instants(indices: list[int]) -> None:
    windows = [Window(i * SECOND_NS, SECOND_NS) for i in indices]
    ranges = coalesce(windows)
    covered = {s // SECOND_NS for start, end in ranges for s in range(start, end, SECOND_NS)}
    assert covered == set(indices)
    for (_, end), (start, _) in pairwise(ranges):
        assert end < start
    assert all(start < end for start, end in ranges)


def test_coalesce_merges_mixed_sizes_and_overlaps() -> None:
    ranges = coalesce([Window(HOUR_NS, HOUR_NS), Window(0, DAY_NS), Window(DAY_NS, HOUR_NS)])
    assert ranges == [(0, DAY_NS + HOUR_NS)]
    assert coalesce([]) == []


@given(
    st.integers(min_value=-1000, max_value=1000),
    st.integers(min_value=0, max_value=200),
    st.integers(min_value=0, max_value=10),
    st.integers(min_value=1, max_value=50),
)
def test_widen_covers_the_widened_range_in_capped_whole_pieces(
    start_w: int, length_w: int, lookback_w: int, cap_w: int
) -> None:
    size = HOUR_NS
    start, end = start_w * size, (start_w + length_w) * size
    pieces = widen((start, end), lookback_w * size, cap_w * size, size_ns=size)
    if length_w == 0:
        assert pieces == []
        return
    assert pieces[0][0] == start - lookback_w * size
    assert pieces[-1][1] == end
    for (_, a_end), (b_start, _) in pairwise(pieces):
        assert a_end == b_start
    for s, e in pieces:
        assert 0 < e - s <= cap_w * size
        assert s % size == 0 and e % size == 0


def test_widen_refuses_pieces_that_would_cut_windows() -> None:
    with pytest.raises(ValueError, match="cap"):
        widen((0, 10 * HOUR_NS), HOUR_NS, 90 * 60 * SECOND_NS, size_ns=HOUR_NS)
    with pytest.raises(ValueError, match="look-back"):
        widen((0, 10 * HOUR_NS), SECOND_NS, HOUR_NS, size_ns=HOUR_NS)
    with pytest.raises(ValueError, match="positive"):
        widen((0, HOUR_NS), 0, 0)


def test_widen_example() -> None:
    assert widen((10, 20), 2, 4) == [(8, 12), (12, 16), (16, 20)]
