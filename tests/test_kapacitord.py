"""The Kapacitor path against a real kapacitord (named by FEDERATION_KAPACITORD).

kapacitord runs on loopback with a generated kapacitor.conf: its default `[[influxdb]]` cluster is
the DC's spawned influxd, a second, write-only cluster `federation_gateway` is the real
coordinator's gateway (authenticated with the DC's agent token), and `[udf.functions.fedagg]`
runs this installation's `federation kapacitor-udf`. The agent's Kapacitor mode deploys the DC's
tasks and replays a past range; central must then hold exactly the points the embedded executor
computes from the same raw data (every field except the manifest's `run`).
"""

from __future__ import annotations

import contextlib
import os
import random
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import uvicorn
import yaml
from kapacitor_fixture import federation_command

from federation.agent import AgentSettings, RunIds, build_agent, compute_window
from federation.agent.detection_executor import read_detection_window
from federation.config import FederationConfig, load_config
from federation.coordinator.api import build_app
from federation.coordinator.app import ensure_central
from federation.coordinator.ledger import open_ledger
from federation.coordinator.service import Coordinator, CoordinatorSettings, Tokens
from federation.core.clock import SystemClock
from federation.core.detect import finding_points, shipped_points
from federation.core.detection_plan import DETECTION_RUNS_MEASUREMENT, DetectionPlan
from federation.core.influxql import quote_ident
from federation.core.lineprotocol import serialize
from federation.core.plan import AggregationPlan
from federation.core.points import Point
from federation.core.windows import windows_between
from federation.devstack.kapacitord import KapacitorServer
from federation.devstack.localstack import LocalStack
from federation.devstack.processes import free_port
from federation.influx import InfluxClient

pytestmark = pytest.mark.kapacitor

DC = "dub1"
SECOND = 10**9
HOUR = 3600 * SECOND


def token(dc: str) -> str:
    return f"agent-secret-{dc}"


@contextlib.contextmanager
def serve_coordinator(
    config: FederationConfig, central_url: str, port: int, track_from_ns: int
) -> Iterator[Coordinator]:
    """The real coordinator (gateway + Agent API) on loopback, on the system clock."""
    with InfluxClient(central_url) as central:
        ensure_central(config, central)
    ledger = open_ledger(config.fleet.central.ledger_url)
    tokens = Tokens({dc: token(dc) for dc in config.fleet.dcs}, "reader-secret")
    coordinator = Coordinator(
        config, ledger, tokens, settings=CoordinatorSettings(verify_settle_ns=0)
    )
    coordinator.sync(track_from_ns=track_from_ns)
    app = build_app(coordinator, central_url=central_url)
    server = uvicorn.Server(
        uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning", access_log=False)
    )
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    try:
        deadline = time.monotonic() + 10
        while not server.started:
            if time.monotonic() > deadline:
                pytest.fail("the coordinator did not start")
            time.sleep(0.02)
        yield coordinator
    finally:
        server.should_exit = True
        thread.join(10)
        ledger.close()


def write_fleet(
    config_dir: Path, dc_url: str, kapacitor_url: str, central_url: str, coordinator_url: str
) -> FederationConfig:
    """Point the example fleet's DC dub1 and central at the local servers (no credentials)."""
    path = config_dir / "fleet.yaml"
    data = yaml.safe_load(path.read_text())
    data["central"]["influxdb"] = {"url": central_url}
    data["central"]["coordinator_url"] = coordinator_url
    data["central"]["ledger_url"] = f"sqlite:///{config_dir / 'ledger.sqlite'}"
    data["dcs"][DC]["influxdb"] = {"url": dc_url}
    data["dcs"][DC]["kapacitor"] = {"url": kapacitor_url}
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return load_config(config_dir)


def write_raw(client: InfluxClient, plan: AggregationPlan, hours: list[int], hour0: int) -> None:
    """Raw events in the given hours (relative to hour0); personal data only in fields."""
    rng = random.Random(hour0)
    points = [
        Point(
            plan.measurement,
            {
                "direction": rng.choice(["in", "out"]),
                "mailer": rng.choice(["m1", "m2"]),
                "customer": rng.choice(["c1", "c2", "c3"]),
                "seq": str(i),
            },
            {
                plan.value_field: round(rng.lognormvariate(4, 1), 3),
                "sender": "alice@example.com",
                "recipient": "bob@example.org",
                "client_ip": "192.0.2.17",
            },
            hour0 + h * HOUR + rng.randrange(HOUR),
        )
        for h in hours
        for i in range(60)
    ]
    client.write(serialize(points), database=plan.database, retention_policy=plan.retention_policy)


Key = tuple[str, int, tuple[tuple[str, str], ...]]


def central_state(
    central: InfluxClient, database: str, rp: str, measurement: str, start_ns: int, end_ns: int
) -> dict[Key, dict[str, Any]]:
    """Every point of `measurement` at central in [start, end): fields without `run`."""
    query = (
        f"SELECT * FROM {quote_ident(database)}.{quote_ident(rp)}.{quote_ident(measurement)} "
        f"WHERE time >= {start_ns} AND time < {end_ns} GROUP BY *"
    )
    state: dict[Key, dict[str, Any]] = {}
    for series in central.query(query, database=database):
        tags = tuple(sorted(series.tags.items()))
        for values in series.values:
            row = dict(zip(series.columns, values, strict=True))
            time_ns = int(row.pop("time"))
            fields = {k: v for k, v in row.items() if v is not None and k != "run"}
            state[(measurement, time_ns, tags)] = fields
    return state


def expected_state(points: list[Point]) -> dict[Key, dict[str, Any]]:
    return {
        (p.measurement, p.time_ns, tuple(sorted(p.tags.items()))): {
            k: v for k, v in p.fields.items() if k != "run"
        }
        for p in points
    }


def last_enabled(port: int) -> dict[str, str]:
    """When each task was last enabled, as Kapacitor reports it."""
    with httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=10) as http:
        answer = http.get("/kapacitor/v1/tasks", params={"fields": "last-enabled"})
        answer.raise_for_status()
        return {t["id"]: t["last-enabled"] for t in answer.json()["tasks"]}


def test_replayed_windows_at_central_equal_the_embedded_executor(
    kapacitord_binary: str,
    localstack: LocalStack,
    config_dir: Path,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    suffix = f"{os.getpid()}-{time.monotonic_ns()}"
    dc_influxd = localstack.influxd(f"kapacitord-dc-{suffix}")
    central_influxd = localstack.influxd(f"kapacitord-central-{suffix}")
    coordinator_port, kapacitor_port = free_port(), free_port()
    coordinator_url = f"http://127.0.0.1:{coordinator_port}"
    config = write_fleet(
        config_dir,
        dc_influxd.url,
        f"http://127.0.0.1:{kapacitor_port}",
        central_influxd.url,
        coordinator_url,
    )
    for name, dc_config in config.fleet.dcs.items():
        monkeypatch.setenv(dc_config.agent_token_env, token(name))

    now = time.time_ns()
    hour0 = now - now % HOUR  # the current hour: the replayed range ends an hour before it
    kapacitord = KapacitorServer(
        kapacitord_binary,
        tmp_path / "kapacitor",
        DC,
        dc_influxd.url,
        coordinator_url,
        token(DC),
        federation_command(),
        port=kapacitor_port,
    )
    with serve_coordinator(config, central_influxd.url, coordinator_port, hour0 - 24 * HOUR) as co:
        kapacitord.start()
        settings = AgentSettings(mode="kapacitor", poll_interval_s=0.1)
        agent, stop = build_agent(config, DC, clock=SystemClock(), settings=settings)
        try:
            with InfluxClient(dc_influxd.url) as dc:
                dc.create_database(config.dc(DC).raw_database)
            agent.preflight()
            agent.reconcile()  # the raw retention policies, then the tasks
            assert agent.mode.name == "kapacitor"
            health = agent.mode.health()
            assert health and all(h.healthy for h in health), health
            # Reconciling unchanged plans again leaves the running tasks alone (no reload).
            enabled_at = last_enabled(kapacitor_port)
            agent.reconcile()
            assert last_enabled(kapacitor_port) == enabled_at

            # Every aggregation's task, and one detection's: its findings and run points
            # stay in the DC, its counts go to central.
            aggregations = [p for p in agent.plans.values() if isinstance(p, AggregationPlan)]
            detection = agent.plans["recipients_per_sender"]
            assert isinstance(detection, DetectionPlan)
            plans = [*sorted(aggregations, key=lambda p: p.aggregation), detection]
            expected_local: dict[Key, dict[str, Any]] = {}
            with InfluxClient(dc_influxd.url) as dc:
                # Hours -5, -4 and -2 hold raw data; -3 is empty and gets a zero manifest.
                write_raw(dc, aggregations[0], [-5, -4, -2], hour0)
                start, end = hour0 - 5 * HOUR, hour0 - HOUR
                expected: dict[Key, dict[str, Any]] = {}
                run_ids = RunIds(SystemClock())
                for plan in plans:
                    windows = windows_between(start, end, plan.window_ns)
                    result = agent.mode.run_windows(plan, windows, stop)
                    assert result.ok, result.summary()
                    assert [w.events for w in result.windows] == [60, 60, 0, 60]
                    for window in windows:
                        if isinstance(plan, DetectionPlan):
                            detected = read_detection_window(dc, plan, window)
                            expected.update(expected_state(shipped_points(plan, detected, run=0)))
                            kept = finding_points(plan, detected, run=0)
                            expected_local.update(expected_state(kept))
                            continue
                        computed = compute_window(dc, plan, window, run_ids=run_ids)
                        expected.update(expected_state(computed.points))

            database = config.fleet.central.database
            rp = co.central_rp(DC)
            measurements = sorted({key[0] for key in expected})
            actual: dict[Key, dict[str, Any]] = {}
            # influxDBOut buffers its writes (flushed every 10 s by default): wait for them.
            deadline = time.monotonic() + 90
            with InfluxClient(central_influxd.url) as central:
                while time.monotonic() < deadline:
                    actual = {}
                    for measurement in measurements:
                        actual.update(central_state(central, database, rp, measurement, start, end))
                    # The other detections' tasks run too, and their empty-window checks
                    # found hour -2 empty before the test wrote its raw data.
                    names = {("aggregation", p.aggregation) for p in plans}
                    actual = {k: v for k, v in actual.items() if not set(k[2]).isdisjoint(names) or k[0] != "federation_manifest"}  # fmt: skip
                    if actual == expected:
                        break
                    time.sleep(1)
            assert sorted(actual) == sorted(expected)
            assert actual == expected
            with InfluxClient(dc_influxd.url) as dc:
                local = central_state(
                    dc, detection.database, detection.retention_policy,
                    DETECTION_RUNS_MEASUREMENT, start, end,
                )  # fmt: skip
            mine = ("detection", detection.detection)
            assert {k: v for k, v in local.items() if mine in k[2]} == expected_local

            # The temporary replay tasks are gone; the live tasks still run, detections too.
            assert set(last_enabled(kapacitor_port)) == {p.task_id for p in agent.plans.values()}
            assert all(h.healthy for h in agent.mode.health())
        finally:
            stop.set()
            agent.close()
            kapacitord.stop()
