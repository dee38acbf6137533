"""Agent clocks against the coordinator's: the skew each report shows, where it is reported,
and the bound it puts on what the gateway takes as an ended window; running backfills in the
status report."""

from __future__ import annotations

from starlette.testclient import TestClient

from federation.cli._status_view import status_renderables
from federation.config import FederationConfig
from federation.coordinator.ledger import Ledger
from federation.coordinator.service import Coordinator
from federation.coordinator.status import StatusReport, status_report
from federation.core.clock import FakeClock

from .helpers import HOUR, READER, body, central_params, plan_of, token, window_batch

READ = {"Authorization": f"Bearer {READER}"}
DC = "dub1"


def agent(dc: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token(dc)}"}


def report(client: TestClient, config: FederationConfig, dc: str, clock_ns: object) -> int:
    version = plan_of(config, dc).version
    body_ = {
        "mode": "embedded",
        "plans": [
            {"aggregation": "delivery_direction", "version": version, "healthy": True, "detail": ""}
        ],
        "retention": {},
        "agent_version": "0.1.0",
        "clock_ns": clock_ns,
    }
    return client.post(f"/api/v1/dcs/{dc}/report", json=body_, headers=agent(dc)).status_code


def write(client: TestClient, config: FederationConfig, start_ns: int) -> object:
    points = window_batch(plan_of(config, DC), start_ns)
    return client.post(
        "/write",
        params=central_params(config, DC),
        content=body(points),
        headers={"Authorization": f"Bearer {token(DC)}"},
    )


def test_an_agent_clock_hours_behind_is_reported_and_bounds_the_gateway(
    client: TestClient, config: FederationConfig, ledger: Ledger, clock: FakeClock, hour0: int
) -> None:
    # The coordinator's clock runs 5 h ahead of dub1's: by its own clock the hour before
    # hour0 + 5h has ended, but at dub1 it has not even begun.
    clock.set(hour0 + 5 * HOUR)
    assert report(client, config, DC, "soon") == 400
    assert report(client, config, DC, hour0) == 204
    assert report(client, config, "lon1", clock.now_ns() - 10**9) == 204

    refused = write(client, config, hour0 + 4 * HOUR)
    assert refused.status_code == 400  # type: ignore[attr-defined]
    assert refused.json()["rule"] == "timestamp"  # type: ignore[attr-defined]
    assert "the DC's" in refused.json()["error"]  # type: ignore[attr-defined]
    # A window that ended by both clocks is taken.
    accepted = write(client, config, hour0 - HOUR)
    assert accepted.status_code == 204, accepted.text  # type: ignore[attr-defined]

    metrics = client.get("/metrics", headers=READ).text
    assert 'federation_agent_clock_skew_seconds{dc="dub1"} -18000.0' in metrics
    assert 'federation_agent_clock_skew_large{dc="dub1"} 1' in metrics
    assert 'federation_agent_clock_skew_large{dc="lon1"} 0' in metrics

    status = StatusReport.from_dict(client.get("/api/v1/status", headers=READ).json())
    skews = {c.dc: (c.skew_ns, c.large) for c in status.clocks}
    assert skews == {"dub1": (-5 * HOUR, True), "lon1": (-(10**9), False)}
    text = "\n".join(str(r) for r in status_renderables(status))
    assert "clock: dub1's agent is 5h behind the coordinator" in text
    assert "lon1's agent" not in text


def test_running_backfills_are_listed_with_their_lease_age(
    client: TestClient, coordinator: Coordinator, config: FederationConfig, clock: FakeClock,
    hour0: int,
) -> None:  # fmt: skip
    from federation.coordinator.backfills import request_backfill

    clock.set(hour0 + 3 * HOUR)
    (queued,) = request_backfill(
        coordinator.ledger, config, "tor1", "delivery_direction", hour0, hour0 + HOUR,
        clock.now_ns(),
    )  # fmt: skip
    assert status_report(coordinator.ledger, config, clock.now_ns()).backfills == []
    leased = client.get("/api/v1/dcs/tor1/backfills", headers=agent("tor1")).json()["backfills"]
    assert [b["id"] for b in leased] == [queued.id]
    clock.advance(90 * 10**9)

    status = StatusReport.from_dict(client.get("/api/v1/status", headers=READ).json())
    (running,) = status.backfills
    assert (running.id, running.dc, running.attempts) == (queued.id, "tor1", 1)
    assert status.now_ns - running.leased_ns == 90 * 10**9
    text = "\n".join(str(r) for r in status_renderables(status))
    assert f"#{queued.id} tor1 delivery_direction" in text
    assert "leased 90s ago (attempt 1)" in text
