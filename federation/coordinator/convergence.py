"""Where each DC stands against its desired state, from its agent's last report.

`dc_overview` is the body of `GET /api/v1/dcs`, which `policy apply` and `rollout apply` watch
until every agent has converged. Per DC: when its agent last reported and in which mode; per
aggregation (declared by the config, or still desired or running after its removal) the version
the config declares, the one the ledger desires, the one the agent runs and its health, and the
windows verified or confirmed empty (the DC's last one, and the last one of the desired version
that started after it became desired); and the retention outcome, which counts only when the
agent reports having applied the retention the coordinator serves now. With them, the last
rollout and how far it got.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from sqlalchemy import and_, func, select

from federation.config import FederationConfig
from federation.config.resolve import resolve_tracked
from federation.coordinator.ledger import DcRow, DeploymentRow, Ledger, WindowRow
from federation.coordinator.rollouts import last_rollout
from federation.coordinator.tracking import WindowState
from federation.core.clock import format_rfc3339
from federation.policy.retention import desired_retention

_SPEC_KEYS = ("name", "duration_ns", "shard_duration_ns", "default")


def plan_state(
    config_version: str | None, desired: str | None, running: str | None, healthy: bool | None
) -> str:
    """`current`, `converging` (the agent runs another version, or still runs one it should
    stop), `unhealthy`, `unknown` (no report yet), `not deployed` (nothing desired, nothing
    running), or any of these followed by `, rollout pending` when the config declares another
    version than the ledger desires (None: the aggregation is added or removed)."""
    if desired is None:
        state = "not deployed" if running is None else "converging"
    elif running is None:
        state = "unknown"
    elif running != desired:
        state = "converging"
    elif healthy is False:
        state = "unhealthy"
    else:
        state = "current"
    return state if config_version == desired else f"{state}, rollout pending"


def retention_state(
    report: Mapping[str, Any] | None, database: str, desired: Sequence[Mapping[str, Any]]
) -> tuple[str, str]:
    """(state, detail) of a DC's raw retention from its agent's last report.

    `converged`; `drift` (the agent applied the current retention but a shrink was refused);
    `failed` (the agent could not reconcile it); `pending` (the agent has not yet reported the
    retention served now); `unknown` (no report at all).
    """
    if report is None:
        return "unknown", "no report from this DC's agent yet"
    retention = report.get("retention")
    if not isinstance(retention, Mapping) or not retention:
        return "pending", "the agent reported no retention outcome"
    if retention.get("error"):
        return "failed", str(retention["error"])[:500]
    reported = retention.get("desired")
    wanted = [{key: spec.get(key) for key in _SPEC_KEYS} for spec in desired]
    if (
        not isinstance(reported, list)
        or retention.get("database") != database
        or [
            {key: spec.get(key) for key in _SPEC_KEYS} if isinstance(spec, Mapping) else spec
            for spec in reported
        ]
        != wanted
    ):
        return "pending", "the agent has not applied the current retention yet"
    if retention.get("converged") is False:
        refused = retention.get("refused") or []
        return "drift", "; ".join(str(r) for r in refused) or "not converged"
    return "converged", ""


def reported_retention(row: DcRow | None, config: FederationConfig, dc: str) -> tuple[str, str]:
    """`retention_state` of `dc` from its ledger row (None: never seen), against the retention
    the coordinator serves now."""
    wanted = desired_retention(config, dc)
    report = None if row is None or row.last_seen_ns is None else (row.last_report or {})
    return retention_state(report, wanted.database, [s.as_dict() for s in wanted.policies])


def dc_overview(
    ledger: Ledger, config: FederationConfig, now_ns: int, dcs: Sequence[str] | None = None
) -> dict[str, Any]:
    """Every DC of the config (or of `dcs`) against its desired state; ConfigError for an
    unknown DC. Reads the ledger only."""
    names = sorted(dcs) if dcs else sorted(config.fleet.dcs)
    for name in names:
        config.dc(name)
    declared = {(p.dc, p.aggregation): p.version for p in resolve_tracked(config) if p.dc in names}
    # A window confirmed empty proves a version runs as well as a verified one does.
    done = [WindowState.VERIFIED.value, WindowState.EMPTY.value]
    last_verified = (
        select(func.max(WindowRow.start_ns))
        .where(WindowRow.state.in_(done), WindowRow.dc == DeploymentRow.dc)
        .scalar_subquery()
    )
    verified_since_change = (
        select(func.max(WindowRow.start_ns))
        .where(
            and_(
                WindowRow.state.in_(done),
                WindowRow.dc == DeploymentRow.dc,
                WindowRow.aggregation == DeploymentRow.aggregation,
                WindowRow.start_ns >= DeploymentRow.changed_ns,
                WindowRow.version == DeploymentRow.desired_version,
            )
        )
        .scalar_subquery()
    )
    with ledger.session() as session:
        rows = {r.name: r for r in session.scalars(select(DcRow).where(DcRow.name.in_(names)))}
        deployments = session.execute(
            select(DeploymentRow, last_verified, verified_since_change).where(
                DeploymentRow.dc.in_(names)
            )
        ).all()
    by_key = {(d.dc, d.aggregation): (d, last, since) for d, last, since in deployments}
    # Deployments of aggregations the config no longer declares, while anything of them is
    # desired or running.
    listed: dict[tuple[str, str], str | None] = dict(declared)
    for (dc, aggregation), (d, _, _) in by_key.items():
        if (dc, aggregation) not in listed and (d.desired_version or d.running_version):
            listed[(dc, aggregation)] = None
    result = []
    for name in names:
        row = rows.get(name)
        aggregations = []
        for (dc, aggregation), version in sorted(listed.items()):
            if dc != name:
                continue
            found = by_key.get((dc, aggregation))
            if found is None:
                aggregations.append(
                    {"aggregation": aggregation, "config_version": version, "state": "unknown"}
                )
                continue
            d, last, since = found
            aggregations.append(
                {
                    "aggregation": aggregation,
                    "config_version": version,
                    "desired_version": d.desired_version,
                    "previous_version": d.previous_version,
                    "running_version": d.running_version,
                    "healthy": d.healthy,
                    "detail": d.detail or "",
                    "changed_ns": d.changed_ns,
                    "reported_ns": d.reported_ns,
                    "last_verified_ns": last,
                    "verified_since_change_ns": since,
                    "state": plan_state(version, d.desired_version, d.running_version, d.healthy),
                }
            )
        wanted = desired_retention(config, name)
        specs = [spec.as_dict() for spec in wanted.policies]
        state, detail = retention_state(
            None if row is None or row.last_seen_ns is None else (row.last_report or {}),
            wanted.database,
            specs,
        )
        last_seen = None if row is None else row.last_seen_ns
        result.append(
            {
                "dc": name,
                "region": config.dc(name).region,
                "last_seen_ns": last_seen,
                "last_seen": None if last_seen is None else format_rfc3339(last_seen),
                "mode": None if row is None else row.mode,
                "agent_version": None if row is None else row.agent_version,
                "aggregations": aggregations,
                "retention": {
                    "state": state,
                    "detail": detail,
                    "desired": specs,
                },
            }
        )
    return {"now_ns": now_ns, "dcs": result, "rollout": last_rollout(ledger)}
