"""The status grid (DC × window, one coloured character per window state) as rich renderables,
shared by `federation status` and `federation demo`."""

from __future__ import annotations

from rich.console import RenderableType
from rich.table import Table
from rich.text import Text

from federation.coordinator.replicas import REPLICA_STALE_NS
from federation.coordinator.status import StatusReport
from federation.core.clock import format_rfc3339
from federation.core.durations import SECOND_NS, format_duration

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
    """One table per aggregation, each open window's reason and each notice (unless `reasons`
    is False), each DC whose retention drifted, and the legend."""
    items: list[RenderableType] = []
    for agg in report.aggregations:
        span = (
            f"{format_rfc3339(agg.starts[0])} … {format_rfc3339(agg.starts[-1])}"
            if agg.starts
            else "no complete window yet"
        )
        detection = agg.kind == "detection"
        what = "  detection: central holds counts, the findings stay in each DC" * detection
        table = Table(title=f"{agg.aggregation}  ({span}){what}", title_justify="left")
        table.add_column("DC")
        table.add_column("windows (oldest → newest)", no_wrap=True)
        table.add_column("counts")
        if detection:
            table.add_column("findings", justify="right")
        for d in agg.dcs:
            grid = Text()
            for state in d.cells:
                symbol, style = SYMBOLS.get(state, ("?", "white"))
                grid.append(symbol, style=style)
            counts = ", ".join(f"{s} {n}" for s, n in sorted(d.counts.items()))
            found = [str(d.findings or 0)] if detection else []
            table.add_row(d.dc, grid, counts, *found)
        items.append(table)
        for d in agg.dcs if reasons else ():
            for p in d.problems:
                items.append(Text(f"  {d.dc} {format_rfc3339(p.start_ns)} {p.state}: {p.reason}"))
            if d.more_problems:
                items.append(Text(f"  {d.dc}: {d.more_problems} more not listed"))
            for p in d.notices:
                items.append(
                    Text(f"  {d.dc} {format_rfc3339(p.start_ns)} {p.state} (notice): {p.reason}")
                )
    items.extend(_backfill_lines(report) if reasons else ())
    items.extend(_clock_lines(report))
    items.extend(_replica_lines(report))
    for r in report.retention:
        items.append(Text(f"retention {r.state} on {r.dc}: {r.detail}", style="bold red"))
    for u in report.unhealthy:
        items.append(Text(f"unhealthy on {u.dc}: {u.aggregation}: {u.detail}", style="bold red"))
    legend = Text("legend: ")
    for state, (symbol, style) in SYMBOLS.items():
        if state != "-":
            legend.append(symbol, style=style)
            legend.append(f" {state}  ")
    items.append(legend)
    return items


def _ago(ns: int) -> str:
    """A span as whole seconds in its largest exact unit (`5h`, `90s`)."""
    return format_duration(max(ns, 0) // SECOND_NS * SECOND_NS)


def _backfill_lines(report: StatusReport) -> list[RenderableType]:
    """One line per backfill leased to an agent that has not reported its result yet."""
    lines: list[RenderableType] = []
    if report.backfills:
        lines.append(Text(f"backfills running ({len(report.backfills)}):"))
    for b in report.backfills:
        expires = (
            ""
            if b.lease_expires_ns is None
            else f", lease runs out in {_ago(b.lease_expires_ns - report.now_ns)}"
            if b.lease_expires_ns > report.now_ns
            else ", lease ran out (requeued at the next lease or planner pass)"
        )
        lines.append(
            Text(
                f"  #{b.id} {b.dc} {b.aggregation} {format_rfc3339(b.start_ns)} → "
                f"{format_rfc3339(b.end_ns)}: leased {_ago(report.now_ns - b.leased_ns)} ago "
                f"(attempt {b.attempts}){expires}"
            )
        )
    return lines


def _clock_lines(report: StatusReport) -> list[RenderableType]:
    """A warning per DC whose agent's clock is off by more than the tolerance."""
    return [
        Text(
            f"clock: {c.dc}'s agent is {_ago(abs(c.skew_ns))} "
            f"{'ahead of' if c.skew_ns > 0 else 'behind'} the coordinator "
            f"(its report at {format_rfc3339(c.reported_ns)}): windows are computed only once "
            "they have ended by both clocks",
            style="bold red",
        )
        for c in report.clocks
        if c.large
    ]


def _replica_lines(report: StatusReport) -> list[RenderableType]:
    """One line per coordinator replica over the ledger: the config generation it runs; in red
    when it runs an older one than the newest, or its heartbeat stopped."""
    if not report.replicas:
        return []
    lines: list[RenderableType] = [
        Text(f"coordinator replicas (newest config generation {report.generation}):")
    ]
    for r in report.replicas:
        age = report.now_ns - r.heartbeat_ns
        stale = age > REPLICA_STALE_NS
        behind = r.generation != report.generation
        where = f" at {r.url}" if r.url else ""
        line = f"  {r.name}{where}: generation {r.generation}, {r.state}"
        line += f", not seen for {_ago(age)}" if stale else ""
        line += f": {r.problem}" if r.problem else ""
        lines.append(Text(line, style="bold red" if stale or behind or r.problem else ""))
    return lines
