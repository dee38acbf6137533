"""`federation coordinator run`, `federation status` and `federation backfill`."""

from __future__ import annotations

import json
import os
from enum import StrEnum
from pathlib import Path
from typing import Annotated

import typer

from federation.cli._common import ConfigOption, err, out
from federation.cli._status_view import status_renderables

coordinator_app = typer.Typer(help="Run the coordinator (gateway, agent API, planner).")

LedgerOption = Annotated[
    str | None,
    typer.Option(
        "--ledger", help="Ledger database URL (default: central.ledger_url in fleet.yaml)."
    ),
]


class StatusFormat(StrEnum):
    table = "table"
    json = "json"


class Source(StrEnum):
    ledger = "ledger"
    api = "api"


@coordinator_app.command("run")
def run(
    config: ConfigOption = Path("."),
    host: Annotated[str, typer.Option(help="Address to listen on.")] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="Port to listen on.")] = 8086,
    ledger: LedgerOption = None,
) -> None:
    """Load the config, run preflight checks, then serve the gateway and API with the jobs."""
    from federation.config import load_config
    from federation.coordinator.app import run_coordinator

    run_coordinator(
        load_config(config),
        host=host,
        port=port,
        ledger_url=ledger,
        announce=lambda line: err.print(line, markup=False),
    )


def status(
    config: ConfigOption = Path("."),
    aggregation: Annotated[
        str | None, typer.Option("--aggregation", "-a", help="Only this aggregation.")
    ] = None,
    since: Annotated[
        str | None,
        typer.Option(help="Start of the range (RFC 3339, date, or -6h); default: 24 windows."),
    ] = None,
    dc: Annotated[str | None, typer.Option(help="Only this DC.")] = None,
    fmt: Annotated[StatusFormat, typer.Option("--format", "-f", help="Output format.")] = (
        StatusFormat.table
    ),
    ledger: LedgerOption = None,
    via: Annotated[
        Source, typer.Option(help="Read the ledger directly, or ask the coordinator's API.")
    ] = Source.ledger,
) -> None:
    """Show the DC × window grid per aggregation, with counts and each open window's reason."""
    from federation.config import load_config
    from federation.coordinator.ledger import open_ledger
    from federation.coordinator.status import status_from_api, status_report
    from federation.core.clock import SystemClock, parse_instant
    from federation.errors import FederationError

    cfg = load_config(config)
    if via is Source.api:
        env = cfg.fleet.central.reader_token_env
        token = os.environ.get(env)
        if not token:
            raise FederationError(f"environment variable {env} (the reader token) is not set")
        report = status_from_api(
            cfg.fleet.central.coordinator_urls, token, aggregation=aggregation, since=since, dc=dc
        )
    else:
        clock = SystemClock()
        since_ns = parse_instant(since, clock) if since else None
        with open_ledger(ledger or cfg.fleet.central.ledger_url, upgrade=False) as opened:
            report = status_report(
                opened, cfg, clock.now_ns(), aggregation=aggregation, since_ns=since_ns, dc=dc
            )
    if fmt is StatusFormat.json:
        out.print_json(json.dumps(report.to_dict()))
        return

    for renderable in status_renderables(report):
        out.print(renderable)


def backfill(
    dc: Annotated[str, typer.Option(help="The DC whose agent re-runs the range.")],
    aggregation: Annotated[str, typer.Option(help="The aggregation to re-run.")],
    start: Annotated[str, typer.Option("--from", help="Range start (RFC 3339, date, -6h).")],
    end: Annotated[str, typer.Option("--to", help="Range end, exclusive.")],
    config: ConfigOption = Path("."),
    ledger: LedgerOption = None,
) -> None:
    """Queue a backfill of every whole window in [--from, --to) for one DC's agent."""
    from federation.config import load_config
    from federation.coordinator.backfills import request_backfill
    from federation.coordinator.ledger import open_ledger
    from federation.core.clock import SystemClock, format_rfc3339, parse_instant

    cfg = load_config(config)
    clock = SystemClock()
    with open_ledger(ledger or cfg.fleet.central.ledger_url, upgrade=False) as opened:
        requests = request_backfill(
            opened,
            cfg,
            dc,
            aggregation,
            parse_instant(start, clock),
            parse_instant(end, clock),
            clock.now_ns(),
        )
    for r in requests:
        out.print(
            f"queued backfill #{r.id}: {r.dc} {r.aggregation} "
            f"{format_rfc3339(r.start_ns)} → {format_rfc3339(r.end_ns)}",
            markup=False,
        )


def register(app: typer.Typer) -> None:
    """Add `coordinator run`, `status` and `backfill` to the root command."""
    app.add_typer(coordinator_app, name="coordinator")
    app.command("status")(status)
    app.command("backfill")(backfill)
