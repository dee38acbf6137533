"""Replays in the Kapacitor mode: a temporary single-branch copy of a plan's task,
`fed-<aggregation>-<dc>-replay`, replayed over exactly the requested windows."""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Callable

import httpx

from federation.core.clock import format_rfc3339
from federation.core.detection_plan import TrackedPlan
from federation.errors import KapacitorError
from federation.kapacitor.client import KapacitorClient

log = logging.getLogger(__name__)


REPLAY_SUFFIX = "-replay"


def replay_task_id(plan: TrackedPlan) -> str:
    """The id of the temporary task a replay of `plan` runs: `fed-<aggregation>-<dc>-replay`."""
    return plan.task_id + REPLAY_SUFFIX


def replay_plan(plan: TrackedPlan) -> TrackedPlan:
    """`plan` with a look-back of one window: its task has one branch, with offset 0."""
    return dataclasses.replace(plan, lookback_ns=plan.window_ns)


KAPACITORD_GONE = (
    "kapacitord stopped answering while the replay ran. Kapacitor 1.5.7 exits when a replay's "
    "query fails while batches of its earlier queries still wait to enter the task (its UDF "
    "slower than its queries), as when the DC's InfluxDB goes away mid-replay ('panic: send on "
    "closed channel' in its output); the windows stay missing and are replayed once kapacitord "
    "is running again"
)
"""What a replay's failure adds when kapacitord stopped answering while it ran."""


class ReplayStopped(Exception):
    """A stop request arrived while waiting for a replay."""


def run_replay(
    client: KapacitorClient,
    task_id: str,
    script: str,
    label: str,
    start_ns: int,
    end_ns: int,
    *,
    timeout_s: float,
    poll_s: float,
    sleep: Callable[[float], None],
) -> None:
    """Create the temporary task `task_id` (disabled), replay [start, end) with it and wait,
    `sleep` between polls (it raises `ReplayStopped` to stop); delete the task whatever
    happens."""
    # A task left over by an agent that died mid-replay is ours to replace.
    client.delete_task(task_id)
    client.create_task(task_id, script, [], status="disabled")
    try:
        # Kapacitor's first replayed window ends at `start + every` and the last at the last
        # tick not after `stop`; each window is `[tick - offset - period, tick - offset)`.
        # With offset 0 and period == every == the window, and a range of whole aligned
        # windows, replaying [start, end) reads exactly those windows.
        replay_id = client.replay_batch(task_id, start_ns, end_ns)
        log.info(
            "%s: replaying %s..%s as %s",
            label,
            format_rfc3339(start_ns),
            format_rfc3339(end_ns),
            replay_id,
        )

        try:
            client.wait_replay(replay_id, timeout_s=timeout_s, poll_s=poll_s, sleep=sleep)
        except KapacitorError as exc:
            if not isinstance(exc.__cause__, httpx.TransportError):
                raise
            raise KapacitorError(exc.url, f"{exc.message}: {KAPACITORD_GONE}", None) from exc
        try:
            client.delete_replay(replay_id)
        except KapacitorError as exc:
            log.warning("could not delete the record of replay %s: %s", replay_id, exc)
    finally:
        try:
            client.delete_task(task_id)
        except KapacitorError as exc:
            log.warning("could not delete the temporary task %s: %s", task_id, exc)
