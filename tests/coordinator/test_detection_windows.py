"""A detection's windows in the ledger: desired and tracked like an aggregation's, verified from
its count point, missing past the deadline and backfilled with look-back by the planner."""

from __future__ import annotations

from pathlib import Path

from sqlalchemy import select
from starlette.testclient import TestClient

from federation.config import FederationConfig, load_config
from federation.config.resolve import resolve_detection
from federation.coordinator.desired import desired_plans, known_plans, sync_desired
from federation.coordinator.ledger import Ledger, TrackingRow, WindowRow
from federation.coordinator.planner import PlannerSettings, plan_backfills
from federation.coordinator.tracking import Manifest, record_manifests, verify_shipped
from federation.core.detect import detect_window, shipped_points
from federation.core.detection_plan import DetectionPlan
from federation.influx import InfluxClient

from .helpers import HOUR, body
from .test_gateway import DC, write

DETECTION = "recipients_per_sender"  # 1h windows, 2h look-back, 1h grace


def states(ledger: Ledger, dc: str = DC) -> dict[int, str]:
    with ledger.session() as session:
        rows = session.execute(
            select(WindowRow.start_ns, WindowRow.state).where(
                WindowRow.dc == dc, WindowRow.aggregation == DETECTION
            )
        ).all()
    return {start: state for start, state in rows}


def test_detections_are_desired_tracked_and_known_to_the_gateway(
    ledger: Ledger, config_dir: Path
) -> None:
    config = load_config(config_dir)
    sync_desired(ledger, config, 10 * HOUR)
    served = [p for p in desired_plans(ledger, config, DC) if isinstance(p, DetectionPlan)]
    assert sorted(p.detection for p in served) == sorted(config.detections)
    assert known_plans(ledger)[(DC, DETECTION)] == [resolve_detection(config, DETECTION, DC)]
    with ledger.session() as session:
        tracking = session.get(TrackingRow, (DC, DETECTION))
        assert tracking is not None and tracking.start_ns == 10 * HOUR


def test_a_shipped_detection_window_is_verified_and_an_empty_one_empty(
    client: TestClient, config: FederationConfig, influx: InfluxClient, ledger: Ledger, hour0: int
) -> None:
    plan = resolve_detection(config, DETECTION, DC)
    # One sender mails 600 distinct recipients, twenty others one each: one finding.
    senders = [f"user{i}@example.org" for i in range(20)] + ["hijacked@example.org"] * 600
    recipients = ["rcpt@example.com"] * 20 + [f"v{i}@example.com" for i in range(600)]
    found = shipped_points(plan, detect_window(plan, hour0 - 2 * HOUR, senders, recipients), run=1)
    response = write(client, config, body(found))
    assert response.status_code == 204, response.text  # type: ignore[attr-defined]
    nothing = shipped_points(plan, detect_window(plan, hour0 - HOUR, [], []), run=1)
    assert [p.measurement for p in nothing] == ["federation_manifest"]
    response = write(client, config, body(nothing))
    assert response.status_code == 204, response.text  # type: ignore[attr-defined]
    assert states(ledger) == {hour0 - 2 * HOUR: "shipped", hour0 - HOUR: "shipped"}

    outcome = verify_shipped(ledger, config, influx, hour0 + HOUR)
    assert (outcome.verified, outcome.empty, outcome.inconsistent) == (1, 1, 0)
    assert states(ledger) == {hour0 - 2 * HOUR: "verified", hour0 - HOUR: "empty"}
    with ledger.session() as session:
        rows = session.execute(select(WindowRow.start_ns, WindowRow.findings, WindowRow.events))
        held = {start: (findings, events) for start, findings, events in rows}
    # The ledger holds the number of findings central's count point carries, nothing more.
    assert held == {hour0 - 2 * HOUR: (1, 620), hour0 - HOUR: (0, 0)}


def test_a_missing_detection_window_is_backfilled_with_its_lookback(
    ledger: Ledger, config_dir: Path
) -> None:
    config = load_config(config_dir)
    t0 = 500_000 * HOUR  # a whole hour
    sync_desired(ledger, config, t0)
    version = resolve_detection(config, DETECTION, DC).version
    for h in range(10):
        if h != 6:
            manifest = Manifest(DC, DETECTION, t0 + h * HOUR, version, 1, 10, 1, 0)
            record_manifests(ledger, [manifest], t0 + 10 * HOUR)
    # Deadline of window 9: its end + 2h look-back + 1h grace.
    now = t0 + 13 * HOUR
    result = plan_backfills(ledger, config, now, PlannerSettings(max_outstanding=100))
    assert states(ledger)[t0 + 6 * HOUR] == "backfilling"
    (request,) = [r for r in result.requested if r.dc == DC and r.aggregation == DETECTION]
    # The missing window, widened back by the look-back (2 windows), as a live run recomputes.
    assert ((request.start_ns - t0) // HOUR, (request.end_ns - t0) // HOUR) == (4, 7)
    assert request.version == version
