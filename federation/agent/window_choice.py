"""Which windows the agent computes: ended and settled by its own clock, within raw retention.

Every window an agent computes is chosen here, whoever asked for it (its schedule, catch-up
at start, a backfill request from the coordinator), so no request can make it compute a
window that is still running on its own clock.
"""

from __future__ import annotations

from collections.abc import Collection, Sequence

from federation.agent.coordinator_client import DesiredRetentionState
from federation.core.detection_plan import TrackedPlan
from federation.core.durations import SECOND_NS
from federation.core.windows import (
    Window,
    align,
    last_complete_window,
    windows_between,
    within_retention,
)

__all__ = [
    "catch_up_windows",
    "ended_windows",
    "rerun_reach_ns",
    "settle_ns",
    "within_raw_retention",
]


def settle_ns(plan: TrackedPlan, settle_s: float) -> int:
    """How long after a window's end it may be computed: `settle_s` (the agent's setting), at
    most a tenth of the window (late writes of its last instant have landed by then)."""
    return min(int(settle_s * SECOND_NS), plan.window_ns // 10)


def ended_windows(windows: Sequence[Window], now_ns: int, settle: int) -> list[Window]:
    """The windows that have ended, and settled, by `now_ns` on this DC's own clock.

    Every window the agent computes passes here, whoever chose it (its schedule, catch-up, a
    backfill request): a coordinator whose clock runs ahead may ask for windows that are still
    running here, and computing one would ship a part of it as if it were whole.
    """
    return [w for w in windows if w.end_ns + settle <= now_ns]


def catch_up_windows(
    plan: TrackedPlan,
    latest_shipped_ns: int | None,
    now_ns: int,
    retention: DesiredRetentionState | None,
    held: Collection[int] = (),
) -> list[Window]:
    """The windows to compute when the agent starts, oldest first.

    Every complete window after `latest_shipped_ns` (the start of the last window central
    holds), and at least the look-back, as a scheduled run would; and, among the windows
    central holds (`held`: their starts), those within the look-back of that last one: their
    look-back runs may not have run since (the agent stopped), and events landing late inside
    their look-back would otherwise never reach central. Windows whose raw data may already be
    partly past the raw retention (`within_retention`, with one shard duration of margin) are
    left out: those are the coordinator's to mark unrecoverable. When central holds nothing
    yet, only the look-back: older history is the coordinator's to request as backfill.
    """
    last = last_complete_window(now_ns, plan.window_ns)
    start = last.shifted(-(plan.lookback_windows - 1)).start_ns
    again: list[Window] = []
    if latest_shipped_ns is not None:
        start = min(start, align(latest_shipped_ns, plan.window_ns) + plan.window_ns)
        reach = rerun_reach_ns(plan, latest_shipped_ns)
        again = [w for w in windows_between(reach, start, plan.window_ns) if w.start_ns in held]
    windows = again + windows_between(start, last.end_ns, plan.window_ns)
    return within_raw_retention(plan, windows, now_ns, retention)


def rerun_reach_ns(plan: TrackedPlan, latest_shipped_ns: int) -> int:
    """The oldest window start `catch_up_windows` may run again after `latest_shipped_ns`."""
    shipped = Window(align(latest_shipped_ns, plan.window_ns), plan.window_ns)
    return shipped.shifted(-(plan.lookback_windows - 1)).start_ns


def within_raw_retention(
    plan: TrackedPlan,
    windows: list[Window],
    now_ns: int,
    retention: DesiredRetentionState | None,
) -> list[Window]:
    """The windows whose raw data is wholly within the plan's raw retention policy at `now_ns`
    (`within_retention`); all of them when no retention is known for it."""
    spec = retention.policy(plan.retention_policy) if retention is not None else None
    if spec is None:
        return windows
    shard = spec.effective_shard_duration_ns
    return [w for w in windows if within_retention(w, now_ns, spec.duration_ns, shard)]
