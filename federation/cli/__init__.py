"""The `federation` command: a thin layer that parses arguments, calls one library function
and prints. Errors are `FederationError`s, printed as `error: <message>` with exit code 1
(2 for invalid input or config); `--debug` re-raises them with their traceback.

Command groups live in their own modules under `federation.cli`; each exposes `register(app)`.
"""

from __future__ import annotations

import importlib
import logging
import sys
from pathlib import Path
from typing import Annotated

import typer
from typer import rich_utils as typer_rich

# typer carries its own copy of click: its exceptions are what a bad command line raises.
from typer._click.exceptions import ClickException, MissingParameter
from typer.exceptions import Abort

from federation.cli._common import ConfigOption, err, out
from federation.errors import FederationError

app = typer.Typer(
    name="federation",
    help="GDPR-aware federated aggregation of event-log time series kept in InfluxDB 1.x.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
)

# Modules under federation.cli whose `register(app)` adds their commands.
COMMAND_MODULES: tuple[str, ...] = (
    "tickscript",
    "policy",
    "ingest",
    "kapacitor",
    "agent",
    "report",
    "coordinator",
    "rollout",
    "demo",
    "prometheus",
    "findings",
)


class _State:
    debug = False


@app.callback()
def _root(
    debug: Annotated[bool, typer.Option("--debug", help="Show tracebacks for errors.")] = False,
    verbose: Annotated[bool, typer.Option("--verbose", "-v", help="Log at INFO level.")] = False,
) -> None:
    _State.debug = debug
    logging.basicConfig(
        level=logging.DEBUG if debug else logging.INFO if verbose else logging.WARNING,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )


@app.command()
def validate(config: ConfigOption = Path(".")) -> None:
    """Load fleet, policies and aggregations; explain every problem."""
    from federation.config.validate import summarize, validate_config

    out.print(summarize(validate_config(config)), markup=False)


for _module in COMMAND_MODULES:
    importlib.import_module(f"federation.cli.{_module}").register(app)


def main() -> None:
    """Entry point: run the app, turning FederationErrors into one-line messages.

    A bad option value is one line, `error: Invalid value for '--top': …`, exit 2; other usage
    errors (a missing option, an unknown command) print the usage and exit 2; a command's
    `typer.Exit` code is the exit code.
    """
    try:
        code = app(standalone_mode=False)
    except typer.BadParameter as exc:
        if isinstance(exc, MissingParameter):
            typer_rich.rich_format_error(exc)  # the usage says what is missing
        else:
            # A bad value for an option (`--top abc`) is bad input like any other: one line.
            err.print(f"error: {exc.format_message()}", markup=False)
        sys.exit(exc.exit_code)
    except ClickException as exc:
        # Any other usage error (a missing option, an unknown command) shows the usage.
        typer_rich.rich_format_error(exc)
        sys.exit(exc.exit_code)
    except Abort:
        err.print("aborted", markup=False)
        sys.exit(1)
    except FederationError as exc:
        if _State.debug:
            raise
        lines = str(exc).splitlines() or [exc.__class__.__name__]
        if len(lines) == 1:
            err.print(f"error: {lines[0]}", markup=False)
        else:
            err.print(f"error: {len(lines)} problems:", markup=False)
            for line in lines:
                err.print(f"  {line}", markup=False)
        sys.exit(exc.exit_code)
    sys.exit(code if isinstance(code, int) else 0)
