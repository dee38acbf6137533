"""What a verified window does not say by itself: a refused re-shipment, events withheld for a
personal-looking dimension value, a backfill given up on. Each shows in status and /metrics."""

from __future__ import annotations

import dataclasses

from starlette.testclient import TestClient

from federation.config import FederationConfig
from federation.coordinator.backfills import (
    lease_backfills,
    record_backfill_result,
    request_backfill,
)
from federation.coordinator.ledger import Ledger
from federation.coordinator.planner import PlannerSettings
from federation.coordinator.status import DcStatus, StatusReport, status_report
from federation.coordinator.tracking import verify_shipped
from federation.core.plan import MANIFEST_MEASUREMENT
from federation.core.points import Point
from federation.influx import InfluxClient

from .helpers import HOUR, body, plan_of, window_batch
from .test_gateway import DC, ledger_windows, with_tags, write
from .test_metrics import _sample

READER = {"Authorization": "Bearer reader-secret"}


def _dc_status(ledger: Ledger, config: FederationConfig, now_ns: int, aggregation: str) -> DcStatus:
    report = status_report(ledger, config, now_ns, aggregation=aggregation, dc=DC)
    # The API's JSON form carries the notices too.
    (agg,) = StatusReport.from_dict(report.to_dict()).aggregations
    (status,) = agg.dcs
    return status


def test_a_refused_reshipment_of_a_verified_window_is_shown_until_one_is_accepted(
    client: TestClient, config: FederationConfig, influx: InfluxClient, ledger: Ledger, hour0: int
) -> None:
    plan = plan_of(config, DC)
    start = hour0 - HOUR
    assert write(client, config, body(window_batch(plan, start, run=1))).status_code == 204  # type: ignore[attr-defined]
    verify_shipped(ledger, config, influx, hour0)
    # Late events arrive; the re-run carries an address in a dimension tag: refused whole.
    rerun = window_batch(plan, start, run=2, events=60)
    rerun[0] = with_tags(rerun[0], direction="jane.doe@example.com")
    assert write(client, config, body(rerun)).status_code == 400  # type: ignore[attr-defined]

    (row,) = ledger_windows(ledger)
    assert row.state == "verified" and row.run == 1  # central keeps the older, complete data
    status = _dc_status(ledger, config, hour0, plan.aggregation)
    (notice,) = status.notices
    assert notice.start_ns == start and notice.state == "verified"
    assert "refused a shipment (rule personal-data, key direction)" in notice.reason
    assert "jane.doe" not in notice.reason
    metrics = client.get("/metrics", headers=READER).text
    labels = {"dc": DC, "aggregation": plan.aggregation}
    assert _sample(metrics, "federation_windows_refused", **labels) == 1
    latest = _sample(metrics, "federation_windows_refused_latest_start_seconds", **labels)
    assert latest == start / 1e9

    accepted = window_batch(plan, start, run=3, events=60)
    assert write(client, config, body(accepted)).status_code == 204  # type: ignore[attr-defined]
    assert _dc_status(ledger, config, hour0, plan.aggregation).notices == []
    assert 'federation_windows_refused{dc="' not in client.get("/metrics", headers=READER).text


def test_events_withheld_for_a_personal_dimension_value_are_shown_on_a_verified_window(
    client: TestClient, config: FederationConfig, influx: InfluxClient, ledger: Ledger, hour0: int
) -> None:
    plan = plan_of(config, DC)
    start = hour0 - HOUR
    points = window_batch(plan, start, events=40)
    manifest = points[-1]
    assert manifest.measurement == MANIFEST_MEASUREMENT
    # As an executor writes it when 7 of the window's events were in a group keyed by an address.
    fields = dict(manifest.fields)
    fields["events"] = int(fields["events"]) + 7
    fields["suppressed_events"] = int(fields["suppressed_events"]) + 7
    fields["personal_value_events"] = 7
    points[-1] = dataclasses.replace(manifest, fields=fields)
    assert write(client, config, body(points)).status_code == 204  # type: ignore[attr-defined]
    verify_shipped(ledger, config, influx, hour0)

    (row,) = ledger_windows(ledger)
    assert row.state == "verified" and row.personal_value_events == 7
    status = _dc_status(ledger, config, hour0, plan.aggregation)
    assert status.problems == []
    (notice,) = status.notices
    assert notice.state == "verified"
    assert notice.reason.startswith("7 event(s) withheld: a dimension value looked like personal")
    metrics = client.get("/metrics", headers=READER).text
    labels = {"dc": DC, "aggregation": plan.aggregation}
    assert _sample(metrics, "federation_windows_personal_values", **labels) == 1


def test_a_manifest_claiming_more_personal_than_suppressed_events_is_refused(
    client: TestClient, config: FederationConfig, hour0: int
) -> None:
    points = window_batch(plan_of(config, DC), hour0 - HOUR)
    manifest: Point = points[-1]
    points[-1] = dataclasses.replace(
        manifest, fields={**manifest.fields, "personal_value_events": 1, "suppressed_events": 0}
    )
    response = write(client, config, body(points))
    assert response.status_code == 400  # type: ignore[attr-defined]
    assert response.json()["key"] == "personal_value_events"  # type: ignore[attr-defined]


def test_a_backfill_given_up_on_is_shown_with_its_last_error(
    client: TestClient, config: FederationConfig, ledger: Ledger, hour0: int
) -> None:
    plan = plan_of(config, DC)
    start = hour0 - 3 * HOUR
    (request,) = request_backfill(ledger, config, DC, plan.aggregation, start, hour0, hour0)
    settings = PlannerSettings(max_attempts=1)
    assert [r.id for r in lease_backfills(ledger, DC, hour0, settings=settings)] == [request.id]
    error = "shipment refused by the gateway (rule personal-data, key customer)"
    record_backfill_result(
        ledger, DC, request.id, {"status": "failed", "error": error}, hour0, settings=settings
    )
    status = _dc_status(ledger, config, hour0, plan.aggregation)
    backfill = [n for n in status.notices if n.state == "backfill-failed"]
    assert len(backfill) == 1
    assert f"backfill #{request.id}" in backfill[0].reason and error in backfill[0].reason

    # A later request over the same range that finished makes the failure history.
    (again,) = request_backfill(ledger, config, DC, plan.aggregation, start, hour0, hour0)
    lease_backfills(ledger, DC, hour0, settings=settings)
    record_backfill_result(ledger, DC, again.id, {"status": "done", "windows": 3}, hour0)
    status = _dc_status(ledger, config, hour0, plan.aggregation)
    assert not [n for n in status.notices if n.state == "backfill-failed"]
