"""The Kapacitor execution mode: plans run as TICKscript tasks in the DC's own Kapacitor.

`apply` renders every plan (`render_plan`) and deploys the tasks with `deploy.apply_tasks`:
missing tasks are created, changed ones updated and reloaded, tasks the plans no longer have
deleted, foreign tasks never touched, and a failed deployment is rolled back and raised.

`health` watches what Kapacitor does not say on its own: besides a task that stopped or differs
from its plan (drift), a failed query or write only ever shows as a node counter (`errors`,
`write_errors`). A dead UDF process is worse: Kapacitor 1.5.7 keeps the task `executing` with
no error while that branch computes nothing. It aborts the process at its next keepalive or
write to the closed pipe, but the UDF node fails (an `errors` count, the query node feeding it
failing too) only when a next batch reaches it, and often it never does: the query node goes on
querying on schedule into a queue that nothing takes from, and no counter of errors moves. So a
branch whose query node holds batches its UDF node never took (`TaskHealth.stalled`, or one
batch waiting `stall_after_s`) is as dead as a UDF node whose errors grew. Counters are compared
with the previous check, so a failure makes the plan unhealthy until the counters stop growing;
a stopped task, a stalled branch, or a UDF node whose errors grew is reloaded (disable + enable
starts new UDF processes), and the windows it missed are the coordinator's to have backfilled.

Detections are tasks like aggregations (`fed-<detection>-<dc>`, rendered from
`tickscripts/detection.tick.j2`): one UDF node per look-back branch keeps the findings in the
DC's own InfluxDB and ships the counts, and everything below treats both kinds alike — deploy,
drift, health, replays, empty windows and the check of central.

`run_windows` (catch-up and backfill) replays a temporary single-branch copy of the plan's
task, `fed-<aggregation>-<dc>-replay`, over exactly the requested windows with
`recording-time: true`. The live task has one branch per look-back window; replaying it would
also recompute earlier windows, whose raw data may already be partly past retention, and a
partial recomputation must never overwrite complete data. A window without raw data yields no
batch in a replay, so afterwards each window's raw events are counted in the DC's InfluxDB and
every empty window gets its zero manifest through the agent's shipper (a detection's empty
window also its run point in the DC's InfluxDB, as the embedded executor writes it). Kapacitor's writes
are not the agent's to see, and a replay whose writes the gateway refused (or could not take)
still finishes: so the replay counts as done only once the coordinator says central holds at
least the events counted for each of its windows (`central_check`).

`check_windows` runs, every poll interval in a thread of its own, two checks of the live task
on one count of each plan's raw events. The live task emits nothing either for a window without
raw data: once each window of a plan's look-back has ended (and settled), an empty one gets its
zero manifest, so the ledger marks it `empty` at once as it does for the embedded executor (a
rollout's canary waits for such a window too). And once a window's look-back has passed, its raw
events are compared with what central holds: `influxDBOut` drops the writes of look-back runs it
could not make, and a window whose partial first run got through would otherwise stay
`verified` with less. The coordinator marks such a window `inconsistent` (and has it re-run).
The first check after the agent starts reaches back to the DC's oldest raw event: windows whose
look-back passed while no agent ran were checked by none.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path

from federation.agent.central_check import (
    CentralCounts,
    DueWindows,
    WindowBook,
    WindowChecks,
    report_past_lookback,
    short_after_replay,
)
from federation.agent.executor import (
    RangeResult,
    RunIds,
    WindowResult,
    WindowSink,
    count_raw_events,
    oldest_raw_event_ns,
)
from federation.agent.kapacitor_replay import (
    ReplayStopped,
    replay_plan,
    replay_task_id,
    run_replay,
)
from federation.agent.modes import ModeContext, PlanHealth
from federation.agent.shipper import ShipmentRefused
from federation.agent.task_watch import TaskReloads, TaskWatch, is_udf_node
from federation.agent.window_choice import settle_ns
from federation.core.aggregate import manifest_point
from federation.core.clock import Clock, format_rfc3339
from federation.core.detect import WindowResult as Detected
from federation.core.detect import finding_points
from federation.core.detection_plan import DetectionPlan, TrackedPlan
from federation.core.durations import format_duration
from federation.core.lineprotocol import serialize
from federation.core.windows import Window, align, coalesce
from federation.errors import FederationError, KapacitorError
from federation.influx import InfluxClient, credentials_from_env
from federation.kapacitor.client import KapacitorClient, TaskHealth
from federation.kapacitor.deploy import TaskSnapshot, apply_tasks, script_version
from federation.kapacitor.logs import ErrorLog
from federation.tickscript.render import render_tracked

log = logging.getLogger(__name__)


_GO_ZERO_TO_UNIX_NS = 62_135_596_800 * 10**9
"""Go's zero time (0001-01-01 UTC) to the Unix epoch: `.align()` rounds relative to the former."""


class KapacitorMode:
    """Runs one DC's plans as tasks in its Kapacitor; backfills with replays of a temporary task.

    `source` is the DC's InfluxDB (to count the raw events of replayed windows) and `sink` the
    agent's shipper (for the zero manifests of empty windows). Replays run one at a time.
    """

    name = "kapacitor"

    def __init__(
        self,
        client: KapacitorClient,
        *,
        dc: str,
        templates_dir: Path,
        gateway_cluster: str,
        source: InfluxClient,
        sink: WindowSink,
        clock: Clock,
        stop: threading.Event,
        replay_timeout_s: float = 3600.0,
        replay_poll_s: float = 1.0,
        reload_interval_s: float = 60.0,
        stall_after_s: float = 60.0,
        settle_s: float = 2.0,
        central: CentralCounts | None = None,
        central_wait_s: float = 10.0,
        error_log: ErrorLog | None = None,
    ) -> None:
        self.client = client
        self.dc = dc
        self.templates_dir = templates_dir
        self.gateway_cluster = gateway_cluster
        self.source = source
        self.sink = sink
        self.stop = stop
        self.replay_timeout_s = replay_timeout_s
        self.replay_poll_s = replay_poll_s
        self.reload_interval_s = reload_interval_s
        self.stall_after_s = stall_after_s
        self.clock = clock
        self.settle_s = settle_s
        self.run_ids = RunIds(clock)
        self.central = central
        self.error_log = error_log
        self.central_wait_s = central_wait_s
        self._book = WindowBook()
        self._plans: dict[str, TrackedPlan] = {}
        self._desired: dict[str, TaskSnapshot] = {}
        self._apply_error: str | None = None
        self._watch = TaskWatch()
        self._reloads = TaskReloads(client, dc, self._watch, reload_interval_s)
        self._lock = threading.Lock()
        self._replay_lock = threading.Lock()

    @classmethod
    def create(cls, context: ModeContext) -> KapacitorMode:
        """The mode for the DC's Kapacitor as fleet.yaml names it (credentials from the
        environment). FederationError when the config is missing or the DC has no Kapacitor."""
        config = context.config
        if config is None:
            raise FederationError(
                f"DC {context.dc}: the kapacitor mode needs the federation config"
            )
        endpoint = config.dc(context.dc).kapacitor
        if endpoint is None:
            raise FederationError(
                f"DC {context.dc}: no Kapacitor URL in fleet.yaml "
                "(run with --mode embedded to compute the plans in the agent)"
            )
        auth = credentials_from_env(endpoint)
        client = KapacitorClient(endpoint.url, auth=auth)
        mode = cls(
            client,
            dc=context.dc,
            templates_dir=config.templates_dir,
            gateway_cluster=config.fleet.central.gateway_cluster,
            source=context.source,
            sink=context.sink,
            clock=context.clock,
            stop=context.stop,
            settle_s=context.settings.settle_s,
            central=context.coordinator,
            error_log=ErrorLog(endpoint.url, auth=auth).start(),
        )
        threading.Thread(
            target=mode._check_forever,
            args=(context.settings.poll_interval_s,),
            name=f"check-windows-{context.dc}",
            daemon=True,
        ).start()
        return mode

    # --- deploying ----------------------------------------------------------------------------

    def _render(self, plan: TrackedPlan) -> TaskSnapshot:
        task = render_tracked(plan, self.templates_dir, gateway_cluster=self.gateway_cluster)
        return TaskSnapshot.of_rendered(task)

    def apply(self, plans: Sequence[TrackedPlan]) -> None:
        """Bring the DC's Kapacitor to exactly one task per plan (aggregation or detection), or
        leave it as it was.

        Raises TickScriptError when a plan does not render, DeploymentError when the
        deployment failed (the previous tasks are restored), KapacitorError when Kapacitor
        cannot be read. Whatever happens, `health` then judges the running tasks against these
        plans and names the failure.
        """
        tasks = list(plans)
        with self._lock:
            self._plans = {plan.aggregation: plan for plan in tasks}
            self._desired = {}
            self._apply_error = None
        try:
            desired = {plan.aggregation: self._render(plan) for plan in tasks}
            with self._lock:
                self._desired = desired
            result = apply_tasks(self.client, self.dc, list(desired.values()))
        except FederationError as exc:
            with self._lock:
                self._apply_error = str(exc)
            log.error("DC %s: deploying tasks failed: %s", self.dc, exc)
            raise
        with self._lock:
            for change in result.changes:
                # A created, updated or deleted task starts its stats again from zero.
                if change.action != "unchanged":
                    self._watch.forget_counters(change.task_id)
        for change in result.changes:
            if change.action != "unchanged":
                log.info(
                    "DC %s: %s task %s (version %s -> %s)",
                    self.dc,
                    change.action,
                    change.task_id,
                    change.version_from,
                    change.version_to,
                )

    # --- health -------------------------------------------------------------------------------

    def health(self) -> list[PlanHealth]:
        """One entry per plan applied, in aggregation order; never raises.

        Unhealthy when the task is missing or differs from the plan (drift, or a deployment
        that failed and was rolled back), is not executing or carries an error, or when a
        node's `errors` or `write_errors` grew since the previous check (skipped windows,
        dropped writes, a dead UDF; at the first check of a task, since it started). Counters
        that stopped growing for a window and a half (each node runs once a window) are healthy
        again, so a failure long ago does not flag forever.
        A task that stopped, or whose UDF node failed, is also reloaded (at most once per
        `reload_interval_s`), and the detail says so.
        """
        with self._lock:
            plans = dict(self._plans)
            desired = dict(self._desired)
            apply_error = self._apply_error
        results: list[PlanHealth] = []
        for name, plan in sorted(plans.items()):
            try:
                results.append(self._plan_health(plan, desired.get(name), apply_error))
            except KapacitorError as exc:
                if exc.status is None:  # unreachable: asking about the other tasks is futile
                    return [
                        PlanHealth(other, p.version, False, f"Kapacitor does not answer: {exc}")
                        for other, p in sorted(plans.items())
                    ]
                detail = f"task {plan.task_id}: {exc}"
                results.append(PlanHealth(name, plan.version, False, detail))
        return results

    def _plan_health(
        self, plan: TrackedPlan, wanted: TaskSnapshot | None, apply_error: str | None
    ) -> PlanHealth:
        """The health of one plan's task; KapacitorError when Kapacitor cannot tell."""
        task_id = plan.task_id

        def unhealthy(detail: str) -> PlanHealth:
            if apply_error:
                detail += f"; last deployment failed: {apply_error}"
            return PlanHealth(plan.aggregation, plan.version, False, detail)

        # One GET with the raw script (a listing would return it reformatted by Kapacitor) and
        # the stats the health is judged from.
        task = self.client.get_task(task_id, script_format="raw")
        if task is None:
            return unhealthy(f"task {task_id} is not deployed")
        current = TaskSnapshot.of(task)
        left_disabled = wanted is not None and current == replace(wanted, enabled=False)
        if left_disabled and self._reloads.interrupted(task_id):
            return unhealthy(self._reloads.finish(task_id))
        if wanted is None or current != wanted:
            running = script_version(current.script)
            state = " (disabled)" if not current.enabled else ""
            if current.stale:
                state = " (changed since it started: it runs an older script)"
            return unhealthy(
                f"task {task_id} differs from the plan: deployed version {running}{state}, "
                f"plan version {plan.version}"
            )
        health = TaskHealth.of(task)
        if not health.executing or health.error:
            stopped = f"task {task_id} is not executing: {health.error or 'stopped'}"
            return unhealthy(self._reloads.reload(task_id, stopped))
        growth = self._watch.growth(task_id, health)
        stalled = self._watch.stalled(health, self.stall_after_s)
        dead = sorted(name for name, grown in growth.items() if is_udf_node(name) and grown.errors)
        if stalled or dead:
            # A UDF process that died (killed, crashed, stuck past its keepalive) takes its
            # branch down, yet Kapacitor 1.5.7 keeps the task executing with no error. Its UDF
            # node's error counter tells only when a batch reached the node after the process
            # was aborted; otherwise only the batches piling up at the query node tell. A
            # reload starts new UDF processes.
            what = [f"UDF {health.stall_text(query, n)}" for query, n in stalled.items()]
            if dead:
                what.append(f"UDF node {', '.join(dead)} failed since the previous check")
            failed = (
                f"task {task_id}: {'; '.join(what)} (its branch computes nothing more, though "
                "Kapacitor says the task executes)"
            )
            return unhealthy(self._reloads.reload(task_id, failed) + self._logged(task_id))
        # A failed write counts in both of its node's counters.
        errors = sum(max(grown.errors - grown.write_errors, 0) for grown in growth.values())
        write_errors = sum(grown.write_errors for grown in growth.values())
        now = self.clock.now_ns()
        if growth:
            nodes = ", ".join(sorted(growth))
            failed = (
                f"task {task_id}: {errors} failed queries and {write_errors} "
                f"failed writes since the previous check (node {nodes})" + self._logged(task_id)
            )
            self._watch.note_failure(task_id, now, failed)
            return unhealthy(failed)
        # Each node queries (and writes) once a window: checks more frequent than that see
        # the counters still between two failures. Healthy again only once a whole period
        # of the schedule, and half one for a slow run, passed with none failing.
        recent = self._watch.recent_failure(task_id, now, plan.window_ns * 3 // 2)
        if recent is not None:
            return unhealthy(recent)
        return PlanHealth(
            plan.aggregation, plan.version, True, f"task {task_id} executing version {plan.version}"
        )

    def _logged(self, task_id: str) -> str:
        """`; Kapacitor logged …` with the task's last logged error, or "" (none seen)."""
        error = None if self.error_log is None else self.error_log.last(task_id)
        if error is None:
            return ""
        return f"; Kapacitor logged at {error.at} ({error.node}): {error.text}"

    # --- replays ------------------------------------------------------------------------------

    def run_windows(
        self, plan: TrackedPlan, windows: Sequence[Window], stop: threading.Event
    ) -> RangeResult:
        """Recompute and ship `windows` with Kapacitor replays, and ship the empty ones.

        The raw events of each run of contiguous windows are counted first, with one query.
        Every run of contiguous windows that hold events is one replay (`recording-time: true`)
        of the temporary task `fed-<aggregation>-<dc>-replay`: the plan with a single branch
        (offset 0), created disabled and deleted afterwards, also when the replay fails;
        Kapacitor's UDF ships those windows. Replays run one at a time. A window without
        events gets its zero manifest through the sink, without a replay (which would yield
        no batch for it anyway).

        The result lists every window, oldest first, like the embedded executor's: `events`
        from the count; `groups`, `points` and `run` are 0 for windows Kapacitor computed (the
        UDF knows them, the agent does not). A failed replay ends the run with Kapacitor's
        error; a stop request ends it before the next replay or while waiting for one (the
        replay itself cannot be cancelled in Kapacitor).
        """
        ordered = sorted(set(windows))
        results: list[WindowResult] = []

        def finish(*, stopped: bool = False, error: str | None = None) -> RangeResult:
            failed = [r.error for r in results if r.error]
            if error is None and failed:
                more = f" (and {len(failed) - 1} more)" if len(failed) > 1 else ""
                error = f"{len(failed)} window(s) not at central: {failed[0]}{more}"
            return RangeResult(
                plan.aggregation, plan.version, tuple(results), stopped, error, len(ordered)
            )

        for window in ordered:
            if window.size_ns != plan.window_ns:
                raise ValueError(f"window {window} is not a {plan.aggregation} window")
        if _GO_ZERO_TO_UNIX_NS % plan.window_ns:
            return finish(
                error=f"{format_duration(plan.window_ns)} windows are aligned differently by "
                "Kapacitor's align() (which counts from 0001-01-01): a replay would cut them"
            )
        with self._replay_lock:
            for start_ns, end_ns in coalesce(ordered):
                if stop.is_set() or self.stop.is_set():
                    return finish(stopped=True)
                span = f"{format_rfc3339(start_ns)}..{format_rfc3339(end_ns)}"
                try:
                    counts = count_raw_events(self.source, plan, start_ns, end_ns)
                except FederationError as exc:
                    log.error(
                        "%s: counting the raw events of %s failed: %s", plan.aggregation, span, exc
                    )
                    return finish(error=f"counting the raw events of {span} failed: {exc}")
                busy = [w for w in ordered if start_ns <= w.start_ns < end_ns and counts.get(w.start_ns)]  # fmt: skip
                short: dict[int, str] = {}
                for busy_start, busy_end in coalesce(busy):
                    part = f"{format_rfc3339(busy_start)}..{format_rfc3339(busy_end)}"
                    try:
                        self._replay(plan, busy_start, busy_end, stop)
                    except ReplayStopped:
                        return finish(stopped=True)
                    except FederationError as exc:
                        log.error("%s: replay of %s failed: %s", plan.aggregation, part, exc)
                        return finish(error=f"replay of {part} failed: {exc}")
                    replayed = {w.start_ns: counts[w.start_ns] for w in busy if busy_start <= w.start_ns < busy_end}  # fmt: skip
                    try:
                        short.update(
                            short_after_replay(
                                self.central, self.dc, plan, replayed,
                                wait_s=self.central_wait_s, stopped=lambda s: stop.wait(s) or self.stop.is_set(),
                            )
                        )  # fmt: skip
                    except FederationError as exc:
                        log.error("%s: after the replay of %s: %s", plan.aggregation, part, exc)
                        return finish(error=f"replay of {part}: could not check central: {exc}")
                for start in range(start_ns, end_ns, plan.window_ns):
                    window = Window(start, plan.window_ns)
                    events = counts.get(start, 0)
                    if events:
                        error = short.get(start)
                        results.append(
                            WindowResult(window, events, 0, 0, 0, 0, error is None, error=error)
                        )
                        continue
                    if stop.is_set() or self.stop.is_set():
                        return finish(stopped=True)
                    result, fatal = self._ship_empty(plan, window, stop)
                    results.append(result)
                    if fatal:
                        return finish(error=f"window {window.label}: {result.error}")
                    if not result.shipped and result.error is None:
                        return finish(stopped=True)
        return finish()

    # --- the live tasks' windows: the empty ones, and what central holds ----------------------

    def check_windows(self, stop: threading.Event) -> WindowChecks:
        """One pass over the windows of each plan's live task (the agent runs it every poll
        interval). A plan's raw events are counted once, with one query over every window due
        (`WindowBook.due`), and the counts serve both checks:

        - each window of the look-back that has ended (and settled) without raw events gets its
          zero manifest (`shipped`); one with events is Kapacitor's to ship;
        - the windows whose look-back has passed (`windows_past_lookback`) and, at the first
          check of a plan since the agent started, every window back to its oldest raw event,
          have their raw counts sent to the coordinator, which marks those central holds less
          of `inconsistent` (`marked`).

        Each window is confirmed, and checked, once per plan version: again at the next pass
        while its manifest did not go out or the coordinator did not answer. A coordinator that
        does not answer ends this pass's checks of central, and its error is raised once every
        plan's empty windows are confirmed. Plans whose deployment failed are left alone: their
        version may not be what runs.
        """
        with self._lock:
            plans = [] if self._apply_error else list(self._plans.values())
        now = self.clock.now_ns()
        done = WindowChecks()
        unanswered: FederationError | None = None
        for plan in plans:
            if stop.is_set():
                break
            central = None if unanswered else self.central
            due = self._book.due(
                plan, now, settle_ns(plan, self.settle_s), central=central is not None
            )
            since = self._reach_back(plan, due)
            spans = [(w.start_ns, w.end_ns) for w in due.confirm + due.check]
            if since is not None:
                spans.append((since, due.check[0].start_ns))
            if not spans:
                continue
            counts = count_raw_events(
                self.source, plan, min(s for s, _ in spans), max(e for _, e in spans)
            )
            for window in due.confirm:
                if not counts.get(window.start_ns):
                    result, _ = self._ship_empty(plan, window, stop)
                    done.shipped.append(result)
                    if not result.shipped:
                        continue
                self._book.confirmed(plan, window)
            if central is None or not due.check:
                continue
            try:
                done.marked += report_past_lookback(
                    central, self.dc, plan, due.to_report(counts, since)
                )
            except FederationError as exc:
                unanswered = exc
                continue
            self._book.checked(plan, due.check)
        if unanswered is not None:
            raise unanswered
        return done

    def _reach_back(self, plan: TrackedPlan, due: DueWindows) -> int | None:
        """At the first check of a plan since this agent started, the start of the window of
        its oldest raw event, when older than the windows checked as time passes: those whose
        look-back passed while no agent ran were checked by none (a partial first run of one,
        its later runs dropped, would stay `verified`). Otherwise None."""
        if not (due.first and due.check):
            return None
        oldest = oldest_raw_event_ns(self.source, plan)
        if oldest is None or oldest >= due.check[0].start_ns:
            return None
        return align(oldest, plan.window_ns)

    def _check_forever(self, interval_s: float) -> None:
        while not self.stop.wait(interval_s):
            try:
                self.check_windows(self.stop)
            except FederationError as exc:
                log.warning("DC %s: checking the live tasks' windows failed: %s", self.dc, exc)
            except Exception:  # the thread must outlive any one failure
                log.exception("DC %s: checking the live tasks' windows failed", self.dc)

    def _replay(self, plan: TrackedPlan, start_ns: int, end_ns: int, stop: threading.Event) -> None:
        """Replay [start, end) with the plan's temporary task (see `kapacitor_replay`)."""

        def sleep(seconds: float) -> None:
            if stop.wait(seconds) or self.stop.is_set():
                raise ReplayStopped

        run_replay(
            self.client,
            replay_task_id(plan),
            self._render(replay_plan(plan)).script,
            plan.aggregation,
            start_ns,
            end_ns,
            timeout_s=self.replay_timeout_s,
            poll_s=self.replay_poll_s,
            sleep=sleep,
        )

    def _ship_empty(
        self, plan: TrackedPlan, window: Window, stop: threading.Event
    ) -> tuple[WindowResult, bool]:
        """Ship one window's zero manifest (a detection's after writing its run point in the
        DC, as the embedded executor does); the result and whether the failure ends the run."""
        run = self.run_ids.next()
        manifest = manifest_point(
            plan, window.start_ns, events=0, groups=0, suppressed_events=0, run=run
        )
        try:
            if isinstance(plan, DetectionPlan):
                nothing = Detected(window.start_ns, 0, 0, float(plan.at_least), ())
                self.source.write(
                    serialize(finding_points(plan, nothing, run=run)),
                    database=plan.database,
                    retention_policy=plan.retention_policy,
                )
            shipped = self.sink.ship_window(plan, [manifest], stop=stop)
        except FederationError as exc:
            log.error("%s window %s: zero manifest not shipped: %s", plan.aggregation, window, exc)
            result = WindowResult(window, 0, 0, 0, 1, run, False, error=str(exc))
            return result, not isinstance(exc, ShipmentRefused)
        return WindowResult(window, 0, 0, 0, 1, run, shipped), False

    def close(self) -> None:
        """Stop waiting for replays, wait (briefly) for the one in progress, close the client.

        The deployed tasks keep running in Kapacitor: they do not depend on the agent.
        """
        self.stop.set()
        if self._replay_lock.acquire(timeout=30):
            self._replay_lock.release()
        if self.error_log is not None:
            self.error_log.close()
        self.client.close()
