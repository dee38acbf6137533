"""`WindowRunner`: one DC's windows computed and shipped, whatever the plan's kind: an
aggregation through the executor (`executor.run_windows`), a detection through the detection
executor (`detection_executor.run_detection_windows`), one run of a plan at a time."""

from __future__ import annotations

import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

from federation.agent.detection_executor import run_detection_windows
from federation.agent.executor import (
    DEFAULT_CHUNK_SIZE,
    RangeResult,
    RunIds,
    WindowResult,
    WindowSink,
    run_windows,
)
from federation.core.clock import Clock
from federation.core.detection_plan import DetectionPlan, TrackedPlan
from federation.core.windows import Window
from federation.influx import InfluxClient


@dataclass
class WindowRunner:
    """Runs windows of plans against one DC's InfluxDB and one sink, one run of a plan at a
    time (see `run_windows` for how a run's windows overlap).

    Shared by the scheduled runs, the catch-up, backfills and `agent once`. A lock per
    aggregation keeps two runs of the same aggregation from interleaving, so a window is never
    shipped by an older computation after a newer one.
    """

    source: InfluxClient
    sink: WindowSink
    clock: Clock
    chunk_size: int = DEFAULT_CHUNK_SIZE
    run_ids: RunIds = field(init=False)
    _locks: dict[str, threading.Lock] = field(init=False, default_factory=dict)
    _locks_guard: threading.Lock = field(init=False, default_factory=threading.Lock)

    def __post_init__(self) -> None:
        self.run_ids = RunIds(self.clock)

    def _lock(self, aggregation: str) -> threading.Lock:
        with self._locks_guard:
            return self._locks.setdefault(aggregation, threading.Lock())

    def run_windows(
        self,
        plan: TrackedPlan,
        windows: Sequence[Window],
        *,
        stop: threading.Event | None = None,
        on_window: Callable[[WindowResult], None] | None = None,
    ) -> RangeResult:
        """Compute and ship each window, oldest first; see `run_windows`, and for a detection
        `detection_executor.run_detection_windows` (findings kept here, counts shipped)."""
        with self._lock(plan.aggregation):
            if isinstance(plan, DetectionPlan):
                return run_detection_windows(
                    plan,
                    windows,
                    source=self.source,
                    sink=self.sink,
                    run_ids=self.run_ids,
                    stop=stop,
                    chunk_size=self.chunk_size,
                    on_window=on_window,
                )
            return run_windows(
                plan,
                windows,
                source=self.source,
                sink=self.sink,
                run_ids=self.run_ids,
                stop=stop,
                chunk_size=self.chunk_size,
                on_window=on_window,
            )
