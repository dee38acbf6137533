"""A query a real kapacitord 1.5.7 cannot run: the task stays `executing` with an empty `error`,
only the query node's `errors` counter grows, and Kapacitor's own text is only in its log, which
the mode follows (`kapacitor_logs.ErrorLog`) to say what is wrong."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable

import pytest
from kapacitor_fixture import StartKapacitord

from federation.agent.kapacitor_mode import KapacitorMode
from federation.agent.modes import PlanHealth
from federation.core.clock import SystemClock
from federation.devstack.localstack import InfluxServer
from federation.influx import InfluxClient
from federation.kapacitor.client import KapacitorClient
from federation.kapacitor.logs import ErrorLog, LoggedError

from .conftest import SECOND, make_plan
from .test_kapacitor_mode import TEMPLATES, RecordingSink

pytestmark = pytest.mark.kapacitor


def wait_health(mode: KapacitorMode, accept: Callable[[PlanHealth], bool], what: str) -> PlanHealth:
    deadline = time.monotonic() + 60
    while True:
        (health,) = mode.health()
        if accept(health):
            return health
        assert time.monotonic() < deadline, f"timed out waiting for {what}: {health}"
        time.sleep(0.5)


def test_a_query_kapacitor_cannot_run_is_unhealthy_with_kapacitors_own_error(
    start_kapacitord: StartKapacitord, dc: InfluxClient, dc_influxd: InfluxServer
) -> None:
    server = start_kapacitord("dc1", influx_url=dc_influxd.url)
    plan = make_plan(window_ns=2 * SECOND, lookback_ns=2 * SECOND)
    with KapacitorClient(server.url, timeout=60) as client:
        error_log = ErrorLog(server.url).start()
        mode = KapacitorMode(
            client, dc="dc1", templates_dir=TEMPLATES, gateway_cluster="federation_gateway",
            source=dc, sink=RecordingSink([]), clock=SystemClock(), stop=threading.Event(),
            error_log=error_log,
        )  # fmt: skip
        try:
            mode.apply([plan])
            wait_health(mode, lambda h: h.healthy, "the task to run")
            # The raw retention policy goes away under the task.
            dc.execute('DROP RETENTION POLICY "raw" ON "mail"')
            health = wait_health(mode, lambda h: not h.healthy, "the failed queries")
            task = client.task_health(plan.task_id)
            # Kapacitor 1.5.7 says nothing on the task: only the query node's counter grows.
            assert task.executing and task.error == ""
            assert task.nodes["query1"].errors > 0
            assert health.detail.startswith(f"task {plan.task_id}: ")
            assert "failed queries and 0 failed writes since the previous check" in health.detail
            assert "Kapacitor logged at " in health.detail
            assert health.detail.endswith(
                "error executing query: retention policy not found: raw"
            ), health.detail
            # Fixed: the errors stop growing, and the plan is healthy again.
            dc.execute('CREATE RETENTION POLICY "raw" ON "mail" DURATION 30d REPLICATION 1 DEFAULT')
            wait_health(mode, lambda h: h.healthy, "the task to run again")
        finally:
            mode.close()


def test_a_log_line_is_read_as_the_task_error_it_holds() -> None:
    line = (
        '{"ts":"2026-12-07T14:37:28.002Z","lvl":"error","msg":"error executing query",'
        '"service":"kapacitor","task_master":"main","task":"t1","node":"log2",'
        '"err":"retention policy not found: raw"}'
    )
    assert LoggedError.from_line(line) == LoggedError(
        "t1", "log2", "error executing query: retention policy not found: raw",
        "2026-12-07T14:37:28.002Z",
    )  # fmt: skip
    assert LoggedError.from_line('{"lvl":"error","msg":"no task"}') is None
    assert LoggedError.from_line("not json") is None
