"""Reports served by the coordinator, and the job that keeps daily rollups fresh."""

from __future__ import annotations

from starlette.testclient import TestClient

from federation.config import FederationConfig
from federation.coordinator.app import RollupJob
from federation.coordinator.ledger import Ledger
from federation.coordinator.service import Coordinator
from federation.coordinator.tracking import verify_shipped
from federation.core.calendar import period_of
from federation.core.clock import FakeClock, format_rfc3339
from federation.influx import InfluxClient, rows

from .helpers import HOUR, READER, body, plan_of, window_batch
from .test_tracking import AGG, DC, ship


def test_reports_need_the_reader_token_and_merge_what_shipped(
    client: TestClient, config: FederationConfig, ledger: Ledger, influx: InfluxClient,
    clock: FakeClock, hour0: int,
) -> None:  # fmt: skip
    plan = plan_of(config, DC)
    clock.set(hour0 + 3 * HOUR)  # the gateway takes only windows that have ended
    shipped = [window_batch(plan, hour0 + k * HOUR) for k in range(3)]
    for points in shipped:
        ship(client, config, body(points))
    clock.set(hour0 + 4 * HOUR)
    verify_shipped(ledger, config, influx, clock.now_ns())
    day = format_rfc3339(hour0)[:10]
    path = f"/api/v1/reports/{AGG}/percentiles"
    params = {"period": "day", "from": day, "to": day, "by": "dc"}
    assert client.get(path, params=params).status_code == 401
    answer = client.get(path, params=params, headers={"Authorization": f"Bearer {READER}"})
    assert answer.status_code == 200, answer.text
    text = answer.text
    # Only the windows of that UTC day (the three hours may cross midnight).
    events = sum(
        int(p.fields["count"])
        for points in shipped
        for p in points[:-1]
        if format_rfc3339(p.time_ns)[:10] == day
    )
    assert str(events) in text, text


def test_rollup_job_remerges_days_under_verified_windows(
    client: TestClient, coordinator: Coordinator, config: FederationConfig, ledger: Ledger,
    influx: InfluxClient, clock: FakeClock, hour0: int,
) -> None:  # fmt: skip
    plan = plan_of(config, DC)
    job = RollupJob(coordinator, influx)
    clock.set(hour0 + 2 * HOUR)  # the gateway takes only windows that have ended
    for k in range(2):
        ship(client, config, body(window_batch(plan, hour0 + k * HOUR)))
    clock.set(hour0 + 3 * HOUR)
    verify_shipped(ledger, config, influx, clock.now_ns())
    assert job() == 2
    day_start = period_of(hour0, "day", "UTC").start_ns
    found = list(rows(influx.query(
        f'SELECT "count" FROM "{config.policy_for(DC).central.retention_policy}"."{AGG}__daily" '
        f"WHERE time = {day_start} AND \"tz\" = 'UTC'",
        database=config.fleet.central.database,
    )))  # fmt: skip
    assert found, "a daily rollup was written for the day of the verified windows"
    clock.advance(10**9)
    assert job() == 0  # nothing verified since the previous pass
