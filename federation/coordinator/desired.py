"""Desired state per DC (plans, retention, where to ship) and what each agent reports back.

The config directory is the source of truth. `sync_desired` records in the ledger every plan
version the config asks for, and makes it the desired version of a (dc, aggregation) that had
none. A (dc, aggregation) that already has a desired version keeps it: a new version becomes
desired through a rollout (`federation.coordinator.rollouts`), canary first, which moves the
version it replaces to `previous_version` so that the gateway keeps accepting the old version's
last windows and a rollback knows what to return to. What an agent is served
(`served_desired_state`) is therefore the ledger's desired version of each plan, with the
retention of the config the coordinator holds.
"""

from __future__ import annotations

import logging
from collections import defaultdict
from collections.abc import Mapping, Sequence
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from federation.config import FederationConfig
from federation.config.resolve import resolve_tracked
from federation.coordinator.ledger import (
    DcRow,
    DeploymentRow,
    Ledger,
    PlanVersionRow,
    TrackingRow,
    upsert,
)
from federation.core.detection_plan import TrackedPlan, tracked_plan_from_dict, tracked_plan_to_dict
from federation.core.windows import align
from federation.errors import InvalidInput

log = logging.getLogger(__name__)

PlanBook = dict[tuple[str, str], list[TrackedPlan]]
"""(dc, aggregation) -> the plans the gateway accepts, desired version first. A detection is
one more plan here, named by its detection: desired, rolled out, tracked as an aggregation."""


def desired_state(
    config: FederationConfig,
    dc: str,
    plans: Sequence[TrackedPlan] | None = None,
    *,
    allow_shrink: bool = False,
) -> dict[str, Any]:
    """What the agent of `dc` should run: its plans, its raw retention, where it ships.

    The shape is the body of `GET /api/v1/dcs/{dc}/desired`. `plans` defaults to the config's
    plans for `dc`. Retention is never shrunk by an agent unless `allow_shrink` says so, which
    the coordinator says only after an operator granted that shrink (`policy apply
    --allow-shrink`).
    """
    dc_config = config.dc(dc)
    policy = config.policy_for(dc)
    plans = resolve_tracked(config, dc) if plans is None else plans
    return {
        "dc": dc,
        "region": dc_config.region,
        "plans": [
            {"aggregation": p.aggregation, "version": p.version, "plan": tracked_plan_to_dict(p)}
            for p in plans
        ],
        "retention": {
            "database": dc_config.raw_database,
            "policies": [
                {
                    "name": policy.raw.retention_policy,
                    "duration_ns": policy.raw.retention,
                    "shard_duration_ns": policy.raw.shard_duration,
                    "default": True,
                }
            ],
            "allow_shrink": allow_shrink,
        },
        "gateway": {
            "url": config.fleet.central.coordinator_url,
            "database": config.fleet.central.database,
            "retention_policy": policy.central.retention_policy,
        },
    }


def desired_plans(ledger: Ledger, config: FederationConfig, dc: str) -> list[TrackedPlan]:
    """The plans the agent of `dc` should run: per deployment of the DC, the version the
    ledger desires (which lags the config's until a rollout moves it), in aggregation order.

    An aggregation the ledger does not desire (added and not rolled out here yet, or removed)
    is left out; one the config no longer declares but the ledger still desires (a removal not
    rolled out here yet, or a removal rolled back) is served from its stored plan.
    """
    plans = {p.aggregation: p for p in resolve_tracked(config, dc)}
    with ledger.session() as session:
        rows = session.execute(
            select(DeploymentRow.aggregation, DeploymentRow.desired_version).where(
                DeploymentRow.dc == dc
            )
        )
        desired = {aggregation: version for aggregation, version in rows}
        wanted = {
            (aggregation, version)
            for aggregation, version in desired.items()
            if version is not None
            and (aggregation not in plans or plans[aggregation].version != version)
        }
        stored: dict[tuple[str, str], dict[str, Any]] = {}
        if wanted:
            rows = session.execute(
                select(PlanVersionRow.aggregation, PlanVersionRow.version, PlanVersionRow.plan)
                .where(PlanVersionRow.dc == dc)
                .where(PlanVersionRow.version.in_(sorted({v for _, v in wanted})))
            )
            stored = {(r.aggregation, r.version): r.plan for r in rows}
    result = []
    for aggregation in sorted(set(plans) | set(desired)):
        plan = plans.get(aggregation)
        # A plan without a deployment row (never synced) runs the config's version.
        version = desired.get(aggregation, None if plan is None else plan.version)
        if version is None:
            continue
        if plan is not None and version == plan.version:
            result.append(plan)
            continue
        data = stored.get((aggregation, version))
        if data is None:
            # sync_desired stores a version before anything can make it desired.
            log.error("%s/%s: desired version %s is not stored", dc, aggregation, version)
            if plan is not None:
                result.append(plan)
            continue
        result.append(tracked_plan_from_dict(data))
    return result


def served_desired_state(
    ledger: Ledger, config: FederationConfig, dc: str, *, allow_shrink: bool = False
) -> dict[str, Any]:
    """The body of `GET /api/v1/dcs/{dc}/desired`: `desired_state` with the ledger's versions."""
    return desired_state(config, dc, desired_plans(ledger, config, dc), allow_shrink=allow_shrink)


def sync_desired(
    ledger: Ledger, config: FederationConfig, now_ns: int, *, track_from_ns: int | None = None
) -> None:
    """Record the config's DCs and plan versions in the ledger; idempotent.

    Every plan version of the config is stored. A DC the ledger has no deployment for yet (a
    new ledger, or a DC new to the fleet) desires the config's versions at once and starts
    being tracked at the window holding `track_from_ns` (default: now), so a new coordinator
    never declares a year of history missing. In a DC that already runs aggregations, an
    aggregation new to the config gets a deployment that desires nothing: a rollout adds it
    (and starts its tracking), canary first. An existing deployment keeps its desired version
    until a rollout moves it, and so does one the config no longer declares. Windows of an
    existing tracking row are never forgotten.
    """
    plans = resolve_tracked(config)
    with ledger.session(write=True) as session:
        upsert(
            session,
            DcRow.__table__,  # type: ignore[arg-type]
            # In name order, the order in which planner passes lock DC rows: two transactions
            # that lock several of them in one order cannot deadlock.
            [{"name": name, "region": dc.region} for name, dc in sorted(config.fleet.dcs.items())],
            key=("name",),
            update=("region",),
        )
        upsert(
            session,
            PlanVersionRow.__table__,  # type: ignore[arg-type]
            [
                {
                    "dc": p.dc,
                    "aggregation": p.aggregation,
                    "version": p.version,
                    "plan": tracked_plan_to_dict(p),
                    "created_ns": now_ns,
                }
                for p in plans
            ],
            key=("dc", "aggregation", "version"),
            update=(),
        )
        deployments = {
            (d.dc, d.aggregation): d
            for d in session.scalars(select(DeploymentRow).with_for_update())
        }
        running_dcs = {dc for dc, _ in deployments}
        tracking = {(t.dc, t.aggregation) for t in session.scalars(select(TrackingRow))}
        start_at = now_ns if track_from_ns is None else track_from_ns
        for p in plans:
            key = (p.dc, p.aggregation)
            at_once = p.dc not in running_dcs
            if key not in deployments:
                session.add(
                    DeploymentRow(
                        dc=p.dc,
                        aggregation=p.aggregation,
                        desired_version=p.version if at_once else None,
                        previous_version=None,
                        changed_ns=now_ns,
                    )
                )
            if key not in tracking and at_once:
                start_tracking(session, p, align(start_at, p.window_ns))


def start_tracking(session: Session, plan: TrackedPlan, start_ns: int) -> None:
    """Expect every window of `plan` in its DC from `start_ns` (a window start) on."""
    session.add(
        TrackingRow(
            dc=plan.dc,
            aggregation=plan.aggregation,
            window_ns=plan.window_ns,
            start_ns=start_ns,
            watermark_ns=start_ns,
        )
    )


def known_plans(ledger: Ledger) -> PlanBook:
    """Every plan the gateway accepts per (dc, aggregation): desired, then previous version."""
    with ledger.session() as session:
        deployments = session.execute(
            select(
                DeploymentRow.dc,
                DeploymentRow.aggregation,
                DeploymentRow.desired_version,
                DeploymentRow.previous_version,
            )
        ).all()
        stored = session.execute(
            select(
                PlanVersionRow.dc,
                PlanVersionRow.aggregation,
                PlanVersionRow.version,
                PlanVersionRow.plan,
            )
        ).all()
    by_version = {(r.dc, r.aggregation, r.version): r.plan for r in stored}
    book: PlanBook = defaultdict(list)
    for d in deployments:
        for version in (d.desired_version, d.previous_version):
            data = by_version.get((d.dc, d.aggregation, version)) if version else None
            if data is not None:
                book[(d.dc, d.aggregation)].append(tracked_plan_from_dict(data))
    return dict(book)


def _expect(data: Mapping[str, Any], key: str, kind: type | tuple[type, ...], where: str) -> Any:
    value = data.get(key)
    if not isinstance(value, kind) or (isinstance(value, bool) and kind is not bool):
        raise InvalidInput(f"report: {where}{key}: expected {getattr(kind, '__name__', kind)}")
    return value


def record_report(
    ledger: Ledger, config: FederationConfig, dc: str, report: Mapping[str, Any], now_ns: int
) -> None:
    """Store what the agent of `dc` reports: last seen, mode, running versions and health.

    The report body is `{"mode": "embedded"|"kapacitor", "plans": [{"aggregation", "version",
    "healthy", "detail"}], "retention": {...}, "agent_version", "clock_ns"}` (`clock_ns`, the
    agent's clock, is compared with `now_ns` by `clocks`); InvalidInput (nothing stored)
    when it is malformed or names an aggregation the DC does not run.
    """
    config.dc(dc)
    mode = _expect(report, "mode", str, "")
    if mode not in ("embedded", "kapacitor"):
        raise InvalidInput("report: mode: must be 'embedded' or 'kapacitor'")
    plans = _expect(report, "plans", list, "")
    agent_version = str(report.get("agent_version", ""))[:64]
    clock = report.get("clock_ns")
    if clock is not None and (not isinstance(clock, int) or isinstance(clock, bool)):
        raise InvalidInput("report: clock_ns: must be an integer (the agent's clock, ns)")
    entries: list[tuple[str, str, bool, str]] = []
    for index, item in enumerate(plans):
        if not isinstance(item, Mapping):
            raise InvalidInput(f"report: plans.{index}: expected an object")
        aggregation = _expect(item, "aggregation", str, f"plans.{index}.")
        version = _expect(item, "version", str, f"plans.{index}.")
        healthy = _expect(item, "healthy", bool, f"plans.{index}.")
        detail = str(item.get("detail", ""))[:2000]
        entries.append((aggregation, version, healthy, detail))
    with ledger.session(write=True) as session:
        deployed = set(
            session.scalars(select(DeploymentRow.aggregation).where(DeploymentRow.dc == dc))
        )
        for index, (aggregation, *_) in enumerate(entries):
            declared = aggregation in config.aggregations or aggregation in config.detections
            if not declared and aggregation not in deployed:
                raise InvalidInput(f"report: plans.{index}.aggregation: unknown aggregation")
        # FOR NO KEY UPDATE: gateways inserting this DC's windows (a key-share lock for the
        # foreign key) need not wait for a report.
        row = session.get(DcRow, dc, with_for_update={"key_share": True})
        if row is None:
            row = DcRow(name=dc, region=config.dc(dc).region)
            session.add(row)
        row.last_seen_ns = now_ns
        row.mode = mode
        row.agent_version = agent_version
        row.last_report = dict(report)
        reported: dict[str, tuple[str | None, bool | None, str]] = {
            aggregation: (version, healthy, detail)
            for aggregation, version, healthy, detail in entries
        }
        for aggregation in sorted(deployed | set(reported)):
            deployment = session.get(DeploymentRow, (dc, aggregation), with_for_update=True)
            if deployment is None:
                continue
            # An aggregation the agent no longer reports is no longer running there.
            running, healthy, detail = reported.get(aggregation, (None, None, ""))
            deployment.running_version = running
            deployment.healthy = healthy
            deployment.detail = detail
            deployment.reported_ns = now_ns
