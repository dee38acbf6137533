"""What a DC's raw data holds against what central holds, window by window.

Kapacitor's `influxDBOut` drops a write that fails and never retries it. When the gateway is
down or refuses, a window whose first scheduled run got through but whose later, complete
look-back runs were dropped stays at central with fewer events than the DC's raw data holds,
and verifies (its manifest agrees with its summaries). Only the DC can tell: its agent counts
each window's raw events once the look-back has passed and sends the counts here.

`compare_raw_counts` answers, per window, what central holds, and moves a window that is
`verified`, `empty` or `shipped` with fewer events than the raw data to `inconsistent`, the
two figures in its reason: it is then shown as not complete, and the planner has it re-run.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from sqlalchemy import select, update

from federation.coordinator.ledger import Ledger, WindowRow
from federation.coordinator.tracking import WindowState
from federation.errors import InvalidInput

__all__ = ["MAX_COUNTS", "compare_raw_counts", "parse_raw_counts"]

MAX_COUNTS = 10_000
"""Windows one request may carry."""

_COMPARED = (WindowState.VERIFIED.value, WindowState.EMPTY.value, WindowState.SHIPPED.value)
"""States a window can be short in: the others (missing, backfilling, inconsistent, …) are
already the planner's to re-run."""


def _integer(value: object, where: str, *, minimum: int) -> int:
    if not isinstance(value, int) or isinstance(value, bool) or value < minimum:
        raise InvalidInput(f"raw counts: {where}: must be an integer of at least {minimum}")
    return value


def parse_raw_counts(data: Mapping[str, Any]) -> tuple[str, dict[int, int]]:
    """`{"aggregation": str, "counts": [{"start_ns": int, "events": int}, …]}` as
    (aggregation, {start_ns: events}); InvalidInput naming the field otherwise."""
    aggregation = data.get("aggregation")
    if not isinstance(aggregation, str) or not aggregation:
        raise InvalidInput("raw counts: aggregation: must be a non-empty string")
    entries = data.get("counts")
    if not isinstance(entries, list):
        raise InvalidInput("raw counts: counts: must be a list")
    if len(entries) > MAX_COUNTS:
        raise InvalidInput(f"raw counts: counts: at most {MAX_COUNTS} windows per request")
    counts: dict[int, int] = {}
    for i, entry in enumerate(entries):
        if not isinstance(entry, dict):
            raise InvalidInput(f"raw counts: counts[{i}]: must be an object")
        start = _integer(entry.get("start_ns"), f"counts[{i}].start_ns", minimum=0)
        counts[start] = _integer(entry.get("events"), f"counts[{i}].events", minimum=0)
    return aggregation, counts


def compare_raw_counts(
    ledger: Ledger, dc: str, aggregation: str, counts: Mapping[int, int], now_ns: int
) -> dict[str, Any]:
    """Compare the DC's raw event counts with the ledger; mark the windows central holds less of.

    Answers `{"windows": [{"start_ns", "raw_events", "state", "events", "short"}]}`, one entry
    per counted window, oldest first: `state` and `events` as the ledger holds them after the
    comparison (`events` null when nothing was shipped), `short` true for a window this call
    moved to `inconsistent`.
    """
    if not counts:
        return {"windows": []}
    starts = sorted(counts)
    with ledger.session(write=True) as session:
        rows = {
            r.start_ns: r
            for r in session.execute(
                select(WindowRow.id, WindowRow.start_ns, WindowRow.state, WindowRow.run, WindowRow.events)
                .where(
                    WindowRow.dc == dc,
                    WindowRow.aggregation == aggregation,
                    WindowRow.start_ns.in_(starts),
                )
            ).all()
        }  # fmt: skip
        answer = []
        for start in starts:
            raw = counts[start]
            row = rows.get(start)
            state = row.state if row is not None else WindowState.EXPECTED.value
            events = None if row is None else row.events
            short = False
            if row is not None and row.state in _COMPARED and (row.events or 0) < raw:
                reason = (
                    f"the DC's raw data holds {raw} events, central {row.events or 0} "
                    f"(run {row.run}): a later run of the window did not reach central"
                )
                result = session.execute(
                    update(WindowRow)
                    .where(
                        WindowRow.id == row.id,
                        WindowRow.state == row.state,
                        WindowRow.run.is_(None) if row.run is None else WindowRow.run == row.run,
                    )
                    .values(state=WindowState.INCONSISTENT.value, reason=reason, updated_ns=now_ns)
                    .execution_options(synchronize_session=False)
                )
                if getattr(result, "rowcount", 0):
                    state, short = WindowState.INCONSISTENT.value, True
            answer.append(
                {
                    "start_ns": start,
                    "raw_events": raw,
                    "state": state,
                    "events": events,
                    "short": short,
                }
            )
    return {"windows": answer}
