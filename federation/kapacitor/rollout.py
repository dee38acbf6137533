"""Roll aggregation changes out to every DC's Kapacitor: plan, apply (canary first), rollback,
status with drift.

A rollout goes one DC at a time, the canary first. A DC whose deployment fails is restored to
its previous tasks (see `federation.kapacitor.deploy`) and the wave stops there, so every DC runs either
the old version or the new one completely. What each DC ran before is recorded, so `rollback`
can put it back.

This module works straight on the DCs' Kapacitors (`--direct`). Where the coordinator is
configured, the same functions run inside each DC's agent from the desired state it serves.
DCs without a Kapacitor run the embedded executor, which follows the desired plans by itself:
a direct rollout skips them, and says so. An agent re-applies the desired state its coordinator
serves at every reconcile, so a direct rollout first asks the coordinator: where a DC's agent
reports to it and it desires other versions than the config's, the rollout would be undone
within seconds, and it is refused before any Kapacitor is touched.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from federation.config import FederationConfig
from federation.config.resolve import resolve_tracked
from federation.errors import FederationError, InvalidInput, KapacitorError
from federation.influx import credentials_from_env
from federation.kapacitor.client import KapacitorClient
from federation.kapacitor.deploy import (
    DeploymentError,
    TaskChange,
    TaskSnapshot,
    apply_tasks,
    deployed_tasks,
    plan_tasks,
    restore_tasks,
    script_version,
)
from federation.tickscript.render import render_all

ClientFactory = Callable[[str], KapacitorClient]
"""Opens a Kapacitor client for a DC name (tests inject emulators)."""

CoordinatorView = Callable[[Sequence[str]], list[dict[str, Any]]]
"""What the coordinator says of these DCs (`GET /api/v1/dcs`: per DC its agent's last report and
per aggregation the desired version)."""

EMBEDDED = (
    "skipped: no Kapacitor here; its agent runs the embedded executor, which follows the "
    "coordinator's desired state (roll out through the coordinator to change it)"
)


class RolloutRefused(FederationError):
    """A direct rollout would be undone by the agents that pull desired state (nothing done)."""


def coordinator_view(config: FederationConfig) -> CoordinatorView:
    """The default view: the fleet's coordinator, asked with the reader token."""
    from federation.clients.operator import operator_client

    def view(dcs: Sequence[str]) -> list[dict[str, Any]]:
        with operator_client(config, reader=True) as client:
            return client.dcs(dcs)

    return view


def kapacitor_client(config: FederationConfig) -> ClientFactory:
    """The default factory: each DC's Kapacitor URL and credentials from fleet.yaml."""

    def open_client(dc: str) -> KapacitorClient:
        endpoint = config.dc(dc).kapacitor
        if endpoint is None:
            raise InvalidInput(f"DC {dc} has no Kapacitor (it runs the embedded executor)")
        return KapacitorClient(endpoint.url, auth=credentials_from_env(endpoint))

    return open_client


def kapacitor_dcs(config: FederationConfig, dcs: Sequence[str] | None = None) -> list[str]:
    """The DCs (of `dcs`, or all) that run Kapacitor, in a stable order."""
    names = list(dcs) if dcs else sorted(config.fleet.dcs)
    for name in names:
        config.dc(name)
    return [name for name in names if config.dc(name).kapacitor is not None]


def desired_snapshots(config: FederationConfig, dc: str) -> list[TaskSnapshot]:
    """The tasks `dc` should run, rendered (and linted) from its plans."""
    return [TaskSnapshot.of_rendered(task) for task in render_all(config, dc=dc)]


@dataclass(frozen=True)
class DcPlan:
    """What a rollout would change in one DC (or why it cannot tell)."""

    dc: str
    changes: list[TaskChange]
    error: str | None = None

    @property
    def pending(self) -> list[TaskChange]:
        return [c for c in self.changes if c.action != "unchanged"]


def rollout_plan(
    config: FederationConfig,
    dcs: Sequence[str] | None = None,
    *,
    clients: ClientFactory | None = None,
) -> list[DcPlan]:
    """Per Kapacitor DC, the task changes a rollout would make; changes nothing."""
    open_client = clients or kapacitor_client(config)
    plans = []
    for dc in kapacitor_dcs(config, dcs):
        try:
            with open_client(dc) as client:
                plans.append(
                    DcPlan(
                        dc, plan_tasks(deployed_tasks(client, dc), desired_snapshots(config, dc))
                    )
                )
        except KapacitorError as exc:
            plans.append(DcPlan(dc, [], str(exc)))
    return plans


@dataclass
class RolloutResult:
    """How a rollout went: every DC's fate (deployed, unchanged, skipped and why, failed, not
    reached), in order, and notes on what could not be checked."""

    done: list[str] = field(default_factory=list)
    unchanged: list[str] = field(default_factory=list)
    skipped: dict[str, str] = field(default_factory=dict)
    failed: str | None = None
    error: str | None = None
    not_reached: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return self.failed is None

    def fates(self) -> list[tuple[str, str]]:
        """(dc, what happened there) for every DC the rollout considered."""
        rows = [(dc, "deployed and healthy") for dc in self.done]
        rows += [(dc, "already up to date") for dc in self.unchanged]
        if self.failed is not None:
            rows.append((self.failed, f"FAILED: {self.error}"))
        rows += [(dc, "not reached (the rollout stopped before it)") for dc in self.not_reached]
        rows += sorted(self.skipped.items())
        return rows


def _guard_against_reversion(
    config: FederationConfig, order: Sequence[str], view: CoordinatorView, result: RolloutResult
) -> None:
    """Raise RolloutRefused when an agent that reports to the coordinator would put back other
    versions than the ones about to be deployed; note it when the coordinator cannot be asked."""
    url = config.fleet.central.coordinator_url
    try:
        entries = view(order)
    except FederationError as exc:
        result.notes.append(
            f"the coordinator at {url} could not be asked whether agents pull other versions "
            f"({exc}); a running agent reverts this rollout at its next reconcile"
        )
        return
    conflicts = []
    for entry in entries:
        dc = str(entry.get("dc"))
        if dc not in order or entry.get("last_seen_ns") is None:
            continue
        # Every plan the agent pulls, detections included: it runs what the coordinator desires.
        ours = {p.aggregation: p.version for p in resolve_tracked(config, dc)}
        theirs = {
            str(a["aggregation"]): a.get("desired_version") for a in entry.get("aggregations", [])
        }
        differ = [
            f"{name} {theirs.get(name) or 'nothing'} (not {ours.get(name) or 'nothing'})"
            for name in sorted(set(ours) | set(theirs))
            if theirs.get(name) != ours.get(name)
        ]
        if differ:
            conflicts.append(
                f"{dc}: its agent (last report {entry.get('last_seen')}) pulls desired state "
                f"from the coordinator, which desires {', '.join(differ)}"
            )
    if conflicts:
        raise RolloutRefused(
            "a direct rollout would be reverted by the agents within one reconcile: "
            + "; ".join(conflicts)
            + f". Nothing was deployed. Roll out through the coordinator at {url} (name "
            "central.operator_token_env in fleet.yaml, then `federation rollout apply` "
            "without --direct), or stop those agents first"
        )


class RolloutState:
    """What each DC ran before its last rollout, kept in a JSON file so rollback can restore it."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def load(self) -> dict[str, Any]:
        if not self.path.exists():
            return {}
        try:
            data = json.loads(self.path.read_text(encoding="utf-8"))
        except (OSError, ValueError) as exc:
            raise FederationError(f"{self.path}: cannot read rollout state: {exc}") from None
        if not isinstance(data, dict):
            raise FederationError(f"{self.path}: rollout state is not a JSON object")
        return data

    def record(self, dc: str, previous: dict[str, TaskSnapshot]) -> None:
        data = self.load()
        data[dc] = {
            task_id: {"script": t.script, "dbrps": [list(p) for p in t.dbrps], "enabled": t.enabled}
            for task_id, t in previous.items()
        }
        self.path.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.path.with_suffix(".tmp")
        tmp.write_text(json.dumps(data, indent=2, sort_keys=True), encoding="utf-8")
        tmp.replace(self.path)

    def previous(self, dc: str) -> dict[str, TaskSnapshot] | None:
        entry = self.load().get(dc)
        if entry is None:
            return None
        return {
            task_id: TaskSnapshot(
                task_id, t["script"], tuple((d, r) for d, r in t["dbrps"]), bool(t["enabled"])
            )
            for task_id, t in entry.items()
        }


HealthGate = Callable[[str], None]
"""Called after a DC is deployed; raises to fail the DC (e.g. 'next window not verified')."""


def rollout_apply(
    config: FederationConfig,
    *,
    state: RolloutState,
    canary: str | None = None,
    dcs: Sequence[str] | None = None,
    clients: ClientFactory | None = None,
    gate: HealthGate | None = None,
    coordinator: CoordinatorView | None = None,
) -> RolloutResult:
    """Deploy the desired tasks to the canary, then every other Kapacitor DC, one at a time.

    DCs without a Kapacitor are skipped (`skipped` says why). Before anything is deployed the
    coordinator (`coordinator`, default: the fleet's, with the reader token) is asked what it
    desires for those DCs: RolloutRefused, nothing deployed, when an agent reporting to it
    would revert the rollout; a coordinator that cannot be asked is noted in `notes`.

    Each DC is deployed with `apply_tasks` (running and healthy, or restored) and then passed
    through `gate`; a DC that fails either is restored to what it ran before and the wave stops,
    leaving the DCs not yet reached on their old version. What each changed DC ran before is
    recorded in `state` for `rollout_rollback`. Every DC's tasks are rendered first: a
    TickScriptError (a template that renders unsafe for any DC) is raised before any Kapacitor
    is contacted.
    """
    open_client = clients or kapacitor_client(config)
    order = kapacitor_dcs(config, dcs)
    result = RolloutResult()
    for dc in list(dcs) if dcs else sorted(config.fleet.dcs):
        if dc not in order:
            result.skipped[dc] = EMBEDDED
    if canary is not None:
        config.dc(canary)
        if canary not in order:
            where = (
                "is not among the DCs of the rollout"
                if canary not in result.skipped
                else (
                    "has no Kapacitor (its agent runs the embedded executor, which follows the "
                    "coordinator's desired state): a direct rollout cannot deploy there"
                )
            )
            raise InvalidInput(
                f"canary {canary} {where}; choose a Kapacitor DC ({', '.join(order) or 'none'}) "
                "or roll out through the coordinator, which takes any DC as the canary"
            )
        order.remove(canary)
        order.insert(0, canary)
    # Rendered (and linted) for every DC before any Kapacitor is contacted: a template that
    # fails for one DC must not leave the canary already changed.
    desired = {dc: desired_snapshots(config, dc) for dc in order}
    if order:
        _guard_against_reversion(config, order, coordinator or coordinator_view(config), result)
    for index, dc in enumerate(order):
        try:
            with open_client(dc) as client:
                before = deployed_tasks(client, dc)
                deployed = apply_tasks(client, dc, desired[dc])
                if not deployed.changed:
                    result.unchanged.append(dc)
                    continue
                try:
                    if gate is not None:
                        gate(dc)
                except FederationError as exc:
                    restore_tasks(client, dc, before)
                    raise DeploymentError(
                        dc, "*", f"health gate failed: {exc} (previous tasks restored)"
                    ) from exc
                state.record(dc, before)
                result.done.append(dc)
        except (DeploymentError, KapacitorError) as exc:
            result.failed, result.error = dc, str(exc)
            result.not_reached = order[index + 1 :]
            break
    return result


def rollout_rollback(
    config: FederationConfig,
    *,
    state: RolloutState,
    dcs: Sequence[str] | None = None,
    clients: ClientFactory | None = None,
) -> dict[str, str]:
    """Restore each DC's tasks to what they were before its last rollout; per DC, what happened."""
    open_client = clients or kapacitor_client(config)
    outcome = {}
    for dc in kapacitor_dcs(config, dcs):
        previous = state.previous(dc)
        if previous is None:
            outcome[dc] = "nothing recorded to roll back to"
            continue
        try:
            with open_client(dc) as client:
                restore_tasks(client, dc, previous)
            versions = sorted({v for t in previous.values() if (v := script_version(t.script))})
            outcome[dc] = "restored " + (", ".join(versions) if versions else "(no tasks)")
        except (DeploymentError, KapacitorError) as exc:
            outcome[dc] = f"FAILED: {exc}"
    return outcome


@dataclass(frozen=True)
class TaskStatus:
    """One task in one DC: the version it runs, the version desired, and whether it drifted."""

    dc: str
    task_id: str
    running_version: str | None
    desired_version: str | None
    state: str  # current | outdated | drift | missing | unexpected
    healthy: bool | None
    detail: str = ""


def rollout_status(
    config: FederationConfig,
    dcs: Sequence[str] | None = None,
    *,
    clients: ClientFactory | None = None,
) -> list[TaskStatus]:
    """Which version each Kapacitor DC runs, with drift (a script changed out of band).

    A deployed script that claims the desired version but differs from what that version
    renders to is drift; an older version is merely outdated (not rolled out yet).
    """
    open_client = clients or kapacitor_client(config)
    rows = []
    for dc in kapacitor_dcs(config, dcs):
        desired = {t.id: t for t in desired_snapshots(config, dc)}
        try:
            with open_client(dc) as client:
                deployed = deployed_tasks(client, dc)
                health = {task_id: client.task_health(task_id) for task_id in deployed}
        except KapacitorError as exc:
            rows.append(TaskStatus(dc, "*", None, None, "unreachable", None, str(exc)))
            continue
        for task_id in sorted(set(desired) | set(deployed)):
            want, have = desired.get(task_id), deployed.get(task_id)
            want_v = script_version(want.script) if want else None
            have_v = script_version(have.script) if have else None
            healthy = health[task_id].ok if task_id in health else None
            detail = health[task_id].problem if task_id in health else ""
            if have is None:
                state = "missing"
            elif want is None:
                state = "unexpected"
            elif have == want:
                state = "current"
            elif have_v == want_v:
                state = "drift"
            else:
                state = "outdated"
            rows.append(TaskStatus(dc, task_id, have_v, want_v, state, healthy, detail))
    return rows
