"""`federation findings`: a DC's local detections, for its region's security team."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from federation.cli._common import ConfigOption, FormatOption, OutputFormat, print_rows

COLUMNS = ("window", "detection", "key", "count", "threshold")


def findings(
    dc: Annotated[str, typer.Option(help="The DC whose findings to list.")],
    config: ConfigOption = Path("."),
    since: Annotated[
        str | None,
        typer.Option(help="Only windows from then on (RFC 3339, date, or -24h); default: all."),
    ] = None,
    fmt: FormatOption = OutputFormat.table,
) -> None:
    """List a DC's local findings (personal data: read from that DC, never shipped)."""
    from federation.agent.findings import list_findings
    from federation.config import load_config
    from federation.core.clock import SystemClock, parse_instant

    since_ns = parse_instant(since, SystemClock()) if since else None
    found = list_findings(load_config(config), dc, since_ns=since_ns)
    title = f"findings local to {dc} (personal data: kept in {dc}, never shipped): {len(found)}"
    print_rows([f.as_dict() for f in found], COLUMNS, fmt, title)


def register(app: typer.Typer) -> None:
    """Add the top-level `findings` command to `app`."""
    app.command("findings")(findings)
