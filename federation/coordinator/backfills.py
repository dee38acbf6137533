"""The backfill queue as agents and operators see it: lease, report a result, request by hand."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from sqlalchemy import select, update
from sqlalchemy.orm import Session

from federation.config import FederationConfig
from federation.config.resolve import resolve_detection, resolve_plan
from federation.coordinator.ledger import BackfillRow, Ledger, TrackingRow, WindowRow
from federation.coordinator.planner import (
    DONE,
    FAILED,
    QUEUED,
    RUNNING,
    BackfillRequest,
    PlannerSettings,
    claim_windows,
    desired_versions,
    queue_request,
    requeue_expired_leases,
)
from federation.coordinator.tracking import NEEDS_BACKFILL, WindowState
from federation.core.detection_plan import TrackedPlan
from federation.core.windows import windows_between
from federation.errors import FederationError, InvalidInput

_ERROR_CHARS = 2_000
_MAX_WINDOWS_REPORTED = 2**31 - 1  # `backfills.windows_reported` is a 32-bit INTEGER

# The windows a hand-made request claims: what the planner would request, and unrecoverable ones.
_CLAIMABLE_BY_HAND = (*NEEDS_BACKFILL, WindowState.UNRECOVERABLE.value)


class BackfillNotFound(FederationError):
    """No backfill request with that id."""


class NotYourBackfill(FederationError):
    """The backfill belongs to another DC."""


@dataclass(frozen=True)
class RunningBackfill:
    """A request leased to a DC's agent that has not reported a result yet."""

    id: int
    dc: str
    aggregation: str
    start_ns: int
    end_ns: int
    attempts: int
    leased_ns: int
    """When the current lease was taken (coordinator clock)."""
    lease_expires_ns: int | None


def running_backfills(session: Session, dc: str | None = None) -> list[RunningBackfill]:
    """Every (or one DC's) leased request without a result, oldest lease first."""
    query = select(BackfillRow).where(BackfillRow.state == RUNNING)
    if dc is not None:
        query = query.where(BackfillRow.dc == dc)
    rows = session.scalars(query.order_by(BackfillRow.updated_ns, BackfillRow.id)).all()
    # `updated_ns` of a running request is when it was leased: nothing else touches it then.
    return [
        RunningBackfill(
            row.id,
            row.dc,
            row.aggregation,
            row.start_ns,
            row.end_ns,
            row.attempts,
            row.updated_ns,
            row.lease_expires_ns,
        )
        for row in rows
    ]


def lease_backfills(
    ledger: Ledger,
    dc: str,
    now_ns: int,
    *,
    settings: PlannerSettings | None = None,
    limit: int = 10,
) -> list[BackfillRequest]:
    """Lease up to `limit` queued requests of `dc` to its agent, oldest first.

    Each becomes `running` until now + lease; a lease that expires without a result returns the
    request to the queue (here, and in every planner pass). Rows are claimed with
    `FOR UPDATE SKIP LOCKED`, so two agents of one DC never lease the same request.
    """
    settings = settings or PlannerSettings()
    with ledger.session(write=True) as session:
        requeue_expired_leases(session, now_ns, BackfillRow.dc == dc)
        rows = session.scalars(
            select(BackfillRow)
            .where(BackfillRow.dc == dc, BackfillRow.state == QUEUED)
            .order_by(BackfillRow.id)
            .limit(limit)
            .with_for_update(skip_locked=True)
        ).all()
        leased = []
        for row in rows:
            row.state = RUNNING
            row.attempts += 1
            row.lease_expires_ns = now_ns + settings.lease_ns
            row.updated_ns = now_ns
            leased.append(
                BackfillRequest(
                    row.id, row.dc, row.aggregation, row.version, row.start_ns, row.end_ns
                )
            )
        return leased


def record_backfill_result(
    ledger: Ledger,
    dc: str,
    backfill_id: int,
    result: dict[str, Any],
    now_ns: int,
    *,
    settings: PlannerSettings | None = None,
) -> None:
    """Record an agent's result for one request it leased.

    `result` is `{"status": "done"|"failed", "windows": int, "error": str}`. Done: windows of
    the request that still have no manifest go back to `missing` (the planner asks again).
    Failed: retried with exponential back-off (base · 2^(attempts-1), capped) until
    `max_attempts`, then given up for good with the error as the windows' reason. Raises
    BackfillNotFound, NotYourBackfill (the request is another DC's) or InvalidInput.
    """
    settings = settings or PlannerSettings()
    status = result.get("status")
    if status not in (DONE, FAILED):
        raise InvalidInput("backfill result: status: must be 'done' or 'failed'")
    windows = result.get("windows", 0)
    if (
        not isinstance(windows, int)
        or isinstance(windows, bool)
        or not 0 <= windows <= _MAX_WINDOWS_REPORTED
    ):
        raise InvalidInput(
            f"backfill result: windows: must be an integer from 0 to {_MAX_WINDOWS_REPORTED}"
        )
    error = str(result.get("error") or "")[:_ERROR_CHARS]
    with ledger.session(write=True) as session:
        row = session.get(BackfillRow, backfill_id, with_for_update=True)
        if row is None:
            raise BackfillNotFound(f"no backfill #{backfill_id}")
        if row.dc != dc:
            raise NotYourBackfill(f"backfill #{backfill_id} is not {dc}'s")
        if row.state == DONE or (row.state == FAILED and row.next_attempt_ns is None):
            return
        row.windows_reported = windows
        row.lease_expires_ns = None
        row.updated_ns = now_ns
        stuck = (
            update(WindowRow)
            .where(
                WindowRow.backfill_id == backfill_id,
                WindowRow.state == WindowState.BACKFILLING.value,
            )
            .execution_options(synchronize_session=False)
        )
        if status == DONE:
            row.state = DONE
            row.error = None
            session.execute(
                stuck.values(
                    state=WindowState.MISSING.value,
                    reason=f"backfill #{backfill_id} finished but no manifest arrived",
                    updated_ns=now_ns,
                )
            )
            return
        row.state = FAILED
        row.error = error
        attempts = max(row.attempts, 1)
        if attempts >= settings.max_attempts:
            row.next_attempt_ns = None
            session.execute(
                stuck.values(
                    state=WindowState.MISSING.value,
                    reason=(
                        f"backfill #{backfill_id} failed {attempts} times, given up "
                        f"(request it again with `federation backfill`): {error}"
                    ),
                    updated_ns=now_ns,
                )
            )
            return
        delay = min(settings.retry_base_ns * 2 ** (attempts - 1), settings.retry_max_ns)
        row.next_attempt_ns = now_ns + delay
        session.execute(
            stuck.values(
                reason=f"backfill #{backfill_id} failed (attempt {attempts}), retrying: {error}",
                updated_ns=now_ns,
            )
        )


def request_backfill(
    ledger: Ledger,
    config: FederationConfig,
    dc: str,
    aggregation: str,
    start_ns: int,
    end_ns: int,
    now_ns: int,
    *,
    settings: PlannerSettings | None = None,
) -> list[BackfillRequest]:
    """Queue a hand-made request for every whole window in `[start_ns, end_ns)`.

    The range is cut into requests of at most `max_windows` windows (no look-back added: the
    operator chose the range). Windows before the start of the DC's tracking of the aggregation
    become expected (tracking starts with the range). Windows in it that are missing, inconsistent, given up or
    unrecoverable are claimed (`backfilling`), so the planner does not request them again;
    verified windows are simply re-shipped. Raises InvalidInput for an unknown DC or
    aggregation or a range holding no whole window.
    """
    settings = settings or PlannerSettings()
    plan: TrackedPlan
    if aggregation in config.aggregations:
        plan = resolve_plan(config, aggregation, dc)
    elif aggregation in config.detections:
        plan = resolve_detection(config, aggregation, dc)
    else:
        raise InvalidInput(f"unknown aggregation or detection {aggregation!r}")
    w = plan.window_ns
    whole = windows_between(start_ns, end_ns, w)
    if not whole:
        raise InvalidInput("the range holds no whole window of this aggregation")
    first, last_end = whole[0].start_ns, whole[-1].end_ns
    cap = settings.max_windows * w
    requests = []
    with ledger.session(write=True) as session:
        tracking = session.get(TrackingRow, (dc, aggregation), with_for_update=True)
        if tracking is None:
            raise InvalidInput(
                f"{dc}/{aggregation} is not tracked yet: start the coordinator once, or roll "
                "the aggregation out to this DC"
            )
        if first < tracking.start_ns:
            # Asking for windows is expecting them: status and reports count them from now
            # on, and the planner classifies any of them the backfill does not ship.
            tracking.start_ns = first
            tracking.watermark_ns = min(tracking.watermark_ns, first)
        version = desired_versions(session).get((dc, aggregation)) or plan.version
        for piece_start in range(first, last_end, cap):
            piece_end = min(piece_start + cap, last_end)
            backfill_id = queue_request(
                session,
                dc=dc,
                aggregation=aggregation,
                version=version,
                start_ns=piece_start,
                end_ns=piece_end,
                origin="manual",
                now_ns=now_ns,
            )
            ids = list(
                session.scalars(
                    select(WindowRow.id)
                    .where(
                        WindowRow.dc == dc,
                        WindowRow.aggregation == aggregation,
                        WindowRow.start_ns >= piece_start,
                        WindowRow.start_ns < piece_end,
                        WindowRow.state.in_(_CLAIMABLE_BY_HAND),
                    )
                    .with_for_update(skip_locked=True)
                )
            )
            claim_windows(session, ids, backfill_id, now_ns, _CLAIMABLE_BY_HAND)
            requests.append(
                BackfillRequest(backfill_id, dc, aggregation, version, piece_start, piece_end)
            )
    return requests
