"""The backfill planner: classify overdue windows, and queue re-runs of what is missing.

One pass (`plan_backfills`), per (dc, aggregation):

1. Every expected window whose deadline (end + look-back + grace) has passed since the last pass
   and that has no row gets one: `missing`, or `unrecoverable` when its raw data may already be
   gone (its end is not younger than the DC's raw retention minus one shard duration).
2. Missing and inconsistent windows that aged past retention become `unrecoverable`.
3. Failed backfills whose back-off has expired go back to the queue, for the version their DC
   is told to run now (a rollout since their last attempt moved it: the agent runs only that
   one); expired leases too.
4. The remaining missing and inconsistent windows are coalesced into ranges, each widened by the
   look-back (it starts look-back earlier, as a live run would recompute) and cut into requests
   of at most `max_windows` windows; a DC never has more than `max_outstanding` open requests.
   Claimed windows become `backfilling`, so no window is ever requested twice at once.

A pass is one write transaction. On SQLite writers serialise (BEGIN IMMEDIATE). On PostgreSQL
(READ COMMITTED) several planner processes share the work instead:

- a pass claims the (dc, aggregation) tracking rows no other pass holds (`FOR UPDATE SKIP
  LOCKED`) and touches only the windows of those, so two passes never insert, age out or
  request the same window, and none leaves another's windows unrequested;
- failed and expired requests are re-queued only when no one else holds them (`SKIP LOCKED`);
- before counting a DC's open requests a pass locks that DC's row (`FOR NO KEY UPDATE`, in name
  order, so two passes cannot deadlock): two passes holding different aggregations of one DC
  take turns, and the DC's cap holds.
"""

from __future__ import annotations

import logging
from collections import defaultdict
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy import and_, func, or_, select, update
from sqlalchemy.orm import Session

from federation.config import FederationConfig
from federation.config.resolve import resolve_tracked
from federation.coordinator.ledger import (
    BackfillRow,
    DcRow,
    DeploymentRow,
    Ledger,
    TrackingRow,
    WindowRow,
    upsert,
    windows_table,
)
from federation.coordinator.tracking import NEEDS_BACKFILL, WindowState
from federation.core.detection_plan import TrackedPlan
from federation.core.durations import format_duration
from federation.core.windows import Window, align, coalesce, widen

log = logging.getLogger(__name__)

QUEUED = "queued"
RUNNING = "running"
DONE = "done"
FAILED = "failed"
BACKFILL_STATES = (QUEUED, RUNNING, DONE, FAILED)


@dataclass(frozen=True)
class PlannerSettings:
    """Limits of the planner and the backfill queue."""

    max_windows: int = 24
    """Windows per request, look-back overlap included."""
    max_outstanding: int = 4
    """Open (queued, running, or failed and waiting to retry) requests per DC."""
    retry_base_ns: int = 60 * 10**9
    retry_max_ns: int = 3600 * 10**9
    max_attempts: int = 8
    lease_ns: int = 15 * 60 * 10**9


@dataclass(frozen=True)
class BackfillRequest:
    """One queued request: re-run `[start_ns, end_ns)` of an aggregation in a DC."""

    id: int
    dc: str
    aggregation: str
    version: str | None
    start_ns: int
    end_ns: int


@dataclass
class PlannerResult:
    """What one planner pass did."""

    missing: int = 0
    unrecoverable: int = 0
    retried: int = 0
    requeued: int = 0
    throttled: int = 0
    requested: list[BackfillRequest] = field(default_factory=list)


def recoverable_after(plan: TrackedPlan, config: FederationConfig, now_ns: int) -> int | None:
    """The earliest window end that may still be recomputed (None: retention is infinite).

    A window is recoverable iff `now - end < retention - shard_duration`, i.e. its end is
    strictly after the returned instant.
    """
    raw = config.policy_for(plan.dc).raw
    if raw.retention == 0:
        return None
    return now_ns - (raw.retention - raw.shard_duration)


def _unrecoverable_reason(config: FederationConfig, dc: str) -> str:
    raw = config.policy_for(dc).raw
    return (
        f"raw data past {dc}'s retention ({format_duration(raw.retention)} minus one "
        f"{format_duration(raw.shard_duration)} shard): cannot be recomputed"
    )


def _advance(
    session: Session,
    config: FederationConfig,
    tracking: TrackingRow,
    plan: TrackedPlan,
    now_ns: int,
    result: PlannerResult,
) -> None:
    """Insert rows for the windows whose deadline passed since the watermark; move it.

    A window that a gateway records between the read of `existing` and the insert keeps what
    the gateway wrote (the insert skips it), though it is counted as missing here.
    """
    w = plan.window_ns
    # A window is overdue iff end + look-back + grace <= now; ends are multiples of w.
    limit = now_ns - plan.lookback_ns - plan.grace_ns
    limit -= limit % w
    if tracking.end_ns is not None:
        limit = min(limit, tracking.end_ns)
    low = max(tracking.watermark_ns, tracking.start_ns)
    if limit <= low:
        return
    existing = set(
        session.scalars(
            select(WindowRow.start_ns).where(
                WindowRow.dc == plan.dc,
                WindowRow.aggregation == plan.aggregation,
                WindowRow.start_ns >= low,
                WindowRow.start_ns < limit,
            )
        )
    )
    cutoff = recoverable_after(plan, config, now_ns)
    lost = _unrecoverable_reason(config, plan.dc)
    rows = []
    for start in range(low, limit, w):
        if start in existing:
            continue
        gone = cutoff is not None and start + w <= cutoff
        rows.append(
            {
                "dc": plan.dc,
                "aggregation": plan.aggregation,
                "start_ns": start,
                "state": (WindowState.UNRECOVERABLE if gone else WindowState.MISSING).value,
                "reason": lost if gone else "nothing shipped by the deadline",
                "updated_ns": now_ns,
            }
        )
        if gone:
            result.unrecoverable += 1
        else:
            result.missing += 1
    for chunk in range(0, len(rows), 5_000):
        upsert(
            session,
            windows_table(),
            rows[chunk : chunk + 5_000],
            key=("dc", "aggregation", "start_ns"),
            update=(),
        )
    tracking.watermark_ns = limit


def _age_out(
    session: Session,
    config: FederationConfig,
    plan: TrackedPlan,
    now_ns: int,
    result: PlannerResult,
) -> None:
    cutoff = recoverable_after(plan, config, now_ns)
    if cutoff is None:
        return
    outcome = session.execute(
        update(WindowRow)
        .where(
            WindowRow.state.in_(NEEDS_BACKFILL),
            WindowRow.dc == plan.dc,
            WindowRow.aggregation == plan.aggregation,
            WindowRow.start_ns <= cutoff - plan.window_ns,
        )
        .values(
            state=WindowState.UNRECOVERABLE.value,
            reason=_unrecoverable_reason(config, plan.dc),
            updated_ns=now_ns,
        )
        .execution_options(synchronize_session=False)
    )
    result.unrecoverable += int(getattr(outcome, "rowcount", 0) or 0)


def unlocked_backfills(session: Session, *conditions: Any) -> list[int]:
    """The ids of backfill requests matching `conditions` that no other transaction holds, now
    locked by this one (`FOR UPDATE SKIP LOCKED` on PostgreSQL; SQLite has one writer)."""
    return list(
        session.scalars(
            select(BackfillRow.id)
            .where(*conditions)
            .order_by(BackfillRow.id)
            .with_for_update(skip_locked=True)
        )
    )


def _requeue(
    session: Session,
    now_ns: int,
    cleared: str,
    *conditions: Any,
    values: dict[str, Any] | None = None,
) -> int:
    """Put the requests matching `conditions` that no other transaction holds back in the
    queue, with column `cleared` reset (and `values` set); return how many."""
    # A request another transaction holds (a lease, a result, another planner re-queueing it)
    # is left to that transaction.
    ids = unlocked_backfills(session, *conditions)
    if ids:
        session.execute(
            update(BackfillRow)
            .where(BackfillRow.id.in_(ids))
            .values({"state": QUEUED, cleared: None, "updated_ns": now_ns, **(values or {})})
            .execution_options(synchronize_session=False)
        )
    return len(ids)


def requeue_expired_leases(session: Session, now_ns: int, *conditions: Any) -> int:
    """Return running requests (matching `conditions`) whose lease expired to the queue."""
    return _requeue(
        session,
        now_ns,
        "lease_expires_ns",
        BackfillRow.state == RUNNING,
        BackfillRow.lease_expires_ns < now_ns,
        *conditions,
    )


def _retry_failed(session: Session, now_ns: int) -> int:
    """Return failed requests whose back-off has expired to the queue, each for the version
    its DC is told to run now (unchanged where it is told to run none)."""
    desired = (
        select(DeploymentRow.desired_version)
        .where(
            DeploymentRow.dc == BackfillRow.dc,
            DeploymentRow.aggregation == BackfillRow.aggregation,
        )
        .scalar_subquery()
    )
    return _requeue(
        session,
        now_ns,
        "next_attempt_ns",
        BackfillRow.state == FAILED,
        BackfillRow.next_attempt_ns.is_not(None),
        BackfillRow.next_attempt_ns <= now_ns,
        values={"version": func.coalesce(desired, BackfillRow.version)},
    )


def _lock_dcs(session: Session, dcs: set[str]) -> None:
    """Hold the rows of `dcs` until the pass ends, taken in name order.

    `FOR NO KEY UPDATE` leaves the gateways' inserts of windows (whose foreign-key checks take
    a key-share lock on the DC) free to proceed.
    """
    if dcs:
        session.execute(
            select(DcRow.name)
            .where(DcRow.name.in_(sorted(dcs)))
            .order_by(DcRow.name)
            .with_for_update(key_share=True)
        ).all()


def _outstanding(session: Session, dcs: set[str]) -> dict[str, int]:
    if not dcs:
        return {}
    rows = session.execute(
        select(BackfillRow.dc, func.count())
        .where(
            BackfillRow.dc.in_(sorted(dcs)),
            or_(
                BackfillRow.state.in_((QUEUED, RUNNING)),
                and_(BackfillRow.state == FAILED, BackfillRow.next_attempt_ns.is_not(None)),
            ),
        )
        .group_by(BackfillRow.dc)
    ).all()
    return {dc: int(n) for dc, n in rows}


def _candidates(
    session: Session, pairs: list[tuple[str, str]]
) -> dict[tuple[str, str], list[tuple[int, int]]]:
    """(dc, aggregation) -> [(window id, start)] of missing or inconsistent windows to request,
    for the `pairs` this pass holds; the rows are locked, skipping those another transaction
    holds (a gateway recording a shipment, a hand-made request claiming them).

    A window whose last request failed for good is left alone until someone asks again by hand
    (`request_backfill`); its reason says so.
    """
    given_up = (
        select(BackfillRow.id)
        .where(BackfillRow.state == FAILED, BackfillRow.next_attempt_ns.is_(None))
        .scalar_subquery()
    )
    by_dc: dict[str, list[str]] = defaultdict(list)
    for dc, aggregation in pairs:
        by_dc[dc].append(aggregation)
    found: dict[tuple[str, str], list[tuple[int, int]]] = defaultdict(list)
    for dc, aggregations in sorted(by_dc.items()):
        query = (
            select(WindowRow.id, WindowRow.aggregation, WindowRow.start_ns)
            .where(
                WindowRow.state.in_(NEEDS_BACKFILL),
                WindowRow.dc == dc,
                WindowRow.aggregation.in_(sorted(aggregations)),
                or_(WindowRow.backfill_id.is_(None), WindowRow.backfill_id.not_in(given_up)),
            )
            .order_by(WindowRow.aggregation, WindowRow.start_ns)
            .with_for_update(skip_locked=True)
        )
        for row_id, aggregation, start in session.execute(query):
            found[(dc, aggregation)].append((row_id, start))
    return found


def queue_request(
    session: Session,
    *,
    dc: str,
    aggregation: str,
    version: str | None,
    start_ns: int,
    end_ns: int,
    origin: str,
    now_ns: int,
) -> int:
    backfill = BackfillRow(
        dc=dc,
        aggregation=aggregation,
        version=version,
        start_ns=start_ns,
        end_ns=end_ns,
        state=QUEUED,
        origin=origin,
        attempts=0,
        created_ns=now_ns,
        updated_ns=now_ns,
    )
    session.add(backfill)
    session.flush()
    return backfill.id


def claim_windows(
    session: Session, ids: list[int], backfill_id: int, now_ns: int, from_states: tuple[str, ...]
) -> int:
    claimed = 0
    for chunk in range(0, len(ids), 500):
        outcome = session.execute(
            update(WindowRow)
            .where(WindowRow.id.in_(ids[chunk : chunk + 500]), WindowRow.state.in_(from_states))
            .values(
                state=WindowState.BACKFILLING.value,
                backfill_id=backfill_id,
                reason=f"backfill #{backfill_id} requested",
                updated_ns=now_ns,
            )
            .execution_options(synchronize_session=False)
        )
        claimed += int(getattr(outcome, "rowcount", 0) or 0)
    return claimed


def desired_versions(session: Session) -> dict[tuple[str, str], str | None]:
    """(dc, aggregation) -> the version its agent is told to run (None: nothing)."""
    rows = session.execute(
        select(DeploymentRow.dc, DeploymentRow.aggregation, DeploymentRow.desired_version)
    ).all()
    return {(dc, aggregation): version for dc, aggregation, version in rows}


def _pieces(
    plan: TrackedPlan, starts: Iterable[int], cutoff: int | None, max_windows: int
) -> Iterator[tuple[int, int]]:
    """The ranges to request for windows starting at `starts`: coalesced, widened by the
    look-back, cut into at most `max_windows` windows, none reaching past `cutoff`."""
    w = plan.window_ns
    for span in coalesce(Window(start, w) for start in starts):
        for piece_start, piece_end in widen(span, plan.lookback_ns, max_windows * w, size_ns=w):
            if cutoff is not None:
                # The look-back overlap never reaches into data retention may have dropped:
                # the earliest recoverable window starts at align(cutoff).
                piece_start = max(piece_start, align(cutoff, w))
            if piece_start < piece_end:
                yield piece_start, piece_end


def plan_backfills(
    ledger: Ledger,
    config: FederationConfig,
    now_ns: int,
    settings: PlannerSettings | None = None,
) -> PlannerResult:
    """Run one planner pass (see the module docstring) and return what it did.

    Idempotent: a second pass at the same instant finds nothing new and queues nothing.
    """
    settings = settings or PlannerSettings()
    plans = {(p.dc, p.aggregation): p for p in resolve_tracked(config)}
    result = PlannerResult()
    with ledger.session(write=True) as session:
        trackers = session.scalars(
            select(TrackingRow)
            .order_by(TrackingRow.dc, TrackingRow.aggregation)
            .with_for_update(skip_locked=True)
        ).all()
        versions = desired_versions(session)
        active = []
        for tracking in trackers:
            key = (tracking.dc, tracking.aggregation)
            plan = plans.get(key)
            if plan is None or plan.window_ns != tracking.window_ns:
                continue
            if key in versions and versions[key] is None:
                # Not deployed there (added and not rolled out yet, or removed and rolled
                # back): no window of it is expected.
                continue
            active.append(plan)
            _advance(session, config, tracking, plan, now_ns, result)
            _age_out(session, config, plan, now_ns, result)
        result.retried += _retry_failed(session, now_ns)
        result.requeued += requeue_expired_leases(session, now_ns)
        dcs = {plan.dc for plan in active}
        _lock_dcs(session, dcs)
        outstanding = _outstanding(session, dcs)
        candidates = _candidates(session, [(plan.dc, plan.aggregation) for plan in active])
        for plan in active:
            found = candidates.get((plan.dc, plan.aggregation))
            if not found:
                continue
            w = plan.window_ns
            by_start = {start: row_id for row_id, start in found}
            version = versions.get((plan.dc, plan.aggregation)) or plan.version
            cutoff = recoverable_after(plan, config, now_ns)
            for piece_start, piece_end in _pieces(plan, by_start, cutoff, settings.max_windows):
                ids = [by_start[s] for s in range(piece_start, piece_end, w) if s in by_start]
                if not ids:
                    continue
                if outstanding.get(plan.dc, 0) >= settings.max_outstanding:
                    result.throttled += len(ids)
                    continue
                backfill_id = queue_request(
                    session,
                    dc=plan.dc,
                    aggregation=plan.aggregation,
                    version=version,
                    start_ns=piece_start,
                    end_ns=piece_end,
                    origin="planner",
                    now_ns=now_ns,
                )
                claimed = claim_windows(session, ids, backfill_id, now_ns, NEEDS_BACKFILL)
                if claimed != len(ids):
                    # Not expected: the candidates are locked by this pass. A request that
                    # re-runs windows claimed elsewhere is harmless, so only say so.
                    log.warning(
                        "backfill #%d claimed %d of %d windows", backfill_id, claimed, len(ids)
                    )
                outstanding[plan.dc] = outstanding.get(plan.dc, 0) + 1
                result.requested.append(
                    BackfillRequest(
                        backfill_id, plan.dc, plan.aggregation, version, piece_start, piece_end
                    )
                )
    if result.requested or result.missing or result.unrecoverable:
        log.info(
            "planner: %d missing, %d unrecoverable, %d requests queued, %d windows throttled",
            result.missing,
            result.unrecoverable,
            len(result.requested),
            result.throttled,
        )
    return result
