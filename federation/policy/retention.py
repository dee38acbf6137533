"""Retention policies as the regions declare them, planned and applied on every InfluxDB.

Each DC's raw database gets its region's raw retention policy, as the database's default. The
central database keeps one aggregate retention policy per distinct central retention across the
regions (`agg_400d`, `agg_800d`); those are never made default, because the gateway always
names the RP it writes to.

Desired state is plain data (`DesiredRetention`, `RetentionSpec`), so a coordinator can serve it
and an agent can reconcile from it without the config directory. `reconcile_retention` is what
the agent runs on every reconcile; `plan_retention` and `apply_retention` run it against every
endpoint of a fleet directly.

A retention that shrinks deletes data, so it is never applied unless explicitly allowed: the
rest of the change (shard duration, default) still is, and the shrink is reported as refused.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from enum import StrEnum
from typing import Any, TypeVar

from federation.config import FederationConfig, InfluxEndpoint
from federation.core.durations import HOUR_NS, format_duration, format_influx_duration
from federation.core.influxql import quote_ident
from federation.errors import ConfigError, FederationError, InvalidInput
from federation.influx import InfluxClient, RetentionPolicyInfo, credentials_from_env

log = logging.getLogger(__name__)
T = TypeVar("T")

CENTRAL = "central"
"""The target name of the central InfluxDB in plans and reports."""

MIN_SHARD_DURATION_NS = HOUR_NS
"""InfluxDB 1.x raises any shard group duration below one hour to one hour."""

DEFAULT_TIMEOUT_S = 10.0
_MAX_PARALLEL = 8


@dataclass(frozen=True)
class RetentionSpec:
    """One retention policy as it should exist: name, durations (ns, 0 = infinite), default."""

    name: str
    duration_ns: int
    shard_duration_ns: int
    default: bool = False

    @property
    def effective_shard_duration_ns(self) -> int:
        """The shard group duration InfluxDB will actually hold for this spec."""
        return max(self.shard_duration_ns, MIN_SHARD_DURATION_NS)

    def as_dict(self) -> dict[str, Any]:
        """Plain JSON-ready data; `from_dict` reads it back unchanged."""
        return {
            "name": self.name,
            "duration_ns": self.duration_ns,
            "shard_duration_ns": self.shard_duration_ns,
            "duration": format_influx_duration(self.duration_ns),
            "shard_duration": format_influx_duration(self.shard_duration_ns),
            "default": self.default,
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> RetentionSpec:
        """Read what `as_dict` wrote; InvalidInput naming the missing or mistyped key."""
        try:
            return cls(
                name=str(data["name"]),
                duration_ns=int(data["duration_ns"]),
                shard_duration_ns=int(data["shard_duration_ns"]),
                default=bool(data.get("default", False)),
            )
        except (KeyError, TypeError, ValueError) as exc:
            raise InvalidInput(f"retention spec: missing or invalid key {exc}") from None


@dataclass(frozen=True)
class DesiredRetention:
    """The retention policies one InfluxDB database should have, as a coordinator serves them.

    `allow_shrink` is the explicit permission to shrink a retention (which deletes data); without
    it an agent reports the shrink and leaves the retention as it is.
    """

    target: str
    url: str
    database: str
    policies: tuple[RetentionSpec, ...]
    allow_shrink: bool = False

    def as_dict(self) -> dict[str, Any]:
        """Plain JSON-ready data; `from_dict` reads it back unchanged."""
        return {
            "target": self.target,
            "url": self.url,
            "database": self.database,
            "policies": [spec.as_dict() for spec in self.policies],
            "allow_shrink": self.allow_shrink,
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> DesiredRetention:
        """Read what `as_dict` wrote; InvalidInput naming the missing or mistyped key."""
        try:
            return cls(
                target=str(data["target"]),
                url=str(data["url"]),
                database=str(data["database"]),
                policies=tuple(RetentionSpec.from_dict(p) for p in data["policies"]),
                allow_shrink=bool(data.get("allow_shrink", False)),
            )
        except (KeyError, TypeError) as exc:
            raise InvalidInput(f"desired retention: missing or invalid key {exc}") from None


def desired_retention(config: FederationConfig, dc: str) -> DesiredRetention:
    """The raw retention policy DC `dc` must have: its region's, as its raw database's default.

    Raises ConfigError for an unknown DC.
    """
    datacenter = config.dc(dc)
    raw = config.policy_for(dc).raw
    spec = RetentionSpec(raw.retention_policy, raw.retention, raw.shard_duration, default=True)
    return DesiredRetention(dc, datacenter.influxdb.url, datacenter.raw_database, (spec,))


def desired_central_retention(config: FederationConfig) -> DesiredRetention:
    """The central aggregate RPs: one per distinct central retention across the regions.

    Raises ConfigError when two regions declare the same central retention with different shard
    durations, since one RP cannot hold both.
    """
    specs: dict[str, tuple[str, RetentionSpec]] = {}
    for region, policy in sorted(config.policies.items()):
        central = policy.central
        spec = RetentionSpec(central.retention_policy, central.retention, central.shard_duration)
        seen = specs.get(spec.name)
        if seen is None:
            specs[spec.name] = (region, spec)
        elif seen[1] != spec:
            raise ConfigError(
                f"policies/{region}.yaml",
                "central.shard_duration",
                f"{format_duration(spec.shard_duration_ns)} differs from "
                f"{format_duration(seen[1].shard_duration_ns)} in policies/{seen[0]}.yaml for the "
                f"same central retention {spec.name}; one RP cannot have both",
            )
    central_db = config.fleet.central
    return DesiredRetention(
        CENTRAL,
        central_db.influxdb.url,
        central_db.database,
        tuple(spec for _, spec in sorted(specs.values(), key=lambda item: item[1].name)),
    )


def retention_targets(config: FederationConfig, dc: str | None = None) -> list[DesiredRetention]:
    """Every DC's desired retention (sorted by DC) then central's; or only `dc`'s.

    `dc="central"` selects the central database, unless a DC has that name.
    """
    if dc is None:
        targets = [desired_retention(config, name) for name in sorted(config.fleet.dcs)]
        return [*targets, desired_central_retention(config)]
    if dc == CENTRAL and dc not in config.fleet.dcs:
        return [desired_central_retention(config)]
    return [desired_retention(config, dc)]


class ChangeKind(StrEnum):
    CREATE_DATABASE = "create database"
    CREATE = "create"
    ALTER = "alter"


@dataclass(frozen=True)
class Change:
    """One statement that brings a database closer to its desired retention.

    `destructive` marks a shrinking retention (InfluxDB deletes the shard groups that fall out
    of it); `safe_statement` is the same change without the shrink, or None when nothing else
    changes. `drift` marks an RP that exists but differs from the declaration.
    """

    database: str
    retention_policy: str | None
    kind: ChangeKind
    statement: str
    effects: tuple[str, ...]
    destructive: bool = False
    drift: bool = False
    safe_statement: str | None = None

    @property
    def effect(self) -> str:
        return "; ".join(self.effects)


def _duration_text(ns: int) -> str:
    return "infinite" if ns == 0 else format_duration(ns)


def _shrinks(actual_ns: int, desired_ns: int) -> bool:
    if desired_ns == 0:
        return False
    return actual_ns == 0 or desired_ns < actual_ns


def diff_retention(
    database: str,
    actual: Sequence[RetentionPolicyInfo] | None,
    desired: Sequence[RetentionSpec],
) -> list[Change]:
    """The statements that turn `actual` into `desired`; `actual=None` means no such database.

    Pure: reads and changes nothing. RPs that exist but are not desired are left alone (the
    audit reports them). An empty list means the database already matches.
    """
    db = quote_ident(database)
    changes: list[Change] = []
    existing = {rp.name: rp for rp in actual or ()}
    if actual is None:
        changes.append(
            Change(
                database,
                None,
                ChangeKind.CREATE_DATABASE,
                f"CREATE DATABASE {db}",
                (f"create database {database}",),
            )
        )
    for spec in desired:
        name = quote_ident(spec.name)
        duration = format_influx_duration(spec.duration_ns)
        shard = format_influx_duration(spec.effective_shard_duration_ns)
        current = existing.get(spec.name)
        if current is None:
            statement = (
                f"CREATE RETENTION POLICY {name} ON {db} DURATION {duration} REPLICATION 1 "
                f"SHARD DURATION {shard}" + (" DEFAULT" if spec.default else "")
            )
            effects = [f"create {spec.name}: retention {_duration_text(spec.duration_ns)}"]
            if spec.default:
                effects.append("default")
            changes.append(
                Change(database, spec.name, ChangeKind.CREATE, statement, tuple(effects))
            )
            continue
        parts: list[str] = []
        safe_parts: list[str] = []
        effects = []
        destructive = False
        if current.duration_ns != spec.duration_ns:
            destructive = _shrinks(current.duration_ns, spec.duration_ns)
            before, after = _duration_text(current.duration_ns), _duration_text(spec.duration_ns)
            if destructive:
                effects.append(
                    f"SHRINK retention {before} -> {after}: DELETES data older than {after}"
                )
            else:
                effects.append(f"grow retention {before} -> {after}")
            parts.append(f"DURATION {duration}")
        if current.shard_duration_ns != spec.effective_shard_duration_ns:
            effects.append(
                f"shard duration {_duration_text(current.shard_duration_ns)} -> "
                f"{_duration_text(spec.effective_shard_duration_ns)}"
            )
            parts.append(f"SHARD DURATION {shard}")
            safe_parts.append(parts[-1])
        if spec.default and not current.default:
            effects.append("make default")
            parts.append("DEFAULT")
            safe_parts.append("DEFAULT")
        if not parts:
            continue
        if not destructive:
            safe_parts = parts
        prefix = f"ALTER RETENTION POLICY {name} ON {db} "
        changes.append(
            Change(
                database,
                spec.name,
                ChangeKind.ALTER,
                prefix + " ".join(parts),
                tuple(effects),
                destructive=destructive,
                drift=True,
                safe_statement=prefix + " ".join(safe_parts) if safe_parts else None,
            )
        )
    return changes


@dataclass(frozen=True)
class ReconcileResult:
    """What one reconcile of one database found and did.

    `planned` is every change the database needed; `applied` the statements executed (empty for
    a dry run or when nothing differed); `refused` the shrinks left undone for lack of
    permission. `drift` are the planned changes to RPs that existed but differed.
    """

    database: str
    planned: tuple[Change, ...]
    applied: tuple[str, ...] = ()
    refused: tuple[Change, ...] = ()

    @property
    def drift(self) -> tuple[Change, ...]:
        return tuple(change for change in self.planned if change.drift)

    @property
    def changed(self) -> bool:
        return bool(self.applied)

    @property
    def converged(self) -> bool:
        """True when no shrink was refused, so the database now matches its declaration."""
        return not self.refused


def reconcile_retention(
    client: InfluxClient,
    database: str,
    policy: RetentionSpec | Sequence[RetentionSpec],
    *,
    allow_shrink: bool = False,
    dry_run: bool = False,
) -> ReconcileResult:
    """Compare `database`'s RPs on `client` with `policy` and repair every difference.

    Creates a missing database or RP, alters a drifted one, makes the declared default RP the
    default. Never shrinks a retention unless `allow_shrink`: the shrink is returned in
    `refused`, the rest of that RP's change is still applied. Idempotent: run twice, the second
    run applies nothing. With `dry_run` nothing is changed. Raises InfluxError (with the URL)
    when the server fails; statements executed before the failure stay applied.
    """
    specs = (policy,) if isinstance(policy, RetentionSpec) else tuple(policy)
    actual = client.retention_policies(database) if database in client.databases() else None
    planned = tuple(diff_retention(database, actual, specs))
    for change in planned:
        if change.drift and not dry_run:
            log.warning(
                "retention drift on %s database %s RP %s: %s",
                client.url,
                database,
                change.retention_policy,
                change.effect,
            )
    if dry_run:
        return ReconcileResult(database, planned)
    applied: list[str] = []
    refused: list[Change] = []
    for change in planned:
        statement: str | None = change.statement
        if change.destructive and not allow_shrink:
            refused.append(change)
            log.warning(
                "refusing to shrink RP %s on %s database %s without permission: %s",
                change.retention_policy,
                client.url,
                database,
                change.effect,
            )
            statement = change.safe_statement
        if statement is None:
            continue
        client.execute(statement)
        applied.append(statement)
    return ReconcileResult(database, planned, tuple(applied), tuple(refused))


@dataclass(frozen=True)
class TargetOutcome:
    """The plan or apply result of one target (a DC or central), or why it failed."""

    target: str
    url: str
    database: str
    result: ReconcileResult | None = None
    error: str | None = None

    @property
    def ok(self) -> bool:
        """Reached, and (after an apply) nothing refused."""
        return self.error is None and self.result is not None and self.result.converged


def connect(endpoint: InfluxEndpoint, *, timeout: float = DEFAULT_TIMEOUT_S) -> InfluxClient:
    """A client for `endpoint`, with the credentials its environment variables hold.

    Raises InfluxError naming the variable when one the config names is not set.
    """
    return InfluxClient(endpoint.url, auth=credentials_from_env(endpoint), timeout=timeout)


def _endpoint(config: FederationConfig, target: str) -> InfluxEndpoint:
    if target == CENTRAL and target not in config.fleet.dcs:
        return config.fleet.central.influxdb
    return config.dc(target).influxdb


def for_each_target(items: Sequence[str], work: Callable[[str], T]) -> list[T]:
    """Run `work` for each item concurrently (bounded), results in the order of `items`."""
    if len(items) <= 1:
        return [work(item) for item in items]
    with ThreadPoolExecutor(max_workers=min(_MAX_PARALLEL, len(items))) as pool:
        return list(pool.map(work, items))


def _run(
    config: FederationConfig,
    dc: str | None,
    *,
    allow_shrink: bool,
    dry_run: bool,
    timeout: float,
) -> list[TargetOutcome]:
    targets = {t.target: t for t in retention_targets(config, dc)}

    def work(name: str) -> TargetOutcome:
        desired = targets[name]
        try:
            with connect(_endpoint(config, name), timeout=timeout) as client:
                result = reconcile_retention(
                    client,
                    desired.database,
                    desired.policies,
                    allow_shrink=allow_shrink or desired.allow_shrink,
                    dry_run=dry_run,
                )
        except FederationError as exc:
            log.info("retention on %s (%s) failed: %s", name, desired.url, exc)
            return TargetOutcome(name, desired.url, desired.database, error=str(exc))
        return TargetOutcome(name, desired.url, desired.database, result)

    return for_each_target(list(targets), work)


def plan_retention(
    config: FederationConfig, dc: str | None = None, *, timeout: float = DEFAULT_TIMEOUT_S
) -> list[TargetOutcome]:
    """Per target (every DC then central, or only `dc`), the changes its retention needs.

    Changes nothing. A target that cannot be reached is returned with its error (which names the
    URL); the others are still planned. Raises ConfigError for an unknown DC.
    """
    return _run(config, dc, allow_shrink=False, dry_run=True, timeout=timeout)


def apply_retention(
    config: FederationConfig,
    dc: str | None = None,
    *,
    allow_shrink: bool = False,
    timeout: float = DEFAULT_TIMEOUT_S,
) -> list[TargetOutcome]:
    """Apply the plan to every target (or only `dc`), each independently.

    A target that fails is returned with its error and does not stop the others. Shrinks are
    refused unless `allow_shrink` (see `reconcile_retention`). Idempotent. Raises ConfigError
    for an unknown DC.
    """
    return _run(config, dc, allow_shrink=allow_shrink, dry_run=False, timeout=timeout)


@dataclass(frozen=True)
class PlanRow:
    """One printable line of a plan or apply outcome."""

    target: str
    url: str
    database: str
    status: str
    effect: str = ""
    statement: str = ""
    destructive: bool = False
    drift: bool = False

    def as_dict(self) -> dict[str, Any]:
        return {
            "target": self.target,
            "url": self.url,
            "database": self.database,
            "status": self.status,
            "effect": self.effect,
            "statement": self.statement,
            "destructive": self.destructive,
            "drift": self.drift,
        }


def outcome_rows(outcomes: Sequence[TargetOutcome], *, applied: bool) -> list[PlanRow]:
    """Flatten outcomes into rows: one per change, or one per target with nothing to change.

    `status` is `planned`, `applied`, `shrink refused` (the rest of that change applied), `up
    to date` or `failed`.
    """
    result: list[PlanRow] = []
    for outcome in outcomes:
        base = (outcome.target, outcome.url, outcome.database)
        if outcome.result is None:
            result.append(PlanRow(*base, "failed", effect=outcome.error or "unknown error"))
            continue
        if not outcome.result.planned:
            result.append(PlanRow(*base, "up to date"))
            continue
        refused = set(outcome.result.refused)
        for change in outcome.result.planned:
            status = "planned"
            if applied:
                status = "shrink refused" if change in refused else "applied"
            result.append(
                PlanRow(
                    *base,
                    status,
                    effect=change.effect,
                    statement=change.statement,
                    destructive=change.destructive,
                    drift=change.drift,
                )
            )
    return result
