"""Monthly rollups, and refreshing the rollups a changed window falls in.

`remerge_month` merges a local month's daily rollups (see `federation.reporting.rollups`) into
`<aggregation>__monthly` points and one `federation_rollup_monthly` marker per (aggregation,
tz, dc, month): fields `fingerprint` (a digest of every manifest of the month), `version`,
`windows`, `events`, `days`, `dims`, and `day_builds` (the build of each day's rollup it merged,
in day order). A month is written only when every one of its days has a daily rollup matching
the manifests central holds, all of one plan version.

`refresh_rollups` re-merges the days a changed window touches, then their months. A month's
re-merge costs what changed when it can: its monthly rollup was merged from daily rollups of
known builds, so the new month is the old one minus the old rollups of the re-merged days plus
their new ones (exact: counts are integers). That needs the old days' rollups, read before they
are re-merged, and holds only when the old month was merged from exactly those days and every
other day is unchanged; otherwise the month is re-merged from all of its days.
"""

from __future__ import annotations

import logging
from collections import defaultdict
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import date, timedelta

from federation.config import FederationConfig
from federation.core.calendar import CalendarPeriod, period_windows, periods
from federation.core.influxql import quote_string
from federation.core.sketch import Sketch, subtract
from federation.errors import CalendarError
from federation.reporting._central import (
    CentralWriter,
    SketchMerger,
    WindowManifest,
    dc_condition,
    dcs_by_retention_policy,
    fingerprint,
    manifests_by_period,
    select_query,
    stream_rows,
    tag_value,
)
from federation.reporting.rollups import (
    MONTHLY_MARKER_MEASUREMENT,
    ROLLUP_MARKER_MEASUREMENT,
    RemergeOutcome,
    _check_dimensions,
    _manifests_per_dc,
    _spec,
    _write_rollup,
    days_touched,
    dims_tag,
    monthly_measurement,
    remerge_day,
    rollup_dimension_sets,
    rollup_measurement,
)

__all__ = ["refresh_rollups", "remerge_month"]

log = logging.getLogger(__name__)

GroupKey = tuple[int, tuple[str, ...]]
"""(index of the dimension set, the group's values of that set's dimensions)."""


def refresh_rollups(
    config: FederationConfig,
    central: CentralWriter,
    aggregation: str,
    changed_windows: Iterable[tuple[str, int]],
    *,
    zones: Sequence[str] | None = None,
) -> list[RemergeOutcome]:
    """Re-merge every (zone, local day, DC) that one of `changed_windows` ((dc, start_ns) pairs
    whose data changed: a late window, a backfill) falls in, for each reporting time zone.

    Guarantees: afterwards every touched day's rollup matches the manifests central held when
    it was read (or the day is left to windows, see `remerge_day`), and then the month of each
    touched day holds exactly what `remerge_month` would write (or is left to days); outcomes
    list the days, then the months (`level`). A zone whose days the aggregation's windows
    cannot tile is skipped with a warning. Each day and month is re-merged once however many of
    its windows changed.
    """
    spec = _spec(config, aggregation)
    targets: dict[tuple[str, date], set[str]] = defaultdict(set)
    changed = list(changed_windows)
    for tz in zones if zones is not None else config.fleet.central.reporting_timezones:
        for dc, start_ns in changed:
            for day in days_touched(start_ns, spec.window, tz):
                targets[(tz, day)].add(dc)
    touched: dict[tuple[str, str], dict[str, set[int]]] = defaultdict(lambda: defaultdict(set))
    for (tz, day), dcs in targets.items():
        try:
            start = _day_start(day, tz)
        except CalendarError:
            continue
        for dc in dcs:
            touched[(tz, day.isoformat()[:7])][dc].add(start)
    before: dict[tuple[str, str], dict[str, _MonthBefore]] = {}
    for (tz, month), days in sorted(touched.items()):
        try:
            before[(tz, month)] = _months_before(config, central, aggregation, tz, month, days)
        except CalendarError:
            continue  # said when the month is re-merged below
    outcomes: list[RemergeOutcome] = []
    months: dict[tuple[str, str], set[str]] = defaultdict(set)
    for (tz, day), dcs in sorted(targets.items()):
        try:
            outcomes += remerge_day(config, central, aggregation, tz, day, dcs=dcs)
        except CalendarError as exc:
            log.warning("rollups of %s in %s skipped: %s", aggregation, tz, exc)
            continue
        months[(tz, day.isoformat()[:7])] |= dcs
    for (tz, month), dcs in sorted(months.items()):
        try:
            outcomes += remerge_month(
                config, central, aggregation, tz, month, dcs=dcs,
                before=before.get((tz, month), {}),
            )  # fmt: skip
        except CalendarError as exc:
            log.warning("monthly rollups of %s in %s skipped: %s", aggregation, tz, exc)
    return outcomes


def _day_start(day: date, tz: str) -> int:
    found = periods("day", day, day, tz)
    if not found:
        raise CalendarError(f"day {day} does not exist in {tz}")
    return found[0].start_ns


def _month_period(month: date | str, tz: str) -> CalendarPeriod:
    """The local month `month` (`2026-11`, or any date in it) in `tz`."""
    text = month.isoformat() if isinstance(month, date) else month
    if len(text) == len("2026-11"):
        text += "-01"
    found = periods("month", text, text, tz)
    if not found:
        raise CalendarError(f"month {month} does not exist in {tz}")
    return found[0]


def _month_days(period: CalendarPeriod, tz: str) -> list[CalendarPeriod]:
    first = date.fromisoformat(period.label + "-01")
    last = (first + timedelta(days=31)).replace(day=1) - timedelta(days=1)
    return periods("day", first, last, tz)


@dataclass(frozen=True)
class _DayMarker:
    fingerprint: str
    version: str
    dims: tuple[str, ...]
    set_groups: tuple[int, ...] | None  # points per set of `dims`; None: not recorded

    def groups_of(self, sets: Sequence[tuple[str, ...]]) -> dict[int, int] | None:
        """Set index (in `sets`) -> how many points that set holds, or None if unknown."""
        if self.set_groups is None or len(self.set_groups) != len(self.dims):
            return None
        held = dict(zip(self.dims, self.set_groups, strict=True))
        if any(dims_tag(s) not in held for s in sets):
            return None
        return {i: held[dims_tag(s)] for i, s in enumerate(sets)}


@dataclass(frozen=True)
class _MonthMarker(_DayMarker):
    day_builds: tuple[str, ...]


@dataclass(frozen=True)
class _MonthBefore:
    """A month's rollup as merged before some of its days were re-merged: its marker, and the
    sum of the old rollups of those days (`days`: their starts), over the month's sets."""

    marker: _MonthMarker
    days: frozenset[int]
    old_days: dict[GroupKey, Sketch]


def _months_before(
    config: FederationConfig,
    central: CentralWriter,
    aggregation: str,
    tz: str,
    month: str,
    touched: Mapping[str, set[int]],
) -> dict[str, _MonthBefore]:
    """Per DC whose monthly rollup was merged from the current rollups of the `touched` days
    (dc -> day starts): what refreshing the month incrementally needs to hold before the days
    are re-merged."""
    period = _month_period(month, tz)
    days = _month_days(period, tz)
    database = config.fleet.central.database
    sets = rollup_dimension_sets(_spec(config, aggregation).dimensions)
    found: dict[str, _MonthBefore] = {}
    for rp, rp_dcs in dcs_by_retention_policy(config, touched):
        months = _read_markers(central, database, rp, aggregation, tz, rp_dcs, period, True)
        markers = _read_markers(central, database, rp, aggregation, tz, rp_dcs, period, False)
        for dc in rp_dcs:
            month_marker = months.get((dc, period.start_ns))
            if not isinstance(month_marker, _MonthMarker):
                continue
            builds = dict(zip((d.start_ns for d in days), month_marker.day_builds, strict=False))
            held = [s for s in sets if dims_tag(s) in month_marker.dims]
            if len(builds) != len(days) or len(held) != len(month_marker.dims):
                continue
            day_builds = {start: builds[start] for start in touched[dc]}
            if any(
                (marker := markers.get((dc, start))) is None or marker.fingerprint != build
                for start, build in day_builds.items()
            ):
                continue
            old, read = _read_daily(central, database, rp, aggregation, tz, dc, held, day_builds)
            if all(
                _whole(read, start, markers[(dc, start)], held) for start in day_builds
            ):  # a day whose points are not all of that build cannot be taken away exactly
                found[dc] = _MonthBefore(month_marker, frozenset(day_builds), old)
    return found


def _whole(
    read: Mapping[tuple[int, int], int],
    start: int,
    marker: _DayMarker | _MonthMarker,
    sets: Sequence[tuple[str, ...]],
) -> bool:
    """Whether the points read of the period at `start` are every point its marker counts."""
    expected = marker.groups_of(sets)
    return expected is not None and all(read.get((start, i), 0) == n for i, n in expected.items())


def remerge_month(
    config: FederationConfig,
    central: CentralWriter,
    aggregation: str,
    tz: str,
    month: date | str,
    *,
    dcs: Iterable[str] | None = None,
    before: Mapping[str, _MonthBefore] | None = None,
) -> list[RemergeOutcome]:
    """Rebuild the monthly rollups of one local month in `tz` (`2026-11`, or a date in it) for
    `dcs` (default: every DC of the fleet) from its daily rollups.

    Guarantees, per DC: only when every local day of the month has a daily rollup whose marker
    matches the manifests central holds now, all of one plan version, it writes, for each
    dimension set every day's rollup holds, per group exactly the sum of the bucket counts of
    those daily rollups (hence of the month's window histograms), then a marker whose
    fingerprint digests all of the month's manifests. Otherwise it writes nothing and the
    outcome says why (`no data`, `mixed versions`, `incomplete`). Raises CalendarError when
    the aggregation's windows cannot tile the month in `tz`, InvalidInput for an unknown
    aggregation, InfluxError when central fails (a partly written month keeps its old marker,
    which no longer matches, so reports read its days).
    """
    spec = _spec(config, aggregation)
    _check_dimensions(aggregation, spec.dimensions)
    period = _month_period(month, tz)
    period_windows(period, spec.window)
    days = _month_days(period, tz)
    database = config.fleet.central.database
    sets = rollup_dimension_sets(spec.dimensions)
    outcomes: list[RemergeOutcome] = []
    for rp, rp_dcs, per_dc in _manifests_per_dc(central, config, aggregation, dcs, period):
        markers = _read_markers(central, database, rp, aggregation, tz, rp_dcs, period, False)
        for dc in rp_dcs:
            target = _Month(central, database, rp, aggregation, tz, period, days, dc)
            outcomes.append(
                target.remerge(sets, per_dc.get(dc, []), markers, (before or {}).get(dc))
            )
    return outcomes


def _read_markers(
    central: CentralWriter,
    database: str,
    rp: str,
    aggregation: str,
    tz: str,
    dcs: Sequence[str],
    period: CalendarPeriod,
    monthly: bool,
) -> dict[tuple[str, int], _DayMarker | _MonthMarker]:
    """(dc, period start) -> the daily (or monthly) rollup markers of `dcs` in `period`."""
    q = select_query(
        database,
        rp,
        MONTHLY_MARKER_MEASUREMENT if monthly else ROLLUP_MARKER_MEASUREMENT,
        ("fingerprint", "version", "dims", "set_groups", "day_builds") if monthly else
        ("fingerprint", "version", "dims", "set_groups"),
        (
            f'"aggregation" = {quote_string(aggregation)}',
            f'"tz" = {quote_string(tz)}',
            dc_condition(dcs),
        ),
        period.start_ns,
        period.end_ns,
        ("dc",),
    )  # fmt: skip
    found: dict[tuple[str, int], _DayMarker | _MonthMarker] = {}
    for tags, (t, build, version, dims, counts, *rest) in stream_rows(central, q, database):
        split = tuple(str(dims or "").split("|"))
        groups = tuple(int(n) for n in str(counts).split("|")) if counts else None
        key = (tags.get("dc", ""), int(t))
        if not monthly:
            found[key] = _DayMarker(str(build), str(version or ""), split, groups)
        elif rest and rest[0]:  # a month merged before day builds were recorded: no increment
            found[key] = _MonthMarker(
                str(build), str(version or ""), split, groups, tuple(str(rest[0]).split("|"))
            )
    return found


def _read_daily(
    central: CentralWriter,
    database: str,
    rp: str,
    aggregation: str,
    tz: str,
    dc: str,
    sets: Sequence[tuple[str, ...]],
    builds: Mapping[int, str],
) -> tuple[dict[GroupKey, Sketch], dict[tuple[int, int], int]]:
    """Per group of `sets`, the sum of the daily rollups of the days `builds` names (day start
    -> the build to read; points of any other build are stale and skipped), and how many
    points were read per (day start, set index)."""
    merger: SketchMerger[GroupKey] = SketchMerger()
    read: dict[tuple[int, int], int] = defaultdict(int)
    index_of = {dims_tag(s): i for i, s in enumerate(sets)}
    daily = rollup_measurement(aggregation)
    for start, build in sorted(builds.items()):
        q = select_query(
            database,
            rp,
            daily,
            ("sketch", "build"),
            (
                f'"tz" = {quote_string(tz)}',
                dc_condition([dc]),
                "(" + " OR ".join(f'"dims" = {quote_string(d)}' for d in index_of) + ")",
            ),
            start,
            start + 1,
            ("*",),
        )
        for tags, (t, text, point_build) in stream_rows(central, q, database):
            index = index_of.get(tags.get("dims", ""))
            if index is None or point_build != build:
                continue
            key = tuple(tag_value(tags, d) for d in sets[index])
            merger.add_encoded(((index, key),), text, (daily, dc, t))
            read[(start, index)] += 1
    return merger.results(), read


@dataclass(frozen=True)
class _Month:
    """One (tz, month, dc) being re-merged."""

    central: CentralWriter
    database: str
    rp: str
    aggregation: str
    tz: str
    period: CalendarPeriod
    days: Sequence[CalendarPeriod]
    dc: str

    def outcome(
        self, status: str, windows: int, groups: int = 0, version: str = ""
    ) -> RemergeOutcome:
        return RemergeOutcome(
            self.aggregation, self.tz, self.period.label, self.dc, status, windows, groups,
            version, "month",
        )  # fmt: skip

    def remerge(
        self,
        sets: Sequence[tuple[str, ...]],
        manifests: Sequence[WindowManifest],
        markers: Mapping[tuple[str, int], _DayMarker | _MonthMarker],
        before: _MonthBefore | None,
    ) -> RemergeOutcome:
        n = len(manifests)
        if not manifests:
            return self.outcome("no data", n)
        versions = {m.version for m in manifests}
        if len(versions) > 1:
            return self.outcome("mixed versions", n)
        version = versions.pop()
        per_day = manifests_by_period(manifests, self.days)
        builds: list[str] = []
        held_dims = {dims_tag(s) for s in sets}
        for start in (d.start_ns for d in self.days):
            day = markers.get((self.dc, start))
            day_manifests = per_day.get((self.dc, start))
            if (
                not isinstance(day, _DayMarker)
                or not day_manifests
                or day.version != version
                or day.fingerprint != fingerprint(day_manifests)
            ):
                log.info("%s %s %s %s: a day is not rolled up", self.aggregation, self.tz,
                         self.period.label, self.dc)  # fmt: skip
                return self.outcome("incomplete", n)
            builds.append(day.fingerprint)
            held_dims &= set(day.dims)
        month_sets = [s for s in sets if dims_tag(s) in held_dims]
        if not month_sets:
            return self.outcome("incomplete", n)
        merged = self._increment(month_sets, version, builds, markers, before)
        if merged is None:
            day_builds = {d.start_ns: b for d, b in zip(self.days, builds, strict=True)}
            merged, _ = _read_daily(
                self.central, self.database, self.rp, self.aggregation, self.tz, self.dc,
                month_sets, day_builds,
            )  # fmt: skip
        points = _write_rollup(
            self.central, self.database, self.rp, monthly_measurement(self.aggregation),
            MONTHLY_MARKER_MEASUREMENT, merged, month_sets, tz=self.tz, dc=self.dc,
            aggregation=self.aggregation, version=version, build=fingerprint(manifests),
            start_ns=self.period.start_ns, manifests=manifests,
            marker_fields={"days": len(self.days), "day_builds": "|".join(builds)},
        )  # fmt: skip
        return self.outcome("written", n, points, version)

    def _increment(
        self,
        sets: Sequence[tuple[str, ...]],
        version: str,
        builds: Sequence[str],
        markers: Mapping[tuple[str, int], _DayMarker | _MonthMarker],
        before: _MonthBefore | None,
    ) -> dict[GroupKey, Sketch] | None:
        """The month as the old one minus the re-merged days' old rollups plus their new ones;
        None unless the old month was merged from exactly the days that are current now but
        for the re-merged ones, over the same sets, of the same version."""
        if before is None:
            return None
        old = before.marker
        if old.version != version or old.dims != tuple(dims_tag(s) for s in sets):
            return None
        starts = [d.start_ns for d in self.days]
        if any(
            start not in before.days and build != old_build
            for start, build, old_build in zip(starts, builds, old.day_builds, strict=True)
        ):
            return None
        changed = {s: b for s, b in zip(starts, builds, strict=True) if s in before.days}
        month, read = self._read_month(sets, old.fingerprint)
        new_days, new_read = _read_daily(
            self.central, self.database, self.rp, self.aggregation, self.tz, self.dc, sets,
            changed,
        )  # fmt: skip
        if (
            not _whole(read, self.period.start_ns, old, sets)
            or not all(_whole(new_read, s, markers[(self.dc, s)], sets) for s in changed)
            or not before.old_days.keys() <= month.keys()
        ):
            return None
        merged: dict[GroupKey, Sketch] = {}
        try:
            for key in month.keys() | new_days.keys():
                parts = [s for s in (month.get(key), new_days.get(key)) if s is not None]
                total = parts[0] if len(parts) == 1 else parts[0].merge(parts[1])
                if key in before.old_days:
                    total = subtract(total, before.old_days[key])
                if total.count:
                    merged[key] = total
        except ValueError as exc:  # the old month did not hold those days after all
            log.info("%s %s %s %s: month re-merged whole: %s", self.aggregation, self.tz,
                     self.period.label, self.dc, exc)  # fmt: skip
            return None
        return merged

    def _read_month(
        self, sets: Sequence[tuple[str, ...]], build: str
    ) -> tuple[dict[GroupKey, Sketch], dict[tuple[int, int], int]]:
        """The old monthly rollup of `sets` (points of `build`), and how many points per set."""
        index_of = {dims_tag(s): i for i, s in enumerate(sets)}
        merger: SketchMerger[GroupKey] = SketchMerger()
        read: dict[tuple[int, int], int] = defaultdict(int)
        measurement = monthly_measurement(self.aggregation)
        q = select_query(
            self.database,
            self.rp,
            measurement,
            ("sketch", "build"),
            (f'"tz" = {quote_string(self.tz)}', dc_condition([self.dc])),
            self.period.start_ns,
            self.period.start_ns + 1,
            ("*",),
        )
        for tags, (t, text, point_build) in stream_rows(self.central, q, self.database):
            index = index_of.get(tags.get("dims", ""))
            if index is None or point_build != build:
                continue
            key = tuple(tag_value(tags, d) for d in sets[index])
            merger.add_encoded(((index, key),), text, (measurement, self.dc, t))
            read[(self.period.start_ns, index)] += 1
        return merger.results(), read
