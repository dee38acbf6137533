"""Reloading the config directory a coordinator was started with, and what that changes per DC.

`reload_config` validates the directory fully (every file, every plan for every DC, and what a
running coordinator cannot take without a restart) and either raises `ConfigProblems` listing
every problem, changing nothing, or records the new desired state (`sync_desired`) and swaps the
coordinator's config. Retention takes effect at once (agents pull it on their next reconcile;
a shrink only where the reload grants it, since shrinking deletes data); an added, changed or
removed aggregation only takes effect through a rollout, so the diff lists it until then.
`dry_run` computes the same diff and changes nothing.
"""

from __future__ import annotations

from collections.abc import Callable, Collection
from dataclasses import dataclass, field, replace
from typing import Any

from sqlalchemy import select

from federation.config import FederationConfig
from federation.config.validate import validate_config
from federation.coordinator.ledger import DeploymentRow, PlanVersionRow
from federation.coordinator.replicas import config_digest, latest_generation
from federation.coordinator.service import Coordinator
from federation.core.detection_plan import TrackedPlan, tracked_plan_to_dict
from federation.errors import ConfigError, ConfigProblems
from federation.influx import RetentionPolicyInfo
from federation.policy.retention import DesiredRetention, desired_retention, diff_retention


@dataclass(frozen=True)
class PlanChange:
    """How one aggregation of one DC differs between what agents run and the config.

    `change` is `added` (declared, not desired yet), `changed` (the config declares a version
    the ledger does not desire yet) or `removed` (no longer declared, still desired): each is
    pending until a rollout moves it, canary first. `fields` names the plan fields that
    differ, with the desired and the declared value.
    """

    aggregation: str
    change: str
    desired_version: str | None
    config_version: str | None
    fields: dict[str, tuple[Any, Any]] = field(default_factory=dict)

    def as_dict(self) -> dict[str, Any]:
        """Plain JSON-ready data."""
        return {
            "aggregation": self.aggregation,
            "change": self.change,
            "desired_version": self.desired_version,
            "config_version": self.config_version,
            "fields": {k: [old, new] for k, (old, new) in sorted(self.fields.items())},
        }


@dataclass(frozen=True)
class DcChanges:
    """What a reload changes for one DC: plan versions and raw retention."""

    dc: str
    plans: tuple[PlanChange, ...] = ()
    retention: tuple[str, ...] = ()
    destructive: bool = False
    retention_to: DesiredRetention | None = None
    shrink_allowed: bool = False

    @property
    def changed(self) -> bool:
        return bool(self.plans or self.retention)

    def as_dict(self) -> dict[str, Any]:
        """Plain JSON-ready data."""
        return {
            "dc": self.dc,
            "plans": [p.as_dict() for p in self.plans],
            "retention": list(self.retention),
            "retention_destructive": self.destructive,
            "shrink_allowed": self.shrink_allowed,
            "desired_retention": None
            if self.retention_to is None
            else [spec.as_dict() for spec in self.retention_to.policies],
        }


@dataclass(frozen=True)
class ReloadResult:
    """The outcome of one reload: every DC's changes (unchanged DCs included)."""

    dry_run: bool
    dcs: tuple[DcChanges, ...]

    def as_dict(self) -> dict[str, Any]:
        """Plain JSON-ready data (the body `POST /api/v1/desired/reload` answers with)."""
        return {"dry_run": self.dry_run, "dcs": [d.as_dict() for d in self.dcs]}


def _restart_problems(coordinator: Coordinator, new: FederationConfig) -> list[ConfigError]:
    """What a running coordinator cannot take: central changes, DCs without a loaded token,
    central retention policies its preflight never created."""
    old = coordinator.config
    problems = []
    if new.fleet.central != old.fleet.central:
        changed = sorted(
            key
            for key in type(new.fleet.central).model_fields
            if getattr(new.fleet.central, key) != getattr(old.fleet.central, key)
        )
        problems.append(
            ConfigError(
                "fleet.yaml",
                "central." + changed[0],
                f"changed ({', '.join(changed)}); the coordinator must be restarted to take it",
            )
        )
    for dc in sorted(new.fleet.dcs):
        if dc not in coordinator.tokens.agents:
            problems.append(
                ConfigError(
                    "fleet.yaml",
                    f"dcs.{dc}",
                    f"no agent token was loaded for this DC ({new.dc(dc).agent_token_env}); "
                    "restart the coordinator with it set",
                )
            )
    known_rps = {p.central.retention_policy for p in old.policies.values()}
    for region, policy in sorted(new.policies.items()):
        if policy.central.retention_policy not in known_rps:
            problems.append(
                ConfigError(
                    f"policies/{region}.yaml",
                    "central.retention",
                    f"needs central retention policy {policy.central.retention_policy}, which "
                    "the coordinator creates at start; restart it to take this change",
                )
            )
    return problems


def _retention_effects(
    old: DesiredRetention | None, new: DesiredRetention
) -> tuple[tuple[str, ...], bool]:
    actual = None
    if old is not None and old.database == new.database:
        actual = [
            RetentionPolicyInfo(
                spec.name, spec.duration_ns, spec.effective_shard_duration_ns, 1, spec.default
            )
            for spec in old.policies
        ]
    changes = diff_retention(new.database, actual, new.policies)
    return tuple(c.effect for c in changes), any(c.destructive for c in changes)


def diff_config(
    coordinator: Coordinator, new: FederationConfig, plans: list[TrackedPlan]
) -> tuple[DcChanges, ...]:
    """Per DC of the old and the new config, what replacing the old by `new` changes."""
    old = coordinator.config
    with coordinator.ledger.session() as session:
        desired = {
            (d.dc, d.aggregation): d.desired_version for d in session.scalars(select(DeploymentRow))
        }

        def stored(dc: str, aggregation: str, version: str) -> dict[str, Any]:
            plan = session.scalar(
                select(PlanVersionRow.plan).where(
                    PlanVersionRow.dc == dc,
                    PlanVersionRow.aggregation == aggregation,
                    PlanVersionRow.version == version,
                )
            )
            return plan or {}

        return tuple(
            _dc_changes(dc, old, new, plans, desired, stored)
            for dc in sorted(set(old.fleet.dcs) | set(new.fleet.dcs))
        )


def _dc_changes(
    dc: str,
    old: FederationConfig,
    new: FederationConfig,
    plans: list[TrackedPlan],
    desired: dict[tuple[str, str], str | None],
    stored: Callable[[str, str, str], dict[str, Any]],
) -> DcChanges:
    changes: list[PlanChange] = []
    mine = [p for p in plans if p.dc == dc]
    for plan in mine:
        version = desired.get((dc, plan.aggregation))
        if version is None:
            changes.append(PlanChange(plan.aggregation, "added", None, plan.version))
        elif version != plan.version:
            before = stored(dc, plan.aggregation, version)
            fields = {
                key: (before.get(key), value)
                for key, value in tracked_plan_to_dict(plan).items()
                if key != "version" and before.get(key) != value
            }
            changes.append(PlanChange(plan.aggregation, "changed", version, plan.version, fields))
    declared = {p.aggregation for p in mine}
    for (where, name), version in sorted(desired.items()):
        if where == dc and name not in declared and version is not None:
            changes.append(PlanChange(name, "removed", version, None))
    if dc not in new.fleet.dcs:
        return DcChanges(dc, tuple(changes), ("no longer in fleet.yaml",))
    before_rp = desired_retention(old, dc) if dc in old.fleet.dcs else None
    after_rp = desired_retention(new, dc)
    effects, destructive = _retention_effects(before_rp, after_rp)
    return DcChanges(dc, tuple(changes), effects, destructive, after_rp)


def reload_config(
    coordinator: Coordinator, *, dry_run: bool = False, allow_shrink: Collection[str] = ()
) -> ReloadResult:
    """Reload the coordinator's config directory and record its desired state.

    The agents of the DCs in `allow_shrink` may shrink their retention to what the new config
    declares (a grant recorded in the ledger, so every replica serves it); every other agent reports a shrink as drift.

    Raises ConfigProblems with every problem found (nothing changed). Otherwise, unless
    `dry_run`, the new plan versions are stored, the coordinator serves the new config's
    retention from now on, the gateway's rules are refreshed, and the change is recorded as a
    new config generation that every other replica catches up with (`follow_generation`).
    Added, changed and removed aggregations stay pending until a rollout moves them (see
    `federation.coordinator.rollouts`). Reloads in one process are serialised.
    """
    with coordinator.reload_lock:
        digest = config_digest(coordinator.config.root)
        validated = validate_config(coordinator.config.root)
        new = validated.config
        problems = _restart_problems(coordinator, new)
        problems += [
            ConfigError("fleet.yaml", f"dcs.{dc}", "allow_shrink names a DC the config lacks")
            for dc in sorted(set(allow_shrink) - set(new.fleet.dcs))
        ]
        if problems:
            raise ConfigProblems(problems)
        changes = diff_config(coordinator, new, [*validated.plans, *validated.detections])
        granted = set(allow_shrink)
        result = ReloadResult(
            dry_run,
            tuple(replace(c, shrink_allowed=c.dc in granted) for c in changes),
        )
        if not dry_run:
            coordinator.replace_config(new, digest=digest)
            coordinator.publish("reload", allow_shrink=tuple(sorted(granted)))
        return result


def follow_generation(coordinator: Coordinator) -> bool:
    """Catch up with the newest config generation another replica recorded, then write this
    replica's heartbeat; returns whether it moved to a newer generation.

    A generation with another config digest is taken by reloading the config directory (every
    replica reads the same one) and is adopted only when the directory now has that digest and
    validates; otherwise the replica keeps running what it runs, and its heartbeat says why.
    """
    newest = latest_generation(coordinator.ledger)
    moved = False
    if newest is not None and newest.number != coordinator.generation:
        with coordinator.reload_lock:
            moved = _catch_up(coordinator, newest.number, newest.digest)
    coordinator.beat()
    return moved


def _catch_up(coordinator: Coordinator, number: int, digest: str) -> bool:
    if digest == coordinator.digest:
        coordinator.adopt(number)
        return True
    root = coordinator.config.root
    try:
        on_disk = config_digest(root)
        loaded = validate_config(root).config if on_disk == digest else None
    except ConfigProblems as exc:
        coordinator.problem = (
            f"generation {number}: the config directory has problems ({exc.problems[0]})"
        )
        return False
    if loaded is None:
        coordinator.problem = (
            f"generation {number}: the config directory {root} differs from the config "
            "recorded by the replica that made it"
        )
        return False
    coordinator.adopt(number, loaded, digest)
    return True
