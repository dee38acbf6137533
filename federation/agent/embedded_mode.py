"""The embedded execution mode: plans computed by the agent itself, on a schedule.

APScheduler only wakes a job (at every window boundary plus a settle delay, then a random
jitter); which windows are complete is decided by the injectable clock, so a FakeClock drives
tests.
"""

from __future__ import annotations

import contextlib
import logging
import random
import threading
import time
from collections.abc import Sequence
from datetime import UTC, datetime

from apscheduler.schedulers.background import (  # type: ignore[import-untyped]
    BackgroundScheduler,
)
from apscheduler.triggers.interval import IntervalTrigger  # type: ignore[import-untyped]

from federation.agent.executor import RangeResult
from federation.agent.modes import AgentSettings, ModeContext, PlanHealth
from federation.agent.window_choice import (
    settle_ns,
)
from federation.agent.window_runner import WindowRunner
from federation.core.detection_plan import TrackedPlan
from federation.core.durations import SECOND_NS
from federation.core.windows import (
    Window,
    align,
    lookback_windows,
)

log = logging.getLogger(__name__)


class EmbeddedMode:
    """Runs plans with the embedded executor on an APScheduler background scheduler.

    APScheduler only wakes a job (at every window boundary plus `settle_s`, then a random
    jitter of at most `max_jitter_s`, both capped at a tenth of the window); which windows are
    complete is decided by the injectable clock, so a FakeClock drives tests.
    """

    name = "embedded"

    def __init__(
        self,
        runner: WindowRunner,
        *,
        stop: threading.Event,
        settings: AgentSettings | None = None,
        schedule: bool = True,
    ) -> None:
        self.runner = runner
        self.stop = stop
        self.settings = settings or AgentSettings()
        self._plans: dict[str, TrackedPlan] = {}
        self._health: dict[str, PlanHealth] = {}
        self._lock = threading.Lock()
        self._scheduler: BackgroundScheduler | None = None
        if schedule:
            self._scheduler = BackgroundScheduler(
                timezone=UTC, job_defaults={"coalesce": True, "max_instances": 1}
            )
            self._scheduler.start()

    @classmethod
    def create(cls, context: ModeContext) -> EmbeddedMode:
        runner = WindowRunner(
            context.source, context.sink, context.clock, chunk_size=context.settings.chunk_size
        )
        return cls(runner, stop=context.stop, settings=context.settings)

    def _delays(self, plan: TrackedPlan) -> tuple[float, float]:
        window_s = plan.window_ns / SECOND_NS
        return settle_ns(plan, self.settings.settle_s) / SECOND_NS, min(
            self.settings.max_jitter_s, window_s / 10
        )

    def apply(self, plans: Sequence[TrackedPlan]) -> None:
        """Schedule a job per plan; a changed version replaces its job, a removed plan stops."""
        with self._lock:
            wanted = {plan.aggregation: plan for plan in plans}
            for name in list(self._plans):
                if name not in wanted:
                    self._unschedule(name)
                    del self._plans[name]
                    self._health.pop(name, None)
            for name, plan in wanted.items():
                if self._plans.get(name) == plan:
                    continue
                self._plans[name] = plan
                self._health[name] = PlanHealth(name, plan.version, True, "scheduled")
                self._schedule(plan)

    def _schedule(self, plan: TrackedPlan) -> None:
        if self._scheduler is None:
            return
        settle, _ = self._delays(plan)
        window_s = plan.window_ns / SECOND_NS
        next_boundary = align(time.time_ns(), plan.window_ns) + plan.window_ns
        start = datetime.fromtimestamp(next_boundary / SECOND_NS + settle, tz=UTC)
        self._scheduler.add_job(
            self._scheduled,
            IntervalTrigger(seconds=window_s, start_date=start, timezone=UTC),
            args=(plan.aggregation,),
            id=plan.aggregation,
            replace_existing=True,
            misfire_grace_time=max(1, int(window_s)),
        )
        log.info("scheduled %s version %s every %ss", plan.aggregation, plan.version, window_s)

    def _unschedule(self, name: str) -> None:
        if self._scheduler is not None:
            with contextlib.suppress(Exception):
                self._scheduler.remove_job(name)
        log.info("unscheduled %s", name)

    def _scheduled(self, name: str) -> None:
        with self._lock:
            plan = self._plans.get(name)
        if plan is None:
            return
        _, jitter = self._delays(plan)
        if jitter > 0 and self.stop.wait(random.uniform(0, jitter)):
            return
        try:
            self.run_lookback(plan)
        except Exception:  # a job must never kill the scheduler thread
            log.exception("scheduled run of %s failed", name)

    def run_lookback(self, plan: TrackedPlan) -> RangeResult:
        """One scheduled run: recompute the k trailing complete windows at the clock's now."""
        windows = lookback_windows(
            self.runner.clock.now_ns(), plan.window_ns, plan.lookback_windows
        )
        return self.run_windows(plan, windows, self.stop)

    def run_windows(
        self, plan: TrackedPlan, windows: Sequence[Window], stop: threading.Event
    ) -> RangeResult:
        """Run the executor over `windows` and record the plan's health from the result."""
        result = self.runner.run_windows(plan, windows, stop=stop)
        detail = result.summary()
        with self._lock:
            if plan.aggregation in self._plans:
                healthy = result.error is None
                self._health[plan.aggregation] = PlanHealth(
                    plan.aggregation, plan.version, healthy, detail
                )
        (log.info if result.error is None else log.warning)("%s", detail)
        return result

    def health(self) -> list[PlanHealth]:
        with self._lock:
            return [self._health[name] for name in sorted(self._health)]

    def close(self) -> None:
        self.stop.set()
        if self._scheduler is not None and self._scheduler.running:
            self._scheduler.shutdown(wait=True)
