"""The agent API keeps DCs apart; status, metrics and the page need the reader token."""

from __future__ import annotations

from starlette.testclient import TestClient

from federation.config import FederationConfig
from federation.coordinator.ledger import DcRow, DeploymentRow, Ledger
from federation.coordinator.status import StatusReport
from federation.core.clock import FakeClock
from federation.core.detection_plan import tracked_plan_from_dict

from .helpers import HOUR, READER, plan_of, token


def agent(dc: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token(dc)}"}


READ = {"Authorization": f"Bearer {READER}"}


def test_desired_state_is_served_only_to_its_own_dc(
    client: TestClient, config: FederationConfig
) -> None:
    response = client.get("/api/v1/dcs/dub1/desired", headers=agent("dub1"))
    assert response.status_code == 200
    data = response.json()
    assert data["dc"] == "dub1" and data["region"] == "eu"
    assert {p["aggregation"] for p in data["plans"]} == {*config.aggregations, *config.detections}
    for item in data["plans"]:
        assert tracked_plan_from_dict(item["plan"]).version == item["version"]
    assert data["retention"]["policies"][0]["name"] == "raw"
    assert data["retention"]["allow_shrink"] is False
    assert data["gateway"] == {
        "url": config.fleet.central.coordinator_url,
        "database": "federation",
        "retention_policy": "agg_400d",
    }
    assert client.get("/api/v1/dcs/dub1/desired", headers=agent("fra1")).status_code == 403
    assert client.get("/api/v1/dcs/dub1/desired").status_code == 401
    assert client.get("/api/v1/dcs/dub1/desired", headers=READ).status_code == 401


def test_reports_update_last_seen_and_running_versions(
    client: TestClient, config: FederationConfig, ledger: Ledger, clock: FakeClock
) -> None:
    version = plan_of(config, "fra1").version
    report = {
        "mode": "embedded",
        "plans": [
            {"aggregation": "delivery_direction", "version": version, "healthy": True, "detail": ""}
        ],
        "retention": {},
        "agent_version": "0.1.0",
    }
    assert (
        client.post("/api/v1/dcs/fra1/report", json=report, headers=agent("dub1")).status_code
        == 403
    )
    assert (
        client.post(
            "/api/v1/dcs/fra1/report", json={"mode": "x"}, headers=agent("fra1")
        ).status_code
        == 400
    )
    assert (
        client.post("/api/v1/dcs/fra1/report", json=report, headers=agent("fra1")).status_code
        == 204
    )
    with ledger.session() as session:
        dc = session.get(DcRow, "fra1")
        deployment = session.get(DeploymentRow, ("fra1", "delivery_direction"))
        assert dc is not None and deployment is not None
        assert (dc.last_seen_ns, dc.mode, dc.agent_version) == (clock.now_ns(), "embedded", "0.1.0")
        assert (deployment.running_version, deployment.healthy) == (version, True)
    metrics = client.get("/metrics", headers=READ).text
    assert 'federation_agent_last_seen_seconds{dc="fra1"}' in metrics


def test_backfills_are_leased_and_answered_by_their_own_dc_only(
    client: TestClient, coordinator: object, clock: FakeClock, hour0: int, config: FederationConfig
) -> None:
    from federation.coordinator.planner import PlannerSettings, plan_backfills

    clock.set(hour0 + 12 * HOUR)
    plan_backfills(coordinator.ledger, config, clock.now_ns(), PlannerSettings(max_outstanding=1))  # type: ignore[attr-defined]
    leased = client.get("/api/v1/dcs/tor1/backfills", headers=agent("tor1")).json()["backfills"]
    assert len(leased) == 1
    item = leased[0]
    assert set(item) == {"id", "aggregation", "version", "start_ns", "end_ns"}
    assert client.get("/api/v1/dcs/tor1/backfills", headers=agent("tor1")).json() == {
        "backfills": []
    }
    assert client.get("/api/v1/dcs/tor1/backfills", headers=agent("van1")).status_code == 403
    url = f"/api/v1/backfills/{item['id']}/result"
    result = {"status": "done", "windows": 3, "error": ""}
    assert client.post(url, json=result, headers=agent("van1")).status_code == 403
    assert client.post(url, json=result).status_code == 401
    assert client.post(url, json={"status": "maybe"}, headers=agent("tor1")).status_code == 400
    assert (
        client.post(
            "/api/v1/backfills/424242/result", json=result, headers=agent("tor1")
        ).status_code
        == 404
    )
    assert client.post(url, json=result, headers=agent("tor1")).status_code == 204
    metrics = client.get("/metrics", headers=READ).text
    assert 'federation_backfills{state="done"} 1' in metrics


def test_windows_endpoint_is_per_dc(client: TestClient, hour0: int) -> None:
    response = client.get(
        "/api/v1/dcs/dub1/windows",
        params={"aggregation": "delivery_direction", "since": str(hour0)},
        headers=agent("dub1"),
    )
    assert response.status_code == 200
    assert response.json() == {"windows": [], "latest_shipped_ns": None}
    assert client.get("/api/v1/dcs/dub1/windows", headers=agent("lon1")).status_code == 403


def test_status_metrics_and_page_need_the_reader_token(
    client: TestClient, clock: FakeClock, hour0: int
) -> None:
    clock.set(hour0 + 6 * HOUR)
    for path in ("/api/v1/status", "/metrics"):
        assert client.get(path).status_code == 401
        assert client.get(path, headers=agent("dub1")).status_code == 401
    # A page sends a browser without the reader token to the login form.
    for headers in ({}, agent("dub1")):
        denied = client.get("/", headers=headers, follow_redirects=False)
        assert (denied.status_code, denied.headers["location"]) == (303, "/login?next=%2F")
    response = client.get(
        "/api/v1/status", params={"aggregation": "delivery_direction"}, headers=READ
    )
    assert response.status_code == 200
    report = StatusReport.from_dict(response.json())
    (agg,) = report.aggregations
    assert len(agg.dcs) == 5
    # Tracking started at hour0: 6 windows ended since, the first 3 are past their deadline.
    dub1 = next(d for d in agg.dcs if d.dc == "dub1")
    assert dub1.counts == {"missing": 3, "expected": 3}
    assert [p.state for p in dub1.problems] == ["missing"] * 3
    metrics = client.get("/metrics", headers=READ)
    assert metrics.headers["content-type"].startswith("text/plain")
    for name in (
        "federation_windows{",
        "federation_backfills{",
        "federation_gateway_batches_total",
        "# TYPE federation_gateway_refusals_total counter",
    ):
        assert name in metrics.text
    page = client.get("/", params={"token": READER})
    assert page.status_code == 200 and "delivery_direction" in page.text and "dub1" in page.text
