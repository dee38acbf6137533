"""Staged rollouts of plan versions through the ledger: canary, advance, rollback.

The config the coordinator holds declares, per (dc, aggregation), one plan version; the ledger's
`deployments` row says which version that DC's agent is told to run (`desired_version`) and
which it ran before (`previous_version`). A version the config declares but the ledger does not
yet desire is *pending*. `start_rollout` makes the pending versions desired in one DC (the
canary), `advance_rollout` in every other DC of the scope, `rollback_rollout` puts back the
previous versions. Each moves all the aggregations of a DC in one transaction, so an agent is
never told to run part of a change. Nothing is held in memory: a rollout is where the ledger's
rows stand, so any coordinator replica can advance or roll back what another started.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from federation.config import FederationConfig
from federation.coordinator.ledger import DeploymentRow, Ledger
from federation.errors import FederationError, InvalidInput
from federation.plan import resolve_all


class RolloutConflict(FederationError):
    """The rollout cannot start as asked (e.g. the canary has nothing to roll out)."""


@dataclass(frozen=True)
class VersionMove:
    """One (dc, aggregation) whose desired version a rollout step changed."""

    dc: str
    aggregation: str
    from_version: str | None
    to_version: str

    def as_dict(self) -> dict[str, Any]:
        """Plain JSON-ready data."""
        return {
            "dc": self.dc,
            "aggregation": self.aggregation,
            "from": self.from_version,
            "to": self.to_version,
        }


@dataclass
class RolloutStep:
    """What one step did: the versions it moved and the DCs still waiting for theirs."""

    moved: list[VersionMove] = field(default_factory=list)
    canary: str | None = None
    waiting: list[str] = field(default_factory=list)

    def as_dict(self) -> dict[str, Any]:
        """Plain JSON-ready data (the body the rollout endpoints answer with)."""
        return {
            "canary": self.canary,
            "moved": [m.as_dict() for m in self.moved],
            "waiting": self.waiting,
        }


def _scope(
    config: FederationConfig,
    aggregations: Sequence[str] | None,
    dcs: Sequence[str] | None,
) -> dict[tuple[str, str], str]:
    """(dc, aggregation) -> the config's version, for the scope asked; InvalidInput for an
    unknown aggregation, ConfigError for an unknown DC."""
    for name in aggregations or ():
        if name not in config.aggregations:
            known = ", ".join(sorted(config.aggregations))
            raise InvalidInput(f"unknown aggregation {name!r} (known: {known})")
    for dc in dcs or ():
        config.dc(dc)
    wanted_aggs = set(aggregations) if aggregations else None
    wanted_dcs = set(dcs) if dcs else None
    return {
        (p.dc, p.aggregation): p.version
        for p in resolve_all(config)
        if (wanted_aggs is None or p.aggregation in wanted_aggs)
        and (wanted_dcs is None or p.dc in wanted_dcs)
    }


def _deployments(session: Session, keys: set[tuple[str, str]]) -> dict[tuple[str, str], Any]:
    # Locked in (dc, aggregation) order: two steps that lock several rows cannot deadlock.
    rows = session.scalars(
        select(DeploymentRow)
        .where(DeploymentRow.dc.in_(sorted({dc for dc, _ in keys})))
        .order_by(DeploymentRow.dc, DeploymentRow.aggregation)
        .with_for_update()
    )
    return {(d.dc, d.aggregation): d for d in rows if (d.dc, d.aggregation) in keys}


def _pending(
    scope: dict[tuple[str, str], str], deployments: dict[tuple[str, str], Any]
) -> dict[str, list[tuple[Any, str]]]:
    """Per DC, the deployments whose desired version is not the config's (and that version)."""
    pending: dict[str, list[tuple[Any, str]]] = {}
    for key, version in sorted(scope.items()):
        deployment = deployments.get(key)
        if deployment is not None and deployment.desired_version != version:
            pending.setdefault(key[0], []).append((deployment, version))
    return pending


def _move(moves: list[tuple[Any, str]], now_ns: int, result: RolloutStep) -> None:
    for deployment, version in moves:
        result.moved.append(
            VersionMove(deployment.dc, deployment.aggregation, deployment.desired_version, version)
        )
        deployment.previous_version = deployment.desired_version
        deployment.desired_version = version
        deployment.changed_ns = now_ns


def pending_versions(
    ledger: Ledger,
    config: FederationConfig,
    *,
    aggregations: Sequence[str] | None = None,
    dcs: Sequence[str] | None = None,
) -> list[VersionMove]:
    """The version moves a rollout of this scope would make; changes nothing."""
    scope = _scope(config, aggregations, dcs)
    with ledger.session() as session:
        rows = session.scalars(select(DeploymentRow)).all()
        deployments = {(d.dc, d.aggregation): d for d in rows}
        return [
            VersionMove(d.dc, d.aggregation, d.desired_version, version)
            for moves in _pending(scope, deployments).values()
            for d, version in moves
        ]


def start_rollout(
    ledger: Ledger,
    config: FederationConfig,
    now_ns: int,
    *,
    aggregations: Sequence[str] | None = None,
    canary: str | None = None,
    dcs: Sequence[str] | None = None,
) -> RolloutStep:
    """Make the pending versions of the scope desired in the canary DC only.

    The canary defaults to the first DC (by name) with something pending; every other DC keeps
    its desired version and is listed in `waiting`. A scope with nothing pending moves nothing.
    Raises InvalidInput for an unknown aggregation or DC (or a canary outside `dcs`), and
    RolloutConflict when the canary has nothing pending while other DCs do.
    """
    if canary is not None:
        config.dc(canary)
        if dcs and canary not in dcs:
            raise InvalidInput(f"canary {canary} is not among the DCs of the rollout")
    scope = _scope(config, aggregations, dcs)
    result = RolloutStep()
    with ledger.session(write=True) as session:
        pending = _pending(scope, _deployments(session, set(scope)))
        if not pending:
            return result
        chosen = canary if canary is not None else min(pending)
        if chosen not in pending:
            raise RolloutConflict(
                f"canary {chosen} has nothing to roll out; pending in: {', '.join(sorted(pending))}"
            )
        result.canary = chosen
        _move(pending[chosen], now_ns, result)
        result.waiting = sorted(dc for dc in pending if dc != chosen)
    return result


def advance_rollout(
    ledger: Ledger,
    config: FederationConfig,
    now_ns: int,
    *,
    aggregations: Sequence[str] | None = None,
    dcs: Sequence[str] | None = None,
) -> RolloutStep:
    """Make the pending versions of the scope desired in every DC of it; idempotent."""
    scope = _scope(config, aggregations, dcs)
    result = RolloutStep()
    with ledger.session(write=True) as session:
        for moves in _pending(scope, _deployments(session, set(scope))).values():
            _move(moves, now_ns, result)
    return result


def rollback_rollout(
    ledger: Ledger,
    config: FederationConfig,
    now_ns: int,
    *,
    aggregations: Sequence[str] | None = None,
    dcs: Sequence[str] | None = None,
) -> RolloutStep:
    """Make the previous version desired again wherever the config's version was rolled out.

    Only a (dc, aggregation) that desires the config's version and has a different previous
    one moves; the version rolled back becomes its previous one (the gateway keeps accepting
    its last windows). Rolling back twice does nothing the second time, and DCs the rollout
    never reached are left alone.
    """
    scope = _scope(config, aggregations, dcs)
    result = RolloutStep()
    with ledger.session(write=True) as session:
        for key, deployment in sorted(_deployments(session, set(scope)).items()):
            previous = deployment.previous_version
            if deployment.desired_version != scope[key] or previous in (None, scope[key]):
                continue
            _move([(deployment, previous)], now_ns, result)
    return result
