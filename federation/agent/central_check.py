"""Does central hold what the DC's raw data holds? The Kapacitor mode's check of its shipments.

Kapacitor's `influxDBOut` drops a write that fails (gateway down, or refusing) and never retries
it, and a replay whose writes were all dropped still finishes without an error. Two checks
close that gap, both by sending the raw event counts the agent takes from the DC's InfluxDB to
the coordinator (`POST /api/v1/dcs/{dc}/windows/raw-counts`), which answers what central holds:

- once the look-back of a window has passed (its last scheduled run and that run's flush are
  over), a window central holds fewer events of than the raw data (a partial first run got
  through, the later complete ones were dropped) is marked `inconsistent` by the coordinator,
  with both figures as the reason, and its planner has it re-run (`windows_past_lookback`);
- a replay counts as done only when central holds, for every window it replayed, at least the
  events counted before it (`missing_at_central`); otherwise the run fails with what central
  holds, and the backfill is retried and, in the end, shown as failed.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Protocol

from federation.agent.coordinator_client import HeldCount
from federation.agent.executor import WindowResult
from federation.core.detection_plan import TrackedPlan
from federation.core.windows import Window, lookback_windows

__all__ = [
    "CentralCounts",
    "DueWindows",
    "WindowBook",
    "WindowChecks",
    "describe_missing",
    "missing_at_central",
    "report_past_lookback",
    "short_after_replay",
    "windows_past_lookback",
]

log = logging.getLogger(__name__)

RAW_COUNTS_PER_REQUEST = 1_000
"""Windows per raw-counts request (the coordinator takes up to 10,000; an agent's first check
after it starts may send far more)."""


class CentralCounts(Protocol):
    """The coordinator's answer to raw counts (`CoordinatorClient.raw_counts`)."""

    def raw_counts(
        self, dc: str, aggregation: str, counts: Mapping[int, int]
    ) -> list[HeldCount]: ...


def windows_past_lookback(plan: TrackedPlan, now_ns: int, settle_ns: int) -> list[Window]:
    """The windows to check at `now_ns`: those whose every scheduled run is over.

    The last look-back branch reads a window `lookback - 1` windows after it ended, and its
    `influxDBOut` flushes within one more window (`flushInterval`, or 10 s for longer windows),
    so a window is checked from `end + lookback + settle` on, for four look-backs (a check
    that failed, e.g. the coordinator was down, is tried again at later calls).
    """
    return lookback_windows(
        now_ns - settle_ns - plan.lookback_ns, plan.window_ns, 4 * plan.lookback_windows
    )


def missing_at_central(held: Sequence[HeldCount]) -> list[HeldCount]:
    """The windows central holds fewer events of than the raw data."""
    return [h for h in held if (h.events or 0) < h.raw_events]


def describe_missing(held: HeldCount, size_ns: int) -> str:
    """One line for a window central holds less of."""
    holds = "nothing" if held.events is None else f"{held.events} events"
    return (
        f"window {Window(held.start_ns, size_ns)}: central holds {holds} ({held.state}) "
        f"of its {held.raw_events} raw events"
    )


def report_past_lookback(
    central: CentralCounts, dc: str, plan: TrackedPlan, counts: Mapping[int, int]
) -> list[HeldCount]:
    """Send the raw counts of windows past their look-back; return (and log) the windows the
    coordinator marked `inconsistent` because central holds less of them."""
    starts = sorted(counts)
    marked = [
        h
        for i in range(0, len(starts), RAW_COUNTS_PER_REQUEST)
        for h in central.raw_counts(
            dc, plan.aggregation, {s: counts[s] for s in starts[i : i + RAW_COUNTS_PER_REQUEST]}
        )
        if h.short
    ]
    for h in marked:
        log.warning(
            "%s %s: a look-back run's write was dropped; the coordinator has it re-run",
            plan.aggregation,
            describe_missing(h, plan.window_ns),
        )
    return marked


def short_after_replay(
    central: CentralCounts | None,
    dc: str,
    plan: TrackedPlan,
    counts: Mapping[int, int],
    *,
    wait_s: float,
    stopped: Callable[[float], bool],
) -> dict[int, str]:
    """The replayed windows central holds fewer events of than `counts` (start -> why), after
    waiting up to `wait_s` for the writes to arrive (`stopped(seconds)` waits, True to stop
    waiting); {} without a coordinator to ask. CoordinatorError when it does not answer."""
    if central is None or not counts:
        return {}
    deadline = time.monotonic() + wait_s
    while True:
        short = missing_at_central(central.raw_counts(dc, plan.aggregation, counts))
        if not short or time.monotonic() >= deadline or stopped(0.2):
            break
        counts = {h.start_ns: h.raw_events for h in short}
    for h in short:
        log.error(
            "%s %s after its replay (Kapacitor's influxDBOut drops the writes it cannot make)",
            plan.aggregation,
            describe_missing(h, plan.window_ns),
        )
    return {h.start_ns: describe_missing(h, plan.window_ns) for h in short}


@dataclass(frozen=True)
class DueWindows:
    """One plan's windows a pass of the Kapacitor mode's checks of its live task handles, each
    list oldest first: `confirm`, the ended windows of its look-back not yet confirmed; `check`,
    those past their look-back (`windows_past_lookback`) not yet checked at central; `first`,
    whether no check of this plan version was done yet (it reaches back before `check`)."""

    confirm: list[Window]
    check: list[Window]
    first: bool

    def to_report(self, counts: Mapping[int, int], since_ns: int | None) -> dict[int, int]:
        """The raw counts to send central, of the windows that hold events: those of `check`,
        and from `since_ns` (the first check's reach back) on, every window before them."""
        if not self.check:
            return {}
        starts = {w.start_ns for w in self.check}
        before = self.check[0].start_ns
        reach = since_ns if since_ns is not None else before
        return {s: n for s, n in sorted(counts.items()) if n and (s in starts or reach <= s < before)}  # fmt: skip


class WindowBook:
    """Which windows of each plan version the Kapacitor mode's checks are done with: confirmed
    (an empty one's zero manifest went out, or it holds events, Kapacitor's to ship) and checked
    at central. Only windows still due are kept."""

    def __init__(self) -> None:
        self._confirmed: dict[tuple[str, str], set[int]] = {}
        self._checked: dict[tuple[str, str], set[int]] = {}

    def due(self, plan: TrackedPlan, now_ns: int, settle_ns: int, *, central: bool) -> DueWindows:
        """What is due for `plan` at `now_ns`; nothing to check at central unless `central`."""
        key = (plan.aggregation, plan.version)
        ended = lookback_windows(now_ns - settle_ns, plan.window_ns, plan.lookback_windows)
        confirmed = self._confirmed.setdefault(key, set())
        confirmed.intersection_update(w.start_ns for w in ended)
        confirm = sorted(w for w in ended if w.start_ns not in confirmed)
        if not central:
            return DueWindows(confirm, [], False)
        passed = windows_past_lookback(plan, now_ns, settle_ns)
        checked = self._checked.get(key)
        if checked is not None:
            checked.intersection_update(w.start_ns for w in passed)
        check = sorted(w for w in passed if checked is None or w.start_ns not in checked)
        return DueWindows(confirm, check, checked is None)

    def confirmed(self, plan: TrackedPlan, window: Window) -> None:
        self._confirmed.setdefault((plan.aggregation, plan.version), set()).add(window.start_ns)

    def checked(self, plan: TrackedPlan, windows: Sequence[Window]) -> None:
        checked = self._checked.setdefault((plan.aggregation, plan.version), set())
        checked.update(w.start_ns for w in windows)


@dataclass
class WindowChecks:
    """What a pass of the Kapacitor mode's checks did: the zero manifests it shipped (each
    window's result) and the windows the coordinator marked `inconsistent`."""

    shipped: list[WindowResult] = field(default_factory=list)
    marked: list[HeldCount] = field(default_factory=list)
