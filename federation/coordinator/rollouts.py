"""Staged rollouts of plan versions through the ledger: canary, advance, rollback.

The config the coordinator holds declares, per (dc, aggregation), one plan version, or none
when it no longer declares the aggregation; the ledger's `deployments` row says which version
that DC's agent is told to run (`desired_version`, None: nothing) and which it ran before
(`previous_version`). A version the config declares but the ledger does not desire yet is
*pending*: a changed aggregation, an added one (desired None, declared X) and a removed one
(desired X, declared None) alike. `start_rollout` makes the pending versions desired in one DC
(the canary), `advance_rollout` in every other DC of the scope, `rollback_rollout` undoes the
last rollout. Each moves all the aggregations of a DC in one transaction, so an agent is never
told to run part of a change.

Every rollout is a `rollouts` row holding the moves it made, each (dc, aggregation, from, to),
and how far it got:

    canary ──advance──> advanced
       │                   │
       └──────rollback─────┴──> rolled_back

A rollout left at `canary` (its client interrupted) is resumed by starting again (the canary's
moves are checked, then the rest advance) or undone by a rollback. A rollback only ever puts
back the `from` version of a move, i.e. what was desired before that rollout, and only where the
ledger still desires the move's `to`. Nothing is held in memory: a rollout is where the ledger's
rows stand, so any coordinator replica can advance or roll back what another started.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from federation.config import FederationConfig
from federation.config.resolve import resolve_tracked
from federation.coordinator.desired import start_tracking
from federation.coordinator.ledger import DeploymentRow, Ledger, RolloutRow, TrackingRow
from federation.core.detection_plan import TrackedPlan
from federation.core.windows import align
from federation.errors import FederationError, InvalidInput

CANARY = "canary"
ADVANCED = "advanced"
ROLLED_BACK = "rolled_back"

Key = tuple[str, str]


class RolloutConflict(FederationError):
    """The rollout cannot start as asked (e.g. another one waits at its canary)."""


@dataclass(frozen=True)
class VersionMove:
    """One (dc, aggregation) whose desired version a rollout step changed (None: nothing)."""

    dc: str
    aggregation: str
    from_version: str | None
    to_version: str | None

    @property
    def change(self) -> str:
        """`added`, `removed` or `changed`."""
        if self.from_version is None:
            return "added"
        return "removed" if self.to_version is None else "changed"

    def as_dict(self) -> dict[str, Any]:
        """Plain JSON-ready data."""
        return {
            "dc": self.dc,
            "aggregation": self.aggregation,
            "from": self.from_version,
            "to": self.to_version,
            "change": self.change,
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> VersionMove:
        return cls(str(data["dc"]), str(data["aggregation"]), data["from"], data["to"])


@dataclass
class RolloutStep:
    """What one step did: the versions it moved, the DCs still waiting for theirs, and the
    rollout it belongs to (`resumed` when it continues one left at its canary)."""

    moved: list[VersionMove] = field(default_factory=list)
    canary: str | None = None
    waiting: list[str] = field(default_factory=list)
    rollout: int | None = None
    state: str | None = None
    resumed: bool = False
    canary_moves: list[VersionMove] = field(default_factory=list)
    scope: dict[str, Any] = field(default_factory=dict)
    pending_elsewhere: list[str] = field(default_factory=list)
    skipped: list[VersionMove] = field(default_factory=list)

    def as_dict(self) -> dict[str, Any]:
        """Plain JSON-ready data (the body the rollout endpoints answer with)."""
        return {
            "rollout": self.rollout,
            "state": self.state,
            "canary": self.canary,
            "resumed": self.resumed,
            "moved": [m.as_dict() for m in self.moved],
            "canary_moves": [m.as_dict() for m in self.canary_moves],
            "waiting": self.waiting,
            "scope": self.scope,
            "pending_elsewhere": self.pending_elsewhere,
            "skipped": [m.as_dict() for m in self.skipped],
        }


@dataclass(frozen=True)
class Scope:
    """The (dc, aggregation) pairs a rollout covers, with the version the config declares."""

    declared: dict[Key, str | None]
    plans: dict[Key, TrackedPlan]
    aggregations: list[str] | None
    dcs: list[str] | None

    def as_dict(self) -> dict[str, Any]:
        return {"aggregations": self.aggregations, "dcs": self.dcs}


def _scope(
    session: Session,
    config: FederationConfig,
    aggregations: Sequence[str] | None,
    dcs: Sequence[str] | None,
) -> Scope:
    """The scope asked for: every declared plan, and every deployment of an aggregation the
    config no longer declares (declared None). InvalidInput for an aggregation neither the
    config nor the ledger knows, ConfigError for an unknown DC."""
    deployed = {
        (dc, agg)
        for dc, agg in session.execute(select(DeploymentRow.dc, DeploymentRow.aggregation))
    }
    known = set(config.aggregations) | set(config.detections) | {agg for _, agg in deployed}
    for name in aggregations or ():
        if name not in known:
            raise InvalidInput(f"unknown aggregation {name!r} (known: {', '.join(sorted(known))})")
    for dc in dcs or ():
        config.dc(dc)
    wanted_aggs = set(aggregations) if aggregations else None
    wanted_dcs = set(dcs) if dcs else None

    def inside(dc: str, aggregation: str) -> bool:
        return (wanted_aggs is None or aggregation in wanted_aggs) and (
            wanted_dcs is None or dc in wanted_dcs
        )

    plans = {
        (p.dc, p.aggregation): p for p in resolve_tracked(config) if inside(p.dc, p.aggregation)
    }
    declared: dict[Key, str | None] = {key: p.version for key, p in plans.items()}
    for key in deployed:
        if key not in declared and inside(*key) and key[0] in config.fleet.dcs:
            declared[key] = None
    return Scope(
        declared, plans, sorted(aggregations) if aggregations else None,
        sorted(dcs) if dcs else None,
    )  # fmt: skip


def _deployments(session: Session, keys: set[Key]) -> dict[Key, DeploymentRow]:
    # Locked in (dc, aggregation) order: two steps that lock several rows cannot deadlock.
    rows = session.scalars(
        select(DeploymentRow)
        .where(DeploymentRow.dc.in_(sorted({dc for dc, _ in keys})))
        .order_by(DeploymentRow.dc, DeploymentRow.aggregation)
        .with_for_update()
    )
    return {(d.dc, d.aggregation): d for d in rows if (d.dc, d.aggregation) in keys}


def _pending(scope: Scope, deployments: dict[Key, DeploymentRow]) -> dict[str, list[VersionMove]]:
    """Per DC, the moves that would bring the ledger's desired versions to the config's."""
    pending: dict[str, list[VersionMove]] = {}
    for key, version in sorted(scope.declared.items()):
        deployment = deployments.get(key)
        current = None if deployment is None else deployment.desired_version
        if current != version:
            pending.setdefault(key[0], []).append(VersionMove(*key, current, version))
    return pending


def _track_from(plan: TrackedPlan, config: FederationConfig, now_ns: int, full: bool) -> int:
    """Where tracking of an aggregation added to a DC starts: its look-back before now, or with
    `full` the oldest window whose raw data is still within the DC's retention."""
    start = now_ns - plan.lookback_ns
    raw = config.policy_for(plan.dc).raw
    if full and raw.retention:
        # Recoverable iff the window's end is younger than retention minus one shard.
        start = now_ns - (raw.retention - raw.shard_duration) + plan.window_ns
    return align(start, plan.window_ns)


def _apply(
    session: Session,
    moves: Sequence[VersionMove],
    scope: Scope,
    config: FederationConfig,
    now_ns: int,
    backfill_retention: bool = False,
) -> None:
    """Write `moves` to the deployment rows. A DC given an aggregation it never tracked starts
    tracking it over its look-back (or its raw retention), so the planner backfills those
    windows; one whose aggregation is removed stops expecting windows from the current one on
    (its history stays), and one given it back expects them again."""
    for move in moves:
        key = (move.dc, move.aggregation)
        deployment = session.get(DeploymentRow, key)
        if deployment is None:
            deployment = DeploymentRow(dc=move.dc, aggregation=move.aggregation)
            session.add(deployment)
        deployment.previous_version = move.from_version
        deployment.desired_version = move.to_version
        deployment.changed_ns = now_ns
        plan = scope.plans.get(key)
        tracking = session.get(TrackingRow, key)
        if tracking is not None:
            tracking.end_ns = (
                None if move.to_version is not None else align(now_ns, tracking.window_ns)
            )
        elif move.to_version is not None and plan is not None:
            start_tracking(session, plan, _track_from(plan, config, now_ns, backfill_retention))


def _last(session: Session) -> RolloutRow | None:
    return session.scalar(select(RolloutRow).order_by(RolloutRow.id.desc()).limit(1))


def _moves_of(row: RolloutRow) -> list[VersionMove]:
    return [VersionMove.from_dict(m) for m in row.moves]


def start_rollout(
    ledger: Ledger,
    config: FederationConfig,
    now_ns: int,
    *,
    aggregations: Sequence[str] | None = None,
    canary: str | None = None,
    dcs: Sequence[str] | None = None,
    backfill_retention: bool = False,
) -> RolloutStep:
    """Make the pending versions of the scope desired in the canary DC only.

    The canary defaults to the first DC (by name) with something pending; every other DC keeps
    its desired version and is listed in `waiting`. When the last rollout was left at its
    canary, it is resumed instead (`resumed`, its canary's moves in `canary_moves`, nothing
    moved) with the scope it started with. A scope with nothing pending moves nothing. Raises
    InvalidInput for an unknown aggregation or DC (or a canary outside `dcs`), and
    RolloutConflict when the canary has nothing pending while other DCs do, when another canary
    than the waiting rollout's is asked for, or when the config changed for the waiting
    rollout's canary since it started.
    """
    if canary is not None:
        config.dc(canary)
        if dcs and canary not in dcs:
            raise InvalidInput(f"canary {canary} is not among the DCs of the rollout")
    result = RolloutStep()
    with ledger.session(write=True) as session:
        scope = _scope(session, config, aggregations, dcs)
        last = _last(session)
        if last is not None and last.state == CANARY:
            return _resume(session, config, last, canary, result)
        result.scope = scope.as_dict()
        pending = _pending(scope, _deployments(session, set(scope.declared)))
        if not pending:
            return result
        chosen = canary if canary is not None else min(pending)
        if chosen not in pending:
            raise RolloutConflict(
                f"canary {chosen} has nothing to roll out; pending in: {', '.join(sorted(pending))}"
            )
        result.canary = chosen
        result.moved = pending[chosen]
        result.canary_moves = pending[chosen]
        _apply(session, result.moved, scope, config, now_ns, backfill_retention)
        result.waiting = sorted(dc for dc in pending if dc != chosen)
        row = RolloutRow(
            state=CANARY,
            canary=chosen,
            scope={**scope.as_dict(), "backfill_retention": backfill_retention},
            moves=[m.as_dict() for m in result.moved],
            started_ns=now_ns,
            updated_ns=now_ns,
        )
        session.add(row)
        session.flush()
        result.rollout, result.state = row.id, row.state
    return result


def _resume(
    session: Session,
    config: FederationConfig,
    last: RolloutRow,
    canary: str | None,
    result: RolloutStep,
) -> RolloutStep:
    if canary is not None and canary != last.canary:
        raise RolloutConflict(
            f"rollout #{last.id} is waiting at its canary {last.canary}: resume it with "
            "`federation rollout apply` or undo it with `federation rollout rollback`"
        )
    scope = _scope(session, config, last.scope.get("aggregations"), last.scope.get("dcs"))
    pending = _pending(scope, _deployments(session, set(scope.declared)))
    if last.canary in pending:
        # The config changed since the canary was checked: advancing would take the new
        # change everywhere without a canary.
        raise RolloutConflict(
            f"rollout #{last.id} is waiting at its canary {last.canary}, and the config changed "
            "since: undo it with `federation rollout rollback`, then roll out again"
        )
    result.rollout, result.state, result.resumed = last.id, last.state, True
    result.canary = last.canary
    result.canary_moves = _moves_of(last)
    result.scope = scope.as_dict()
    result.waiting = sorted(dc for dc in pending if dc != last.canary)
    return result


def advance_rollout(
    ledger: Ledger,
    config: FederationConfig,
    now_ns: int,
    *,
    aggregations: Sequence[str] | None = None,
    dcs: Sequence[str] | None = None,
) -> RolloutStep:
    """Make the pending versions of the scope desired in every DC of it; idempotent.

    The moves join the rollout waiting at its canary (which becomes `advanced`), or a new
    rollout when none waits. `pending_elsewhere` names the DCs outside the scope that still
    have something pending.
    """
    result = RolloutStep()
    with ledger.session(write=True) as session:
        scope = _scope(session, config, aggregations, dcs)
        result.scope = scope.as_dict()
        last = _last(session)
        open_row = last if last is not None and last.state == CANARY else None
        full = bool(open_row is not None and open_row.scope.get("backfill_retention"))
        for moves in _pending(scope, _deployments(session, set(scope.declared))).values():
            _apply(session, moves, scope, config, now_ns, full)
            result.moved.extend(moves)
        everywhere = _scope(session, config, aggregations, None)
        result.pending_elsewhere = sorted(
            set(_pending(everywhere, _deployments(session, set(everywhere.declared))))
        )
        if open_row is None and not result.moved:
            return result
        if open_row is None:
            open_row = RolloutRow(canary=None, scope=scope.as_dict(), moves=[], started_ns=now_ns)
            session.add(open_row)
        open_row.state = ADVANCED
        open_row.moves = [*open_row.moves, *(m.as_dict() for m in result.moved)]
        open_row.updated_ns = now_ns
        session.flush()
        result.rollout, result.state, result.canary = open_row.id, ADVANCED, open_row.canary
    return result


def rollback_rollout(
    ledger: Ledger,
    config: FederationConfig,
    now_ns: int,
    *,
    aggregations: Sequence[str] | None = None,
    dcs: Sequence[str] | None = None,
) -> RolloutStep:
    """Undo the last rollout (of the scope asked, by default all of it).

    Each of its moves (dc, aggregation, from -> to) goes back to `from` — an added aggregation
    is removed again, a removed one restored, a changed one reverted — but only where the
    ledger still desires `to` (a move made obsolete since is listed in `skipped`). The rollout
    becomes `rolled_back` once none of its moves is left in force; rolling back again then
    moves nothing. Raises InvalidInput for an unknown DC.
    """
    for dc in dcs or ():
        config.dc(dc)
    result = RolloutStep()
    with ledger.session(write=True) as session:
        last = _last(session)
        if last is None or last.state == ROLLED_BACK:
            if last is not None:
                result.rollout, result.state = last.id, last.state
            return result
        moves = _moves_of(last)
        keys = {(m.dc, m.aggregation) for m in moves}
        deployments = _deployments(session, keys)
        undo, left = [], 0
        for move in moves:
            deployment = deployments.get((move.dc, move.aggregation))
            current = None if deployment is None else deployment.desired_version
            selected = (not aggregations or move.aggregation in aggregations) and (
                not dcs or move.dc in dcs
            )
            if current != move.to_version:
                result.skipped.append(move)
            elif selected:
                undo.append(VersionMove(move.dc, move.aggregation, current, move.from_version))
            else:
                left += 1
        _apply(session, undo, Scope({}, {}, None, None), config, now_ns)
        result.moved = undo
        if not left:
            last.state = ROLLED_BACK
        last.updated_ns = now_ns
        result.rollout, result.state, result.canary = last.id, last.state, last.canary
    return result


def last_rollout(ledger: Ledger) -> dict[str, Any] | None:
    """The last rollout as plain data (id, state, canary, scope, moves, times), or None."""
    with ledger.session() as session:
        row = _last(session)
        if row is None:
            return None
        return {
            "id": row.id,
            "state": row.state,
            "canary": row.canary,
            "scope": row.scope,
            "moves": row.moves,
            "started_ns": row.started_ns,
            "updated_ns": row.updated_ns,
        }
