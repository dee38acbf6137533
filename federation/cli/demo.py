"""`federation demo`: the whole federation on this machine."""

from __future__ import annotations

import logging
import signal
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Annotated, Any

import typer

from federation.cli._common import ConfigOption, out, rows_table
from federation.cli._status_view import status_renderables
from federation.coordinator.status import StatusReport
from federation.errors import FederationError


class ConsoleView:
    """Shows the demo on the console: numbered steps, notes, tables and status grids."""

    def __init__(self, started: float) -> None:
        self.started = started
        self.steps = 0

    def step(self, message: str) -> None:
        self.steps += 1
        out.print(
            f"[bold cyan]{self.steps:>2}.[/] {message} [dim]({time.monotonic() - self.started:.0f}s)[/]"
        )

    def note(self, message: str) -> None:
        out.print(f"    {message}", markup=False)

    def status(self, title: str, report: StatusReport) -> None:
        out.print(f"[bold]{title}[/]")
        for renderable in status_renderables(report, reasons=False):
            out.print(renderable, width=max(out.width, 120))

    def table(self, title: str, columns: Sequence[str], rows: Sequence[dict[str, Any]]) -> None:
        out.print(rows_table(rows, columns, title, "left"), width=max(out.width, 120))


class DemoFailed(FederationError):
    """The demo ran but one of its end checks failed (the message says which)."""


STOP_SIGNALS = (signal.SIGTERM, signal.SIGHUP)
"""Signals that stop the demo as Ctrl-C (SIGINT) does: every process it started is stopped."""


def _stop_on_signals() -> None:
    """Turn SIGTERM and SIGHUP into SystemExit(128 + signal) in the main thread, so the demo
    unwinds and stops every process it started; a second signal during that is ignored."""

    def stop(signum: int, _frame: object) -> None:
        for sig in (*STOP_SIGNALS, signal.SIGINT):
            signal.signal(sig, signal.SIG_IGN)
        raise SystemExit(128 + signum)

    for sig in STOP_SIGNALS:
        signal.signal(sig, stop)


def demo(
    config: ConfigOption = Path("."),
    dcs: Annotated[int, typer.Option(help="How many DCs (1-5; 3 span three regions).")] = 3,
    hours: Annotated[int, typer.Option(help="Hours of traffic per DC.")] = 24,
    events_per_hour: Annotated[int, typer.Option(help="Events per hour per DC.")] = 20_000,
    keep: Annotated[
        bool, typer.Option(help="Leave everything running and print the URLs (Ctrl-C stops).")
    ] = False,
) -> None:
    """Run a whole federation on this machine: DCs, central, coordinator, agents, reports."""
    from federation.devstack.demo import DemoOptions, run_demo

    # The agents' and coordinator's own warnings during the staged outage are expected.
    for name in ("federation.agent", "federation.coordinator", "apscheduler", "uvicorn"):
        logging.getLogger(name).setLevel(logging.CRITICAL)
    _stop_on_signals()
    started = time.monotonic()
    options = DemoOptions(
        dcs=dcs, hours=hours, events_per_hour=events_per_hour, config_source=config
    )
    outcome, fed = run_demo(options, ConsoleView(started), keep=keep)
    problems = []
    if not outcome.all_done:
        problems.append(f"windows not all verified or empty: {outcome.windows}")
    if outcome.audit is None or not outcome.audit.ok:
        problems.append("the compliance audit found violations")
    if outcome.scan is None or not outcome.scan.clean:
        problems.append("personal data found at central")
    if not outcome.incidents_found:
        problems.append("a planted incident is not among its DC's findings")
    local = {dc: len(found) for dc, found in outcome.local_findings.items()}
    if local != outcome.central_findings:
        problems.append(f"local findings {local} differ from central's counts")
    findings = ", ".join(f"{dc} {n}" for dc, n in sorted(local.items()))
    verdict = "; ".join(problems) or (
        f"every window verified or empty ({outcome.windows}); findings kept locally ({findings}), "
        "counted at central; audit clean; no personal data at central"
    )
    out.print(f"[bold]{'FAILED' if problems else 'OK'}[/]: {verdict} — {outcome.seconds:.0f}s")
    if keep:
        env_file = fed.write_env_file()
        out.print("still running (Ctrl-C or SIGTERM stops everything):", markup=False)
        for name, url in outcome.urls.items():
            out.print(f"  {name:<12} {url}", markup=False)
        out.print(f"  config       {fed.root / 'config'}", markup=False)
        out.print(
            "to run the README's commands against it (its config and tokens), in another shell:",
            markup=False,
        )
        out.print(f"  source {env_file}", markup=False)
        try:
            while True:
                time.sleep(3600)
        except KeyboardInterrupt:
            pass
        finally:
            fed.close()
    if problems:
        raise DemoFailed("; ".join(problems))


def register(app: typer.Typer) -> None:
    app.command()(demo)
