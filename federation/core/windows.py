"""Aggregation windows: `[start, start + size)` aligned to UTC multiples of the size.

A window is identified by its start and size, both integer nanoseconds, so all math here is
exact. Production plans use sizes that divide a day (`1h`, `15m`), but nothing here assumes
that: one-second windows behave the same, which is what tests and scenarios run on.

The rule behind every function: a window is only ever computed from data covering all of it.
So ranges yield whole windows only, never a window cut by the range's edge.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

from federation.core.clock import format_rfc3339
from federation.core.durations import format_duration


def _check_size(size_ns: int) -> None:
    if size_ns <= 0:
        raise ValueError(f"window size must be positive, got {size_ns} ns")


def _check_non_negative(name: str, ns: int) -> None:
    if ns < 0:
        raise ValueError(f"{name} must be non-negative, got {ns} ns")


@dataclass(frozen=True, order=True)
class Window:
    """The half-open interval `[start_ns, start_ns + size_ns)`, aligned: start % size == 0.

    Ordering is by start, then size. Construction refuses a non-positive size or a start that
    is not a multiple of the size, so every Window in federation is aligned.
    """

    start_ns: int
    size_ns: int

    def __post_init__(self) -> None:
        _check_size(self.size_ns)
        if self.start_ns % self.size_ns:
            raise ValueError(
                f"window start {format_rfc3339(self.start_ns)} is not aligned to "
                f"{format_duration(self.size_ns)} since the epoch"
            )

    @property
    def end_ns(self) -> int:
        """The first instant after the window."""
        return self.start_ns + self.size_ns

    def contains(self, t_ns: int) -> bool:
        """True iff start <= t < end."""
        return self.start_ns <= t_ns < self.end_ns

    def shifted(self, k: int) -> Window:
        """The window k windows later (earlier when k < 0), of the same size."""
        return Window(self.start_ns + k * self.size_ns, self.size_ns)

    @property
    def label(self) -> str:
        """The start as RFC 3339 (`2026-11-28T10:00:00Z`): the timestamp its points carry."""
        return format_rfc3339(self.start_ns)

    def __str__(self) -> str:
        return f"{self.label}+{format_duration(self.size_ns)}"


def align(t_ns: int, size_ns: int) -> int:
    """The start of the window holding `t_ns`: the largest multiple of size <= t (also t < 0)."""
    _check_size(size_ns)
    return t_ns - t_ns % size_ns


def window_of(t_ns: int, size_ns: int) -> Window:
    """The one window of this size that contains `t_ns`."""
    return Window(align(t_ns, size_ns), size_ns)


def windows_between(start_ns: int, end_ns: int, size_ns: int) -> list[Window]:
    """Every whole window inside `[start_ns, end_ns)`, oldest first, contiguous.

    Partial edges are dropped, never cut: a window is returned only if start_ns <= its start
    and its end <= end_ns. So a range that starts mid-window begins at the next boundary, and
    one that ends mid-window stops at the last boundary before end_ns. An empty or inverted
    range, or one shorter than a window, gives [].
    """
    _check_size(size_ns)
    first = -(-start_ns // size_ns) * size_ns
    last_end = align(end_ns, size_ns)
    return [Window(s, size_ns) for s in range(first, last_end, size_ns)]


def last_complete_window(now_ns: int, size_ns: int) -> Window:
    """The latest window that has fully ended at `now_ns` (its end <= now).

    At an exact boundary the window ending there counts as complete: every instant in it is
    already in the past.
    """
    return Window(align(now_ns, size_ns) - size_ns, size_ns)


def deadline_ns(window: Window, lookback_ns: int, grace_ns: int) -> int:
    """When a window that has not arrived counts as missing: end + look-back + grace.

    Until then a later run may still ship it, since each run recomputes its look-back.
    """
    _check_non_negative("look-back", lookback_ns)
    _check_non_negative("grace", grace_ns)
    return window.end_ns + lookback_ns + grace_ns


def lookback_windows(now_ns: int, size_ns: int, k: int) -> list[Window]:
    """The k trailing complete windows a run at `now_ns` recomputes, newest first.

    Element i is the window at offset i windows: element 0 is `last_complete_window(now)`,
    matching the TICKscript branch with `.offset(i * window)`.
    """
    if k < 0:
        raise ValueError(f"look-back must be a non-negative number of windows, got {k}")
    newest = last_complete_window(now_ns, size_ns)
    return [newest.shifted(-i) for i in range(k)]


def within_retention(
    window: Window, now_ns: int, retention_ns: int, shard_duration_ns: int
) -> bool:
    """Whether all of `window`'s raw data is still certainly held, so it may be recomputed.

    True iff the window's end is younger than retention minus one shard duration:
    `now - end < retention - shard_duration`. InfluxDB drops whole shard groups, so data may go
    up to one shard duration earlier than the retention alone suggests; the strict `<` keeps the
    exact boundary on the safe side. A retention of 0 means infinite: always True.
    """
    _check_non_negative("retention", retention_ns)
    _check_non_negative("shard duration", shard_duration_ns)
    if retention_ns == 0:
        return True
    return now_ns - window.end_ns < retention_ns - shard_duration_ns


def coalesce(windows: Iterable[Window]) -> list[tuple[int, int]]:
    """Merge windows into the fewest `[start, end)` ranges covering exactly the same instants.

    Input may be in any order and hold duplicates; touching or overlapping windows join one
    range. Output is sorted, and ranges neither touch nor overlap.
    """
    ranges: list[tuple[int, int]] = []
    for w in sorted(windows):
        if ranges and w.start_ns <= ranges[-1][1]:
            start, end = ranges[-1]
            ranges[-1] = (start, max(end, w.end_ns))
        else:
            ranges.append((w.start_ns, w.end_ns))
    return ranges


def widen(
    span: tuple[int, int], lookback_ns: int, cap_ns: int, *, size_ns: int | None = None
) -> list[tuple[int, int]]:
    """Widen a backfill range back by one look-back, then split it into pieces of at most cap.

    The range `[start, end)` becomes `[start - lookback, end)`, so the windows before a gap are
    recomputed as a regular run would have (re-shipping is idempotent). The result is cut into
    contiguous, non-overlapping pieces `[s, min(s + cap, end))`, oldest first, that cover it
    exactly. When `size_ns` is given, the range, the look-back and the cap must all be whole
    windows, so that no piece cuts a window; otherwise ValueError. An empty range gives [].
    """
    start, end = span
    _check_non_negative("look-back", lookback_ns)
    if cap_ns <= 0:
        raise ValueError(f"backfill cap must be positive, got {cap_ns} ns")
    if size_ns is not None:
        _check_size(size_ns)
        for name, value in (
            ("range start", start),
            ("range end", end),
            ("look-back", lookback_ns),
            ("cap", cap_ns),
        ):
            if value % size_ns:
                raise ValueError(
                    f"backfill {name} ({value} ns) is not a whole number of "
                    f"{format_duration(size_ns)} windows"
                )
    if end <= start:
        return []
    widened_start = start - lookback_ns
    return [(s, min(s + cap_ns, end)) for s in range(widened_start, end, cap_ns)]
