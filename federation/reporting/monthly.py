"""Monthly rollups, and refreshing the rollups a changed window falls in.

`remerge_month` merges a local month's daily rollups (see `federation.reporting.rollups`) into
`<aggregation>__monthly` points and one `federation_rollup_monthly` marker per (aggregation,
tz, dc, month): fields `fingerprint` (a digest of every manifest of the month), `version`,
`windows`, `events`, `days`, `dims`, and `day_builds` (the build of each day's rollup it merged,
in day order). A month is written only when every one of its days has a daily rollup matching
the manifests central holds, all of one plan version.

`refresh_rollups` refreshes the days a changed window touches (`federation.reporting.daily`:
by the windows that changed when it can), then their months. A month changes by exactly what
its refreshed days changed: the windows' content added and their previous content taken away
(exact: counts are integers). That holds only when the old month was merged from those days as
they were before and every other day is unchanged, over the same dimension sets and version;
otherwise the month is re-merged from all of its days.
"""

from __future__ import annotations

import logging
from collections import defaultdict
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from datetime import date, timedelta
from typing import Any

from federation.config import FederationConfig
from federation.core.calendar import CalendarPeriod, period_windows, periods
from federation.core.influxql import quote_string
from federation.core.points import FieldValue
from federation.core.sketch import Sketch
from federation.errors import CalendarError, SketchDecodeError
from federation.reporting._central import (
    CentralWriter,
    SketchMerger,
    WindowManifest,
    dc_condition,
    fingerprint,
    flat_rows,
    manifests_by_period,
)
from federation.reporting._changes import PeriodPoints, apply_changes
from federation.reporting.daily import DayChange, WindowParts, refresh_day
from federation.reporting.rollups import (
    MONTHLY_MARKER_MEASUREMENT,
    Marker,
    RemergeOutcome,
    _check_dimensions,
    _manifests_per_dc,
    _spec,
    _write_rollup,
    days_touched,
    dims_tag,
    monthly_measurement,
    read_markers,
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
    """Refresh every (zone, local day, DC) that one of `changed_windows` ((dc, start_ns) pairs
    whose data changed: a late window, a backfill) falls in, for each reporting time zone, then
    their months, each by what changed when that can be shown exact.

    Guarantees: afterwards every touched day holds exactly what `remerge_day` would write for
    the manifests central held when it was read (or the day is left to windows), and then the
    month of each touched day exactly what `remerge_month` would write (or is left to days);
    outcomes list the days, then the months (`level`; status `unchanged` when nothing was to
    be written). A zone whose days the aggregation's windows cannot tile is skipped with a
    warning. Each day and month is refreshed once however many of its windows changed, and
    each changed window is read once whatever the zones.
    """
    spec = _spec(config, aggregation)
    targets: dict[tuple[str, date], set[str]] = defaultdict(set)
    changed = list(changed_windows)
    for tz in zones if zones is not None else config.fleet.central.reporting_timezones:
        for dc, start_ns in changed:
            for day in days_touched(start_ns, spec.window, tz):
                targets[(tz, day)].add(dc)
    parts = WindowParts(central, config.fleet.central.database, aggregation, changed)
    outcomes: list[RemergeOutcome] = []
    months: dict[tuple[str, str], set[str]] = defaultdict(set)
    changes: dict[tuple[str, str], dict[str, list[DayChange]]] = defaultdict(
        lambda: defaultdict(list)
    )
    for (tz, day), dcs in sorted(targets.items()):
        try:
            done = refresh_day(config, central, aggregation, tz, day, dcs=dcs, parts=parts)
        except CalendarError as exc:
            log.warning("rollups of %s in %s skipped: %s", aggregation, tz, exc)
            continue
        month = day.isoformat()[:7]
        for outcome, change in done:
            outcomes.append(outcome)
            if change is not None:
                changes[(tz, month)][outcome.dc].append(change)
        months[(tz, month)] |= dcs
    # Every zone's day has read the previous content of its changed windows: keep the new.
    parts.flush()
    for (tz, month), dcs in sorted(months.items()):
        try:
            outcomes += remerge_month(
                config, central, aggregation, tz, month, dcs=dcs, changes=changes.get((tz, month)),
            )  # fmt: skip
        except CalendarError as exc:
            log.warning("monthly rollups of %s in %s skipped: %s", aggregation, tz, exc)
    return outcomes


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


def _whole(
    read: Mapping[tuple[int, int], int],
    start: int,
    marker: Marker,
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
    changes: Mapping[str, Sequence[DayChange]] | None = None,
) -> list[RemergeOutcome]:
    """Rebuild the monthly rollups of one local month in `tz` (`2026-11`, or a date in it) for
    `dcs` (default: every DC of the fleet) from its daily rollups.

    Guarantees, per DC: only when every local day of the month has a daily rollup whose marker
    matches the manifests central holds now, all of one plan version, and (when merged whole)
    whose current points number what its marker counts, it writes, for each
    dimension set every day's rollup holds, per group exactly the sum of the bucket counts of
    those daily rollups (hence of the month's window histograms), then a marker whose
    fingerprint digests all of the month's manifests. Otherwise it writes nothing and the
    outcome says why (`no data`, `mixed versions`, `incomplete`). With `changes` (what the
    refreshed days changed), only the groups those changes touch are written when the old month
    was merged from those days as they were. Raises CalendarError when the aggregation's
    windows cannot tile the month in `tz`, InvalidInput for an unknown aggregation, InfluxError
    when central fails (a partly written month keeps its old marker, which no longer matches,
    so reports read its days).
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
        markers = read_markers(
            central, database, rp, aggregation, tz, rp_dcs, period.start_ns, period.end_ns,
            monthly=False,
        )  # fmt: skip
        for dc in rp_dcs:
            target = _Month(
                central, database, rp, aggregation, tz, period, days, dc, tuple(spec.dimensions)
            )
            outcomes.append(
                target.remerge(sets, per_dc.get(dc, []), markers, (changes or {}).get(dc, ()))
            )
    return outcomes


def _read_daily(
    central: CentralWriter,
    database: str,
    rp: str,
    aggregation: str,
    tz: str,
    dc: str,
    sets: Sequence[tuple[str, ...]],
    builds: Mapping[int, frozenset[str]],
) -> tuple[dict[GroupKey, Sketch], dict[tuple[int, int], int]]:
    """Per group of `sets`, the sum of the daily rollups of the days `builds` names (day start
    -> the builds whose points are current; points of any other build are stale and skipped),
    and how many points were read per (day start, set index)."""
    merger: SketchMerger[GroupKey] = SketchMerger()
    read: dict[tuple[int, int], int] = defaultdict(int)
    index_of = {dims_tag(s): i for i, s in enumerate(sets)}
    daily = rollup_measurement(aggregation)
    for start, current in sorted(builds.items()):
        where = (
            f'"tz" = {quote_string(tz)}',
            dc_condition([dc]),
            "(" + " OR ".join(f'"dims" = {quote_string(d)}' for d in index_of) + ")",
        )
        for index, key, (t, text, point_build) in _set_rows(
            central, database, rp, daily, where, sets, index_of, start
        ):
            if point_build not in current:
                continue
            merger.add_encoded(((index, key),), text, (daily, dc, t))
            read[(start, index)] += 1
    return merger.results(), read


def _set_rows(
    central: CentralWriter,
    database: str,
    rp: str,
    measurement: str,
    where: Sequence[str],
    sets: Sequence[tuple[str, ...]],
    index_of: Mapping[str, int],
    start_ns: int,
) -> Iterator[tuple[int, tuple[str, ...], list[Any]]]:
    """(set index, group, [time, sketch, build]) of each rollup point of `sets` at `start_ns`
    that `where` selects (one period: read flat)."""
    tags = ["dims", *dict.fromkeys(d for s in sets for d in s)]
    picks = [[tags.index(d) for d in s] for s in sets]
    rows = flat_rows(
        central, database, rp, measurement, ("sketch", "build"), tags, where, start_ns,
        start_ns + 1,
    )  # fmt: skip
    for values, row in rows:
        index = index_of.get(values[0])
        if index is not None:
            yield index, tuple(values[p] for p in picks[index]), row


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
    dimensions: tuple[str, ...]

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
        markers: Mapping[tuple[str, int], Marker],
        changes: Sequence[DayChange],
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
        current: dict[int, frozenset[str]] = {}
        held_dims = {dims_tag(s) for s in sets}
        for start in (d.start_ns for d in self.days):
            day = markers.get((self.dc, start))
            day_manifests = per_day.get((self.dc, start))
            if (
                day is None
                or not day_manifests
                or day.version != version
                or day.fingerprint != fingerprint(day_manifests)
            ):
                log.info("%s %s %s %s: a day is not rolled up", self.aggregation, self.tz,
                         self.period.label, self.dc)  # fmt: skip
                return self.outcome("incomplete", n)
            builds.append(day.fingerprint)
            current[start] = day.builds
            held_dims &= set(day.dims)
        month_sets = [s for s in sets if dims_tag(s) in held_dims]
        if not month_sets:
            return self.outcome("incomplete", n)
        build = fingerprint(manifests)
        fields: dict[str, FieldValue] = {"days": len(self.days), "day_builds": "|".join(builds)}
        old = None
        if changes:  # refreshed days: the month may change by what they changed
            old = read_markers(
                self.central, self.database, self.rp, self.aggregation, self.tz, [self.dc],
                self.period.start_ns, self.period.start_ns + 1, monthly=True,
            ).get((self.dc, self.period.start_ns))  # fmt: skip
            if (
                old is not None
                and (old.fingerprint, old.version, old.day_builds)
                == (build, version, tuple(builds))
                and old.dims == tuple(dims_tag(s) for s in month_sets)
                and all(c.old_build == c.new_build for c in changes)
            ):
                return self.outcome("unchanged", n, 0, version)
            sparse = self._increment(month_sets, version, builds, changes, old)
            if not isinstance(sparse, str):
                written, counts, kept = sparse
                points = _write_rollup(
                    self.central, self.database, self.rp, monthly_measurement(self.aggregation),
                    MONTHLY_MARKER_MEASUREMENT, written, month_sets, tz=self.tz, dc=self.dc,
                    aggregation=self.aggregation, version=version, build=build,
                    start_ns=self.period.start_ns, manifests=manifests, marker_fields=fields,
                    builds=sorted(kept), set_groups=counts,
                )  # fmt: skip
                return self.outcome("written", n, points, version)
            log.info("%s %s %s %s: month re-merged whole: %s", self.aggregation, self.tz,
                     self.period.label, self.dc, sparse)  # fmt: skip
        merged, read = _read_daily(
            self.central, self.database, self.rp, self.aggregation, self.tz, self.dc,
            month_sets, current,
        )  # fmt: skip
        short = [
            d.label
            for d in self.days
            if not _whole(read, d.start_ns, markers[(self.dc, d.start_ns)], month_sets)
        ]
        if short:  # a point missing, or overwritten by a re-merge that raced with another
            log.warning("%s %s %s %s: not merged: the rollups of %s do not hold every point "
                        "their markers count", self.aggregation, self.tz, self.period.label,
                        self.dc, ", ".join(short))  # fmt: skip
            return self.outcome("incomplete", n)
        points = _write_rollup(
            self.central, self.database, self.rp, monthly_measurement(self.aggregation),
            MONTHLY_MARKER_MEASUREMENT, merged, month_sets, tz=self.tz, dc=self.dc,
            aggregation=self.aggregation, version=version, build=build,
            start_ns=self.period.start_ns, manifests=manifests, marker_fields=fields,
        )  # fmt: skip
        return self.outcome("written", n, points, version)

    def _increment(
        self,
        sets: Sequence[tuple[str, ...]],
        version: str,
        builds: Sequence[str],
        changes: Sequence[DayChange],
        old: Marker | None,
    ) -> tuple[dict[GroupKey, Sketch], list[int], frozenset[str]] | str:
        """The monthly points the refreshed days changed (the old point plus what the days
        added, minus what they took away), each set's point count, and the builds of the
        points left as they were; or why the month must be re-merged whole: the old month was
        not merged from exactly the days that are current now but for the refreshed ones (as
        they were before), over the same sets, of the same version."""
        if (
            old is None
            or old.day_builds is None
            or (
                old.version != version
                or old.dims != tuple(dims_tag(s) for s in sets)
                or len(old.day_builds) != len(self.days)
            )
        ):
            return "the old month was not merged from these days"
        by_day = {c.start_ns: c for c in changes}
        for day, build, old_build in zip(self.days, builds, old.day_builds, strict=True):
            change = by_day.get(day.start_ns)
            if (change is None and build != old_build) or (
                change is not None and (change.old_build, change.new_build) != (old_build, build)
            ):
                return "a day changed that was not refreshed"
        where = (f'"tz" = {quote_string(self.tz)}', dc_condition([self.dc]))
        try:
            at = PeriodPoints(
                self.central, self.database, self.rp, monthly_measurement(self.aggregation),
                where, self.dimensions, sets, old, self.period.start_ns,
            )  # fmt: skip
            added = [a for c in changes for a in c.added]
            return apply_changes(at, added, [r for c in changes for r in c.removed])
        except (ValueError, SketchDecodeError) as exc:  # the old month did not hold those days
            return str(exc)
