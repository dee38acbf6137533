"""`federation rollout plan|apply|rollback|status`: roll aggregation changes out to every DC."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from federation.cli._common import ConfigOption, FormatOption, OutputFormat, out, print_rows
from federation.errors import FederationError

app = typer.Typer(help="Roll aggregation changes out to every DC's Kapacitor, canary first.")

DcsOption = Annotated[list[str] | None, typer.Option("--dc", help="Only these DCs (repeatable).")]
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
def plan_command(config: ConfigOption = Path("."), dc: DcsOption = None) -> None:
    """Show, per DC, the task changes a rollout would make, as unified diffs."""
    from federation.config import load_config
    from federation.rollout import rollout_plan

    plans = rollout_plan(load_config(config), dc)
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
    state: StateOption = None,
) -> None:
    """Deploy to the canary, then the other DCs; stop at the first failure."""
    from federation.config import load_config
    from federation.rollout import RolloutState, rollout_apply

    result = rollout_apply(
        load_config(config), state=RolloutState(_state(config, state)), canary=canary, dcs=dc
    )
    for name in result.done:
        out.print(f"{name}: deployed and healthy", markup=False)
    for name in result.unchanged:
        out.print(f"{name}: already up to date", markup=False)
    if not result.ok:
        waiting = ", ".join(result.not_reached) or "none"
        raise RolloutFailed(
            f"rollout stopped at {result.failed}: {result.error}; not reached: {waiting}"
        )


@app.command("rollback")
def rollback_command(
    config: ConfigOption = Path("."),
    dc: DcsOption = None,
    state: StateOption = None,
) -> None:
    """Restore each DC's tasks to what it ran before its last rollout."""
    from federation.config import load_config
    from federation.rollout import RolloutState, rollout_rollback

    outcome = rollout_rollback(
        load_config(config), state=RolloutState(_state(config, state)), dcs=dc
    )
    for name, what in outcome.items():
        out.print(f"{name}: {what}", markup=False)
    if any(what.startswith("FAILED") for what in outcome.values()):
        raise RolloutFailed("rollback failed in some DCs")


@app.command("status")
def status_command(
    config: ConfigOption = Path("."),
    dc: DcsOption = None,
    fmt: FormatOption = OutputFormat.table,
) -> None:
    """Which version each DC runs, its health, and any drift (a script changed out of band)."""
    from federation.config import load_config
    from federation.rollout import rollout_status

    rows = [vars(r) for r in rollout_status(load_config(config), dc)]
    columns = ["dc", "task_id", "running_version", "desired_version", "state", "healthy", "detail"]
    print_rows(rows, columns, fmt, title="rollout status")
