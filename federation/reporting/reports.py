"""Central reports: calendar-locked percentiles, SLA attainment and the worst groups.

Every figure is read from merged histograms (`sketch` fields), never from InfluxDB's own
percentiles or time grouping: periods come from `federation.core.calendar` (ISO weeks start on
Monday, months are months, DST days are 23 or 25 hours), and the windows of each period are
merged exactly, each (dc, window) once. A percentile is within relative error alpha of the exact
nearest-rank percentile of the raw events; an SLA share comes as bounds that contain the true
share. Histograms of different plan versions are never merged: a period whose windows carry
several versions yields one row per version and says where the version changes. The reports'
value objects, their tables and JSON, are in `federation.reporting.results`.
"""

from __future__ import annotations

import itertools
import math
from collections import defaultdict
from collections.abc import Sequence
from datetime import date

from federation.config import FederationConfig
from federation.coordinator.completeness import LedgerHandle, completeness
from federation.core.calendar import CalendarPeriod, period_windows, periods
from federation.core.clock import format_rfc3339
from federation.core.sketch import Sketch
from federation.core.stats import percentile_field
from federation.core.windows import align
from federation.errors import InvalidInput
from federation.reporting._central import CentralReader, WindowManifest
from federation.reporting._collect import Collected, FigureKey, collect
from federation.reporting.arguments import Metric, parse_metric
from federation.reporting.results import (
    PercentileReport,
    PercentileRow,
    PeriodStatus,
    SlaReport,
    SlaRow,
    VersionChange,
    WorstReport,
    WorstRow,
    relative_bounds,
)

__all__ = [
    "percentile_report",
    "sla_report",
    "worst_report",
]


# --- building ------------------------------------------------------------------------------


def _check(
    config: FederationConfig, aggregation: str, by: Sequence[str], dcs: Sequence[str] | None
) -> tuple[tuple[str, ...], list[str]]:
    spec = config.aggregations.get(aggregation)
    if spec is None:
        known = ", ".join(sorted(config.aggregations))
        raise InvalidInput(f"unknown aggregation {aggregation!r} (known: {known})")
    allowed = ("dc", *spec.dimensions)
    by_ = tuple(dict.fromkeys(b.strip() for b in by if b.strip()))
    for b in by_:
        if b not in allowed:
            raise InvalidInput(f"--by {b!r}: {aggregation} is split by {', '.join(allowed)}")
    chosen = sorted(config.fleet.dcs) if not dcs else sorted(set(dcs))
    for dc in chosen:
        config.dc(dc)
    return by_, chosen


def _zones(config: FederationConfig, tz: str, use_rollups: bool) -> list[str]:
    if not use_rollups:
        return []
    zones = list(config.fleet.central.reporting_timezones)
    return [tz, *[z for z in zones if z != tz]] if tz in zones else zones


def _version_changes(manifests: Sequence[WindowManifest]) -> tuple[VersionChange, ...]:
    per_dc: dict[str, list[WindowManifest]] = defaultdict(list)
    for m in manifests:
        per_dc[m.dc].append(m)
    changes: list[VersionChange] = []
    for dc, items in sorted(per_dc.items()):
        items.sort(key=lambda m: m.start_ns)
        for before, after in itertools.pairwise(items):
            if before.version != after.version:
                changes.append(VersionChange(dc, after.start_ns, before.version, after.version))
    return tuple(changes)


def _status(
    period: CalendarPeriod,
    windows: int,
    collected: Collected,
    ledger: LedgerHandle | None,
    aggregation: str,
    dcs: Sequence[str],
) -> PeriodStatus:
    manifests = list(collected.manifests.values())
    versions: dict[str, set[str]] = defaultdict(set)
    per_dc: dict[str, tuple[int, int]] = {}
    for m in manifests:
        versions[m.version].add(m.dc)
        events, suppressed = per_dc.get(m.dc, (0, 0))
        per_dc[m.dc] = (events + m.events, suppressed + m.suppressed_events)
    return PeriodStatus(
        period=period,
        windows=windows,
        manifests=len(manifests),
        events=sum(m.events for m in manifests),
        suppressed_events=sum(m.suppressed_events for m in manifests),
        versions={v: tuple(sorted(d)) for v, d in sorted(versions.items())},
        version_changes=_version_changes(manifests),
        completeness=None
        if ledger is None
        else completeness(ledger, aggregation, dcs, period.start_ns, period.end_ns),
        sources=collected.describe_sources(),
        per_dc=dict(sorted(per_dc.items())),
    )


def _periods(
    config: FederationConfig,
    aggregation: str,
    kind: str,
    from_date: date | str,
    to_date: date | str,
    tz: str,
) -> list[tuple[CalendarPeriod, int]]:
    window_ns = config.aggregations[aggregation].window
    return [(p, len(period_windows(p, window_ns))) for p in periods(kind, from_date, to_date, tz)]


def _figures(
    config: FederationConfig,
    central: CentralReader,
    aggregation: str,
    kind: str,
    from_date: date | str,
    to_date: date | str,
    tz: str,
    by: Sequence[str],
    dcs: Sequence[str] | None,
    ledger: LedgerHandle | None,
    use_rollups: bool,
) -> tuple[tuple[str, ...], list[tuple[PeriodStatus, dict[FigureKey, Sketch]]]]:
    by_, chosen = _check(config, aggregation, by, dcs)
    zones = _zones(config, tz, use_rollups)
    out: list[tuple[PeriodStatus, dict[FigureKey, Sketch]]] = []
    for period, windows in _periods(config, aggregation, kind, from_date, to_date, tz):
        collected = collect(
            config, central, aggregation, period.start_ns, period.end_ns,
            by=by_, dcs=chosen, zones=zones,
        )  # fmt: skip
        status = _status(period, windows, collected, ledger, aggregation, chosen)
        out.append((status, collected.sketches))
    return by_, out


def percentile_report(
    config: FederationConfig,
    central: CentralReader,
    aggregation: str,
    *,
    period: str,
    from_date: date | str,
    to_date: date | str,
    tz: str = "UTC",
    by: Sequence[str] = (),
    dcs: Sequence[str] | None = None,
    percentiles: Sequence[float] | None = None,
    ledger: LedgerHandle | None = None,
    use_rollups: bool = True,
) -> PercentileReport:
    """Percentiles per calendar period (`day|week|month|quarter` in `tz`) and group of `by`.

    Guarantees: each period covers exactly the windows that tile it (CalendarError when they
    cannot), each (dc, window) merged once, from rollups or windows; every percentile lies
    within relative error alpha of the exact nearest-rank percentile of the period's exported
    events of that group; one row per (period, version, group), groups sorted, and one row with
    no events for a period without data. Each period says its suppressed share (manifests),
    its completeness (the ledger, when given) and where the plan version changes.
    """
    spec = config.aggregations.get(aggregation)
    ps = tuple(float(p) for p in (percentiles or (spec.percentiles if spec else ())))
    for p in ps:
        if not 0 < p <= 100:
            raise InvalidInput(f"percentile {p:g} must be in (0, 100]")
    by_, figures = _figures(
        config, central, aggregation, period, from_date, to_date, tz, by, dcs, ledger, use_rollups
    )
    names = [percentile_field(p) for p in ps]
    rows: list[PercentileRow] = []
    for status, sketches in figures:
        if not sketches:
            rows.append(PercentileRow(status.period.label, "", {b: "" for b in by_}, 0, 0.0, {}))
        for (version, key), sketch in sorted(sketches.items()):
            values = {n: sketch.quantile(p) for n, p in zip(names, ps, strict=True)}
            group = dict(zip(by_, key, strict=True))
            rows.append(
                PercentileRow(
                    status.period.label, version, group, sketch.count, sketch.alpha, values
                )
            )
    return PercentileReport(aggregation, period, tz, by_, ps, [s for s, _ in figures], rows)


def sla_report(
    config: FederationConfig,
    central: CentralReader,
    aggregation: str,
    *,
    threshold: float,
    period: str,
    from_date: date | str,
    to_date: date | str,
    tz: str = "UTC",
    by: Sequence[str] = (),
    dcs: Sequence[str] | None = None,
    ledger: LedgerHandle | None = None,
    use_rollups: bool = True,
) -> SlaReport:
    """Share of events at or under `threshold` (in the aggregation's unit) per period and group.

    Guarantees: `within_low <= exact count of events <= threshold <= within_high` for each
    row, from the merged histogram's `count_at_most` (only the bucket straddling the threshold
    is uncertain); periods, versions and notes as in `percentile_report`.
    """
    if math.isnan(threshold):
        raise InvalidInput("threshold must be a number")
    by_, figures = _figures(
        config, central, aggregation, period, from_date, to_date, tz, by, dcs, ledger, use_rollups
    )
    rows: list[SlaRow] = []
    for status, sketches in figures:
        if not sketches:
            rows.append(SlaRow(status.period.label, "", {b: "" for b in by_}, 0, 0, 0))
        for (version, key), sketch in sorted(sketches.items()):
            lo, hi = sketch.count_at_most(threshold)
            group = dict(zip(by_, key, strict=True))
            rows.append(SlaRow(status.period.label, version, group, sketch.count, lo, hi))
    unit = config.aggregations[aggregation].source.unit
    return SlaReport(aggregation, period, tz, by_, threshold, unit, [s for s, _ in figures], rows)


def worst_report(
    config: FederationConfig,
    central: CentralReader,
    aggregation: str,
    *,
    last_ns: int,
    now_ns: int,
    by: Sequence[str] = ("customer",),
    top: int = 20,
    metric: Metric | str = "p99",
    dcs: Sequence[str] | None = None,
    ledger: LedgerHandle | None = None,
    use_rollups: bool = True,
) -> WorstReport:
    """The `top` groups of `by` with the highest metric over the whole windows of the last
    `last_ns` before `now_ns` (the range ends at the last complete window).

    Guarantees: rows are ordered by the metric, worst first (a percentile's estimate; for
    `count_over`, the certain count, then the possible one), ties broken by group; each row's
    `low`..`high` contains the exact figure of the group's exported events. Versions are never
    merged, so a group may appear once per version.
    """
    if top < 1:
        raise InvalidInput("--top must be at least 1")
    if last_ns <= 0:
        raise InvalidInput("--last must be a positive duration")
    spec = config.aggregations.get(aggregation)
    unit = spec.source.unit if spec else "ms"
    chosen_metric = parse_metric(metric, unit) if isinstance(metric, str) else metric
    by_, chosen = _check(config, aggregation, by, dcs)
    assert spec is not None
    end = align(now_ns, spec.window)
    start = -(-(end - last_ns) // spec.window) * spec.window
    zones = _zones(config, "UTC", use_rollups)
    collected = collect(config, central, aggregation, start, end, by=by_, dcs=chosen, zones=zones)
    ranked: list[tuple[float, float, FigureKey, Sketch, float, float]] = []
    for key, sketch in collected.sketches.items():
        if chosen_metric.percentile is not None:
            q = sketch.quantile(chosen_metric.percentile)
            if q is None:
                continue
            ranked.append((q, q, key, sketch, *relative_bounds(q, sketch.alpha)))
        else:
            assert chosen_metric.threshold is not None
            at_most_lo, at_most_hi = sketch.count_at_most(chosen_metric.threshold)
            over_lo, over_hi = sketch.count - at_most_hi, sketch.count - at_most_lo
            ranked.append((over_lo, over_hi, key, sketch, over_lo, over_hi))
    ranked.sort(key=lambda r: (-r[0], -r[1], r[2]))
    rows: list[WorstRow] = []
    for rank, (value, _, (version, values), sketch, low, high) in enumerate(ranked[:top], 1):
        group = dict(zip(by_, values, strict=True))
        rows.append(WorstRow(rank, version, group, sketch.count, value, low, high))
    label = f"{format_rfc3339(start)}/{format_rfc3339(end)}"
    period = CalendarPeriod("day", label, start, end, "UTC")
    status = _status(period, (end - start) // spec.window, collected, ledger, aggregation, chosen)
    return WorstReport(aggregation, chosen_metric.text, by_, start, end, rows, status)
