"""`federation rollout plan|apply|rollback|status`: roll aggregation changes out to every DC.

Through the coordinator (the default where fleet.yaml names `central.operator_token_env`) the
commands change the desired plan versions the coordinator holds and watch the agents report
them; with `--direct` they deploy to each DC's Kapacitor themselves.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer

from federation.cli._common import (
    ConfigOption,
    FormatOption,
    OutputFormat,
    err,
    out,
    print_rows,
    seconds_bounds,
)
from federation.cli._coordinated import (
    ProgressPrinter,
    names,
    print_reload,
    reload_rows,
    through_coordinator,
)
from federation.clients.operator import operator_client, rollout_summary
from federation.errors import FederationError

if TYPE_CHECKING:
    from federation.clients.operator import CoordinatedRollout, WatchResult
    from federation.config import FederationConfig

app = typer.Typer(help="Roll aggregation changes out to every DC, canary first.")

DcsOption = Annotated[list[str] | None, typer.Option("--dc", help="Only these DCs (repeatable).")]
AggregationsOption = Annotated[
    list[str] | None,
    typer.Option(
        "--aggregation", help="Through the coordinator: only these aggregations (repeatable)."
    ),
]
DirectOption = Annotated[
    bool,
    typer.Option(
        "--direct",
        help="Deploy straight to each DC's Kapacitor instead of through the coordinator. "
        "The default while fleet.yaml names no central.operator_token_env.",
    ),
]
WaitOption = Annotated[
    float,
    typer.Option(
        "--wait-timeout",
        help="Through the coordinator: seconds to wait for agents to run the new versions "
        "(0 to 86400).",
        callback=seconds_bounds("--wait-timeout", 0, 86400),
    ),
]
StateOption = Annotated[
    Path | None,
    typer.Option(
        help="Where the previous versions are kept for rollback "
        "(default: .federation/rollout-state.json in the config directory)."
    ),
]


class RolloutFailed(FederationError):
    """A rollout stopped at a DC (the message says which and why)."""


def register(root: typer.Typer) -> None:
    root.add_typer(app, name="rollout")


def _state(config_dir: Path, state: Path | None) -> Path:
    return state or config_dir / ".federation" / "rollout-state.json"


@app.command("plan")
def plan_command(
    config: ConfigOption = Path("."),
    dc: DcsOption = None,
    aggregation: AggregationsOption = None,
    direct: DirectOption = False,
    fmt: FormatOption = OutputFormat.table,
) -> None:
    """Show, per DC, what a rollout would change; changes nothing.

    Through the coordinator: per DC and aggregation, the version agents run now, the version
    the config directory declares, and the plan fields that differ. With --direct: the task
    changes in each DC's Kapacitor, as unified diffs.
    """
    from federation.config import load_config
    from federation.kapacitor.rollout import rollout_plan

    fed = load_config(config)
    if through_coordinator(fed, direct):
        with operator_client(fed) as client:
            reload = client.reload(dry_run=True)
        rows = reload_rows(reload, dcs=dc, aggregations=aggregation, retention=False)
        print_reload(rows, fmt, "rollout plan (coordinator, dry run)")
        return
    plans = rollout_plan(fed, dc)
    for plan in plans:
        if plan.error:
            out.print(f"{plan.dc}: unreachable: {plan.error}", markup=False)
            continue
        if not plan.pending:
            out.print(f"{plan.dc}: up to date", markup=False)
            continue
        for change in plan.pending:
            out.print(
                f"{plan.dc}: {change.action} {change.task_id} "
                f"({change.version_from or '-'} -> {change.version_to or '-'})",
                markup=False,
            )
            out.print(change.diff(), markup=False, end="")


@app.command("apply")
def apply_command(
    config: ConfigOption = Path("."),
    canary: Annotated[str | None, typer.Option(help="Deploy to this DC first.")] = None,
    dc: DcsOption = None,
    aggregation: AggregationsOption = None,
    state: StateOption = None,
    direct: DirectOption = False,
    wait_timeout: WaitOption = 900.0,
    backfill_retention: Annotated[
        bool,
        typer.Option(
            "--backfill-retention",
            help="Through the coordinator: an aggregation this rollout adds to a DC is "
            "backfilled over the DC's whole raw retention (default: over its look-back).",
        ),
    ] = False,
    window_timeout: Annotated[
        float,
        typer.Option(
            "--window-timeout",
            help="Through the coordinator: seconds to wait for the canary's next window to be "
            "verified, where the coordinator verifies windows of that aggregation (0: do not "
            "wait for a window; at most 7 days).",
            callback=seconds_bounds("--window-timeout", 0, 7 * 86400),
        ),
    ] = 3 * 3600.0,
) -> None:
    """Deploy to the canary, then the other DCs; stop at the first failure.

    Through the coordinator: reload the config directory, make its added, changed and removed
    aggregations desired in the canary (default: the first DC with a change), wait until the
    canary's agent runs them healthy and its next window is verified or confirmed empty, then
    advance every other DC and wait for them. A canary that fails or times out is rolled back
    and nothing else moves (exit 1). A rollout left at its canary (the command interrupted) is
    resumed by running this again, or undone by `rollout rollback`.
    """
    from federation.config import load_config
    from federation.kapacitor.rollout import RolloutState, rollout_apply

    fed = load_config(config)
    if through_coordinator(fed, direct):
        _apply_through_coordinator(
            fed, canary, dc, aggregation, wait_timeout, window_timeout, backfill_retention
        )
        return
    result = rollout_apply(fed, state=RolloutState(_state(config, state)), canary=canary, dcs=dc)
    for note in result.notes:
        err.print(f"note: {note}", markup=False)
    for name, fate in result.fates():
        out.print(f"{name}: {fate}", markup=False)
    if not result.ok:
        raise RolloutFailed(
            f"rollout stopped at {result.failed}: {result.error}; "
            f"not reached: {names(result.not_reached)}"
        )


@app.command("rollback")
def rollback_command(
    config: ConfigOption = Path("."),
    dc: DcsOption = None,
    aggregation: AggregationsOption = None,
    state: StateOption = None,
    direct: DirectOption = False,
    wait_timeout: WaitOption = 900.0,
) -> None:
    """Undo the last rollout: each DC it reached runs what it ran before.

    Through the coordinator: an aggregation the rollout added is removed, one it removed is
    restored, one it changed is reverted, wherever the rollout reached (and the ledger still
    desires what it moved to); the command waits until the agents run that (exit 1 on a
    failure or timeout).
    """
    from federation.config import load_config
    from federation.kapacitor.rollout import RolloutState, rollout_rollback

    fed = load_config(config)
    if through_coordinator(fed, direct):
        _rollback_through_coordinator(fed, dc, aggregation, wait_timeout)
        return
    outcome = rollout_rollback(fed, state=RolloutState(_state(config, state)), dcs=dc)
    for name, what in outcome.items():
        out.print(f"{name}: {what}", markup=False)
    if any(what.startswith("FAILED") for what in outcome.values()):
        raise RolloutFailed("rollback failed in some DCs")


@app.command("status")
def status_command(
    config: ConfigOption = Path("."),
    dc: DcsOption = None,
    direct: DirectOption = False,
    fmt: FormatOption = OutputFormat.table,
) -> None:
    """Which version each DC runs, its health, and any drift (a script changed out of band).

    Through the coordinator (reader token): per DC and aggregation the version the config
    declares, the one desired, the one the agent reports running, and its health; then each DC
    whose agent reports retention drift (a refused shrink) or a failure.
    """
    from federation.config import load_config
    from federation.kapacitor.rollout import rollout_status

    fed = load_config(config)
    if through_coordinator(fed, direct):
        with operator_client(fed, reader=True) as client:
            found, last = client.dcs_and_rollout(dc)
        rows = [
            {"dc": entry["dc"], "last_seen": entry.get("last_seen"), **item}
            for entry in found
            for item in entry.get("aggregations", [])
        ]
        columns = ["dc", "aggregation", "config_version", "desired_version", "running_version",
                   "previous_version", "healthy", "state", "last_seen", "detail"]  # fmt: skip
        print_rows(rows, columns, fmt, title="rollout status (coordinator)")
        for entry in found if fmt is OutputFormat.table else ():
            retention = entry.get("retention") or {}
            if retention.get("state") in ("drift", "failed"):
                out.print(f"retention {retention['state']} on {entry['dc']}: "
                          f"{retention.get('detail') or 'not converged'}", markup=False)  # fmt: skip
        if fmt is OutputFormat.table and last is not None:
            out.print(rollout_summary(last), markup=False)
        return
    rows = [vars(r) for r in rollout_status(fed, dc)]
    columns = ["dc", "task_id", "running_version", "desired_version", "state", "healthy", "detail"]
    print_rows(rows, columns, fmt, title="rollout status")


def _move_line(move: dict[str, Any]) -> str:
    before, after = move.get("from"), move.get("to")
    if before is None:
        what = f"added {after}"
    elif after is None:
        what = f"removed (ran {before})"
    else:
        what = f"{before} -> {after}"
    return f"{move['dc']}: {move['aggregation']} {what}"


def _moves(step: dict[str, Any], key: str = "moved") -> list[str]:
    moved = step.get(key)
    return [_move_line(m) for m in (moved if isinstance(moved, list) else [])]


def _print_step(name: str, step: dict[str, Any]) -> None:
    if name == "reload":
        rows = reload_rows(step, retention=True, plans=False)
        for row in rows:
            out.print(f"{row['dc']}: retention: {row['change']}", markup=False)
        return
    rollout = f"rollout #{step['rollout']}" if step.get("rollout") else "rollout"
    if name == "canary" and step.get("resumed"):
        lines = _moves(step, "canary_moves")
        out.print(f"resuming {rollout}, left at its canary {step.get('canary')}: "
                  f"{len(lines)} version change(s)", markup=False)  # fmt: skip
    else:
        lines = _moves(step)
        if name == "canary" and not lines:
            out.print("nothing to roll out: every DC of the scope already desires the config's "
                      "versions", markup=False)  # fmt: skip
            return
        label = {"canary": f"canary {step.get('canary')}", "advance": "advance",
                 "rollback": f"rollback of {rollout}"}[name]  # fmt: skip
        out.print(f"{label}: {len(lines)} version change(s)", markup=False)
    for line in lines:
        out.print(f"  {line}", markup=False)
    for move in step.get("skipped") or []:
        out.print(f"  left alone: {_move_line(move)} (its desired version has changed since)",
                  markup=False)  # fmt: skip
    waiting = step.get("waiting")
    if isinstance(waiting, list) and waiting:
        out.print(
            f"  held back until the canary is done: {names(str(w) for w in waiting)}",
            markup=False,
        )


def _failures(watch: WatchResult) -> str:
    parts = [f"{d}: {watch.states[d][1]}" for d in watch.failed]
    parts += [
        f"{d}: timed out: no agent has ever reported for {d} (is one running?)"
        if d in watch.never_reported
        else f"{d}: timed out ({watch.states.get(d, ('unknown', ''))[1]})"
        for d in watch.timed_out
    ]
    return "; ".join(parts)


def _apply_through_coordinator(
    config: FederationConfig,
    canary: str | None,
    dcs: list[str] | None,
    aggregations: list[str] | None,
    wait_timeout: float,
    window_timeout: float,
    backfill_retention: bool,
) -> None:
    from federation.clients.operator import apply_rollout

    with operator_client(config) as client:
        result = apply_rollout(
            client,
            aggregations=aggregations,
            canary=canary,
            dcs=dcs,
            backfill_retention=backfill_retention,
            timeout_s=wait_timeout,
            window_timeout_s=window_timeout,
            on_step=_print_step,
            on_progress=ProgressPrinter(),
        )
    if result.canary is not None and not result.canary.ok:
        chosen = result.canary_step["canary"] if result.canary_step else "?"
        raise RolloutFailed(
            f"rollout stopped at canary {chosen}: {_failures(result.canary)}; canary rolled "
            "back, no other DC changed"
        )
    if result.wave is not None and not result.wave.ok:
        raise RolloutFailed(
            f"rollout advanced but not every DC converged: {_failures(result.wave)}; "
            "`federation rollout rollback` restores the previous versions"
        )
    if result.advance_step is not None:
        out.print(_completed(result), markup=False)


def _completed(result: CoordinatedRollout) -> str:
    """What a rollout that went through achieved, and no more than that."""
    assert result.advance_step is not None and result.canary_step is not None
    dcs = {str(result.canary_step.get("canary"))}
    dcs |= {str(m["dc"]) for m in result.advance_step.get("moved") or []}
    elsewhere = [str(dc) for dc in result.advance_step.get("pending_elsewhere") or []]
    if elsewhere:
        return (
            f"rollout complete in {names(sorted(dcs))}; still pending in {names(elsewhere)} "
            "(outside the rollout's --dc; `federation rollout apply` rolls it out there)"
        )
    return "rollout complete: every DC runs the config's versions"


def _rollback_through_coordinator(
    config: FederationConfig,
    dcs: list[str] | None,
    aggregations: list[str] | None,
    wait_timeout: float,
) -> None:
    from federation.clients.operator import moved_versions, wait_for_versions

    with operator_client(config) as client:
        step = client.rollback_rollout(aggregations=aggregations, dcs=dcs)
        moved = moved_versions(step)
        if not moved:
            why = (
                f"rollout #{step['rollout']} is already rolled back"
                if step.get("state") == "rolled_back"
                else "no rollout is recorded"
                if step.get("rollout") is None
                else f"what rollout #{step['rollout']} moved has changed since"
            )
            for move in step.get("skipped") or []:
                out.print(f"  left alone: {_move_line(move)} (its desired version has changed "
                          "since)", markup=False)  # fmt: skip
            out.print(f"nothing to roll back: {why}", markup=False)
            return
        _print_step("rollback", step)
        watch = wait_for_versions(
            client, moved, timeout_s=wait_timeout, on_progress=ProgressPrinter()
        )
    if not watch.ok:
        raise RolloutFailed(f"rollback not converged: {_failures(watch)}")
    out.print(
        f"rollback complete: {names(sorted({dc for dc, _ in moved}))} run(s) what they ran "
        f"before rollout #{step['rollout']}",
        markup=False,
    )
