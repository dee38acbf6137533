"""Rollouts on a DC with a real kapacitord (named by FEDERATION_KAPACITORD).

The coordinator's ledger decides what the DC's agent deploys: an aggregation added to the config
reaches the DC's Kapacitor only through a rollout, a rollback deletes its task again, and an
ended window without raw data is confirmed empty by the agent while the live tasks run.
"""

from __future__ import annotations

import os
import time
from pathlib import Path

import pytest
from kapacitor_fixture import UDF_TIMEOUT, federation_command
from test_kapacitord import DC, HOUR, serve_coordinator, token, write_fleet

from federation.agent import AgentSettings, build_agent
from federation.coordinator.app import run_verification
from federation.coordinator.reload import reload_config
from federation.coordinator.rollouts import rollback_rollout, start_rollout
from federation.core.clock import SystemClock
from federation.devstack.kapacitord import KapacitorServer
from federation.devstack.localstack import LocalStack
from federation.devstack.processes import free_port
from federation.errors import FederationError
from federation.influx import InfluxClient
from federation.kapacitor.client import KapacitorClient

pytestmark = pytest.mark.kapacitor

NEW = "delivery_size"


def owned_tasks(url: str) -> dict[str, bool]:
    """federation's tasks in the Kapacitor at `url`: id -> executing."""
    with KapacitorClient(url) as client:
        return {
            t.id: t.executing
            for t in client.list_tasks(pattern="fed-*", fields=("status", "executing"))
        }


def test_an_added_aggregation_reaches_kapacitor_only_through_a_rollout(
    kapacitord_binary: str,
    localstack: LocalStack,
    config_dir: Path,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    suffix = f"{os.getpid()}-{time.monotonic_ns()}"
    dc_influxd = localstack.influxd(f"kapacitord-rollout-dc-{suffix}")
    central_influxd = localstack.influxd(f"kapacitord-rollout-central-{suffix}")
    coordinator_port, kapacitor_port = free_port(), free_port()
    coordinator_url = f"http://127.0.0.1:{coordinator_port}"
    kapacitor_url = f"http://127.0.0.1:{kapacitor_port}"
    # The aggregations alone: the agent deploys detections as tasks too (`test_kapacitord`),
    # each a UDF process more to start on this kapacitord for nothing this test looks at.
    for detection in (config_dir / "tickscripts").glob("*.yaml"):
        if "kind: detection" in detection.read_text():
            detection.unlink()
    config = write_fleet(
        config_dir, dc_influxd.url, kapacitor_url, central_influxd.url, coordinator_url
    )
    assert not config.detections
    for name, dc_config in config.fleet.dcs.items():
        monkeypatch.setenv(dc_config.agent_token_env, token(name))
    now = time.time_ns()
    hour0 = now - now % HOUR
    kapacitord = KapacitorServer(
        kapacitord_binary, tmp_path / "kapacitor", DC, dc_influxd.url, coordinator_url,
        token(DC), federation_command(), port=kapacitor_port, udf_timeout=UDF_TIMEOUT,
    )  # fmt: skip
    with serve_coordinator(config, central_influxd.url, coordinator_port, hour0 - 4 * HOUR) as co:
        kapacitord.start()
        settings = AgentSettings(mode="kapacitor", poll_interval_s=3600)
        agent, stop = build_agent(config, DC, clock=SystemClock(), settings=settings)
        try:
            with InfluxClient(dc_influxd.url) as dc:
                dc.create_database(config.dc(DC).raw_database)
            agent.preflight()
            agent.reconcile()
            before = owned_tasks(kapacitor_url)
            assert set(before) == {f"fed-{a}-{DC}" for a in config.aggregations}

            (config_dir / "tickscripts" / f"{NEW}.yaml").write_text(
                f"name: {NEW}\n"
                "source: {measurement: delivery, field: latency_ms, unit: ms}\n"
                "dimensions: [mailer]\nwindow: 1h\nlookback: 2h\npercentiles: [50, 99]\n"
                "accuracy: 0.01\n"
            )
            reload_config(co)
            agent.reconcile()
            assert owned_tasks(kapacitor_url) == before, "a reload alone deploys nothing"

            step = start_rollout(co.ledger, co.config, time.time_ns(), canary=DC)
            assert [(m.dc, m.aggregation, m.change) for m in step.moved] == [(DC, NEW, "added")]
            co.refresh_plans()
            agent.reconcile()
            assert owned_tasks(kapacitor_url) == {**before, f"fed-{NEW}-{DC}": True}

            # An ended window without raw data is confirmed empty by the agent: the live task
            # emits nothing for it.
            shipped = agent.mode.check_windows(stop).shipped  # type: ignore[attr-defined]
            assert {
                (r.window.start_ns, r.shipped) for r in shipped if r.window.size_ns == HOUR
            } >= {(hour0 - HOUR, True)}
            with InfluxClient(central_influxd.url) as central:
                run_verification(co, central)
            with co.ledger.session() as session:
                from federation.coordinator.ledger import WindowRow

                row = (
                    session.query(WindowRow)
                    .filter_by(dc=DC, aggregation=NEW, start_ns=hour0 - HOUR)
                    .one()
                )
                assert row.state == "empty", row.reason

            undone = rollback_rollout(co.ledger, co.config, time.time_ns())
            assert [(m.aggregation, m.change) for m in undone.moved] == [(NEW, "removed")]
            # Kapacitor answers a DELETE only once the task's UDF processes stopped, which on a
            # loaded machine can outlast the client's timeout: the agent then tries again at
            # its next reconcile, as it would in production.
            deadline = time.monotonic() + 120
            while True:
                try:
                    agent.reconcile()
                    break
                except FederationError:
                    assert time.monotonic() < deadline, "the task was never deleted"
            assert owned_tasks(kapacitor_url) == before
        finally:
            stop.set()
            agent.close()
            kapacitord.stop()
