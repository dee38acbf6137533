"""Merge an aggregation's histograms over a time range, per plan version and group.

The range is covered by the coarsest source that fits: whole local months of one reporting time
zone come from monthly rollups, the other whole local days (and the days of a (dc, month) whose
monthly rollup is missing or stale) from daily rollups, and windows are read only at the edges
(where the range does not start or end on a rollup day boundary) and for (dc, day) pairs whose
daily rollup is missing or stale.
Histograms of different plan versions are never merged: every figure is keyed by version.

A (dc, period) rollup is taken only whole. Its marker names the builds whose points are current
(`builds`, always holding `fingerprint`; a marker without it: the fingerprint alone) and how many
points each dimension set holds (`set_groups`). Points of another build are left out, and when the
points taken of the set read are not exactly as many as the marker counts (replicas that raced, a
refresh that died half-written) that period is read again from the level below - a month from its
days' rollups, a day from windows - as if its marker had not matched, never with a group missing.
"""

from __future__ import annotations

import logging
from collections import Counter, defaultdict
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

from federation.config import FederationConfig
from federation.core.calendar import CalendarPeriod, period_of, periods
from federation.core.influxql import quote_string
from federation.core.sketch import Sketch
from federation.reporting._central import (
    CentralReader,
    SketchMerger,
    WindowManifest,
    fingerprint,
    manifests_by_period,
    read_dc_rows,
    read_manifests,
    tag_value,
)
from federation.reporting.rollups import (
    MONTHLY_MARKER_MEASUREMENT,
    ROLLUP_MARKER_MEASUREMENT,
    covering_dimension_set,
    dims_tag,
    marker_builds,
    marker_set_groups,
    monthly_measurement,
    rollup_measurement,
)

log = logging.getLogger(__name__)

UNKNOWN_VERSION = "unknown"
"""The version of summary points whose window has no manifest at central."""

GroupKey = tuple[str, ...]
FigureKey = tuple[str, GroupKey]
"""(plan version, group values in `by` order)."""
PeriodKey = tuple[str, int]
"""(dc, period start) of a rollup."""
RollupKey = tuple[str, str, int]
"""(level: `monthly` or `daily`, dc, period start) of a rollup."""


@dataclass
class Collected:
    """Merged histograms of one range, and where they came from."""

    sketches: dict[FigureKey, Sketch]
    manifests: dict[tuple[str, int], WindowManifest]
    rollup_zone: str | None = None
    rollup_dc_days: int = 0
    """(dc, day) pairs read from rollups, monthly or daily."""
    rollup_dc_months: int = 0
    window_dc_days: int = 0
    points_read: dict[str, int] = field(
        default_factory=lambda: {"monthly": 0, "daily": 0, "window": 0}
    )

    def describe_sources(self) -> str:
        """`rollups Europe/London: 93 dc-days (3 dc-months monthly, …); windows: 0 dc-days +
        edges (…)`-style summary."""
        read = self.points_read
        if self.rollup_zone is None:
            return f"windows ({read['window']} points)"
        return (
            f"rollups {self.rollup_zone}: {self.rollup_dc_days} dc-days "
            f"({self.rollup_dc_months} dc-months monthly, {read['monthly']} points; "
            f"{read['daily']} daily points); windows: {self.window_dc_days} dc-days "
            f"+ edges ({read['window']} points)"
        )


@dataclass(frozen=True)
class _Rollup:
    """What a (dc, period)'s marker lets a report take: points of `builds`, `groups` of them in
    the dimension set read."""

    builds: frozenset[str]
    groups: int


@dataclass(frozen=True)
class _Range:
    start_ns: int
    end_ns: int
    dcs: tuple[str, ...]


def rollup_days(
    start_ns: int, end_ns: int, zones: Sequence[str]
) -> tuple[str | None, list[CalendarPeriod]]:
    """The zone whose whole local days cover most of [start, end), and those days in order;
    (None, []) when no zone has a whole day inside the range. Earlier zones win ties."""
    best: tuple[str | None, list[CalendarPeriod]] = (None, [])
    best_cover = 0
    if end_ns <= start_ns:
        return best
    for tz in zones:
        first = period_of(start_ns, "day", tz)
        last = period_of(end_ns - 1, "day", tz)
        days = [
            d
            for d in periods("day", first.label, last.label, tz)
            if d.start_ns >= start_ns and d.end_ns <= end_ns
        ]
        cover = sum(d.duration_ns for d in days)
        if cover > best_cover:
            best, best_cover = (tz, days), cover
    return best


def collect(
    config: FederationConfig,
    central: CentralReader,
    aggregation: str,
    start_ns: int,
    end_ns: int,
    *,
    by: Sequence[str],
    dcs: Sequence[str],
    zones: Sequence[str] = (),
    not_whole: frozenset[RollupKey] = frozenset(),
) -> Collected:
    """Per (version, group of `by`), the histogram of every event of the windows starting in
    [start, end) from `dcs`, each (dc, window) counted exactly once.

    Rollups of `zones` are used where a whole local day lies in the range and the DC's rollup
    of that day matches the manifests central holds now and holds every point its marker
    counts; everything else is read from windows. Only the needed series (dc and rollup tags in
    the WHERE), time range and fields are read, streamed, so memory follows the number of
    figures, not of points. The rollups of `not_whole` are left out: a rollup found not whole
    is read again from the level below, collecting again without it (each pass leaves out
    more, so this ends: at worst a month, then its days, then their windows).
    """
    manifests = read_manifests(central, config, aggregation, dcs, start_ns, end_ns)
    result = Collected({}, manifests)
    dimensions = config.aggregations[aggregation].dimensions
    merger: SketchMerger[FigureKey] = SketchMerger()
    ranges: list[_Range] = []

    dimension_set = covering_dimension_set(dimensions, by)
    zone, days = (None, []) if dimension_set is None else rollup_days(start_ns, end_ns, zones)
    if zone is not None and dimension_set is not None:
        dims = dims_tag(dimension_set)
        months = whole_months(days, zone)
        monthly: dict[PeriodKey, _Rollup] = {}
        if months:
            found = _usable_rollups(
                central, config, MONTHLY_MARKER_MEASUREMENT, aggregation, zone, dims, dcs,
                months, manifests,
            )  # fmt: skip
            monthly = {k: r for k, r in found.items() if ("monthly", *k) not in not_whole}
        month_of = {d.start_ns: m.start_ns for m in months for d in days if m.contains(d.start_ns)}
        left = {
            dc: [d for d in days if (dc, month_of.get(d.start_ns)) not in monthly] for dc in dcs
        }
        left_dcs = [dc for dc in dcs if left[dc]]
        daily: dict[PeriodKey, _Rollup] = {}
        if left_dcs:
            found = _usable_rollups(
                central, config, ROLLUP_MARKER_MEASUREMENT, aggregation, zone, dims, left_dcs,
                days, manifests,
            )  # fmt: skip
            daily = {(dc, d.start_ns): found[(dc, d.start_ns)] for dc in left_dcs
                     for d in left[dc] if (dc, d.start_ns) in found
                     and ("daily", dc, d.start_ns) not in not_whole}  # fmt: skip
        result.rollup_zone = zone
        result.rollup_dc_months = len(monthly)
        result.window_dc_days = sum(len(ds) for ds in left.values()) - len(daily)
        result.rollup_dc_days = len(dcs) * len(days) - result.window_dc_days
        sources = (
            (monthly_measurement(aggregation), monthly, months, "monthly"),
            (rollup_measurement(aggregation), daily, days, "daily"),
        )
        short: set[RollupKey] = set()
        for measurement, usable, spans_of, counter in sources:
            taken: Counter[PeriodKey] = Counter()
            wanted = _by_span({dc: [p for p in spans_of if (dc, p.start_ns) in usable]
                               for dc in dcs})  # fmt: skip
            for span in wanted:
                _read_rollups(
                    central, config, measurement, zone, dims, by, span, usable, merger,
                    result, counter, taken,
                )  # fmt: skip
            short |= _not_whole(aggregation, zone, dims, counter, usable, taken, spans_of)
        if short:
            return collect(
                config, central, aggregation, start_ns, end_ns, by=by, dcs=dcs, zones=zones,
                not_whole=not_whole | short,
            )  # fmt: skip
        stale = {dc: [d for d in left[dc] if (dc, d.start_ns) not in daily] for dc in dcs}
        ranges += _by_span(stale)
        edges = [(start_ns, days[0].start_ns), (days[-1].end_ns, end_ns)]
    else:
        edges = [(start_ns, end_ns)]
    ranges += [_Range(lo, hi, tuple(dcs)) for lo, hi in edges if hi > lo]
    for r in ranges:
        _read_windows(central, config, aggregation, by, r, manifests, merger, result)
    result.sketches = merger.results()
    return result


def _not_whole(
    aggregation: str,
    zone: str,
    dims: str,
    level: str,
    usable: dict[PeriodKey, _Rollup],
    taken: Counter[PeriodKey],
    spans_of: Sequence[CalendarPeriod],
) -> set[RollupKey]:
    """The (level, dc, period start) of the rollups read whose points taken are not as many as
    their marker counts, each logged (counts and names, never a group's values)."""
    labels = {p.start_ns: p.label for p in spans_of}
    short: set[RollupKey] = set()
    for (dc, start), rollup in sorted(usable.items()):
        if taken[(dc, start)] == rollup.groups:
            continue
        short.add((level, dc, start))
        log.warning(
            "%s rollup of %s tz=%s dc=%s %s: %d points of set %s are of a current build, its "
            "marker counts %d; reading that period from %s instead",
            level, aggregation, zone, dc, labels.get(start, start), taken[(dc, start)], dims,
            rollup.groups, "daily rollups" if level == "monthly" else "windows",
        )  # fmt: skip
    return short


def whole_months(days: Sequence[CalendarPeriod], zone: str) -> list[CalendarPeriod]:
    """The local months of `zone` lying wholly inside the contiguous run of `days`."""
    if not days:
        return []
    first = period_of(days[0].start_ns, "month", zone)
    last = period_of(days[-1].start_ns, "month", zone)
    return [
        m
        for m in periods("month", first.label + "-01", last.label + "-01", zone)
        if m.start_ns >= days[0].start_ns and m.end_ns <= days[-1].end_ns
    ]


def _by_span(per_dc: dict[str, list[CalendarPeriod]]) -> list[_Range]:
    """Contiguous runs of each DC's periods, as ranges naming every DC that needs that run."""
    grouped: dict[tuple[int, int], list[str]] = defaultdict(list)
    for dc, items in per_dc.items():
        for span in _spans(items):
            grouped[span].append(dc)
    return [_Range(lo, hi, tuple(ds)) for (lo, hi), ds in sorted(grouped.items())]


def _spans(days: Sequence[CalendarPeriod]) -> list[tuple[int, int]]:
    """Contiguous runs of periods as [start, end) ranges."""
    spans: list[tuple[int, int]] = []
    for d in days:
        if spans and spans[-1][1] == d.start_ns:
            spans[-1] = (spans[-1][0], d.end_ns)
        else:
            spans.append((d.start_ns, d.end_ns))
    return spans


def _usable_rollups(
    central: CentralReader,
    config: FederationConfig,
    marker_measurement: str,
    aggregation: str,
    zone: str,
    dims: str,
    dcs: Sequence[str],
    days: Sequence[CalendarPeriod],
    manifests: dict[tuple[str, int], WindowManifest],
) -> dict[PeriodKey, _Rollup]:
    """(dc, period start) -> what to take of each rollup of `days` (contiguous local days or
    months) whose marker matches the manifests of that DC and period and counts the points of
    `dims`."""
    per_day = manifests_by_period(manifests.values(), days)
    markers = read_dc_rows(
        central, config, marker_measurement, ("fingerprint", "dims", "set_groups", "builds"),
        (f'"aggregation" = {quote_string(aggregation)}', f'"tz" = {quote_string(zone)}'),
        dcs, days[0].start_ns, days[-1].end_ns, ("dc",),
    )  # fmt: skip
    usable: dict[PeriodKey, _Rollup] = {}
    for tags, (t, build, marker_dims, set_groups, builds) in markers:
        key = (tags.get("dc", ""), int(t))
        held = per_day.get(key)
        if not held or build != fingerprint(held):
            continue
        groups = marker_set_groups(marker_dims, set_groups).get(dims)
        if groups is not None:
            usable[key] = _Rollup(marker_builds(str(build), builds), groups)
    return usable


def _group(tags: dict[str, str], by: Sequence[str]) -> GroupKey:
    return tuple(tags.get("dc", "") if d == "dc" else tag_value(tags, d) for d in by)


def _read_rollups(
    central: CentralReader,
    config: FederationConfig,
    measurement: str,
    zone: str,
    dims: str,
    by: Sequence[str],
    span: _Range,
    usable: dict[PeriodKey, _Rollup],
    merger: SketchMerger[FigureKey],
    result: Collected,
    counter: str,
    taken: Counter[PeriodKey],
) -> None:
    """Merge the points of `span` whose build their (dc, period) marker names current, each
    counted in `taken`."""
    where = (f'"tz" = {quote_string(zone)}', f'"dims" = {quote_string(dims)}')
    # A span of one period (a month of monthly rollups, a day) holds one point per series:
    # read flat, the faster shape for that.
    stamps = {t for dc, t in usable if dc in span.dcs and span.start_ns <= t < span.end_ns}
    rows = _read_span(
        central, config, measurement, ("sketch", "version", "build"), where, by, span,
        flat=len(stamps) == 1,
    )  # fmt: skip
    for tags, (t, text, version, build) in rows:
        dc = tags.get("dc", "")
        key = (dc, int(t))
        rollup = usable.get(key)
        if rollup is None or build not in rollup.builds:
            continue
        taken[key] += 1
        merger.add_encoded(((str(version), _group(tags, by)),), text, (measurement, dc, t))
        result.points_read[counter] += 1


def _read_windows(
    central: CentralReader,
    config: FederationConfig,
    aggregation: str,
    by: Sequence[str],
    span: _Range,
    manifests: dict[tuple[str, int], WindowManifest],
    merger: SketchMerger[FigureKey],
    result: Collected,
) -> None:
    for tags, (t, text) in _read_span(central, config, aggregation, ("sketch",), (), by, span):
        dc = tags.get("dc", "")
        manifest = manifests.get((dc, int(t)))
        version = manifest.version if manifest is not None else UNKNOWN_VERSION
        merger.add_encoded(((version, _group(tags, by)),), text, (aggregation, dc, t))
        result.points_read["window"] += 1


def _read_span(
    central: CentralReader,
    config: FederationConfig,
    measurement: str,
    fields: Sequence[str],
    where: Sequence[str],
    by: Sequence[str],
    span: _Range,
    *,
    flat: bool = False,
) -> Iterator[tuple[dict[str, str], list[Any]]]:
    """The rows of `span`'s DCs and time range, one series per group of `by` and DC (`flat`:
    one series, each row with its tags)."""
    group_by = tuple(dict.fromkeys([*by, "dc"]))
    return read_dc_rows(
        central, config, measurement, fields, where, span.dcs, span.start_ns, span.end_ns,
        group_by, flat=flat,
    )  # fmt: skip
