"""`federation ingest`: JSON lines from files or stdin into a DC's raw InfluxDB database."""

from __future__ import annotations

import json
import signal
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
    seconds_bounds,
)
from federation.core.durations import SECOND_NS
from federation.errors import InvalidInput

if TYPE_CHECKING:
    from federation.ingest import IngestSummary

HELP = """Ingest JSON lines (files, or stdin) into a DC's raw database, by a schema.

Exit codes: 0 every line written (or blank); 1 stopped by an error (InfluxDB refused to go on,
or --give-up-after ran out); 2 invalid input (options, config, schema); 3 done, but some lines
were dead-lettered (the summary counts them by reason); 130 interrupted by SIGINT or SIGTERM.
The summary is printed in every case but 2."""

DEAD_LETTERED_EXIT = 3


def register(app: typer.Typer) -> None:
    """Add the `ingest` command to `app`."""
    app.command("ingest", help=HELP)(ingest_command)


def _flush_seconds(text: str) -> float:
    nanos = duration_option("--flush", text)
    if nanos <= 0:
        raise InvalidInput("--flush must be a positive duration such as 1s or 500ms")
    return nanos / SECOND_NS


@contextmanager
def _sigterm_interrupts() -> Iterator[None]:
    """Let SIGTERM interrupt like SIGINT (KeyboardInterrupt), so the summary of what was
    written is printed either way; the previous handler is restored afterwards."""

    def interrupt(_signum: int, _frame: object) -> None:
        raise KeyboardInterrupt

    previous = signal.signal(signal.SIGTERM, interrupt)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


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
            help="Stop when InfluxDB keeps failing this many seconds (1 to 2592000; default: "
            "wait for it).",
            callback=seconds_bounds("--give-up-after", 1, 30 * 86400),
        ),
    ] = None,
    fmt: FormatOption = OutputFormat.table,
    config: ConfigOption = Path("."),
) -> None:
    from dataclasses import replace

    from federation.config import load_config
    from federation.ingest import INGEST_RETRY, IngestAborted, Source, ingest

    loaded = load_config(config)
    sources: list[Source] = [
        sys.stdin.buffer if str(path) == "-" else path for path in (files or [Path("-")])
    ]
    retry = replace(INGEST_RETRY, give_up_after_s=give_up_after)
    flush_seconds = _flush_seconds(flush)
    try:
        with _sigterm_interrupts(), _progress(dc) as show:
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
    except IngestAborted as exc:
        _print_summary(exc.summary, dc, fmt)
        raise
    _print_summary(result, dc, fmt)
    if result.dead_lettered_total:
        err.print(
            f"{result.dead_lettered_total:,} line(s) dead-lettered to {result.dead_letter_file} "
            f"(exit {DEAD_LETTERED_EXIT})",
            markup=False,
        )
        raise typer.Exit(DEAD_LETTERED_EXIT)


def _print_summary(result: IngestSummary, dc: str, fmt: OutputFormat) -> None:
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
