"""What every CLI command module shares: consoles, the --config option, output formats, command
groups and option parsing."""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping, Sequence
from enum import StrEnum
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console, ConsoleDimensions, JustifyMethod
from rich.table import Table

from federation.core.durations import parse_duration
from federation.errors import InvalidInput
from federation.reporting.export import rows_csv

PIPE_WIDTH = 10_000
"""The width tables get when the output is not a terminal: wide enough that no column is cut."""


class _Console(Console):
    """A rich console that, writing to a pipe or a file, never cuts a table to 80 columns.

    Rich sizes a console that is not a terminal at 80 columns and squeezes tables into that
    (`pe…`, `ve…`); a script reading the output wants every cell whole. Tables do not expand, so
    each keeps its natural width; a terminal keeps its own width."""

    @property
    def size(self) -> ConsoleDimensions:
        size = super().size
        if self._width is None and not self.is_terminal:
            return ConsoleDimensions(PIPE_WIDTH, size.height)
        return size

    @size.setter
    def size(self, new_size: tuple[int, int]) -> None:
        self._width, self._height = new_size


out = _Console(highlight=False, soft_wrap=True)
err = _Console(stderr=True, highlight=False, soft_wrap=True)

ConfigOption = Annotated[
    Path,
    typer.Option(
        "--config",
        "-c",
        envvar="FEDERATION_CONFIG",
        help="The config directory (fleet.yaml, policies/, tickscripts/).",
    ),
]


class OutputFormat(StrEnum):
    table = "table"
    csv = "csv"
    json = "json"


FormatOption = Annotated[OutputFormat, typer.Option("--format", "-f", help="Output format.")]


def add_group(
    app: typer.Typer, name: str, help: str, commands: Mapping[str, Callable[..., Any]]
) -> None:
    """Add the command group `name` to `app` with `commands` (command name -> function), in
    that order; the group alone prints its help."""
    group = typer.Typer(name=name, help=help, no_args_is_help=True)
    for command, function in commands.items():
        group.command(command)(function)
    app.add_typer(group, name=name)


def duration_option(option: str, text: str) -> int:
    """`text` as a duration in nanoseconds; InvalidInput naming `option` when it is not one."""
    try:
        return parse_duration(text)
    except ValueError as exc:
        raise InvalidInput(f"{option}: {exc}") from None


def seconds_bounds(option: str, low: float, high: float) -> Callable[[float | None], float | None]:
    """A typer callback for an option in seconds: the value when `low <= value <= high` (or
    None, for an optional one left out), else InvalidInput naming the option and the bounds (one
    line, exit 2). A zero poll interval would spin; a negative or endless one is a typo."""

    def check(value: float | None) -> float | None:
        if value is None:
            return None
        if not low <= value <= high:  # also refuses NaN
            raise InvalidInput(
                f"{option}: {value:.10g} s is out of bounds ({low:.10g} to {high:.10g} s)"
            )
        return value

    return check


def write_or_print(text: str, out_file: Path | None, what: str = "") -> None:
    """Write `text` to `out_file` and say so (`wrote FILE (what)`), or print it to stdout."""
    if out_file is None:
        out.print(text, end="", markup=False)
        return
    out_file.write_text(text)
    out.print(f"wrote {out_file}" + (f" ({what})" if what else ""), markup=False)


def rows_table(
    rows: Sequence[dict[str, Any]],
    columns: Sequence[str],
    title: str = "",
    title_justify: JustifyMethod = "center",
) -> Table:
    """Rows as a rich table of `columns`, a None value shown as an empty cell."""
    table = Table(title=title or None, title_justify=title_justify)
    for column in columns:
        table.add_column(column)
    for row in rows:
        table.add_row(*("" if row.get(c) is None else str(row.get(c)) for c in columns))
    return table


def print_rows(
    rows: Sequence[dict[str, Any]], columns: Sequence[str], fmt: OutputFormat, title: str = ""
) -> None:
    """Print rows as a rich table, CSV or JSON (a list of objects)."""
    if fmt is OutputFormat.json:
        out.print_json(json.dumps(list(rows), default=str))
    elif fmt is OutputFormat.csv:
        out.print(rows_csv(rows, columns), end="", markup=False)
    else:
        out.print(rows_table(rows, columns, title))
