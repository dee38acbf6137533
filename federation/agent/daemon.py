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

import logging
import os
import signal
import threading
import time
from dataclasses import dataclass, field
from typing import Any

import httpx

from federation import __version__
from federation.agent.backfill_work import BackfillOutcome, BackfillWork
from federation.agent.coordinator_client import (
    BackfillRequest,
    CoordinatorClient,
    DesiredRetentionState,
    DesiredState,
)
from federation.agent.embedded_mode import EmbeddedMode
from federation.agent.executor import (
    RangeResult,
)
from federation.agent.kapacitor_mode import KapacitorMode
from federation.agent.modes import (
    AgentSettings,
    ExecutionMode,
    ModeContext,
    ModeFactory,
)
from federation.agent.shipper import Shipper
from federation.agent.window_choice import (
    catch_up_windows,
    ended_windows,
    rerun_reach_ns,
    settle_ns,
    within_raw_retention,
)
from federation.config import FederationConfig
from federation.core.clock import Clock, SystemClock, format_rfc3339
from federation.core.detection_plan import TrackedPlan
from federation.core.retry import RetryPolicy
from federation.core.windows import (
    last_complete_window,
    windows_between,
)
from federation.errors import CoordinatorError, FederationError, PreflightError
from federation.influx import InfluxClient, credentials_from_env
from federation.policy import ReconcileResult, reconcile_retention

log = logging.getLogger(__name__)


MODES: dict[str, ModeFactory] = {"embedded": EmbeddedMode.create, "kapacitor": KapacitorMode.create}
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
                held = [view]
                latest = view.latest_shipped_ns
                if latest is not None and (reach := rerun_reach_ns(plan, latest)) < since:
                    held.append(self.coordinator.windows(self.dc, plan.aggregation, reach))
            except FederationError as exc:
                log.warning("catch-up of %s skipped: %s", plan.aggregation, exc)
                continue
            shipped = {w.start_ns for v in held for w in v.windows if w.run is not None}
            windows = ended_windows(
                catch_up_windows(plan, latest, now, self._desired_retention, shipped),
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
    """A Shipper writing as DC `dc` to the gateway: at `gateway_url` when given, else at every
    coordinator replica fleet.yaml names, failing over between them."""
    return Shipper(
        gateway_url or config.fleet.central.coordinator_urls,
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
