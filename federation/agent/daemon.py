"""The per-DC agent daemon: desired state in, schedules and shipments out.

`Agent.run` starts in three steps: preflight (the local InfluxDB and the coordinator answer),
reconcile (pull the desired state, reconcile the raw retention policies through
`federation.policy.reconcile_retention`, hand the plans to the execution mode, report what
runs), then catch up every window since the last one central holds (as long as its raw data is
still wholly within retention). After that it polls the coordinator for backfill requests, runs
them and reports their results, and re-reconciles now and then, until its stop event is set
(SIGTERM): the window in progress is then finished or abandoned before its manifest, never
shipped by half.

How plans are executed is an `ExecutionMode`. `EmbeddedMode` computes them itself: an
APScheduler job per aggregation wakes at every window boundary (plus a small jitter) and
recomputes the look-back, the k trailing complete windows as decided by the injectable clock.
A DC with Kapacitor gets a mode that deploys TICKscripts instead; `MODES` maps a mode's name to
its factory, so such a mode plugs in without changing the daemon.
"""

from __future__ import annotations

import contextlib
import logging
import os
import random
import signal
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, Protocol

import httpx
from apscheduler.schedulers.background import (  # type: ignore[import-untyped]
    BackgroundScheduler,
)
from apscheduler.triggers.interval import IntervalTrigger  # type: ignore[import-untyped]

from federation import __version__
from federation.agent.backfill_work import BackfillOutcome, BackfillWork
from federation.agent.coordinator_client import (
    BackfillRequest,
    CoordinatorClient,
    DesiredRetentionState,
    DesiredState,
)
from federation.agent.executor import (
    DEFAULT_CHUNK_SIZE,
    RangeResult,
    WindowRunner,
    WindowSink,
)
from federation.agent.shipper import RetryPolicy, Shipper
from federation.agent.window_choice import (
    catch_up_windows,
    ended_windows,
    settle_ns,
    within_raw_retention,
)
from federation.config import FederationConfig
from federation.core.clock import Clock, SystemClock, format_rfc3339
from federation.core.detection_plan import TrackedPlan
from federation.core.durations import SECOND_NS
from federation.core.windows import (
    Window,
    align,
    last_complete_window,
    lookback_windows,
    windows_between,
)
from federation.errors import CoordinatorError, FederationError
from federation.influx import InfluxClient, credentials_from_env
from federation.policy import ReconcileResult, reconcile_retention

log = logging.getLogger(__name__)


class PreflightError(FederationError):
    """The agent cannot start: a dependency does not answer. One line saying which."""


@dataclass(frozen=True)
class PlanHealth:
    """How one plan runs on the DC, as reported to the coordinator."""

    aggregation: str
    version: str
    healthy: bool
    detail: str

    def as_dict(self) -> dict[str, Any]:
        return {
            "aggregation": self.aggregation,
            "version": self.version,
            "healthy": self.healthy,
            "detail": self.detail,
        }


class ExecutionMode(Protocol):
    """How a DC executes its plans: the embedded executor here, Kapacitor tasks elsewhere."""

    @property
    def name(self) -> str:
        """What the report's `mode` says: "embedded" or "kapacitor"."""
        ...

    def apply(self, plans: Sequence[TrackedPlan]) -> None:
        """Run exactly these plans on their schedule from now on (start, replace, remove)."""
        ...

    def run_windows(
        self, plan: TrackedPlan, windows: Sequence[Window], stop: threading.Event
    ) -> RangeResult:
        """Compute and ship these windows now (catch-up, backfill), oldest first."""
        ...

    def health(self) -> list[PlanHealth]:
        """The health of every plan applied."""
        ...

    def close(self) -> None:
        """Stop scheduling; wait for the window in progress to finish or be abandoned."""
        ...


@dataclass(frozen=True)
class AgentSettings:
    """Timing and sizing of one agent; defaults suit hourly windows in production."""

    poll_interval_s: float = 30.0
    reconcile_interval_s: float = 300.0
    max_jitter_s: float = 10.0
    settle_s: float = 2.0
    chunk_size: int = DEFAULT_CHUNK_SIZE
    mode: str = "auto"


@dataclass
class ModeContext:
    """What a mode factory gets to build an `ExecutionMode` for one DC."""

    dc: str
    config: FederationConfig | None
    source: InfluxClient
    sink: WindowSink
    clock: Clock
    stop: threading.Event
    settings: AgentSettings
    coordinator: CoordinatorClient | None = None
    """The coordinator's Agent API (the Kapacitor mode checks what central holds)."""


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


ModeFactory = Callable[[ModeContext], ExecutionMode]


def _kapacitor_mode(context: ModeContext) -> ExecutionMode:
    # Imported here: the Kapacitor mode builds on this module's ModeContext and PlanHealth.
    from federation.agent.kapacitor_mode import KapacitorMode

    return KapacitorMode.create(context)


MODES: dict[str, ModeFactory] = {"embedded": EmbeddedMode.create, "kapacitor": _kapacitor_mode}
"""Execution modes by name. `auto` picks "kapacitor" for a DC with a Kapacitor URL."""


def mode_name(config: FederationConfig, dc: str, requested: str = "auto") -> str:
    """The mode DC `dc` runs: `requested`, or for "auto" kapacitor where the DC has one.

    Raises FederationError for a mode this agent does not have.
    """
    name = requested
    if requested == "auto":
        name = "kapacitor" if config.dc(dc).kapacitor is not None else "embedded"
    if name not in MODES:
        hint = " (run with --mode embedded to compute the plans in the agent)" * (
            name == "kapacitor"
        )
        raise FederationError(f"DC {dc}: execution mode {name!r} is not available{hint}")
    return name


@dataclass
class Agent:
    """One DC's agent: a local InfluxDB, a coordinator, and an execution mode."""

    dc: str
    source: InfluxClient
    coordinator: CoordinatorClient
    mode: ExecutionMode
    clock: Clock
    settings: AgentSettings = field(default_factory=AgentSettings)
    shipper: Shipper | None = None
    desired_state: DesiredState | None = None
    plans: dict[str, TrackedPlan] = field(default_factory=dict)
    last_retention: ReconcileResult | None = None
    retention_error: str | None = None
    work: BackfillWork = field(default_factory=BackfillWork)

    def preflight(self) -> None:
        """Check the local InfluxDB and the coordinator answer; PreflightError otherwise."""
        try:
            self.source.ping()
        except FederationError as exc:
            raise PreflightError(f"DC {self.dc}: local InfluxDB is not reachable: {exc}") from None
        try:
            self.desired_state = self.coordinator.desired(self.dc)
        except CoordinatorError as exc:
            # It answered: a refused token is the agent's to fix, not the network's.
            what = "refused this DC's agent token" if exc.refused_token else "is not reachable"
            raise PreflightError(f"DC {self.dc}: coordinator {what}: {exc}") from None
        except FederationError as exc:
            raise PreflightError(f"DC {self.dc}: coordinator is not reachable: {exc}") from None

    def reconcile(self) -> DesiredState:
        """Pull the desired state, reconcile retention, apply the plans, report what runs.

        Raises CoordinatorError or InfluxError; what was applied before stays applied.
        """
        desired = self.coordinator.desired(self.dc)
        self.desired_state = desired
        if self.shipper is not None:
            self.shipper.database = desired.gateway_database
            self.shipper.retention_policy = desired.gateway_retention_policy
        try:
            self.last_retention = reconcile_retention(
                self.source,
                desired.retention.database,
                desired.retention.policies,
                allow_shrink=desired.retention.allow_shrink,
            )
            self.retention_error = None
        except FederationError as exc:
            self.last_retention, self.retention_error = None, str(exc)
            self._report_quietly()
            raise
        self.plans = {plan.aggregation: plan for plan in desired.plans}
        self.mode.apply(desired.plans)
        self.report()
        return desired

    def report(self) -> None:
        """Report the mode, every plan's health (with the version it runs), the retention outcome
        (converged, refused shrinks, or the error) with the desired retention it is for, and the
        agent version."""
        retention: dict[str, Any] = {}
        if self.last_retention is not None:
            result = self.last_retention
            retention = {
                "database": result.database,
                "converged": result.converged,
                "applied": list(result.applied),
                "refused": [change.effect for change in result.refused],
                "drift": [change.effect for change in result.drift],
            }
        elif self.retention_error is not None:
            retention = {"converged": False, "error": self.retention_error}
        if retention and self.desired_state is not None:
            # Which desired retention this outcome is for, so a watcher can tell a report made
            # before a policy change from one made after it.
            wanted = self.desired_state.retention
            retention["database"] = wanted.database
            retention["desired"] = [spec.as_dict() for spec in wanted.policies]
        self.coordinator.report(
            self.dc,
            {
                "mode": self.mode.name,
                "plans": [h.as_dict() for h in self.mode.health()],
                "retention": retention,
                "agent_version": __version__,
                # The coordinator compares it with its own clock and reports a large skew.
                "clock_ns": self.clock.now_ns(),
            },
        )

    @property
    def _desired_retention(self) -> DesiredRetentionState | None:
        return self.desired_state.retention if self.desired_state is not None else None

    def catch_up(self, stop: threading.Event) -> list[RangeResult]:
        """Compute every window since the last one central holds, per plan (see
        `catch_up_windows`); a plan whose windows cannot be listed is skipped and logged."""
        results = []
        for plan in self.plans.values():
            if stop.is_set():
                break
            now = self.clock.now_ns()
            # Only `latest_shipped_ns` matters here; `since` keeps the window list short.
            since = last_complete_window(now, plan.window_ns).start_ns
            try:
                view = self.coordinator.windows(self.dc, plan.aggregation, since)
            except FederationError as exc:
                log.warning("catch-up of %s skipped: %s", plan.aggregation, exc)
                continue
            windows = ended_windows(
                catch_up_windows(plan, view.latest_shipped_ns, now, self._desired_retention),
                now,
                settle_ns(plan, self.settings.settle_s),
            )
            log.info("catching up %s: %d window(s)", plan.aggregation, len(windows))
            results.append(self.mode.run_windows(plan, windows, stop))
        return results

    def process_backfills(self, stop: threading.Event) -> int:
        """Report the results not sent yet, lease what the coordinator queued for the DC, run
        every leased request and report its result; return how many results were reported.

        Nothing leased is dropped (`BackfillWork`): a request not run yet stays queued, a
        result the coordinator cannot take is retried at later calls with back-off. A request
        for a version that does not run here fails.
        """
        reported = self.work.report(self.coordinator)
        if not self.work.blocked:
            try:
                self.work.lease(self.coordinator.backfills(self.dc))
            except FederationError as exc:
                log.warning("leasing backfills failed: %s", exc)
        while not stop.is_set() and (request := self.work.next()) is not None:
            outcome = self._backfill(request, stop)
            if outcome is None:
                break  # stopped: given back as failed when the agent stops
            self.work.finished(request, outcome)
            reported += self.work.report(self.coordinator)
        return reported

    def _backfill(self, request: BackfillRequest, stop: threading.Event) -> BackfillOutcome | None:
        plan = self.plans.get(request.aggregation)
        if plan is None or plan.version != request.version:
            running = "nothing" if plan is None else f"version {plan.version}"
            return BackfillOutcome(
                "failed",
                0,
                (
                    f"{request.aggregation} version {request.version} does not run on {self.dc} "
                    f"({running} does)"
                ),
            )
        now = self.clock.now_ns()
        requested = windows_between(request.start_ns, request.end_ns, plan.window_ns)
        ended = ended_windows(requested, now, settle_ns(plan, self.settings.settle_s))
        windows = within_raw_retention(plan, ended, now, self._desired_retention)
        log.info("backfill %s: %s, %d window(s)", request.id, request.aggregation, len(windows))
        result = self.mode.run_windows(plan, windows, stop)
        if result.stopped:
            return None
        notes = []
        if len(ended) < len(requested):
            notes.append(
                f"{len(requested) - len(ended)} window(s) not computed: not ended by "
                f"{self.dc}'s clock ({format_rfc3339(now)}); is the coordinator's clock ahead?"
            )
        if len(windows) < len(ended):
            notes.append(f"{len(ended) - len(windows)} window(s) past raw retention not recomputed")
        if result.ok and len(ended) == len(requested):
            return BackfillOutcome("done", result.shipped, "; ".join(notes))
        return BackfillOutcome(
            "failed", result.shipped, "; ".join(filter(None, [result.error or "", *notes]))
        )

    def run(self, stop: threading.Event) -> None:
        """Preflight, reconcile, catch up, then serve backfills until `stop` is set.

        Raises PreflightError when a dependency does not answer at start; afterwards, failures
        are logged and retried at the next poll. Closes the mode before returning.
        """
        try:
            self.preflight()
            try:
                self.reconcile()
            except FederationError as exc:
                # A deployment that fails is reported and retried; the agent keeps serving.
                log.warning("reconcile failed: %s", exc)
                self._report_quietly()
            self.catch_up(stop)
            next_reconcile = time.monotonic() + self.settings.reconcile_interval_s
            while not stop.is_set():
                try:
                    self.process_backfills(stop)
                    if time.monotonic() >= next_reconcile:
                        next_reconcile = time.monotonic() + self.settings.reconcile_interval_s
                        self.reconcile()
                    else:
                        self.report()
                except FederationError as exc:
                    log.warning("agent loop: %s", exc)
                stop.wait(self.settings.poll_interval_s)
        finally:
            self.work.give_back(
                self.coordinator, f"the agent of {self.dc} stopped before finishing it"
            )
            self.mode.close()

    def _report_quietly(self) -> None:
        try:
            self.report()
        except FederationError as exc:
            log.warning("report failed: %s", exc)

    def close(self) -> None:
        """Close the mode and every client."""
        self.mode.close()
        self.source.close()
        self.coordinator.close()
        if self.shipper is not None:
            self.shipper.close()


def agent_token(config: FederationConfig, dc: str) -> str:
    """The DC's agent token, from the environment variable the fleet names for it."""
    name = config.dc(dc).agent_token_env
    token = os.environ.get(name)
    if not token:
        raise FederationError(f"DC {dc}: environment variable {name} (the agent token) is not set")
    return token


def build_shipper(
    config: FederationConfig,
    dc: str,
    *,
    gateway_url: str | None = None,
    retry: RetryPolicy | None = None,
    transport: httpx.BaseTransport | None = None,
) -> Shipper:
    """A Shipper writing as DC `dc` to the gateway (the fleet's coordinator, unless given)."""
    return Shipper(
        gateway_url or config.fleet.central.coordinator_url,
        dc=dc,
        token=agent_token(config, dc),
        retry=retry,
        transport=transport,
    )


def local_influx(config: FederationConfig, dc: str) -> InfluxClient:
    """A client for the DC's own InfluxDB, with the credentials its environment holds."""
    endpoint = config.dc(dc).influxdb
    return InfluxClient(endpoint.url, auth=credentials_from_env(endpoint))


def build_agent(
    config: FederationConfig,
    dc: str,
    *,
    clock: Clock | None = None,
    settings: AgentSettings | None = None,
    stop: threading.Event | None = None,
    coordinator_url: str | None = None,
    gateway_url: str | None = None,
) -> tuple[Agent, threading.Event]:
    """An Agent for DC `dc` from the config, and the stop event that ends its `run`.

    Credentials come from the environment (the DC's InfluxDB variables and its agent token).
    """
    settings = settings or AgentSettings()
    clock = clock or SystemClock()
    stop = stop or threading.Event()
    name = mode_name(config, dc, settings.mode)
    token = agent_token(config, dc)
    source = local_influx(config, dc)
    shipper = build_shipper(config, dc, gateway_url=gateway_url or coordinator_url)
    coordinator = CoordinatorClient(coordinator_url or config.fleet.central.coordinator_urls, token)
    context = ModeContext(dc, config, source, shipper, clock, stop, settings, coordinator)
    agent = Agent(
        dc,
        source,
        coordinator,
        MODES[name](context),
        clock,
        settings,
        shipper=shipper,
    )
    return agent, stop


def install_signal_handlers(stop: threading.Event) -> None:
    """Make SIGTERM and SIGINT set `stop` (call from the main thread)."""

    def handler(signum: int, _frame: object) -> None:
        log.info("received signal %d: finishing the current window, then stopping", signum)
        stop.set()

    signal.signal(signal.SIGTERM, handler)
    signal.signal(signal.SIGINT, handler)
