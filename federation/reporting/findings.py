"""Central's view of the detections: per calendar period, how many keys the DCs evaluated and
how many were findings, split by DC or by detection.

Central holds one count point per (detection, dc, window) — tag `dc`, fields `count` (events),
`keys` and `findings` — and nothing else of a detection: no key, no value of one. These reports
only ever add those counts up; the findings themselves are each DC's (`federation findings`).
"""

from __future__ import annotations

import bisect
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import date
from typing import Any

from federation.config import FederationConfig
from federation.core.calendar import periods
from federation.errors import InvalidInput
from federation.reporting._central import CentralReader, read_dc_rows

__all__ = [
    "FINDINGS_SPLITS",
    "DetectionCounts",
    "FindingsReport",
    "FindingsRow",
    "detection_counts",
    "findings_report",
]

FINDINGS_SPLITS = ("dc", "detection")
"""What a findings report may be split by."""


@dataclass(frozen=True)
class DetectionCounts:
    """What central holds of one detection in one DC over a range: its windows' counts."""

    windows: int = 0
    events: int = 0
    keys: int = 0
    findings: int = 0

    def __add__(self, other: DetectionCounts) -> DetectionCounts:
        return DetectionCounts(
            self.windows + other.windows,
            self.events + other.events,
            self.keys + other.keys,
            self.findings + other.findings,
        )


def _check_dcs(config: FederationConfig, dcs: Sequence[str] | None) -> list[str]:
    chosen = sorted(config.fleet.dcs) if not dcs else sorted(set(dcs))
    for dc in chosen:
        config.dc(dc)
    return chosen


def _points(
    config: FederationConfig,
    central: CentralReader,
    dcs: Sequence[str],
    start_ns: int,
    end_ns: int,
) -> list[tuple[str, str, int, DetectionCounts]]:
    """Every count point of every detection from `dcs` in [start, end): (detection, dc, window
    start, counts)."""
    found = []
    for detection in sorted(config.detections):
        rows = read_dc_rows(
            central, config, detection, ("count", "keys", "findings"), (), dcs,
            start_ns, end_ns, ("dc",),
        )  # fmt: skip
        for tags, (t, count, keys, findings) in rows:
            counts = DetectionCounts(1, int(count or 0), int(keys or 0), int(findings or 0))
            found.append((detection, tags.get("dc", ""), int(t), counts))
    return found


def detection_counts(
    config: FederationConfig,
    central: CentralReader,
    start_ns: int,
    end_ns: int,
    *,
    dcs: Sequence[str] | None = None,
) -> dict[tuple[str, str], DetectionCounts]:
    """(dc, detection) -> the counts of its windows starting in [start, end), for every
    declared detection and chosen DC (zero counts where central holds none)."""
    chosen = _check_dcs(config, dcs)
    totals = {(dc, d): DetectionCounts() for dc in chosen for d in sorted(config.detections)}
    for detection, dc, _, counts in _points(config, central, chosen, start_ns, end_ns):
        totals[(dc, detection)] = totals.get((dc, detection), DetectionCounts()) + counts
    return totals


@dataclass(frozen=True)
class FindingsRow:
    """One period and one DC (or detection): windows received, events, keys, findings."""

    period: str
    group: str
    counts: DetectionCounts


@dataclass(frozen=True)
class FindingsReport:
    """Findings counts per calendar period and DC or detection."""

    period: str
    tz: str
    by: str
    rows: list[FindingsRow]

    def columns(self) -> list[str]:
        return ["period", self.by, "windows", "events", "keys", "findings"]

    def table_rows(self) -> list[dict[str, Any]]:
        """One flat row per (period, group), every group of every period (zeros included)."""
        return [
            {
                "period": r.period,
                self.by: r.group,
                "windows": r.counts.windows,
                "events": r.counts.events,
                "keys": r.counts.keys,
                "findings": r.counts.findings,
            }
            for r in self.rows
        ]

    def to_json(self) -> dict[str, Any]:
        return {"period": self.period, "tz": self.tz, "by": self.by, "rows": self.table_rows()}


def findings_report(
    config: FederationConfig,
    central: CentralReader,
    *,
    period: str,
    from_date: date | str,
    to_date: date | str,
    tz: str = "UTC",
    by: str = "dc",
    dcs: Sequence[str] | None = None,
) -> FindingsReport:
    """The findings counts of every detection per calendar period (`day|week|month|quarter` in
    `tz`, whole periods covering the local days given) and DC or detection (`by`).

    Guarantees: each window's count point is added to exactly one period (the one its start
    lies in); each (period, group) has a row, zeros where central holds no window, so "no
    findings" and "nothing received" differ by `windows`. InvalidInput for another split, an
    unknown DC, or bad dates.
    """
    if by not in FINDINGS_SPLITS:
        raise InvalidInput(f"--by {by!r}: findings are split by {' or '.join(FINDINGS_SPLITS)}")
    chosen = _check_dcs(config, dcs)
    spans = periods(period, from_date, to_date, tz)
    groups = chosen if by == "dc" else sorted(config.detections)
    totals = {(p.label, g): DetectionCounts() for p in spans for g in groups}
    starts = [p.start_ns for p in spans]
    if spans:
        for detection, dc, t, counts in _points(
            config, central, chosen, spans[0].start_ns, spans[-1].end_ns
        ):
            label = spans[bisect.bisect_right(starts, t) - 1].label
            key = (label, dc if by == "dc" else detection)
            totals[key] = totals[key] + counts
    rows = [FindingsRow(p.label, g, totals[(p.label, g)]) for p in spans for g in groups]
    return FindingsReport(period, tz, by, rows)
