"""What a report is, apart from how it is built: the value objects of the percentile, SLA and
worst-N reports, each with its table rows and JSON form, and the notes every period carries
(suppressed share, completeness, plan versions). `federation.reporting.reports` builds them.

In a table, a row's notes are its own DC's when the report is split by DC, else the whole
period's, and then the columns say so (`period_suppressed`, `period_complete`); a period without
any data is one row flagged `no data`.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, TypeVar

from federation.coordinator.completeness import Completeness
from federation.core.calendar import CalendarPeriod
from federation.core.clock import format_rfc3339
from federation.core.stats import percentile_field

__all__ = [
    "NO_DATA",
    "PercentileReport",
    "PercentileRow",
    "PeriodStatus",
    "SlaReport",
    "SlaRow",
    "VersionChange",
    "WorstReport",
    "WorstRow",
    "note_columns",
    "relative_bounds",
]


@dataclass(frozen=True)
class VersionChange:
    """A DC's plan version changing between two consecutive windows of a period."""

    dc: str
    at_ns: int
    before: str
    after: str

    def describe(self) -> str:
        return f"{self.dc}: {self.before} -> {self.after} at {format_rfc3339(self.at_ns)}"


@dataclass(frozen=True)
class PeriodStatus:
    """What a report knows about one period beyond its figures."""

    period: CalendarPeriod
    windows: int
    """Windows per DC that tile the period."""
    manifests: int
    events: int
    suppressed_events: int
    versions: dict[str, tuple[str, ...]]
    """Each plan version seen and the DCs that shipped it."""
    version_changes: tuple[VersionChange, ...]
    completeness: Completeness | None
    sources: str
    per_dc: dict[str, tuple[int, int]] = field(default_factory=dict)
    """Each DC's (events, suppressed events) in the period, from its manifests."""

    @property
    def suppressed_share(self) -> float | None:
        """Share of the period's events in groups suppressed by k-anonymity."""
        return self.suppressed_events / self.events if self.events else None

    def dc_suppressed_share(self, dc: str) -> float | None:
        """Share of `dc`'s events in the period that its groups below k-anonymity suppressed."""
        events, suppressed = self.per_dc.get(dc, (0, 0))
        return suppressed / events if events else None

    def dc_completeness(self, dc: str) -> tuple[int, int] | None:
        """`dc`'s (done, expected) windows in the period; None without a ledger."""
        if self.completeness is None:
            return None
        return self.completeness.per_dc.get(dc, (0, 0))

    @property
    def complete(self) -> bool | None:
        """Whether every expected (dc, window) is verified or empty; None without a ledger."""
        return None if self.completeness is None else self.completeness.complete

    @property
    def flags(self) -> list[str]:
        """Human-readable warnings: incompleteness, version changes, several versions."""
        flags: list[str] = []
        if self.completeness is not None and not self.completeness.complete:
            flags.append(f"incomplete {self.completeness.describe()}")
        if self.version_changes:
            flags.append(
                "version changes: " + "; ".join(c.describe() for c in self.version_changes)
            )
        elif len(self.versions) > 1:
            parts = [f"{v} ({', '.join(dcs)})" for v, dcs in sorted(self.versions.items())]
            flags.append("versions differ between DCs: " + "; ".join(parts))
        return flags

    def to_json(self) -> dict[str, Any]:
        c = self.completeness
        return {
            "period": self.period.label,
            "start": format_rfc3339(self.period.start_ns),
            "end": format_rfc3339(self.period.end_ns),
            "windows_per_dc": self.windows,
            "manifests": self.manifests,
            "events": self.events,
            "suppressed_events": self.suppressed_events,
            "suppressed_share": self.suppressed_share,
            "completeness": None
            if c is None
            else {"expected": c.expected, "done": c.done, "ratio": c.ratio, "states": c.states},
            "versions": {v: list(d) for v, d in self.versions.items()},
            "version_changes": [
                {"dc": x.dc, "at": format_rfc3339(x.at_ns), "from": x.before, "to": x.after}
                for x in self.version_changes
            ],
            "sources": self.sources,
            "flags": self.flags,
            "per_dc": {
                dc: {
                    "events": events,
                    "suppressed_events": suppressed,
                    "suppressed_share": self.dc_suppressed_share(dc),
                    "windows_done_expected": self.dc_completeness(dc),
                }
                for dc, (events, suppressed) in self.per_dc.items()
            },
        }


def _pct(x: float | None) -> str:
    return "" if x is None else f"{x * 100:.2f}%"


def _num(x: float | None) -> str:
    return "" if x is None else f"{x:.6g}"


def relative_bounds(value: float, alpha: float) -> tuple[float, float]:
    """Where the exact figure lies, low first, when `value` is within relative error alpha."""
    lo, hi = value / (1 + alpha), value / (1 - alpha)
    return (lo, hi) if value >= 0 else (hi, lo)


@dataclass(frozen=True)
class PercentileRow:
    """Merged percentiles of one group in one period and plan version."""

    period: str
    version: str
    group: dict[str, str]
    count: int
    alpha: float
    values: dict[str, float | None]

    def bounds(self, name: str) -> tuple[float, float] | None:
        """Where the exact percentile lies: [v / (1 + alpha), v / (1 - alpha)] for v >= 0."""
        v = self.values.get(name)
        return None if v is None else relative_bounds(v, self.alpha)


@dataclass(frozen=True)
class PercentileReport:
    """`federation report percentiles`: per period and group, merged percentiles."""

    aggregation: str
    kind: str
    tz: str
    by: tuple[str, ...]
    percentiles: tuple[float, ...]
    periods: list[PeriodStatus]
    rows: list[PercentileRow]

    @property
    def fields(self) -> list[str]:
        return [percentile_field(p) for p in self.percentiles]

    def columns(self) -> list[str]:
        return [
            "period", "version", *self.by, "events", *self.fields, "error",
            *note_columns(self.by), "flags",
        ]  # fmt: skip

    def table_rows(self) -> list[dict[str, Any]]:
        """One flat row per (period, version, group), period notes repeated on each."""
        fields = self.fields

        def figures(r: PercentileRow) -> dict[str, Any]:
            values = {f: _num(r.values.get(f)) for f in fields}
            return {**values, "error": f"±{r.alpha:.2%}" if r.count else ""}

        return _table_rows(self.periods, self.rows, figures)

    def to_json(self) -> dict[str, Any]:
        """The whole report as JSON-able data: meta, periods (notes) and rows."""
        fields = self.fields

        def figures(r: PercentileRow) -> dict[str, Any]:
            return {
                "alpha": r.alpha,
                **{f: r.values.get(f) for f in fields},
                "bounds": {f: r.bounds(f) for f in fields},
            }

        return {
            "report": "percentiles",
            "aggregation": self.aggregation,
            "period": self.kind,
            "tz": self.tz,
            "by": list(self.by),
            "percentiles": list(self.percentiles),
            "periods": [s.to_json() for s in self.periods],
            "rows": _json_rows(self.periods, self.rows, figures),
        }


@dataclass(frozen=True)
class SlaRow:
    """Share of one group's events at or under the threshold, as bounds."""

    period: str
    version: str
    group: dict[str, str]
    count: int
    within_low: int
    within_high: int

    @property
    def share(self) -> tuple[float, float] | None:
        if not self.count:
            return None
        return self.within_low / self.count, self.within_high / self.count


@dataclass(frozen=True)
class SlaReport:
    """`federation report sla`: per period and group, the share of events within threshold."""

    aggregation: str
    kind: str
    tz: str
    by: tuple[str, ...]
    threshold: float
    unit: str
    periods: list[PeriodStatus]
    rows: list[SlaRow]

    def columns(self) -> list[str]:
        return [
            "period", "version", *self.by, "events", "within", "share_low", "share_high",
            *note_columns(self.by), "flags",
        ]  # fmt: skip

    def table_rows(self) -> list[dict[str, Any]]:
        """One flat row per (period, version, group), period notes repeated on each."""

        def figures(r: SlaRow) -> dict[str, Any]:
            share = r.share
            return {
                "within": f"{r.within_low}..{r.within_high}",
                "share_low": _pct(share[0]) if share else "",
                "share_high": _pct(share[1]) if share else "",
            }

        return _table_rows(self.periods, self.rows, figures)

    def to_json(self) -> dict[str, Any]:
        """The whole report as JSON-able data: meta, periods (notes) and rows."""

        def figures(r: SlaRow) -> dict[str, Any]:
            share = r.share
            return {
                "within_low": r.within_low,
                "within_high": r.within_high,
                "share_low": share[0] if share else None,
                "share_high": share[1] if share else None,
            }

        return {
            "report": "sla",
            "aggregation": self.aggregation,
            "period": self.kind,
            "tz": self.tz,
            "by": list(self.by),
            "threshold": self.threshold,
            "unit": self.unit,
            "periods": [s.to_json() for s in self.periods],
            "rows": _json_rows(self.periods, self.rows, figures),
        }


_PeriodRow = TypeVar("_PeriodRow", PercentileRow, SlaRow)

NO_DATA = "no data"
"""The flag of a period without any exported event: its figures are absent, not zero."""


def note_columns(by: Sequence[str]) -> tuple[str, str]:
    """The suppressed-share and completeness columns: a row's own DC's figures when the report
    is split by DC, otherwise the whole period's, and then their names say so."""
    return ("suppressed", "complete") if "dc" in by else ("period_suppressed", "period_complete")


def _notes(status: PeriodStatus, dc: str | None, columns: tuple[str, str]) -> dict[str, Any]:
    """A row's notes: suppressed share, completeness and flags, of `dc` or of the period."""
    flags = status.flags
    if dc is None:
        c = status.completeness
        share, done = status.suppressed_share, None if c is None else (c.done, c.expected)
    else:
        share, done = status.dc_suppressed_share(dc), status.dc_completeness(dc)
        flags = [f for f in flags if not f.startswith("incomplete ")]
        if done is not None and done[0] < done[1]:
            flags.insert(0, f"incomplete {done[0]}/{done[1]}")
    complete = "unknown" if done is None else _pct(done[0] / done[1] if done[1] else None)
    return {columns[0]: _pct(share), columns[1]: complete, "flags": " | ".join(flags)}


def _table_rows(
    periods: Sequence[PeriodStatus],
    rows: Sequence[_PeriodRow],
    figures: Callable[[_PeriodRow], dict[str, Any]],
) -> list[dict[str, Any]]:
    """Flat table rows: each row's period, version, group and events, its `figures`, then its
    notes (suppressed share, completeness, flags): its DC's when the row has a `dc`, else the
    period's. A row without data has only its period and the flag `no data`."""
    by_label = {s.period.label: s for s in periods}
    # Formatted once per (period, dc): a period may have thousands of group rows.
    notes: dict[tuple[str, str | None], dict[str, Any]] = {}
    table: list[dict[str, Any]] = []
    for r in rows:
        dc = r.group.get("dc") or None
        columns = note_columns(list(r.group))
        key = (r.period, dc)
        if key not in notes:
            notes[key] = _notes(by_label[r.period], dc, columns)
        note = notes[key]
        if not r.version and not r.count:
            flags = " | ".join(f for f in (NO_DATA, note["flags"]) if f)
            table.append({"period": r.period, columns[1]: note[columns[1]], "flags": flags})
            continue
        table.append(
            {
                "period": r.period,
                "version": r.version,
                **r.group,
                "events": r.count,
                **figures(r),
                **note,
            }
        )
    return table


def _json_rows(
    periods: Sequence[PeriodStatus],
    rows: Sequence[_PeriodRow],
    figures: Callable[[_PeriodRow], dict[str, Any]],
) -> list[dict[str, Any]]:
    """JSON rows: each row's period and its start, version, group and count, then `figures`."""
    starts = {s.period.label: format_rfc3339(s.period.start_ns) for s in periods}
    return [
        {"period": r.period, "start": starts[r.period], "count": 0, "no_data": True}
        if not r.version and not r.count
        else {
            "period": r.period,
            "start": starts[r.period],
            "version": r.version,
            **r.group,
            "count": r.count,
            **figures(r),
        }
        for r in rows
    ]


@dataclass(frozen=True)
class WorstRow:
    """One group ranked by a metric: `value` and the bounds the exact figure lies within."""

    rank: int
    version: str
    group: dict[str, str]
    count: int
    value: float
    low: float
    high: float


@dataclass(frozen=True)
class WorstReport:
    """`federation report worst`: the groups with the worst metric over the last range."""

    aggregation: str
    metric: str
    by: tuple[str, ...]
    start_ns: int
    end_ns: int
    rows: list[WorstRow]
    status: PeriodStatus | None = field(default=None)

    def columns(self) -> list[str]:
        return ["rank", "version", *self.by, "events", self.metric, "low", "high"]

    def table_rows(self) -> list[dict[str, Any]]:
        return [
            {
                "rank": r.rank,
                "version": r.version,
                **r.group,
                "events": r.count,
                self.metric: _num(r.value),
                "low": _num(r.low),
                "high": _num(r.high),
            }
            for r in self.rows
        ]

    def to_json(self) -> dict[str, Any]:
        return {
            "report": "worst",
            "aggregation": self.aggregation,
            "metric": self.metric,
            "by": list(self.by),
            "start": format_rfc3339(self.start_ns),
            "end": format_rfc3339(self.end_ns),
            "status": None if self.status is None else self.status.to_json(),
            "rows": [
                {
                    "rank": r.rank,
                    "version": r.version,
                    **r.group,
                    "count": r.count,
                    "value": r.value,
                    "low": r.low,
                    "high": r.high,
                }
                for r in self.rows
            ],
        }
