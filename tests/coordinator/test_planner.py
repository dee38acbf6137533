"""The backfill planner: missing windows, coalescing, look-back overlap, caps, rate limits,
retries, unrecoverable windows, and no duplicate requests — on a real ledger of each backend
(SQLite, PostgreSQL)."""

from __future__ import annotations

import threading
from pathlib import Path

import pytest
from sqlalchemy import select

from federation.config import FederationConfig, load_config
from federation.coordinator.backfills import (
    BackfillNotFound,
    NotYourBackfill,
    lease_backfills,
    record_backfill_result,
    request_backfill,
)
from federation.coordinator.desired import sync_desired
from federation.coordinator.ledger import BackfillRow, DeploymentRow, Ledger, WindowRow
from federation.coordinator.planner import PlannerSettings, plan_backfills
from federation.coordinator.tracking import Manifest, record_manifests
from federation.errors import InvalidInput

from .helpers import HOUR

T0 = 1_800_000_000 * 10**9 - (1_800_000_000 * 10**9) % (24 * HOUR)
AGG = "delivery_direction"  # 1h windows, 2h look-back, 1h grace


@pytest.fixture
def plain(config_dir: Path) -> FederationConfig:
    return load_config(config_dir)


@pytest.fixture
def tracked(ledger: Ledger, plain: FederationConfig) -> Ledger:
    sync_desired(ledger, plain, T0)
    return ledger


def ship(ledger: Ledger, dc: str, start: int, now: int, events: int = 10) -> None:
    record_manifests(ledger, [Manifest(dc, AGG, start, "v", 1, events, 1, 0)], now)


def backfills(ledger: Ledger, dc: str | None = None) -> list[BackfillRow]:
    with ledger.session() as session:
        query = select(BackfillRow).order_by(BackfillRow.id)
        if dc:
            query = query.where(BackfillRow.dc == dc)
        return list(session.scalars(query))


def window_states(ledger: Ledger, dc: str) -> dict[int, str]:
    with ledger.session() as session:
        rows = session.execute(
            select(WindowRow.start_ns, WindowRow.state).where(
                WindowRow.dc == dc, WindowRow.aggregation == AGG
            )
        ).all()
    return {start: state for start, state in rows}


def at(hours: int) -> int:
    """The instant when window `hours - 1 - lookback - grace` just passed its deadline."""
    return T0 + hours * HOUR


def test_missing_windows_are_coalesced_widened_and_capped(
    tracked: Ledger, plain: FederationConfig
) -> None:
    now = at(40)  # deadline passed for windows starting before T0 + 37h
    for h in (10, 11, 20):
        ship(tracked, "fra1", T0 + h * HOUR, now)
    result = plan_backfills(tracked, plain, now, PlannerSettings(max_outstanding=10))
    assert result.missing > 0
    spans = [
        ((r.start_ns - T0) // HOUR, (r.end_ns - T0) // HOUR)
        for r in result.requested
        if r.dc == "fra1" and r.aggregation == AGG
    ]
    # Missing: 0-9, 12-19, 21-36. Each range starts 2 windows (the look-back) earlier and
    # holds at most 24 windows.
    assert spans == [(-2, 10), (10, 20), (19, 37)]
    states = window_states(tracked, "fra1")
    assert all(states[T0 + h * HOUR] == "backfilling" for h in range(0, 10))
    assert states[T0 + 10 * HOUR] == "shipped"
    # Nothing is left un-requested, and a second pass queues nothing new.
    again = plan_backfills(tracked, plain, now, PlannerSettings(max_outstanding=10))
    assert again.requested == [] and again.missing == 0


def test_requests_are_capped_and_rate_limited_per_dc(
    tracked: Ledger, plain: FederationConfig
) -> None:
    settings = PlannerSettings(max_windows=5, max_outstanding=2)
    now = at(23)  # windows 0..19 are overdue
    result = plan_backfills(tracked, plain, now, settings)
    mine = [r for r in result.requested if r.dc == "tor1" and r.aggregation == AGG]
    assert len({r.id for r in result.requested if r.dc == "tor1"}) == 2
    assert all(r.end_ns - r.start_ns <= 5 * HOUR for r in mine)
    assert result.throttled > 0
    # When a request finishes, the next pass queues more, never the same windows twice.
    for leased in lease_backfills(tracked, "tor1", now, settings=settings):
        record_backfill_result(tracked, "tor1", leased.id, {"status": "done", "windows": 5}, now)
    for start in range(T0, T0 + 20 * HOUR, HOUR):
        ship(tracked, "tor1", start, now) if start < T0 + 3 * HOUR else None
    follow = plan_backfills(tracked, plain, now + 1, settings)
    assert 0 < len([r for r in follow.requested if r.dc == "tor1"]) <= 2
    claimed: dict[int, int] = {}
    with tracked.session() as session:
        for wid, bid in session.execute(
            select(WindowRow.id, WindowRow.backfill_id).where(WindowRow.state == "backfilling")
        ):
            assert bid is not None
            claimed[wid] = bid
    assert len(claimed) == len(set(claimed))


def test_two_planners_at_once_never_duplicate_a_request(
    tracked: Ledger, plain: FederationConfig, ledger_url: str
) -> None:
    now = at(60)
    other = Ledger(ledger_url)
    errors: list[BaseException] = []

    def run(ledger: Ledger) -> None:
        try:
            plan_backfills(ledger, plain, now, PlannerSettings(max_outstanding=100))
        except BaseException as exc:  # pragma: no cover - reported below
            errors.append(exc)

    threads = [threading.Thread(target=run, args=(lg,)) for lg in (tracked, other)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    other.close()
    assert errors == []
    seen: set[tuple[str, str, int]] = set()
    for b in backfills(tracked):
        with tracked.session() as session:
            owned = session.scalars(
                select(WindowRow.start_ns).where(WindowRow.backfill_id == b.id)
            ).all()
        for start in owned:
            key = (b.dc, b.aggregation, start)
            assert key not in seen
            seen.add(key)
    with tracked.session() as session:
        assert (
            session.scalar(select(WindowRow.id).where(WindowRow.state == "missing").limit(1))
            is None
        )


def test_failed_backfills_are_retried_with_exponential_backoff(
    tracked: Ledger, plain: FederationConfig
) -> None:
    settings = PlannerSettings(retry_base_ns=60 * 10**9, max_attempts=3)
    now = at(10)
    plan_backfills(tracked, plain, now, settings)
    (first, *_) = lease_backfills(tracked, "van1", now, settings=settings)
    record_backfill_result(
        tracked, "van1", first.id, {"status": "failed", "error": "boom"}, now, settings=settings
    )
    row = next(b for b in backfills(tracked, "van1") if b.id == first.id)
    assert (row.state, row.next_attempt_ns) == ("failed", now + 60 * 10**9)
    assert plan_backfills(tracked, plain, now + 59 * 10**9, settings).retried == 0
    assert plan_backfills(tracked, plain, now + 60 * 10**9, settings).retried == 1
    # Second failure: twice the delay.
    t = now + 61 * 10**9
    leased = [b for b in lease_backfills(tracked, "van1", t, settings=settings) if b.id == first.id]
    assert leased
    record_backfill_result(
        tracked, "van1", first.id, {"status": "failed", "error": "boom"}, t, settings=settings
    )
    row = next(b for b in backfills(tracked, "van1") if b.id == first.id)
    assert row.next_attempt_ns == t + 120 * 10**9
    # Third failure: given up; its windows say so and are not requested again by the planner.
    t2 = t + 120 * 10**9
    plan_backfills(tracked, plain, t2, settings)
    lease_backfills(tracked, "van1", t2, settings=settings)
    record_backfill_result(
        tracked, "van1", first.id, {"status": "failed", "error": "boom"}, t2, settings=settings
    )
    row = next(b for b in backfills(tracked, "van1") if b.id == first.id)
    assert (row.state, row.next_attempt_ns) == ("failed", None)
    with tracked.session() as session:
        reasons = session.scalars(
            select(WindowRow.reason).where(WindowRow.backfill_id == first.id)
        ).all()
    assert reasons and all("given up" in (r or "") for r in reasons)
    plan_backfills(tracked, plain, t2 + HOUR, settings)
    with tracked.session() as session:
        still = session.execute(
            select(WindowRow.state, WindowRow.backfill_id).where(
                WindowRow.dc == "van1",
                WindowRow.aggregation == AGG,
                WindowRow.start_ns >= row.start_ns,
                WindowRow.start_ns < row.end_ns,
                WindowRow.reason.like("%given up%"),
            )
        ).all()
    assert still and all(tuple(r) == ("missing", first.id) for r in still)


def test_expired_leases_return_to_the_queue(tracked: Ledger, plain: FederationConfig) -> None:
    settings = PlannerSettings(lease_ns=10 * 10**9)
    now = at(10)
    plan_backfills(tracked, plain, now, settings)
    leased = lease_backfills(tracked, "dub1", now, settings=settings)
    assert leased and lease_backfills(tracked, "dub1", now + 1, settings=settings) == []
    again = lease_backfills(tracked, "dub1", now + 11 * 10**9, settings=settings)
    assert {b.id for b in again} == {b.id for b in leased}


def test_results_are_only_accepted_from_the_owning_dc(
    tracked: Ledger, plain: FederationConfig
) -> None:
    now = at(10)
    plan_backfills(tracked, plain, now)
    (leased, *_) = lease_backfills(tracked, "dub1", now)
    with pytest.raises(NotYourBackfill):
        record_backfill_result(tracked, "fra1", leased.id, {"status": "done"}, now)
    with pytest.raises(BackfillNotFound):
        record_backfill_result(tracked, "dub1", 999_999, {"status": "done"}, now)
    with pytest.raises(InvalidInput, match="windows"):
        record_backfill_result(
            tracked, "dub1", leased.id, {"status": "done", "windows": 2**31}, now
        )
    record_backfill_result(tracked, "dub1", leased.id, {"status": "done", "windows": 3}, now)
    with tracked.session() as session:
        reasons = session.scalars(
            select(WindowRow.state).where(WindowRow.backfill_id == leased.id)
        ).all()
    assert set(reasons) == {"missing"}  # done, but no manifest arrived: asked again later


def test_windows_past_retention_are_unrecoverable_not_requested(
    tracked: Ledger, plain: FederationConfig
) -> None:
    # lon1 (uk): 14d retention, 1d shards: a window is recoverable while end > now - 13d.
    now = T0 + 20 * 24 * HOUR
    result = plan_backfills(tracked, plain, now, PlannerSettings(max_outstanding=1000))
    lon1 = window_states(tracked, "lon1")
    cutoff = now - 13 * 24 * HOUR
    assert all(s == "unrecoverable" for start, s in lon1.items() if start + HOUR <= cutoff)
    assert all(s == "backfilling" for start, s in lon1.items() if start + HOUR > cutoff)
    assert all(r.start_ns >= cutoff - HOUR for r in result.requested if r.dc == "lon1")
    # dub1 (eu, 30d) has everything still recoverable.
    assert "unrecoverable" not in window_states(tracked, "dub1").values()


def test_manual_requests_claim_windows(tracked: Ledger, plain: FederationConfig) -> None:
    now = at(50)
    plan_backfills(tracked, plain, now, PlannerSettings(max_outstanding=0))
    requests = request_backfill(tracked, plain, "dub1", AGG, T0, T0 + 30 * HOUR, now)
    assert [(r.end_ns - r.start_ns) // HOUR for r in requests] == [24, 6]
    states = window_states(tracked, "dub1")
    assert all(states[T0 + h * HOUR] == "backfilling" for h in range(30))
    assert plan_backfills(tracked, plain, now).requested == [] or all(
        r.start_ns >= T0 + 28 * HOUR
        for r in plan_backfills(tracked, plain, now).requested
        if r.dc == "dub1"
    )


def test_a_failed_request_is_retried_for_the_version_its_dc_runs_now(
    tracked: Ledger, plain: FederationConfig
) -> None:
    """A request queued before a rollout moved its DC asks for a version the agent no longer
    runs, and fails for that; its retry asks for the version the DC is told to run now."""
    settings = PlannerSettings(retry_base_ns=60 * 10**9)
    now = at(10)
    plan_backfills(tracked, plain, now, settings)
    (first, *_) = [b for b in lease_backfills(tracked, "van1", now, settings=settings)
                   if b.aggregation == AGG]  # fmt: skip
    with tracked.session(write=True) as session:
        deployment = session.get(DeploymentRow, ("van1", AGG))
        assert deployment is not None and deployment.desired_version == first.version
        deployment.previous_version, deployment.desired_version = first.version, "f00dcafe0001"
    error = f"{AGG} version {first.version} does not run on van1 (version f00dcafe0001 does)"
    record_backfill_result(tracked, "van1", first.id, {"status": "failed", "error": error}, now,
                           settings=settings)  # fmt: skip
    assert plan_backfills(tracked, plain, now + 60 * 10**9, settings).retried == 1
    row = next(b for b in backfills(tracked, "van1") if b.id == first.id)
    assert (row.state, row.version) == ("queued", "f00dcafe0001")
