"""The Kapacitor execution mode against the Kapacitor emulator (the documented API); tests taking
the `kapacitor` fixture run against a real kapacitord too.

The emulator stores and "runs" tasks by state only: it executes no TICKscript and starts no UDF.
Where a test needs what Kapacitor would ship for a replayed window, the emulator's `on_replay`
hook computes it with the embedded executor (the same `window_points` the UDF runs) and ships
it through the gateway, but only for windows that hold raw data: Kapacitor's replay yields no
batch for an empty window, and the mode itself must ship the zero manifests of those.
"""

from __future__ import annotations

import random
import threading
import time
from collections.abc import Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, replace
from pathlib import Path

import httpx
import pytest
import yaml
from kapacitor_fixture import KapacitorUnderTest

from federation.agent import (
    AgentSettings,
    CoordinatorClient,
    RunIds,
    Shipper,
    WindowSink,
    build_agent,
    compute_window,
    mode_name,
)
from federation.agent.coordinator_client import HeldCount
from federation.agent.detection_executor import keep_findings, read_detection_window
from federation.agent.kapacitor_mode import KapacitorMode
from federation.agent.kapacitor_replay import KAPACITORD_GONE, replay_task_id
from federation.config import FederationConfig, load_config
from federation.config.resolve import resolve_detection, resolve_plan, resolve_tracked
from federation.coordinator.app import run_verification
from federation.coordinator.backfills import request_backfill
from federation.coordinator.ledger import DcRow, DeploymentRow
from federation.core.clock import FakeClock, format_rfc3339
from federation.core.detect import shipped_points
from federation.core.detection_plan import DetectionPlan, TrackedPlan
from federation.core.plan import AggregationPlan
from federation.core.points import Point
from federation.core.windows import Window, windows_between
from federation.devstack.kapacitor_emulator import KapacitorEmulator
from federation.devstack.localstack import InfluxServer
from federation.errors import KapacitorError
from federation.influx import InfluxClient
from federation.kapacitor.client import KapacitorClient
from federation.kapacitor.deploy import DeploymentError, script_version

from .conftest import HOUR, SECOND, Event, central_points, make_plan, write_events
from .federation_fixture import (
    DC,
    Served,
    export_agent_tokens,
    serve_coordinator,
    token,
    write_fleet,
)

REPO = Path(__file__).resolve().parents[2]
TEMPLATES = REPO / "tickscripts"
FOREIGN = "stream\n    |from()\n        .measurement('cpu')\n    |log()\n"


@dataclass
class RecordingSink:
    """Keeps every window it is given; accepts them all."""

    shipped: list[list[Point]]

    def ship_window(
        self,
        plan: AggregationPlan,
        points: Iterable[Point],
        *,
        stop: threading.Event | None = None,
    ) -> bool:
        self.shipped.append(list(points))
        return True


@pytest.fixture
def emulator() -> KapacitorEmulator:
    return KapacitorEmulator()


@pytest.fixture
def client(emulator: KapacitorEmulator) -> Iterator[KapacitorClient]:
    with KapacitorClient("http://kapacitor.test:9092", transport=emulator.transport()) as client:
        yield client


@contextmanager
def dc_ends(
    served: Served, dc_influxd: InfluxServer, kapacitor_url: str
) -> Iterator[tuple[InfluxClient, Shipper, KapacitorClient, CoordinatorClient]]:
    """DC dub1's InfluxDB, its shipper to the gateway, its Kapacitor and the coordinator's API
    as the DC's agent sees it, each closed at the end."""
    with (
        InfluxClient(dc_influxd.url) as source,
        Shipper(served.url, dc=DC, token=token(DC)) as shipper,
        KapacitorClient(kapacitor_url) as client,
        CoordinatorClient(served.url, token(DC)) as coordinator,
    ):
        yield source, shipper, client, coordinator


def new_mode(
    client: KapacitorClient,
    *,
    dc: str = "dub1",
    source: InfluxClient | None = None,
    sink: WindowSink | None = None,
    clock: FakeClock | None = None,
) -> KapacitorMode:
    return KapacitorMode(
        client,
        dc=dc,
        templates_dir=TEMPLATES,
        gateway_cluster="federation_gateway",
        # Deploying and health never read raw data: an address nothing listens on will do.
        source=source or InfluxClient("http://127.0.0.1:9"),
        sink=sink or RecordingSink([]),
        clock=clock or FakeClock(0, auto_advance=False),
        stop=threading.Event(),
        replay_poll_s=0.01,
    )


def example_plans(dc: str = "dub1") -> list[AggregationPlan]:
    config = load_config(REPO)
    return [resolve_plan(config, name, dc) for name in sorted(config.aggregations)]


# --- apply and health -----------------------------------------------------------------------


def test_apply_creates_updates_and_deletes_tasks_and_reports_healthy(
    kapacitor: KapacitorUnderTest,
) -> None:
    client = kapacitor.client()
    client.create_task("cpu_alert", FOREIGN, [("telegraf", "autogen")], type="stream")
    mode = new_mode(client)
    direction, latency = example_plans()
    mode.apply([direction, latency])
    for plan in (direction, latency):
        script = kapacitor.running_script(plan.task_id)
        assert script is not None and script_version(script) == plan.version
    health = mode.health()
    assert [(h.aggregation, h.healthy) for h in health] == [
        ("delivery_direction", True),
        ("delivery_latency", True),
    ]
    assert health[1].detail == f"task {latency.task_id} executing version {latency.version}"

    changed = replace(latency, accuracy=0.02)
    mode.apply([changed])
    running = kapacitor.running_script(changed.task_id)
    assert running is not None and script_version(running) == changed.version
    assert ".accuracy(0.02)" in running
    assert {t.id for t in client.list_tasks()} == {"cpu_alert", changed.task_id}
    assert [(h.aggregation, h.version, h.healthy) for h in mode.health()] == [
        ("delivery_latency", changed.version, True)
    ]
    mode.close()


def test_a_detection_is_a_kapacitor_task_like_an_aggregation(
    client: KapacitorClient, emulator: KapacitorEmulator, dc: InfluxClient
) -> None:
    """Deployed, judged healthy or stalled, replayed over its windows with events, its empty
    windows confirmed with a zero manifest and a run point kept in the DC, removed with its
    plan: the agent computes none of it itself."""
    detection = resolve_detection(load_config(REPO), "recipients_per_sender", "dub1")
    detection = replace(detection, dc="dc1", window_ns=SECOND, lookback_ns=2 * SECOND)
    t0 = recent_minute()
    write_events(dc, [Event(t0 + SECOND + i * 1000, 10.0) for i in range(3)])
    seen = record_replays(emulator)
    sink = RecordingSink([])
    mode = new_mode(client, dc="dc1", source=dc, sink=sink, clock=FakeClock(t0 + HOUR))
    aggregation = make_plan()
    mode.apply([aggregation, detection])
    script = emulator.running_script(detection.task_id)
    assert script is not None and script_version(script) == detection.version
    assert script.count("@fedagg()") == 2 and ".mode('split')" in script  # a UDF per branch
    health = {h.aggregation: h for h in mode.health()}
    assert health[detection.detection].healthy, health
    assert health[detection.detection].detail == (
        f"task {detection.task_id} executing version {detection.version}"
    )

    # Its first branch's UDF process dies: the branch stalls, the task is reloaded.
    assert emulator.kill_udf(detection.task_id, node_fails=False) == "fedagg2"
    (unhealthy,) = [h for h in mode.health() if h.aggregation == detection.detection]
    assert not unhealthy.healthy
    assert "UDF branch query1 -> fedagg2 stalled" in unhealthy.detail
    assert "reloaded the task" in unhealthy.detail

    # Window 1 holds events and is replayed; windows 0 and 2 are empty.
    windows = windows_between(t0, t0 + 3 * SECOND, SECOND)
    result = mode.run_windows(detection, windows, threading.Event())
    assert result.ok, result.summary()
    assert [w.events for w in result.windows] == [0, 3, 0]
    (replay,) = seen
    assert (replay.task, replay.start_ns - t0, replay.stop_ns - t0) == (
        f"{detection.task_id}-replay",
        SECOND,
        2 * SECOND,
    )
    assert replay.script.count("@fedagg()") == 1 and ".offset(0s)" in replay.script
    assert [[(p.measurement, p.fields["events"]) for p in points] for points in sink.shipped] == [
        [("federation_manifest", 0)],
        [("federation_manifest", 0)],
    ]
    runs = dc.query(
        'SELECT "keys", "findings" FROM "mail"."raw"."federation_detection_runs"',
        database="mail",
    )
    assert [(int(r[0]) - t0, r[1], r[2]) for series in runs for r in series.values] == [
        (0, 0, 0),
        (2 * SECOND, 0, 0),
    ]

    mode.apply([aggregation])
    assert detection.task_id not in emulator.tasks
    assert detection.detection not in {h.aggregation for h in mode.health()}
    mode.close()


@dataclass
class RecordingCentral:
    """The coordinator's raw-count check: records what it is sent, holds every window whole."""

    sent: list[tuple[str, dict[int, int]]]

    def raw_counts(self, dc: str, aggregation: str, counts: Mapping[int, int]) -> list[HeldCount]:
        self.sent.append((aggregation, dict(counts)))
        return [HeldCount(aggregation, s, n, "verified", n, False) for s, n in counts.items()]


def test_a_detections_live_windows_are_confirmed_empty_and_checked_at_central(
    client: KapacitorClient, dc: InfluxClient
) -> None:
    detection = resolve_detection(load_config(REPO), "senders_per_client_ip", "dub1")
    detection = replace(detection, dc="dc1", window_ns=SECOND, lookback_ns=2 * SECOND)
    t0 = recent_minute()
    write_events(dc, [Event(t0 + SECOND + i * 1000, 10.0) for i in range(4)])
    sink, central = RecordingSink([]), RecordingCentral([])
    clock = FakeClock(t0 + 3 * SECOND + SECOND // 10, auto_advance=False)  # window 2 settled
    mode = new_mode(client, dc="dc1", source=dc, sink=sink, clock=clock)
    mode.central = central
    mode.apply([detection])
    # The look-back's windows 1 (events: Kapacitor's to ship) and 2 (empty).
    confirmed = mode.check_windows(threading.Event()).shipped
    assert [r.window.start_ns - t0 for r in confirmed] == [2 * SECOND]
    assert [(p.measurement, p.tags["aggregation"]) for p in sink.shipped[0]] == [
        ("federation_manifest", detection.detection)
    ]
    # Once window 1's look-back has passed, its raw events are checked against central.
    assert mode.check_windows(threading.Event()).marked == []
    assert central.sent == []
    clock.set(t0 + 2 * SECOND + detection.lookback_ns + SECOND // 10)
    assert mode.check_windows(threading.Event()).marked == []
    assert central.sent == [(detection.detection, {t0 + SECOND: 4})]
    mode.close()


def test_a_task_failing_to_start_restores_the_previous_tasks_and_is_unhealthy(
    client: KapacitorClient, emulator: KapacitorEmulator
) -> None:
    mode = new_mode(client)
    direction, latency = example_plans()
    mode.apply([latency])
    old_script = emulator.running_script(latency.task_id)
    emulator.fail_enable(direction.task_id, "udf fedagg: no such UDF")
    changed = replace(latency, accuracy=0.02)
    with pytest.raises(DeploymentError, match="no such UDF"):
        mode.apply([direction, changed])
    assert emulator.running_script(latency.task_id) == old_script
    assert direction.task_id not in emulator.tasks
    health = {h.aggregation: h for h in mode.health()}
    assert not health["delivery_direction"].healthy
    assert "is not deployed" in health["delivery_direction"].detail
    assert not health["delivery_latency"].healthy
    assert f"deployed version {latency.version}" in health["delivery_latency"].detail
    assert "last deployment failed" in health["delivery_latency"].detail
    assert "no such UDF" in health["delivery_latency"].detail

    # Once the task can start, the next apply converges and health recovers.
    emulator.clear_enable_failure(direction.task_id)
    mode.apply([direction, changed])
    assert all(h.healthy for h in mode.health())
    mode.close()


def test_growing_node_errors_are_unhealthy_until_they_stop_growing(
    client: KapacitorClient, emulator: KapacitorEmulator
) -> None:
    clock = FakeClock(0, auto_advance=False)
    mode = new_mode(client, clock=clock)
    plans = example_plans()
    # Each node runs once a window: checks between two of its failures still say it fails.
    between = plans[1].window_ns * 3 // 2 - 1
    mode.apply(plans)
    task_id = plans[1].task_id
    assert all(h.healthy for h in mode.health())

    emulator.set_node_stats(task_id, "influxdb_out4", write_errors=2)
    health = {h.aggregation: h for h in mode.health()}
    assert not health["delivery_latency"].healthy
    assert "0 failed queries and 2 failed writes" in health["delivery_latency"].detail
    assert health["delivery_direction"].healthy

    # The same counters at the next checks, within a window and a half: still failing.
    clock.advance(between)
    health = {h.aggregation: h for h in mode.health()}
    assert not health["delivery_latency"].healthy
    assert "0 failed queries and 2 failed writes" in health["delivery_latency"].detail
    # Past it, nothing new failed: healthy again.
    clock.advance(1)
    assert all(h.healthy for h in mode.health())

    emulator.set_node_stats(task_id, "influxdb_out4", write_errors=5)
    emulator.set_node_stats(task_id, "query1", errors=1)
    health = {h.aggregation: h for h in mode.health()}
    assert "1 failed queries and 3 failed writes" in health["delivery_latency"].detail
    clock.advance(between)
    assert not {h.aggregation: h for h in mode.health()}["delivery_latency"].healthy
    clock.advance(1)
    assert all(h.healthy for h in mode.health())
    mode.close()


@pytest.mark.parametrize("node_fails", [True, False], ids=["node-fails", "no-error-counted"])
def test_a_dead_udf_is_noticed_by_its_stalled_branch_and_the_task_reloaded(
    client: KapacitorClient, emulator: KapacitorEmulator, node_fails: bool
) -> None:
    mode = new_mode(client)
    plans = example_plans()
    mode.apply(plans)
    assert all(h.healthy for h in mode.health())
    task_id = plans[1].task_id
    started = emulator.tasks[task_id].last_enabled
    # The task still executes, without an error; often not even a node counts one.
    node = emulator.kill_udf(task_id, node_fails=node_fails)
    health = client.task_health(task_id)
    assert health.executing and health.error == ""
    assert health.errors == (2 if node_fails else 0)
    by_plan = {h.aggregation: h for h in mode.health()}
    assert not by_plan["delivery_latency"].healthy
    detail = by_plan["delivery_latency"].detail
    assert f"task {task_id}: UDF branch query{int(node[6:]) - 1} -> {node} stalled: " in detail
    assert (f"UDF node {node} failed since the previous check" in detail) is node_fails
    assert detail.endswith("reloaded the task (disable + enable)")
    assert by_plan["delivery_direction"].healthy
    assert emulator.tasks[task_id].last_enabled > started
    assert all(h.healthy for h in mode.health())
    mode.close()


def test_a_reload_whose_disable_timed_out_is_finished_at_the_next_check(
    emulator: KapacitorEmulator,
) -> None:
    # Stopping a task waits for its UDF processes: Kapacitor may answer after the client gave up.
    inner = emulator.transport()
    late: list[str] = []

    def handler(request: httpx.Request) -> httpx.Response:
        response = inner.handle_request(request)
        if request.method == "PATCH" and b'"disabled"' in request.content and not late:
            late.append(request.url.path)
            raise httpx.ReadTimeout("timed out", request=request)
        return response

    with KapacitorClient("http://kapacitor", transport=httpx.MockTransport(handler)) as client:
        mode = new_mode(client)
        plans = example_plans()
        mode.apply(plans)
        task_id = plans[0].task_id
        emulator.kill_udf(task_id, node_fails=False)
        detail = {h.aggregation: h for h in mode.health()}["delivery_direction"].detail
        assert "reloading the task failed" in detail and "ReadTimeout" in detail
        assert emulator.tasks[task_id].status == "disabled"
        health = {h.aggregation: h for h in mode.health()}["delivery_direction"]
        assert not health.healthy
        assert health.detail.endswith("was left disabled by a reload that failed; enabled it again")
        assert emulator.tasks[task_id].status == "enabled" and emulator.tasks[task_id].executing
        assert all(h.healthy for h in mode.health())
        mode.close()


def test_one_batch_waiting_is_a_stall_only_once_it_waited_long_enough(
    client: KapacitorClient, emulator: KapacitorEmulator
) -> None:
    mode = new_mode(client)
    plans = example_plans()
    mode.apply(plans)
    task_id = plans[0].task_id
    emulator.set_node_stats(task_id, "query1", batches_queried=5, collected=4, emitted=4)
    assert all(h.healthy for h in mode.health())  # a batch on its way
    emulator.set_node_stats(task_id, "query1", batches_queried=6, collected=5, emitted=5)
    mode.stall_after_s = 0.0
    assert all(h.healthy for h in mode.health())  # it moved on since: a new batch waits
    by_plan = {h.aggregation: h for h in mode.health()}  # the same one, still waiting
    assert not by_plan["delivery_direction"].healthy
    assert "UDF branch query1 -> " in by_plan["delivery_direction"].detail
    mode.close()


def test_a_stopped_task_is_unhealthy_with_its_error_and_restarted(
    client: KapacitorClient, emulator: KapacitorEmulator
) -> None:
    mode = new_mode(client)
    plans = example_plans()
    mode.apply(plans)
    emulator.fail_task(plans[0].task_id, "fedagg5: write error: write |1: broken pipe")
    health = {h.aggregation: h for h in mode.health()}
    assert not health["delivery_direction"].healthy
    assert "is not executing: fedagg5: write error" in health["delivery_direction"].detail
    assert "reloaded the task" in health["delivery_direction"].detail
    assert health["delivery_latency"].healthy
    assert emulator.running_script(plans[0].task_id) is not None
    assert all(h.healthy for h in mode.health())
    mode.close()


def test_health_when_kapacitor_does_not_answer() -> None:
    with KapacitorClient("http://127.0.0.1:9", timeout=1.0) as client:
        mode = new_mode(client)
        with pytest.raises(KapacitorError):
            mode.apply(example_plans())
        health = mode.health()
    assert [h.healthy for h in health] == [False, False]
    assert all("Kapacitor does not answer" in h.detail for h in health)


# --- run_windows: replays of a temporary task ---------------------------------------------


@dataclass
class SeenReplay:
    task: str
    start_ns: int
    stop_ns: int
    recording_time: bool
    script: str
    replay_tasks: list[str]


def record_replays(emulator: KapacitorEmulator) -> list[SeenReplay]:
    seen: list[SeenReplay] = []

    def hook(task: str, start_ns: int, stop_ns: int, recording_time: bool) -> None:
        replaying = sorted(t for t in emulator.tasks if t.endswith("-replay"))
        script = emulator.tasks[task].script
        seen.append(SeenReplay(task, start_ns, stop_ns, recording_time, script, replaying))

    emulator.on_replay = hook
    return seen


def recent_minute() -> int:
    """A whole minute a few minutes ago (every one-second window of the tests is complete)."""
    now = time.time_ns()
    return now - now % (60 * SECOND) - 5 * 60 * SECOND


def test_run_windows_replays_one_branch_over_the_windows_with_events_and_ships_empty_ones(
    client: KapacitorClient, emulator: KapacitorEmulator, dc: InfluxClient
) -> None:
    plan = make_plan()
    t0 = recent_minute()
    # Raw data in windows 0, 1 and 4 of six; 2, 3 and 5 are empty.
    write_events(
        dc, [Event(t0 + w * SECOND + i * 1000, 10.0 + i) for w in (0, 1, 4) for i in range(3)]
    )
    seen = record_replays(emulator)
    sink = RecordingSink([])
    mode = new_mode(client, dc="dc1", source=dc, sink=sink, clock=FakeClock(t0 + HOUR))
    windows = windows_between(t0, t0 + 6 * SECOND, SECOND)
    result = mode.run_windows(plan, list(reversed(windows)), threading.Event())

    # Only the windows holding events are replayed; the empty ones get their zero manifests.
    assert [(r.start_ns - t0, r.stop_ns - t0) for r in seen] == [
        (0, 2 * SECOND),
        (4 * SECOND, 5 * SECOND),
    ]
    replay = seen[0]
    assert replay.task == replay_task_id(plan) == "fed-delivery_latency-dc1-replay"
    assert replay.recording_time is True
    assert replay.script.count("batch\n") == 1
    assert ".offset(0s)" in replay.script
    assert ".period(1s)" in replay.script and ".every(1s)" in replay.script
    assert script_version(replay.script) == plan.version
    # Created disabled for the replay only, deleted afterwards, as is the replay's record.
    assert emulator.tasks == {}
    assert emulator.replays == {}

    assert result.ok and result.requested == 6 and result.shipped == 6
    assert [w.window for w in result.windows] == windows
    assert [w.events for w in result.windows] == [3, 3, 0, 0, 3, 0]
    manifests = [points[-1] for points in sink.shipped]
    assert [len(points) for points in sink.shipped] == [1, 1, 1]
    assert [m.time_ns for m in manifests] == [t0 + 2 * SECOND, t0 + 3 * SECOND, t0 + 5 * SECOND]
    for manifest in manifests:
        assert manifest.measurement == "federation_manifest"
        assert manifest.tags == {"aggregation": plan.aggregation, "dc": "dc1"}
        assert manifest.fields["events"] == manifest.fields["groups"] == 0
        assert manifest.fields["version"] == plan.version
    mode.close()


def test_separate_runs_of_windows_are_separate_replays(
    client: KapacitorClient, emulator: KapacitorEmulator, dc: InfluxClient
) -> None:
    plan = make_plan()
    t0 = recent_minute()
    write_events(dc, [Event(t0 + k * SECOND, 10.0) for k in range(6)])
    seen = record_replays(emulator)
    mode = new_mode(client, dc="dc1", source=dc)
    windows = [Window(t0 + k * SECOND, SECOND) for k in (0, 1, 5)]
    result = mode.run_windows(plan, windows, threading.Event())
    assert [(r.start_ns - t0, r.stop_ns - t0) for r in seen] == [
        (0, 2 * SECOND),
        (5 * SECOND, 6 * SECOND),
    ]
    assert result.ok and [w.window for w in result.windows] == windows
    mode.close()


def test_a_failed_replay_surfaces_kapacitors_error_and_deletes_the_temporary_task(
    client: KapacitorClient, emulator: KapacitorEmulator, dc: InfluxClient
) -> None:
    plan = make_plan()
    t0 = recent_minute()
    write_events(dc, [Event(t0 + k * SECOND, 10.0) for k in range(3)])
    seen = record_replays(emulator)
    emulator.fail_replays('error executing query: database not found: "mail"')
    sink = RecordingSink([])
    mode = new_mode(client, dc="dc1", source=dc, sink=sink)
    result = mode.run_windows(plan, windows_between(t0, t0 + 3 * SECOND, SECOND), threading.Event())
    assert len(seen) == 1
    assert not result.ok
    assert result.error is not None
    assert result.error.startswith(f"replay of {format_rfc3339(t0)}..")
    assert result.error.endswith('error executing query: database not found: "mail"')
    assert result.shipped == 0 and result.requested == 3
    assert sink.shipped == []
    assert emulator.tasks == {}
    mode.close()


def test_a_replay_under_which_kapacitord_exits_says_so(
    client: KapacitorClient, emulator: KapacitorEmulator, dc: InfluxClient
) -> None:
    plan = make_plan()
    t0 = recent_minute()
    write_events(dc, [Event(t0 + k * SECOND, 10.0) for k in range(3)])
    emulator.exit_when_a_replay_starts()
    mode = new_mode(client, dc="dc1", source=dc, sink=RecordingSink([]))
    result = mode.run_windows(plan, windows_between(t0, t0 + 3 * SECOND, SECOND), threading.Event())
    assert not result.ok and result.shipped == 0
    assert result.error is not None
    assert result.error.startswith(f"replay of {format_rfc3339(t0)}..")
    assert "ConnectError" in result.error
    assert result.error.endswith(KAPACITORD_GONE)
    mode.close()


def test_a_leftover_temporary_task_is_replaced(
    client: KapacitorClient, emulator: KapacitorEmulator, dc: InfluxClient
) -> None:
    plan = make_plan()
    client.create_task(replay_task_id(plan), "// an old copy\n" + FOREIGN, [("mail", "raw")])
    seen = record_replays(emulator)
    mode = new_mode(client, dc="dc1", source=dc)
    t0 = recent_minute()
    write_events(dc, [Event(t0, 10.0)])
    assert mode.run_windows(plan, [Window(t0, SECOND)], threading.Event()).ok
    assert script_version(seen[0].script) == plan.version
    assert emulator.tasks == {}
    mode.close()


def test_replays_of_one_dc_run_one_at_a_time(
    client: KapacitorClient, emulator: KapacitorEmulator, dc: InfluxClient
) -> None:
    emulator.replay_polls = 3
    seen = record_replays(emulator)
    mode = new_mode(client, dc="dc1", source=dc)
    t0 = recent_minute()
    write_events(dc, [Event(t0 + k * SECOND, 10.0) for k in range(2)])
    plans = [make_plan(), make_plan(aggregation="delivery_direction", dimensions=("direction",))]
    results = []
    threads = [
        threading.Thread(
            target=lambda p=plan: results.append(
                mode.run_windows(p, windows_between(t0, t0 + 2 * SECOND, SECOND), threading.Event())
            )
        )
        for plan in plans
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(30)
    assert len(results) == 2 and all(r.ok for r in results)
    assert len(seen) == 2
    # While one replay ran, no other temporary task existed.
    assert [len(r.replay_tasks) for r in seen] == [1, 1]
    mode.close()


def test_windows_kapacitor_would_align_differently_are_refused(
    client: KapacitorClient, emulator: KapacitorEmulator, dc: InfluxClient
) -> None:
    # .align() rounds to multiples of the window since 0001-01-01, not since 1970: for a
    # 7-second window the two grids differ, and a replay would cut every window.
    seen = record_replays(emulator)
    mode = new_mode(client, dc="dc1", source=dc)
    plan = make_plan(window_ns=7 * SECOND, lookback_ns=7 * SECOND)
    result = mode.run_windows(plan, [Window(7 * SECOND * 10**8, 7 * SECOND)], threading.Event())
    assert result.error is not None and "aligned differently" in result.error
    assert seen == [] and emulator.tasks == {}
    mode.close()


def test_a_stop_request_ends_the_run_before_the_replay(
    client: KapacitorClient, emulator: KapacitorEmulator, dc: InfluxClient
) -> None:
    seen = record_replays(emulator)
    mode = new_mode(client, dc="dc1", source=dc)
    stop = threading.Event()
    stop.set()
    t0 = recent_minute()
    result = mode.run_windows(make_plan(), [Window(t0, SECOND)], stop)
    assert result.stopped and not result.ok and seen == []
    mode.close()


# --- with a real coordinator (gateway, ledger) and central InfluxDB ------------------------


@pytest.fixture
def hour0() -> int:
    """An hour boundary a day ago: every window of the test is in the past and within retention."""
    now = time.time_ns()
    return now - now % HOUR - 24 * HOUR


@pytest.fixture
def clock(hour0: int) -> FakeClock:
    return FakeClock(hour0 + 5 * SECOND, auto_advance=False)


@pytest.fixture
def served_emulator() -> Iterator[tuple[KapacitorEmulator, str]]:
    emulator = KapacitorEmulator()
    with emulator.serve() as url:
        yield emulator, url


@pytest.fixture
def fed(
    config_dir: Path,
    dc_influxd: InfluxServer,
    central_influxd: InfluxServer,
    served_emulator: tuple[KapacitorEmulator, str],
) -> tuple[FederationConfig, int]:
    """The example federation with DC fra1 on the test's influxd and the served emulator."""
    from federation.devstack.processes import free_port

    port = free_port()
    write_fleet(config_dir, dc_influxd.url, central_influxd.url, f"http://127.0.0.1:{port}")
    path = config_dir / "fleet.yaml"
    data = yaml.safe_load(path.read_text())
    data["dcs"][DC]["kapacitor"] = {"url": served_emulator[1]}
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return load_config(config_dir), port


@pytest.fixture
def served(
    fed: tuple[FederationConfig, int],
    central_influxd: InfluxServer,
    clock: FakeClock,
    hour0: int,
    monkeypatch: pytest.MonkeyPatch,
) -> Iterator[Served]:
    config, port = fed
    export_agent_tokens(config, monkeypatch)
    yield from serve_coordinator(config, central_influxd.url, clock, port, hour0 - 3 * HOUR)


def write_hours(dc_url: str, hour0: int, hours: Sequence[int], per_hour: int = 40) -> None:
    """Raw events in the given hours (relative to hour0), in a handful of groups."""
    rng = random.Random(hour0)
    events = [
        Event(
            hour0 + h * HOUR + rng.randrange(HOUR),
            rng.lognormvariate(4, 1),
            rng.choice(["in", "out"]),
            rng.choice(["m1", "m2"]),
            rng.choice(["c1", "c2"]),
        )
        for h in hours
        for _ in range(per_hour)
    ]
    with InfluxClient(dc_url) as client:
        client.execute('CREATE DATABASE "mail"')
        client.execute(
            'CREATE RETENTION POLICY "raw" ON "mail" DURATION 30d REPLICATION 1 '
            "SHARD DURATION 1d DEFAULT"
        )
        write_events(client, events)


def kapacitor_stand_in(
    emulator: KapacitorEmulator,
    plans: Sequence[TrackedPlan],
    source: InfluxClient,
    sink: WindowSink,
    clock: FakeClock,
) -> list[tuple[str, int, int]]:
    """Make the emulator's replays ship what Kapacitor's UDF would: the embedded executor's
    points for every replayed window that holds raw data, nothing for an empty one (a
    detection's findings and run point written to the DC's InfluxDB, its counts shipped)."""
    by_task = {replay_task_id(p): p for p in plans}
    run_ids = RunIds(clock)
    replays: list[tuple[str, int, int]] = []

    def hook(task: str, start_ns: int, stop_ns: int, recording_time: bool) -> None:
        assert recording_time
        plan = by_task[task]
        replays.append((plan.aggregation, start_ns, stop_ns))
        for window in windows_between(start_ns, stop_ns, plan.window_ns):
            if isinstance(plan, DetectionPlan):
                detected = read_detection_window(source, plan, window)
                if detected.events:
                    keep_findings(source, plan, detected, run_ids.next())
                    sink.ship_window(plan, shipped_points(plan, detected, run=run_ids.next()))
                continue
            computed = compute_window(source, plan, window, run_ids=run_ids)
            if computed.events:
                sink.ship_window(plan, computed.points)

    emulator.on_replay = hook
    return replays


def manifest_events(central: InfluxClient, aggregation: str, hour0: int) -> dict[int, object]:
    return {
        (int(str(m["time"])) - hour0) // HOUR: m["events"]
        for m in central_points(central, "federation_manifest")
        if m["aggregation"] == aggregation
    }


def test_empty_windows_get_zero_manifests_at_central_and_the_ledger_marks_them_empty(
    served: Served,
    fed: tuple[FederationConfig, int],
    served_emulator: tuple[KapacitorEmulator, str],
    dc_influxd: InfluxServer,
    central: InfluxClient,
    clock: FakeClock,
    hour0: int,
) -> None:
    config, _ = fed
    emulator, url = served_emulator
    clock.set(hour0 + 3 * HOUR + 5 * SECOND)
    write_hours(dc_influxd.url, hour0, [-3, -2, 0, 2])
    plan = resolve_plan(config, "delivery_latency", DC)
    with dc_ends(served, dc_influxd, url) as (source, shipper, client, _):
        replays = kapacitor_stand_in(emulator, [plan], source, shipper, clock)
        mode = new_mode(client, dc=DC, source=source, sink=shipper, clock=clock)
        windows = windows_between(hour0 - 3 * HOUR, hour0 + 3 * HOUR, HOUR)
        result = mode.run_windows(plan, windows, threading.Event())
        mode.close()
    # Only the hours holding events are replayed.
    assert replays == [
        ("delivery_latency", hour0 - 3 * HOUR, hour0 - HOUR),
        ("delivery_latency", hour0, hour0 + HOUR),
        ("delivery_latency", hour0 + 2 * HOUR, hour0 + 3 * HOUR),
    ]
    assert result.ok, result.summary()
    assert manifest_events(central, "delivery_latency", hour0) == {
        -3: 40,
        -2: 40,
        -1: 0,
        0: 40,
        1: 0,
        2: 40,
    }
    run_verification(served.coordinator, central)
    with CoordinatorClient(served.url, token(DC)) as coordinator:
        view = coordinator.windows(DC, "delivery_latency", hour0 - 3 * HOUR)
    states = {(w.start_ns - hour0) // HOUR: w.state for w in view.windows}
    assert [states[h] for h in range(-3, 3)] == [
        "verified", "verified", "empty", "verified", "empty", "verified"
    ]  # fmt: skip


def test_the_agent_in_kapacitor_mode_deploys_reports_health_and_backfills(
    served: Served,
    fed: tuple[FederationConfig, int],
    served_emulator: tuple[KapacitorEmulator, str],
    dc_influxd: InfluxServer,
    central: InfluxClient,
    clock: FakeClock,
    hour0: int,
) -> None:
    config, _ = fed
    emulator, url = served_emulator
    assert mode_name(config, DC) == "kapacitor"
    write_hours(dc_influxd.url, hour0, [-3, -1, 1, 2, 3])
    settings = AgentSettings(poll_interval_s=0.05, mode="kapacitor", max_jitter_s=0)
    agent, _ = build_agent(config, DC, clock=clock, settings=settings)
    assert agent.mode.name == "kapacitor"
    assert agent.shipper is not None
    plans = resolve_tracked(config, DC)  # the aggregations, then the detections
    with InfluxClient(dc_influxd.url) as source:
        replays = kapacitor_stand_in(emulator, plans, source, agent.shipper, clock)
        agent.preflight()
        agent.reconcile()

        # Deployed: one executing task per plan, and the coordinator holds a healthy report.
        for plan in plans:
            script = emulator.running_script(plan.task_id)
            assert script is not None and script_version(script) == plan.version
        with served.coordinator.ledger.session() as session:
            row = session.get(DcRow, DC)
            assert row is not None and row.mode == "kapacitor"
            for plan in plans:
                deployment = session.get(DeploymentRow, (DC, plan.aggregation))
                assert deployment is not None
                assert deployment.healthy, deployment.detail
                assert deployment.running_version == plan.version

        # Catch-up on start: the look-back of each plan, replayed.
        results = agent.catch_up(threading.Event())
        assert all(r.ok for r in results), [r.summary() for r in results]
        assert manifest_events(central, "delivery_latency", hour0) == {-3: 40, -2: 0, -1: 40}
        # Each detection's look-back (two hours) too: only hour -1 holds events.
        detections = sorted(config.detections)
        assert sorted(replays) == [
            ("delivery_direction", hour0 - HOUR, hour0),
            ("delivery_latency", hour0 - 3 * HOUR, hour0 - 2 * HOUR),
            ("delivery_latency", hour0 - HOUR, hour0),
            *((name, hour0 - HOUR, hour0) for name in detections),
        ]
        for name in detections:
            assert manifest_events(central, name, hour0) == {-2: 0, -1: 40}

        # A backfill request: replayed, empty hours get their zero manifests, result reported.
        clock.set(hour0 + 4 * HOUR + 5 * SECOND)
        request_backfill(
            served.coordinator.ledger,
            config,
            DC,
            "delivery_latency",
            hour0,
            hour0 + 4 * HOUR,
            clock.now_ns(),
        )
        assert agent.process_backfills(threading.Event()) == 1
        assert agent.coordinator.backfills(DC) == []
        events = manifest_events(central, "delivery_latency", hour0)
        assert {h: events[h] for h in range(4)} == {0: 0, 1: 40, 2: 40, 3: 40}

        # A task stopped by a dead UDF: the next report says so, and the task is restarted.
        latency = plans[1]
        emulator.fail_task(latency.task_id, "task finished with error: udf fedagg died")
        agent.report()
        with served.coordinator.ledger.session() as session:
            deployment = session.get(DeploymentRow, (DC, latency.aggregation))
            assert deployment is not None and not deployment.healthy
            assert "udf fedagg died" in (deployment.detail or "")

        # A deployment that fails is rolled back, raised, and the next report says why.
        direction = plans[0]
        emulator.fail_enable(direction.task_id, "udf fedagg: no such UDF")
        with KapacitorClient(url) as client:
            client.delete_task(direction.task_id)
        with pytest.raises(DeploymentError, match="no such UDF"):
            agent.reconcile()
        assert direction.task_id not in emulator.tasks
        agent.report()
        with served.coordinator.ledger.session() as session:
            deployment = session.get(DeploymentRow, (DC, direction.aggregation))
            assert deployment is not None and not deployment.healthy
            detail = deployment.detail or ""
            assert "is not deployed; last deployment failed" in detail
            assert "no such UDF" in detail
    assert set(emulator.tasks) == {latency.task_id} | {p.task_id for p in plans[2:]}
    agent.close()


def test_an_ended_window_without_raw_data_is_confirmed_empty_at_once(
    served: Served,
    fed: tuple[FederationConfig, int],
    served_emulator: tuple[KapacitorEmulator, str],
    dc_influxd: InfluxServer,
    central: InfluxClient,
    clock: FakeClock,
    hour0: int,
) -> None:
    """Kapacitor's live task emits nothing for a window without raw data; the mode counts the
    raw events of each ended window of the look-back and ships the zero manifest of an empty
    one, so the ledger marks it `empty` without waiting for its deadline and a backfill."""
    config, _ = fed
    _, url = served_emulator
    write_hours(dc_influxd.url, hour0, [0, 2])
    plan = resolve_plan(config, "delivery_latency", DC)
    clock.set(hour0 + 3 * HOUR + 5 * SECOND)
    with dc_ends(served, dc_influxd, url) as (source, shipper, client, _):
        mode = new_mode(client, dc=DC, source=source, sink=shipper, clock=clock)
        mode.apply([plan])
        shipped = mode.check_windows(threading.Event()).shipped
        assert [(r.window.start_ns - hour0) // HOUR for r in shipped] == [1]
        assert mode.check_windows(threading.Event()).shipped == [], "each window is confirmed once"
        # Not before the window has ended and settled.
        clock.set(hour0 + 4 * HOUR)
        assert mode.check_windows(threading.Event()).shipped == []
        clock.set(hour0 + 4 * HOUR + 5 * SECOND)
        assert [
            (r.window.start_ns - hour0) // HOUR
            for r in mode.check_windows(threading.Event()).shipped
        ] == [3]
        mode.close()
    assert manifest_events(central, "delivery_latency", hour0) == {1: 0, 3: 0}
    run_verification(served.coordinator, central)
    with CoordinatorClient(served.url, token(DC)) as coordinator:
        view = coordinator.windows(DC, "delivery_latency", hour0)
    states = {(w.start_ns - hour0) // HOUR: w.state for w in view.windows}
    assert states[1] == "empty" and states[3] == "empty"
