"""The status grid (DC × window, one coloured character per window state) as rich renderables,
shared by `federation status` and `federation demo`."""

from __future__ import annotations

from rich.console import RenderableType
from rich.table import Table
from rich.text import Text

from federation.clock import format_rfc3339
from federation.coordinator.status import StatusReport

# One character and colour per window state in the status grid.
SYMBOLS: dict[str, tuple[str, str]] = {
    "verified": ("█", "green"),
    "empty": ("░", "green"),
    "shipped": ("▒", "blue"),
    "expected": ("·", "white"),
    "backfilling": ("b", "yellow"),
    "missing": ("M", "bold red"),
    "inconsistent": ("I", "magenta"),
    "unrecoverable": ("U", "bright_black"),
    "-": (" ", "white"),
}


def status_renderables(report: StatusReport, *, reasons: bool = True) -> list[RenderableType]:
    """One table per aggregation, each open window's reason (unless `reasons` is False), and
    the legend."""
    items: list[RenderableType] = []
    for agg in report.aggregations:
        span = (
            f"{format_rfc3339(agg.starts[0])} … {format_rfc3339(agg.starts[-1])}"
            if agg.starts
            else "no complete window yet"
        )
        table = Table(title=f"{agg.aggregation}  ({span})", title_justify="left")
        table.add_column("DC")
        table.add_column("windows (oldest → newest)", no_wrap=True)
        table.add_column("counts")
        for d in agg.dcs:
            grid = Text()
            for state in d.cells:
                symbol, style = SYMBOLS.get(state, ("?", "white"))
                grid.append(symbol, style=style)
            counts = ", ".join(f"{s} {n}" for s, n in sorted(d.counts.items()))
            table.add_row(d.dc, grid, counts)
        items.append(table)
        for d in agg.dcs if reasons else ():
            for p in d.problems:
                items.append(Text(f"  {d.dc} {format_rfc3339(p.start_ns)} {p.state}: {p.reason}"))
            if d.more_problems:
                items.append(Text(f"  {d.dc}: {d.more_problems} more not listed"))
    legend = Text("legend: ")
    for state, (symbol, style) in SYMBOLS.items():
        if state != "-":
            legend.append(symbol, style=style)
            legend.append(f" {state}  ")
    items.append(legend)
    return items
