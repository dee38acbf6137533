"""Deploying rendered tasks into a Kapacitor: each test runs against the emulator and against a
real kapacitord (the `kapacitor` fixture), except where it needs a fault only the emulator
injects."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from kapacitor_fixture import STALE, KapacitorUnderTest

from federation.config import load_config
from federation.core.plan import AggregationPlan
from federation.devstack.kapacitor_emulator import KapacitorEmulator
from federation.kapacitor.client import KapacitorClient
from federation.kapacitor.deploy import (
    DeploymentError,
    TaskSnapshot,
    apply_tasks,
    deployed_tasks,
    script_version,
    task_health,
)
from federation.tickscript.render import render_all

REPO = Path(__file__).resolve().parent.parent


def desired(dc: str = "dub1") -> list[TaskSnapshot]:
    """The DC's aggregation tasks (the detections' would only add UDF processes here)."""
    tasks = render_all(load_config(REPO), dc=dc)
    return [TaskSnapshot.of_rendered(t) for t in tasks if isinstance(t.plan, AggregationPlan)]


@pytest.fixture
def client(kapacitor: KapacitorUnderTest) -> Iterator[KapacitorClient]:
    with kapacitor.client() as client:
        yield client


FOREIGN = "stream\n    |from()\n        .measurement('cpu')\n    |log()\n"


def test_first_deployment_creates_and_runs_every_task(
    client: KapacitorClient, kapacitor: KapacitorUnderTest
) -> None:
    tasks = desired()
    result = apply_tasks(client, "dub1", tasks)
    assert [c.action for c in result.changes] == ["create", "create"]
    for task in tasks:
        assert kapacitor.running_script(task.id) == task.script
        assert result.health[task.id].executing
    assert apply_tasks(client, "dub1", tasks).changed is False


def test_update_reloads_the_running_script(
    client: KapacitorClient, kapacitor: KapacitorUnderTest
) -> None:
    old = desired()
    apply_tasks(client, "dub1", old)
    new = [
        TaskSnapshot(t.id, t.script.replace(".accuracy(0.01)", ".accuracy(0.02)"), t.dbrps, True)
        for t in old
    ]
    # A PATCH alone leaves the running task on its old script: that is why deploying reloads.
    client.update_task(new[-1].id, script=new[-1].script)
    assert kapacitor.running_script(new[-1].id) == STALE
    result = apply_tasks(client, "dub1", new)
    assert {c.action for c in result.changes} == {"update"}
    assert all(kapacitor.running_script(t.id) == t.script for t in new)
    assert "-        .accuracy(0.01)" in result.changes[0].diff()


def test_removed_plans_are_deleted_but_foreign_tasks_are_untouched(client: KapacitorClient) -> None:
    client.create_task("cpu_alert", FOREIGN, [("telegraf", "autogen")], type="stream")
    client.create_task("fed-delivery_latency-lon1", desired("lon1")[1].script, [])
    apply_tasks(client, "dub1", desired())
    result = apply_tasks(client, "dub1", desired()[:1])
    assert [c.action for c in result.changes] == ["unchanged", "delete"]
    ids = {t.id for t in client.list_tasks()}
    assert {"cpu_alert", "fed-delivery_latency-lon1", "fed-delivery_direction-dub1"} == ids


def test_a_refused_update_restores_the_previous_tasks(client: KapacitorClient) -> None:
    old = desired()
    apply_tasks(client, "dub1", old)
    new = [
        TaskSnapshot(t.id, t.script.replace(".accuracy(0.01)", ".accuracy(0.02)"), t.dbrps, True)
        for t in old
    ]
    new[1] = TaskSnapshot(
        new[1].id, new[1].script.replace(".align()", ".align(", 1), new[1].dbrps, True
    )
    with pytest.raises(DeploymentError, match=r"invalid TICKscript.*previous tasks restored"):
        apply_tasks(client, "dub1", new)
    now = deployed_tasks(client, "dub1")
    assert {t.id: t.script for t in now.values()} == {t.id: t.script for t in old}


def test_a_task_that_fails_to_start_leaves_the_dc_as_it_was(
    client: KapacitorClient, kapacitor: KapacitorUnderTest
) -> None:
    tasks = desired()
    kapacitor.break_udf()
    # Kapacitor accepts the enable; the task then stops with its UDF node's error.
    with pytest.raises(
        DeploymentError,
        match=r"deployed but not running: fedagg\d+: failed to initialize processes the UDF refuses",
    ):
        apply_tasks(client, "dub1", tasks)
    assert deployed_tasks(client, "dub1") == {}


def test_a_task_refused_at_enable_leaves_the_dc_as_it_was() -> None:
    emulator = KapacitorEmulator()
    with KapacitorClient("http://kapacitor.test:9092", transport=emulator.transport()) as client:
        tasks = desired()
        emulator.fail_enable(
            tasks[1].id, "failed to start: no such InfluxDB config federation_gateway"
        )
        with pytest.raises(DeploymentError, match="no such InfluxDB config"):
            apply_tasks(client, "dub1", tasks)
        assert deployed_tasks(client, "dub1") == {}


def test_health_reports_node_errors_and_dead_udf() -> None:
    emulator = KapacitorEmulator()
    client = KapacitorClient("http://kapacitor.test:9092", transport=emulator.transport())
    tasks = desired()
    apply_tasks(client, "dub1", tasks)
    emulator.set_node_stats(tasks[0].id, "influxdb_out4", write_errors=3)
    emulator.fail_task(tasks[1].id, "udf process died")
    health = task_health(client, "dub1")
    assert health[tasks[0].id].write_errors == 3 and not health[tasks[0].id].ok
    assert health[tasks[0].id].problem == (
        "node errors since the task started: influxdb_out4 0 error(s), 3 failed write(s)"
    )
    assert health[tasks[1].id].error == "udf process died" and not health[tasks[1].id].ok


def test_script_version_is_read_from_the_header() -> None:
    task = desired()[0]
    assert script_version(task.script) is not None
    assert script_version(FOREIGN) is None
