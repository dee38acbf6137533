"""What a Kapacitor task's node counters and queues say between two health checks.

A failed query or write shows only as a node counter (`errors`, `write_errors`) that grew since
the previous check; a dead UDF branch as a UDF node whose errors grew, or as batches waiting at
its query node that the UDF node never takes (`TaskHealth.stalled`, or one batch waiting
`stall_after_s`). `TaskWatch` remembers, per task, what the previous check saw;
`TaskReloads` restarts what it finds dead.
"""

from __future__ import annotations

import dataclasses
import logging
import threading
import time

from federation.errors import KapacitorError
from federation.kapacitor.client import KapacitorClient, NodeHealth, TaskHealth
from federation.tickscript.render import UDF_NAME

log = logging.getLogger(__name__)


@dataclasses.dataclass(frozen=True)
class _Counters:
    errors: int
    write_errors: int


def _growth(now: dict[str, NodeHealth], before: dict[str, _Counters]) -> dict[str, _Counters]:
    """How much each node's counters grew since `before` (nodes that grew only); a node whose
    counters went down was restarted (stats start again at zero), so all of its count is new."""

    def grown(count: int, seen: int) -> int:
        return count - seen if count >= seen else count

    growth = {}
    for name, node in now.items():
        seen = before.get(name, _Counters(0, 0))
        errors, write_errors = grown(node.errors, seen.errors), grown(node.write_errors, seen.write_errors)  # fmt: skip
        if errors or write_errors:
            growth[name] = _Counters(errors, write_errors)
    return growth


def is_udf_node(name: str) -> bool:
    """Kapacitor names a node after its type and a number: `fedagg2` is a UDF node."""
    return name.rstrip("0123456789") == UDF_NAME


class TaskWatch:
    """Each task's node counters at its previous health check, and since when a batch has been
    waiting at each of its query nodes. Thread-safe."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._counters: dict[str, dict[str, _Counters]] = {}
        self._waiting: dict[tuple[str, str], tuple[int, float]] = {}
        self._failing: dict[str, tuple[int, str]] = {}
        """Per task, when (clock) its counters last grew, and what the check said then."""

    def growth(self, task_id: str, health: TaskHealth) -> dict[str, _Counters]:
        """How much each node's counters grew since the previous check of the task (since the
        task started, at the first check); nodes that grew only."""
        with self._lock:
            before = self._counters.get(task_id, {})
            self._counters[task_id] = {
                name: _Counters(node.errors, node.write_errors)
                for name, node in health.nodes.items()
            }
        return _growth(health.nodes, before)

    def stalled(self, health: TaskHealth, stall_after_s: float) -> dict[str, int]:
        """The task's query nodes whose branch stalled: two batches waiting at once
        (`TaskHealth.stalled`), or one that has waited `stall_after_s` since the node last
        passed a batch on."""
        stalled = dict(health.stalled)
        now = time.monotonic()
        with self._lock:
            for name, node in health.nodes.items():
                key = (health.id, name)
                if not node.backlog or name in stalled:
                    self._waiting.pop(key, None)
                    continue
                seen = self._waiting.get(key)
                if seen is None or seen[0] != node.collected:
                    self._waiting[key] = (node.collected, now)
                elif now - seen[1] >= stall_after_s:
                    stalled[name] = node.backlog
        return stalled

    def note_failure(self, task_id: str, now_ns: int, detail: str) -> None:
        """The task's counters grew at `now_ns` (the clock's); `detail` says how."""
        with self._lock:
            self._failing[task_id] = (now_ns, detail)

    def recent_failure(self, task_id: str, now_ns: int, within_ns: int) -> str | None:
        """What the last check that saw the counters grow said, while less than `within_ns`
        has passed since; forgotten after that."""
        with self._lock:
            last = self._failing.pop(task_id, None)
            if last is None or now_ns - last[0] >= within_ns:
                return None
            self._failing[task_id] = last
            return last[1]

    def forget_counters(self, task_id: str, *, keep_failure: bool = False) -> None:
        """A created, updated or deleted task starts its stats again from zero (and so does one
        enabled again, whose last failure still stands: `keep_failure`)."""
        with self._lock:
            self._counters.pop(task_id, None)
            if not keep_failure:
                self._failing.pop(task_id, None)

    def forget(self, task_id: str) -> None:
        """A reloaded task starts its counters and its queues again."""
        with self._lock:
            self._counters.pop(task_id, None)
            self._failing.pop(task_id, None)
            for key in [k for k in self._waiting if k[0] == task_id]:
                del self._waiting[key]


class TaskReloads:
    """Reloads of one DC's tasks (disable + enable: new UDF processes), at most one per
    `interval_s` per task; a reload that failed half-way, leaving the task disabled, is finished
    at the next check. Thread-safe."""

    def __init__(self, client: KapacitorClient, dc: str, watch: TaskWatch, interval_s: float):
        self.client = client
        self.dc = dc
        self.watch = watch
        self.interval_s = interval_s
        self._lock = threading.Lock()
        self._reloaded: dict[str, float] = {}
        self._interrupted: set[str] = set()

    def reload(self, task_id: str, why: str) -> str:
        """Restart a task that stopped or lost a branch, at most once per `interval_s`; `why`
        with what was done."""
        now = time.monotonic()
        with self._lock:
            last = self._reloaded.get(task_id)
            if last is not None and now - last < self.interval_s:
                return f"{why}; reloaded {now - last:.0f}s ago, waiting before the next reload"
            self._reloaded[task_id] = now
        self.watch.forget(task_id)
        try:
            self.client.reload_task(task_id)
        except KapacitorError as exc:
            # Stopping a task waits for its UDF processes; one that is stuck may outlast the
            # client's timeout, and the task is then left disabled: the next check enables it.
            with self._lock:
                self._interrupted.add(task_id)
            log.error("DC %s: %s; reloading the task failed: %s", self.dc, why, exc)
            return f"{why}; reloading the task failed: {exc}"
        with self._lock:
            self._interrupted.discard(task_id)
        log.warning("DC %s: %s; reloaded the task (disable + enable)", self.dc, why)
        return f"{why}; reloaded the task (disable + enable)"

    def interrupted(self, task_id: str) -> bool:
        """Whether the last reload of the task failed half-way."""
        with self._lock:
            return task_id in self._interrupted

    def finish(self, task_id: str) -> str:
        """Enable a task that a reload which failed half-way left disabled."""
        why = f"task {task_id} was left disabled by a reload that failed"
        try:
            self.client.enable_task(task_id)
        except KapacitorError as exc:
            log.error("DC %s: %s; enabling it failed: %s", self.dc, why, exc)
            return f"{why}; enabling it failed: {exc}"
        with self._lock:
            self._interrupted.discard(task_id)
        self.watch.forget_counters(task_id, keep_failure=True)
        log.warning("DC %s: %s; enabled it again", self.dc, why)
        return f"{why}; enabled it again"
