"""`federation kapacitor-udf` (what kapacitor.conf runs) and `federation kapacitor config`."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from federation.cli._common import ConfigOption, add_group, err, out


def register(app: typer.Typer) -> None:
    """Add the top-level `kapacitor-udf` command and the `kapacitor` command group to `app`."""
    app.command("kapacitor-udf")(kapacitor_udf)
    add_group(
        app,
        "kapacitor",
        "What a DC's Kapacitor needs to run federation's tasks.",
        {"config": config},
    )


def kapacitor_udf() -> None:
    """Run the aggregation UDF on stdin/stdout (Kapacitor starts it; not for a terminal).

    Speaks Kapacitor's process-UDF protocol: wants batches (one window of raw values each),
    provides the window's summary and manifest points. Logs go to stderr. Exits 0 when stdin
    ends, 1 after a protocol error.
    """
    from federation.kapacitor.udf import serve_stdio

    raise typer.Exit(serve_stdio())


def config(
    dc: Annotated[str, typer.Option("--dc", help="The DC whose Kapacitor is configured.")],
    config: ConfigOption = Path("."),
    prog: Annotated[
        Path | None,
        typer.Option(
            "--prog", help="The federation executable Kapacitor runs (default: this one)."
        ),
    ] = None,
) -> None:
    """Print the kapacitor.conf sections DC needs: the UDF and the gateway cluster.

    The gateway password is the DC's agent token, read from the environment variable that
    fleet.yaml names; when it is unset a comment says which variable to set instead.
    """
    from federation.config import load_config
    from federation.kapacitor.conf import kapacitor_conf

    rendered = kapacitor_conf(load_config(config), dc, prog=prog)
    out.print(rendered.text, end="", markup=False)
    if not rendered.password_set:
        err.print(
            f"note: {rendered.password_env} is unset, so the gateway password is left out",
            markup=False,
        )
