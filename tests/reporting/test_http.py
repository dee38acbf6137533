"""The report routes, mounted in a small Starlette app: the same figures as the library."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.testclient import TestClient

from federation.config import FederationConfig
from federation.config.resolve import resolve_plan
from federation.core.clock import FakeClock, parse_rfc3339
from federation.core.durations import HOUR_NS
from federation.influx import InfluxClient
from federation.reporting import percentile_report, sla_report, worst_report
from federation.reporting.http import routes

from .data import Raw, copy_config, prepare_central, ship_window, write_points

AGG = "delivery_latency"
TOKEN = "reader-secret"


async def authorize(request: Request) -> None:
    if request.headers.get("authorization") != f"Bearer {TOKEN}":
        raise HTTPException(401, "reader token required")


@pytest.fixture
def setup(influx: InfluxClient, tmp_path: Path) -> Iterator[tuple[FederationConfig, TestClient]]:
    config = copy_config(tmp_path / "config")
    prepare_central(influx, config)
    day = parse_rfc3339("2026-11-16T00:00:00Z")
    rng = np.random.default_rng(16)
    for dc in ("dub1", "tor1"):
        plan = resolve_plan(config, AGG, dc)
        points = []
        for i in range(48):
            points += ship_window(plan, day + i * HOUR_NS, rng, Raw())
        write_points(influx, plan, points)
    clock = FakeClock(day + 48 * HOUR_NS)
    app = Starlette(routes=routes(config, central=influx, authorize=authorize, clock=clock))
    with TestClient(app) as client:
        yield config, client


def _get(client: TestClient, path: str) -> object:
    response = client.get(path, headers={"Authorization": f"Bearer {TOKEN}"})
    assert response.status_code == 200, response.text
    return response.json()


def test_routes_answer_the_library_reports_as_json(
    setup: tuple[FederationConfig, TestClient], influx: InfluxClient
) -> None:
    config, client = setup
    base = f"/api/v1/reports/{AGG}"
    got = _get(client, f"{base}/percentiles?period=day&from=2026-11-16&to=2026-11-17&by=dc")
    expected = percentile_report(
        config, influx, AGG, period="day", from_date="2026-11-16", to_date="2026-11-17",
        by=["dc"],
    )  # fmt: skip
    assert got == json.loads(json.dumps(expected.to_json()))
    assert [p["period"] for p in got["periods"]] == ["2026-11-16", "2026-11-17"]  # type: ignore[index]

    rows = _get(client, f"{base}/percentiles?period=day&from=2026-11-16&by=dc&shape=rows")
    assert isinstance(rows, list) and {r["dc"] for r in rows} == {"dub1", "tor1"}
    assert all(r["start"] == "2026-11-16T00:00:00Z" for r in rows)

    got = _get(client, f"{base}/sla?threshold=0.5s&period=day&from=2026-11-16&by=customer")
    expected_sla = sla_report(
        config, influx, AGG, threshold=500.0, period="day", from_date="2026-11-16",
        to_date="2026-11-16", by=["customer"],
    )  # fmt: skip
    assert got == json.loads(json.dumps(expected_sla.to_json()))

    got = _get(client, f"{base}/worst?last=24h&by=customer&top=2&metric=p95")
    expected_worst = worst_report(
        config, influx, AGG, last_ns=24 * HOUR_NS, now_ns=parse_rfc3339("2026-11-18T00:00:00Z"),
        by=["customer"], top=2, metric="p95",
    )  # fmt: skip
    assert got == json.loads(json.dumps(expected_worst.to_json()))
    assert len(got["rows"]) == 2  # type: ignore[index]


def test_routes_refuse_without_the_reader_token_and_explain_bad_parameters(
    setup: tuple[FederationConfig, TestClient],
) -> None:
    _, client = setup
    base = f"/api/v1/reports/{AGG}"
    assert client.get(f"{base}/percentiles?from=2026-11-16").status_code == 401
    headers = {"Authorization": f"Bearer {TOKEN}"}
    response = client.get(f"{base}/percentiles?period=day", headers=headers)
    assert response.status_code == 400
    assert response.json() == {"error": "query parameter 'from' is required"}
    response = client.get(f"{base}/sla?from=2026-11-16&threshold=soon", headers=headers)
    assert response.status_code == 400 and "threshold 'soon'" in response.json()["error"]
    response = client.get("/api/v1/reports/nope/worst", headers=headers)
    assert response.status_code == 400 and "unknown aggregation" in response.json()["error"]
