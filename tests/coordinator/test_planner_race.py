"""Two coordinator processes start together against one empty ledger (each upgrades it and
records the desired state), then run the backfill planner at the same instant, round after
round: together they declare every overdue window missing exactly once, request every missing
window, keep each DC's cap, and never queue two requests for the same window."""

from __future__ import annotations

import contextlib
import multiprocessing
import threading
import traceback
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from multiprocessing.connection import Connection
from multiprocessing.synchronize import Barrier
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import event, func, select, tuple_

from federation.config import FederationConfig, load_config
from federation.config.resolve import resolve_tracked
from federation.coordinator.backfills import lease_backfills, record_backfill_result
from federation.coordinator.desired import sync_desired
from federation.coordinator.ledger import BackfillRow, Ledger, TrackingRow, WindowRow, open_ledger
from federation.coordinator.planner import (
    FAILED,
    QUEUED,
    RUNNING,
    PlannerResult,
    PlannerSettings,
    plan_backfills,
)
from federation.coordinator.tracking import NEEDS_BACKFILL, Manifest, record_manifests

from .helpers import HOUR

T0 = 1_800_000_000 * 10**9 - (1_800_000_000 * 10**9) % (24 * HOUR)
ROUNDS = 20
STEP = 3 * HOUR
REPLY_TIMEOUT_S = 120.0


@dataclass(frozen=True)
class PassReport:
    """What one planner pass in a worker process did (or the traceback it died with)."""

    requested: list[tuple[int, str, str, int, int]]
    missing: int = 0
    unrecoverable: int = 0
    error: str | None = None


def planner_process(
    url: str,
    config_dir: str,
    settings: PlannerSettings,
    start_together: Barrier,
    inbox: Connection,
    outbox: Connection,
) -> None:
    """A coordinator process: opens (upgrading) the ledger and records the desired state at the
    same moment as the other process, then for every instant it is sent runs one planner pass,
    again starting together; None ends it."""
    try:
        config = load_config(Path(config_dir))
        start_together.wait(REPLY_TIMEOUT_S)
        ledger = open_ledger(url)
        sync_desired(ledger, config, T0)
    except BaseException:
        outbox.send(PassReport([], error=traceback.format_exc()))
        return
    outbox.send(PassReport([]))
    with ledger:
        while (now := inbox.recv()) is not None:
            try:
                start_together.wait(REPLY_TIMEOUT_S)
                result = plan_backfills(ledger, config, now, settings)
                report = PassReport(
                    [(r.id, r.dc, r.aggregation, r.start_ns, r.end_ns) for r in result.requested],
                    result.missing,
                    result.unrecoverable,
                )
            except BaseException:
                report = PassReport([], error=traceback.format_exc())
            outbox.send(report)


class Planners:
    """Two planner processes (spawned, so they share nothing with this one but the ledger)."""

    def __init__(self, url: str, config_dir: Path, settings: PlannerSettings) -> None:
        ctx = multiprocessing.get_context("spawn")
        # Held for the processes' lifetime: a barrier collected here is gone before they start.
        self.barrier = ctx.Barrier(2)
        self.pipes: list[Connection] = []
        self.processes = []
        for _ in range(2):
            ours, theirs = ctx.Pipe()
            process = ctx.Process(
                target=planner_process,
                args=(url, str(config_dir), settings, self.barrier, theirs, theirs),
                daemon=True,
            )
            process.start()
            theirs.close()
            self.pipes.append(ours)
            self.processes.append(process)
        self._answers()

    def _answers(self) -> list[PassReport]:
        reports = []
        for pipe in self.pipes:
            assert pipe.poll(REPLY_TIMEOUT_S), "a planner process did not answer"
            report: PassReport = pipe.recv()
            assert report.error is None, report.error
            reports.append(report)
        return reports

    def run(self, now: int) -> list[PassReport]:
        """One pass in each process at `now`, started together."""
        for pipe in self.pipes:
            pipe.send(now)
        return self._answers()

    def close(self) -> None:
        for pipe in self.pipes:
            with contextlib.suppress(OSError):
                pipe.send(None)
        for process in self.processes:
            process.join(30)
            if process.is_alive():
                process.kill()
                process.join(10)


@pytest.fixture
def plain(config_dir: Path) -> FederationConfig:
    return load_config(config_dir)


def _ship(ledger: Ledger, dc: str, aggregation: str, starts: list[int], now: int, run: int) -> None:
    record_manifests(
        ledger, [Manifest(dc, aggregation, s, "v", run, 10, 1, 0) for s in starts], now
    )


def _row_count(ledger: Ledger) -> int:
    with ledger.session() as session:
        return int(session.scalar(select(func.count()).select_from(WindowRow)) or 0)


def _check_round(
    ledger: Ledger,
    config: FederationConfig,
    now: int,
    reports: list[PassReport],
    new_rows: int,
    settings: PlannerSettings,
) -> None:
    plans = {(p.dc, p.aggregation): p for p in resolve_tracked(config)}
    with ledger.session() as session:
        requests = {b.id: b for b in session.scalars(select(BackfillRow))}
        windows = list(session.scalars(select(WindowRow)))
        trackers = list(session.scalars(select(TrackingRow)))
    # Every overdue window got exactly one row, counted once by the pass that inserted it.
    assert new_rows == sum(r.missing + r.unrecoverable for r in reports)
    watermarks = {(t.dc, t.aggregation): t.watermark_ns for t in trackers}
    per_pair = Counter(
        (w.dc, w.aggregation) for w in windows if w.start_ns < watermarks[(w.dc, w.aggregation)]
    )
    for t in trackers:
        plan = plans[(t.dc, t.aggregation)]
        limit = now - plan.lookback_ns - plan.grace_ns
        limit -= limit % plan.window_ns
        assert t.watermark_ns == max(limit, t.start_ns)
        assert per_pair[(t.dc, t.aggregation)] == (t.watermark_ns - t.start_ns) // t.window_ns

    # The requests this round are the union of what the two processes queued, never one twice.
    made = [item for r in reports for item in r.requested]
    ids = [item[0] for item in made]
    assert len(ids) == len(set(ids))
    assert set(ids) == {b.id for b in requests.values() if b.created_ns == now}
    ranges = [item[1:] for item in made]
    assert len(ranges) == len(set(ranges)), "two identical requests were queued"

    open_states = {QUEUED, RUNNING}

    def is_open(b: BackfillRow) -> bool:
        return b.state in open_states or (b.state == FAILED and b.next_attempt_ns is not None)

    claims: dict[int, set[tuple[str, str, int]]] = {b: set() for b in requests}
    for w in windows:
        if w.state == "backfilling":
            assert w.backfill_id is not None
            owner = requests[w.backfill_id]
            assert is_open(owner), f"window {w.start_ns} held by closed request #{owner.id}"
            assert (owner.dc, owner.aggregation) == (w.dc, w.aggregation)
            assert owner.start_ns <= w.start_ns < owner.end_ns
            claims[owner.id].add((w.dc, w.aggregation, w.start_ns))
    # A request queued this round that claims no window duplicates another's work.
    for backfill_id in ids:
        assert claims[backfill_id], f"request #{backfill_id} claims no window"
    held = [key for keys in claims.values() for key in keys]
    assert len(held) == len(set(held))

    per_dc = Counter(b.dc for b in requests.values() if is_open(b))
    assert max(per_dc.values(), default=0) <= settings.max_outstanding
    if settings.max_outstanding >= 1_000:
        # Uncapped: every window still to be recomputed is in some open request.
        given_up = {
            b.id for b in requests.values() if b.state == FAILED and b.next_attempt_ns is None
        }
        waiting = [
            w
            for w in windows
            if w.state in NEEDS_BACKFILL
            and (w.backfill_id is None or w.backfill_id not in given_up)
        ]
        assert waiting == [], f"{len(waiting)} missing windows were not requested"


def _agents_work(ledger: Ledger, config: FederationConfig, now: int, round_no: int) -> None:
    """Each DC's agent runs two leased requests: it re-ships every other window of one and
    reports it done (the rest go missing again), and fails the other (retried later)."""
    for dc in sorted(config.fleet.dcs):
        for n, leased in enumerate(lease_backfills(ledger, dc, now, limit=2)):
            with ledger.session() as session:
                starts = sorted(
                    session.scalars(
                        select(WindowRow.start_ns).where(
                            WindowRow.backfill_id == leased.id, WindowRow.state == "backfilling"
                        )
                    )
                )
            _ship(ledger, dc, leased.aggregation, starts[1::2], now, run=2 + round_no)
            status = "done" if (n + round_no) % 2 == 0 else "failed"
            record_backfill_result(
                ledger, dc, leased.id, {"status": status, "windows": len(starts)}, now
            )


@pytest.fixture
def max_outstanding(request: pytest.FixtureRequest) -> int:
    return int(request.param)


@pytest.fixture
def planners(ledger_url: str, config_dir: Path, max_outstanding: int) -> Iterator[Planners]:
    started = Planners(
        ledger_url, config_dir, PlannerSettings(max_windows=4, max_outstanding=max_outstanding)
    )
    yield started
    started.close()


@pytest.mark.parametrize("max_outstanding", [1_000, 3], ids=["uncapped", "capped"], indirect=True)
def test_two_planner_processes_never_duplicate_a_request(
    planners: Planners, ledger_url: str, plain: FederationConfig, max_outstanding: int
) -> None:
    settings = PlannerSettings(max_windows=4, max_outstanding=max_outstanding)
    with open_ledger(ledger_url, upgrade=False) as ledger:
        _rounds(ledger, plain, planners, settings)


def _rounds(
    ledger: Ledger, plain: FederationConfig, planners: Planners, settings: PlannerSettings
) -> None:
    plans = resolve_tracked(plain)
    shipped_until = T0
    for round_no in range(ROUNDS):
        now = T0 + 5 * HOUR + round_no * STEP
        # Live shipments reach some of the windows that go overdue now; the rest go missing.
        for index, plan in enumerate(plans):
            starts = range(shipped_until, now, plan.window_ns)
            live = [s for k, s in enumerate(starts) if (k + index + round_no) % 3 == 0]
            _ship(ledger, plan.dc, plan.aggregation, live, now, run=1)
        shipped_until = now
        before = _row_count(ledger)
        reports = planners.run(now)
        _check_round(ledger, plain, now, reports, _row_count(ledger) - before, settings)
        _agents_work(ledger, plain, now + 1, round_no)


def _open_requests(ledger: Ledger) -> list[BackfillRow]:
    with ledger.session() as session:
        return [
            b
            for b in session.scalars(select(BackfillRow))
            if b.state in (QUEUED, RUNNING) or (b.state == FAILED and b.next_attempt_ns)
        ]


@pytest.mark.parametrize(
    ("held", "max_outstanding"),
    [
        pytest.param(
            (("dub1", "delivery_direction"), ("dub1", "delivery_latency")), 1_000, id="other-dc"
        ),
        pytest.param((("dub1", "delivery_direction"),), 2, id="same-dc"),
    ],
)
def test_a_pass_inside_another_pass_takes_only_what_the_first_left(
    ledger: Ledger,
    ledger_url: str,
    ledger_backend: str,
    plain: FederationConfig,
    held: tuple[tuple[str, str], ...],
    max_outstanding: int,
) -> None:
    """Pass A starts while pass B holds its claims (B has locked its first DC's candidate
    windows): A takes the (dc, aggregation)s B skipped because they were held elsewhere, is
    not kept from any of their windows by B, and waits for B before counting a DC's open
    requests when both work on that DC."""
    if ledger_backend == "sqlite":
        pytest.skip("SQLite serialises whole write transactions: a pass cannot run inside another")
    settings = PlannerSettings(max_windows=4, max_outstanding=max_outstanding)
    sync_desired(ledger, plain, T0)
    # Missing windows that an earlier, throttled pass left unrequested.
    plan_backfills(ledger, plain, T0 + 10 * HOUR, PlannerSettings(max_outstanding=0))
    now = T0 + 16 * HOUR
    holder = ledger.engine.connect()
    holder.begin()
    holder.execute(
        select(TrackingRow.dc)
        .where(tuple_(TrackingRow.dc, TrackingRow.aggregation).in_(held))
        .with_for_update()
    ).all()
    results: dict[str, PlannerResult] = {}
    errors: list[BaseException] = []

    def pass_a() -> None:
        with Ledger(ledger_url) as other:
            try:
                results["a"] = plan_backfills(other, plain, now, settings)
            except BaseException as exc:  # pragma: no cover - reported below
                errors.append(exc)

    thread = threading.Thread(target=pass_a)
    pass_b = Ledger(ledger_url)

    @event.listens_for(pass_b.engine, "after_cursor_execute")
    def _start_a(_conn: Any, _cursor: Any, statement: str, *_args: Any) -> None:
        if "FROM windows" in statement and "SKIP LOCKED" in statement and thread.ident is None:
            holder.rollback()
            thread.start()
            # A either finishes here (it needs nothing B holds) or waits for B's DC lock.
            thread.join(1)

    try:
        results["b"] = plan_backfills(pass_b, plain, now, settings)
    finally:
        pass_b.close()
        thread.join(60)
        holder.close()
    assert errors == []
    a, b = results["a"], results["b"]
    assert {(r.dc, r.aggregation) for r in a.requested} <= set(held)
    assert not {(r.dc, r.aggregation) for r in b.requested} & set(held)
    open_requests = _open_requests(ledger)
    assert max(Counter(r.dc for r in open_requests).values()) <= max_outstanding
    with ledger.session() as session:
        waiting = session.scalars(
            select(WindowRow.start_ns).where(WindowRow.state.in_(NEEDS_BACKFILL))
        ).all()
        trackers = list(session.scalars(select(TrackingRow)))
    assert all(t.watermark_ns > T0 + 10 * HOUR for t in trackers)
    if max_outstanding >= 1_000:
        assert waiting == []
    else:
        assert a.throttled > 0
