"""`federation status` names what a DC's agent reports wrong with the plans it runs."""

from __future__ import annotations

from starlette.testclient import TestClient

from federation.cli._status_view import status_renderables
from federation.config import FederationConfig
from federation.coordinator.status import StatusReport
from federation.core.clock import FakeClock

from .helpers import READER, plan_of, token

STALLED = (
    "task fed-delivery_direction-dub1: UDF branch query4 -> fedagg5 -> influxdb_out6 stalled: "
    "3 queried batch(es) never reached fedagg5 (its branch computes nothing more, though "
    "Kapacitor says the task executes); reloaded the task (disable + enable)"
)


def report(client: TestClient, config: FederationConfig, clock: FakeClock, detail: str) -> None:
    plan = {
        "aggregation": "delivery_direction",
        "version": plan_of(config, "dub1").version,
        "healthy": not detail,
        "detail": detail,
    }
    body = {"mode": "kapacitor", "plans": [plan], "retention": {}, "agent_version": "0.1.0",
            "clock_ns": clock.now_ns()}  # fmt: skip
    answer = client.post(
        "/api/v1/dcs/dub1/report", json=body, headers={"Authorization": f"Bearer {token('dub1')}"}
    )
    assert answer.status_code == 204, answer.text


def status_text(client: TestClient) -> tuple[StatusReport, str]:
    answer = client.get("/api/v1/status", headers={"Authorization": f"Bearer {READER}"})
    status = StatusReport.from_dict(answer.json())
    return status, "\n".join(str(r) for r in status_renderables(status))


def test_status_shows_an_unhealthy_plan_with_the_agents_reason_until_it_recovers(
    client: TestClient, config: FederationConfig, clock: FakeClock
) -> None:
    report(client, config, clock, STALLED)
    status, text = status_text(client)
    assert [(u.dc, u.aggregation) for u in status.unhealthy] == [("dub1", "delivery_direction")]
    assert f"unhealthy on dub1: delivery_direction: {STALLED}" in text

    report(client, config, clock, "")
    status, text = status_text(client)
    assert status.unhealthy == [] and "unhealthy on" not in text
