"""`federation agent run|once`: the per-DC agent as a daemon, or over one range of windows."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from federation.cli._common import (
    ConfigOption,
    FormatOption,
    OutputFormat,
    add_group,
    err,
    print_rows,
    seconds_bounds,
)

DcOption = Annotated[str, typer.Option("--dc", help="The DC this agent runs for.")]
ModeOption = Annotated[
    str,
    typer.Option(
        "--mode",
        help="How plans run: auto (Kapacitor where the DC has one), embedded or kapacitor.",
    ),
]

_ONCE_COLUMNS = (
    "aggregation",
    "window",
    "events",
    "groups",
    "suppressed",
    "points",
    "shipped",
    "read_s",
    "compute_s",
    "ship_s",
)


def run(
    dc: DcOption,
    config: ConfigOption = Path("."),
    mode: ModeOption = "auto",
    coordinator: Annotated[
        str | None,
        typer.Option("--coordinator", help="Coordinator URL (default: fleet.yaml's)."),
    ] = None,
    poll_interval: Annotated[
        float,
        typer.Option(
            "--poll-interval",
            help="Seconds between backfill polls (0.1 to 3600).",
            callback=seconds_bounds("--poll-interval", 0.1, 3600),
        ),
    ] = 30.0,
    reconcile_interval: Annotated[
        float,
        typer.Option(
            "--reconcile-interval",
            help="Seconds between pulls of the desired state (policy and rollout changes; "
            "1 to 86400).",
            callback=seconds_bounds("--reconcile-interval", 1, 86400),
        ),
    ] = 300.0,
) -> None:
    """Run the agent of one DC until SIGTERM.

    Preflight (local InfluxDB, coordinator), reconcile the desired state, catch up every window
    since the last one central holds, then schedule every aggregation, serve backfills and
    report to the coordinator.
    """
    from federation.agent import AgentSettings, build_agent, install_signal_handlers
    from federation.config import load_config

    settings = AgentSettings(
        poll_interval_s=poll_interval, reconcile_interval_s=reconcile_interval, mode=mode
    )
    agent, stop = build_agent(
        load_config(config), dc, settings=settings, coordinator_url=coordinator
    )
    install_signal_handlers(stop)
    try:
        agent.run(stop)
    finally:
        agent.close()
    err.print(f"agent {dc} stopped", markup=False)


def once(
    dc: DcOption,
    start: Annotated[str, typer.Option("--from", help="Start (RFC 3339, date, now, -6h).")],
    end: Annotated[str, typer.Option("--to", help="End, exclusive (same forms).")],
    config: ConfigOption = Path("."),
    aggregation: Annotated[
        str | None, typer.Option("--aggregation", help="Only this aggregation or detection.")
    ] = None,
    gateway: Annotated[
        str | None, typer.Option("--gateway", help="Gateway URL (default: the coordinator's).")
    ] = None,
    fmt: FormatOption = OutputFormat.table,
) -> None:
    """Compute and ship every whole window in [--from, --to), then exit.

    Uses the embedded executor and the plans of the local config (aggregations and
    detections; a detection's findings stay in the DC), ships through the gateway, prints one
    row per window; exits 1 if a window was not shipped.
    """
    from federation.agent import run_once
    from federation.config import load_config
    from federation.core.clock import SystemClock, parse_instant

    clock = SystemClock()
    results = run_once(
        load_config(config),
        dc,
        parse_instant(start, clock),
        parse_instant(end, clock),
        aggregation=aggregation,
        gateway_url=gateway,
        clock=clock,
    )
    rows = [
        {
            "aggregation": result.aggregation,
            "window": w.window.label,
            "events": w.events,
            "groups": w.groups,
            "suppressed": w.suppressed_events,
            "points": w.points,
            "shipped": "yes" if w.shipped else "no",
            "read_s": f"{w.read_s:.3f}",
            "compute_s": f"{w.compute_s:.3f}",
            "ship_s": f"{w.ship_s:.3f}",
        }
        for result in results
        for w in result.windows
    ]
    print_rows(rows, _ONCE_COLUMNS, fmt)
    failed = [result for result in results if not result.ok]
    for result in failed:
        err.print(f"error: {result.summary()}", markup=False)
    if failed:
        raise typer.Exit(1)


def register(app: typer.Typer) -> None:
    """Add the `agent` command group to `app`."""
    add_group(
        app,
        "agent",
        "The per-DC agent: compute aggregations and ship them through the gateway.",
        {"run": run, "once": once},
    )
