"""Reconcile one DC's Kapacitor with the tasks rendered from its plans.

federation owns the tasks whose id starts with `fed-` and ends with `-<dc>`; every other task in
a Kapacitor is foreign and never touched. Updating a running task takes a disable and an enable
(Kapacitor's PATCH does not reload it), and a task counts as deployed only once it is executing
without error. A deployment that fails part-way is undone from a snapshot taken before it, so a
DC runs either its old tasks or its new ones, never a mix.
"""

from __future__ import annotations

import difflib
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Literal

from federation.errors import FederationError, KapacitorError
from federation.kapacitor.client import KapacitorClient, Task, TaskHealth
from federation.tickscript.render import RenderedTask

TASK_PREFIX = "fed-"
_HEADER = "// federation plan "

Action = Literal["create", "update", "delete", "unchanged"]


class DeploymentError(FederationError):
    """A DC's Kapacitor could not be brought to the desired tasks (and was restored)."""

    def __init__(self, dc: str, task_id: str, message: str) -> None:
        self.dc = dc
        self.task_id = task_id
        super().__init__(f"DC {dc}: task {task_id}: {message}")


def script_version(script: str) -> str | None:
    """The plan version a rendered script carries on its first line, if any."""
    first = script.split("\n", 1)[0]
    if not first.startswith(_HEADER):
        return None
    for part in first[len(_HEADER) :].split():
        if part.startswith("version="):
            return part.removeprefix("version=")
    return None


def owns(task_id: str, dc: str) -> bool:
    """Whether federation owns this task id in `dc`'s Kapacitor."""
    return task_id.startswith(TASK_PREFIX) and task_id.endswith(f"-{dc}")


@dataclass(frozen=True)
class TaskSnapshot:
    """A task's definition, enough to put it back: script, dbrps and whether it was enabled.

    `stale` marks an enabled task whose stored definition changed after it last started: it
    still runs an older script (a PATCH does not reload), so it differs from any desired task.
    """

    id: str
    script: str
    dbrps: tuple[tuple[str, str], ...]
    enabled: bool
    stale: bool = False

    @classmethod
    def of(cls, task: Task) -> TaskSnapshot:
        enabled = task.status == "enabled"
        return cls(task.id, task.script, task.dbrps, enabled, enabled and task.reload_pending)

    @classmethod
    def of_rendered(cls, task: RenderedTask) -> TaskSnapshot:
        dbrps = tuple((d["db"], d["rp"]) for d in task.dbrps)
        return cls(task.id, task.script, dbrps, True)


@dataclass(frozen=True)
class TaskChange:
    """What reconciling one task would do, with both scripts for a diff."""

    task_id: str
    action: Action
    current: TaskSnapshot | None
    desired: TaskSnapshot | None

    @property
    def version_from(self) -> str | None:
        return script_version(self.current.script) if self.current else None

    @property
    def version_to(self) -> str | None:
        return script_version(self.desired.script) if self.desired else None

    def diff(self) -> str:
        """A unified diff of the deployed script against the desired one."""
        before = self.current.script if self.current else ""
        after = self.desired.script if self.desired else ""
        return "".join(
            difflib.unified_diff(
                before.splitlines(keepends=True),
                after.splitlines(keepends=True),
                fromfile=f"{self.task_id} (deployed)",
                tofile=f"{self.task_id} (desired)",
            )
        )


def deployed_tasks(client: KapacitorClient, dc: str) -> dict[str, TaskSnapshot]:
    """The federation-owned tasks of `dc` as Kapacitor holds them (raw scripts)."""
    tasks = client.list_tasks(
        pattern=f"{TASK_PREFIX}*",
        fields=("script", "dbrps", "status", "executing", "error", "modified", "last-enabled"),
    )
    return {t.id: TaskSnapshot.of(t) for t in tasks if owns(t.id, dc)}


def plan_tasks(
    deployed: Mapping[str, TaskSnapshot], desired: Sequence[TaskSnapshot]
) -> list[TaskChange]:
    """Compare deployed and desired tasks: create, update (script, dbrps or disabled), delete."""
    changes = []
    wanted = {t.id: t for t in desired}
    for task_id in sorted(set(wanted) | set(deployed)):
        current, target = deployed.get(task_id), wanted.get(task_id)
        if current is None:
            changes.append(TaskChange(task_id, "create", None, target))
        elif target is None:
            changes.append(TaskChange(task_id, "delete", current, None))
        elif current == target:
            changes.append(TaskChange(task_id, "unchanged", current, target))
        else:
            changes.append(TaskChange(task_id, "update", current, target))
    return changes


@dataclass
class DeployResult:
    """What a deployment did in one DC."""

    dc: str
    changes: list[TaskChange]
    health: dict[str, TaskHealth] = field(default_factory=dict)

    @property
    def changed(self) -> bool:
        return any(c.action != "unchanged" for c in self.changes)


def _put(client: KapacitorClient, task: TaskSnapshot, exists: bool) -> None:
    # Rendered scripts declare their dbrp in the script; Kapacitor refuses a task that also
    # names dbrps in the JSON body ("cannot specify dbrp in both implicitly and explicitly").
    if not exists:
        status = "enabled" if task.enabled else "disabled"
        client.create_task(task.id, task.script, [], status=status)
        return
    client.update_task(task.id, script=task.script)
    if task.enabled:
        client.reload_task(task.id)
    else:
        client.disable_task(task.id)


def _check_running(client: KapacitorClient, dc: str, task_id: str) -> TaskHealth:
    health = client.task_health(task_id)
    if not health.executing or health.error:
        reason = health.error or "not executing"
        raise DeploymentError(dc, task_id, f"deployed but not running: {reason}")
    return health


SETTLE_S = 2.0
"""How long a started task must keep executing before it counts as deployed. Kapacitor answers
an enable before the task's UDF processes have started (each node opens its UDF in a goroutine
of its own): a UDF that cannot start stops the task a moment later, with the node's error."""


def apply_tasks(
    client: KapacitorClient,
    dc: str,
    desired: Sequence[TaskSnapshot],
    *,
    check: Callable[[KapacitorClient, str, str], TaskHealth] = _check_running,
    settle_s: float = SETTLE_S,
    sleep: Callable[[float], None] = time.sleep,
) -> DeployResult:
    """Bring `dc`'s Kapacitor to exactly the desired tasks, or leave it as it was.

    Creates missing tasks, updates changed ones (disable then enable, so the new script really
    runs), deletes owned tasks the plans no longer have, then checks that every desired task is
    executing without error, and, when any task was started, checks again after `settle_s`.
    On any failure the snapshot taken first is restored and DeploymentError is raised;
    foreign tasks are never touched.
    """
    before = deployed_tasks(client, dc)
    changes = plan_tasks(before, desired)
    result = DeployResult(dc, changes)
    try:
        for change in changes:
            if change.action in ("create", "update"):
                assert change.desired is not None
                _put(client, change.desired, exists=change.action == "update")
            elif change.action == "delete":
                client.delete_task(change.task_id)
        _check_all(client, dc, desired, result, check)
        if settle_s > 0 and any(c.action in ("create", "update") for c in changes):
            sleep(settle_s)
            _check_all(client, dc, desired, result, check)
    except (KapacitorError, DeploymentError) as exc:
        restore_tasks(client, dc, before)
        if isinstance(exc, DeploymentError):
            raise
        task_id = getattr(exc, "task_id", "?")
        raise DeploymentError(dc, task_id, f"{exc} (previous tasks restored)") from exc
    return result


def _check_all(
    client: KapacitorClient,
    dc: str,
    desired: Sequence[TaskSnapshot],
    result: DeployResult,
    check: Callable[[KapacitorClient, str, str], TaskHealth],
) -> None:
    for task in desired:
        if task.enabled:
            result.health[task.id] = check(client, dc, task.id)


def restore_tasks(client: KapacitorClient, dc: str, snapshot: Mapping[str, TaskSnapshot]) -> None:
    """Put `dc`'s owned tasks back exactly as in `snapshot` (best effort, every task tried)."""
    now = deployed_tasks(client, dc)
    errors: list[str] = []
    for task_id in sorted(set(now) | set(snapshot)):
        try:
            if task_id not in snapshot:
                client.delete_task(task_id)
            elif now.get(task_id) != snapshot[task_id]:
                _put(client, snapshot[task_id], exists=task_id in now)
        except KapacitorError as exc:
            errors.append(f"{task_id}: {exc}")
    if errors:
        raise DeploymentError(dc, "*", "could not restore: " + "; ".join(errors))


def task_health(client: KapacitorClient, dc: str) -> dict[str, TaskHealth]:
    """Health of every owned task: executing, error, query errors and write errors."""
    return {task_id: client.task_health(task_id) for task_id in deployed_tasks(client, dc)}
