"""Roll aggregation changes out to every DC's Kapacitor: plan, apply (canary first), rollback,
status with drift.

A rollout goes one DC at a time, the canary first. A DC whose deployment fails is restored to
its previous tasks (see `federation.deploy`) and the wave stops there, so every DC runs either
the old version or the new one completely. What each DC ran before is recorded, so `rollback`
can put it back.

This module works straight on the DCs' Kapacitors (`--direct`). Where the coordinator is
configured, the same functions run inside each DC's agent from the desired state it serves.
DCs without a Kapacitor run the embedded executor, which follows the desired plans by itself.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from federation.config import FederationConfig
from federation.deploy import (
    DeploymentError,
    TaskChange,
    TaskSnapshot,
    apply_tasks,
    deployed_tasks,
    plan_tasks,
    restore_tasks,
    script_version,
)
from federation.errors import FederationError, InvalidInput, KapacitorError
from federation.influx import credentials_from_env
from federation.kapacitor import KapacitorClient
from federation.tickscript.render import render_all

ClientFactory = Callable[[str], KapacitorClient]
"""Opens a Kapacitor client for a DC name (tests inject emulators)."""


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
    """How a rollout went: the DCs done in order, and where (and why) it stopped."""

    done: list[str] = field(default_factory=list)
    unchanged: list[str] = field(default_factory=list)
    failed: str | None = None
    error: str | None = None
    not_reached: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return self.failed is None


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
) -> RolloutResult:
    """Deploy the desired tasks to the canary, then every other Kapacitor DC, one at a time.

    Each DC is deployed with `apply_tasks` (running and healthy, or restored) and then passed
    through `gate`; a DC that fails either is restored to what it ran before and the wave stops,
    leaving the DCs not yet reached on their old version. What each changed DC ran before is
    recorded in `state` for `rollout_rollback`. Every DC's tasks are rendered first: a
    TickScriptError (a template that renders unsafe for any DC) is raised before any Kapacitor
    is contacted.
    """
    open_client = clients or kapacitor_client(config)
    order = kapacitor_dcs(config, dcs)
    if canary is not None:
        if canary not in order:
            raise InvalidInput(
                f"canary {canary} is not among the Kapacitor DCs: {', '.join(order)}"
            )
        order.remove(canary)
        order.insert(0, canary)
    # Rendered (and linted) for every DC before any Kapacitor is contacted: a template that
    # fails for one DC must not leave the canary already changed.
    desired = {dc: desired_snapshots(config, dc) for dc in order}
    result = RolloutResult()
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
