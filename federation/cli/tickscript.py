"""`federation render` and `federation lint`: TICKscripts for platform engineers."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Annotated

import typer

from federation.cli._common import ConfigOption, err, out
from federation.errors import InvalidInput


def register(app: typer.Typer) -> None:
    app.command()(render)
    app.command()(lint)


def render(
    config: ConfigOption = Path("."),
    dc: Annotated[str | None, typer.Option(help="Only this DC.")] = None,
    aggregation: Annotated[str | None, typer.Option(help="Only this aggregation.")] = None,
    out_dir: Annotated[
        Path | None,
        typer.Option("--out", help="Write <aggregation>.<dc>.tick and .json files here."),
    ] = None,
) -> None:
    """Render every aggregation for every DC (linted); to stdout, or files with --out."""
    from federation.config import load_config
    from federation.tickscript.render import SEPARATOR_PREFIX, render_all, write_rendered

    tasks = render_all(load_config(config), dc=dc, aggregation=aggregation)
    if out_dir is None:
        for task in tasks:
            out.print(f"{SEPARATOR_PREFIX}{task.filename}  (task {task.id})", markup=False)
            out.print(task.script, end="", markup=False)
        return
    for path in write_rendered(tasks, out_dir):
        out.print(f"wrote {path}", markup=False)


def lint(
    files: Annotated[list[Path], typer.Argument(help="TICKscript files ('-' for stdin).")],
    config: ConfigOption = Path("."),
) -> None:
    """Lint TICKscripts: syntax, Kapacitor's batch rules, and no personal data anywhere."""
    from federation.config import load_config
    from federation.tickscript.render import lint_file

    loaded = load_config(config)
    found = 0
    for path in files:
        name = "<stdin>" if str(path) == "-" else str(path)
        try:
            source = sys.stdin.read() if name == "<stdin>" else path.read_text(encoding="utf-8")
        except OSError as exc:
            raise InvalidInput(f"{path}: cannot read: {exc.strerror}") from None
        for linted in lint_file(loaded, source, name):
            found += len(linted.problems)
            for problem in linted.problems:
                err.print(str(problem), markup=False)
            out.print(f"{linted.label}: {len(linted.problems)} problem(s); {linted.note}",
                      markup=False)  # fmt: skip
    if found:
        raise typer.Exit(1)
