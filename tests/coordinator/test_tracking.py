"""Window states driven end to end: gateway → ledger → verification against central."""

from __future__ import annotations

import base64

from sqlalchemy import select
from starlette.testclient import TestClient

from federation.config import FederationConfig
from federation.coordinator.ledger import Ledger, WindowRow
from federation.coordinator.planner import plan_backfills
from federation.coordinator.service import Coordinator
from federation.coordinator.tracking import dc_windows, verify_shipped
from federation.core.aggregate import manifest_point
from federation.core.clock import FakeClock
from federation.influx import InfluxClient

from .helpers import HOUR, body, central_params, plan_of, token, window_batch

DC = "dub1"
AGG = "delivery_direction"


def ship(client: TestClient, config: FederationConfig, payload: bytes, dc: str = DC) -> None:
    auth = base64.b64encode(f"{dc}:{token(dc)}".encode()).decode()
    response = client.post(
        "/write",
        params=central_params(config, dc),
        content=payload,
        headers={"Authorization": f"Basic {auth}"},
    )
    assert response.status_code == 204, response.text


def states(ledger: Ledger, dc: str = DC, aggregation: str = AGG) -> dict[int, str]:
    with ledger.session() as session:
        rows = session.execute(
            select(WindowRow.start_ns, WindowRow.state).where(
                WindowRow.dc == dc, WindowRow.aggregation == aggregation
            )
        ).all()
    return {start: state for start, state in rows}


def test_shipped_windows_become_verified_empty_or_inconsistent(
    client: TestClient, config: FederationConfig, ledger: Ledger, influx: InfluxClient,
    clock: FakeClock, hour0: int,
) -> None:  # fmt: skip
    plan = plan_of(config, DC)
    good, empty, short = hour0 + HOUR, hour0 + 2 * HOUR, hour0 + 3 * HOUR
    clock.set(hour0 + 4 * HOUR)  # the gateway takes only windows that have ended
    ship(client, config, body(window_batch(plan, good)))
    ship(
        client,
        config,
        body([manifest_point(plan, empty, events=0, groups=0, suppressed_events=0, run=1)]),
    )
    # A shipment whose manifest counts more events than its summaries hold: a point got lost.
    points = window_batch(plan, short)
    ship(client, config, body(points[1:]))
    clock.set(hour0 + 5 * HOUR)
    assert states(ledger) == {good: "shipped", empty: "shipped", short: "shipped"}
    result = verify_shipped(ledger, config, influx, clock.now_ns())
    assert (result.verified, result.empty, result.inconsistent) == (1, 1, 1)
    assert states(ledger) == {good: "verified", empty: "empty", short: "inconsistent"}
    with ledger.session() as session:
        row = session.scalars(select(WindowRow).where(WindowRow.start_ns == short)).one()
    assert row.reason and "central holds" in row.reason
    # The planner re-requests the inconsistent window as a backfill.
    planned = plan_backfills(ledger, config, clock.now_ns())
    assert any(r.dc == DC and r.start_ns <= short < r.end_ns for r in planned.requested)
    assert states(ledger)[short] == "backfilling"
    # The backfill re-ships it complete, with a newer run: verified.
    ship(client, config, body(window_batch(plan, short, run=2)))
    verify_shipped(ledger, config, influx, clock.now_ns())
    assert states(ledger)[short] == "verified"


def test_windows_past_their_deadline_go_missing_and_old_ones_unrecoverable(
    coordinator: Coordinator, ledger: Ledger, config: FederationConfig, clock: FakeClock, hour0: int
) -> None:
    plan = plan_of(config, "lon1")  # uk: 14d raw retention, 1d shards
    clock.set(hour0 + 10 * HOUR)
    # Tracking lon1 from 20 days ago: the oldest days are already past retention.
    from sqlalchemy import update

    from federation.coordinator.ledger import TrackingRow

    with ledger.session(write=True) as session:
        session.execute(
            update(TrackingRow)
            .where(TrackingRow.dc == "lon1", TrackingRow.aggregation == AGG)
            .values(start_ns=hour0 - 20 * 24 * HOUR, watermark_ns=hour0 - 20 * 24 * HOUR)
        )
    plan_backfills(ledger, config, clock.now_ns())
    found = states(ledger, "lon1")
    now = clock.now_ns()
    cutoff = now - (14 - 1) * 24 * HOUR
    for start, state in found.items():
        if start + plan.window_ns <= cutoff:
            assert state == "unrecoverable"
        else:
            assert state in ("missing", "backfilling")
    assert "unrecoverable" in found.values() and "backfilling" in found.values()
    # Windows still inside look-back + grace are not declared missing yet.
    deadline_limit = now - plan.lookback_ns - plan.grace_ns
    assert max(found) + plan.window_ns <= deadline_limit


def test_agent_catch_up_lists_what_central_holds(
    client: TestClient, config: FederationConfig, ledger: Ledger, clock: FakeClock, hour0: int
) -> None:
    plan = plan_of(config, DC)
    clock.set(hour0 + 2 * HOUR)  # the gateway takes only windows that have ended
    ship(client, config, body(window_batch(plan, hour0 + HOUR, run=3)))
    result = dc_windows(ledger, DC, AGG, hour0)
    assert result["latest_shipped_ns"] == hour0 + HOUR
    assert result["windows"] == [
        {"aggregation": AGG, "start_ns": hour0 + HOUR, "state": "shipped", "run": 3, "events": 40}
    ]
