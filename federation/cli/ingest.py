"""`federation ingest`: JSON lines from files or stdin into a DC's raw InfluxDB database."""

from __future__ import annotations

import json
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer
from rich.progress import Progress, SpinnerColumn, TextColumn, TimeElapsedColumn

from federation.cli._common import (
    ConfigOption,
    FormatOption,
    OutputFormat,
    duration_option,
    err,
    out,
    print_rows,
)
from federation.durations import SECOND_NS
from federation.errors import InvalidInput

if TYPE_CHECKING:
    from federation.ingest import IngestSummary

HELP = "Ingest JSON lines (files, or stdin) into a DC's raw database, by a schema."


def register(app: typer.Typer) -> None:
    """Add the `ingest` command to `app`."""
    app.command("ingest", help=HELP)(ingest_command)


def _flush_seconds(text: str) -> float:
    nanos = duration_option("--flush", text)
    if nanos <= 0:
        raise InvalidInput("--flush must be a positive duration such as 1s or 500ms")
    return nanos / SECOND_NS


@contextmanager
def _progress(dc: str) -> Iterator[Callable[[IngestSummary], None] | None]:
    """A live line of counts on a terminal; no progress callback (None) in a pipe."""
    if not err.is_terminal:
        yield None
        return
    with Progress(
        SpinnerColumn(),
        TextColumn("{task.description}"),
        TimeElapsedColumn(),
        console=err,
        transient=True,
    ) as bar:
        task = bar.add_task(f"ingesting into {dc}")

        def show(summary: IngestSummary) -> None:
            bar.update(
                task,
                description=(
                    f"ingesting into {dc}: {summary.lines_read:,} read, "
                    f"{summary.points_written:,} written, "
                    f"{summary.dead_lettered_total:,} dead-lettered, "
                    f"{summary.retries:,} retries"
                ),
            )

        yield show


def ingest_command(
    dc: Annotated[str, typer.Option("--dc", help="The DC whose raw database receives the events.")],
    files: Annotated[
        list[Path] | None,
        typer.Argument(
            help="JSON-lines files, read in order; stdin when none (or '-').", show_default=False
        ),
    ] = None,
    schema: Annotated[
        str | None,
        typer.Option(
            "--schema",
            help="Schema file, or a measurement name under policies/schemas/ "
            "(default: the only schema there).",
        ),
    ] = None,
    batch: Annotated[int, typer.Option("--batch", min=1, help="Points per write.")] = 5000,
    flush: Annotated[
        str, typer.Option("--flush", help="Write a partial batch after this long (e.g. 1s, 500ms).")
    ] = "1s",
    dead_letter: Annotated[
        Path | None,
        typer.Option(
            "--dead-letter",
            help="JSON-lines file for refused lines (appended to; default ingest-<dc>.dead.jsonl).",
        ),
    ] = None,
    give_up_after: Annotated[
        float | None,
        typer.Option(
            "--give-up-after",
            help="Stop when InfluxDB keeps failing this many seconds (default: wait for it).",
        ),
    ] = None,
    fmt: FormatOption = OutputFormat.table,
    config: ConfigOption = Path("."),
) -> None:
    from federation.config import load_config
    from federation.ingest import RetryPolicy, Source, ingest

    loaded = load_config(config)
    sources: list[Source] = [
        sys.stdin.buffer if str(path) == "-" else path for path in (files or [Path("-")])
    ]
    retry = RetryPolicy(give_up_after=give_up_after)
    flush_seconds = _flush_seconds(flush)
    with _progress(dc) as show:
        result = ingest(
            loaded,
            dc,
            sources,
            schema=schema,
            batch_size=batch,
            flush_interval=flush_seconds,
            dead_letter=dead_letter,
            retry=retry,
            progress=show,
        )

    data = result.to_dict()
    if fmt is OutputFormat.json:
        out.print_json(json.dumps(data))
        return
    rows = [
        {"metric": name, "value": value}
        for name, value in data.items()
        if name != "dead_lettered_by_reason"
    ]
    rows[3:3] = [
        {"metric": f"dead_lettered.{reason}", "value": count}
        for reason, count in data["dead_lettered_by_reason"].items()
    ]
    print_rows(rows, ["metric", "value"], fmt, title=f"ingest into {dc}")
