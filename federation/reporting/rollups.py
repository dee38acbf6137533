"""Daily rollups: one merged histogram per (time zone, local day, DC, group), kept at central.

A monthly report over hourly windows would read ~720 points per DC and group; from rollups it
reads ~30. For each reporting time zone of the fleet and each declared dimension set of an
aggregation (`rollup_dimension_sets`: all dimensions, each single one, and none), `remerge_day`
merges a local day's window histograms per DC and writes:

- `<aggregation>__daily` points: tags `tz`, `dims` (the dimension set, `_all` for none), `dc`
  and the set's dimensions; fields `count` (int), `sketch`, `version` and `build`; timestamp =
  the day's local midnight (in UTC);
- one `federation_rollup` marker per (aggregation, tz, dc, day): fields `fingerprint` (a digest
  of the manifests the day was built from), `version`, `windows`, `events`, `dims`.

Points go to the DC's central retention policy, beside the windows they summarise. A report uses
a DC's rollup for a day only when the marker's fingerprint equals the digest of the manifests
central holds now, and only rollup points whose `build` is that fingerprint: so a late window or
a backfill makes the old rollup stale (the report reads that day's windows instead) until
`refresh_rollups` re-merges the day. A day whose windows carry more than one plan version is not
rolled up (versions are never merged), and its days are read from windows.

Re-merging writes the same points again for the same windows, so it is idempotent and safe to
run from more than one process; a re-merge that raced with a newer shipment leaves a marker that
no longer matches, which costs speed (windows are read), never correctness.
"""

from __future__ import annotations

import logging
from collections import defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import date, timedelta

from federation.calendar import CalendarPeriod, period_of, period_windows, periods
from federation.config import FederationConfig
from federation.errors import CalendarError, InvalidInput
from federation.lineprotocol import serialize
from federation.points import FieldValue, Point
from federation.reporting._central import (
    CentralWriter,
    SketchMerger,
    WindowManifest,
    dc_condition,
    dcs_by_retention_policy,
    fingerprint,
    read_manifests,
    select_query,
    stream_rows,
    tag_value,
)

log = logging.getLogger(__name__)

ROLLUP_SUFFIX = "__daily"
ROLLUP_MARKER_MEASUREMENT = "federation_rollup"
ALL_DIMS = "_all"
"""The `dims` tag of the rollup over no dimension (one histogram per DC and day)."""
_RESERVED_TAGS = frozenset({"tz", "dims", "dc"})
_WRITE_BATCH = 5_000


def rollup_measurement(aggregation: str) -> str:
    """`<aggregation>__daily`: the measurement holding an aggregation's daily rollups."""
    return aggregation + ROLLUP_SUFFIX


def rollup_dimension_sets(dimensions: Sequence[str]) -> list[tuple[str, ...]]:
    """The dimension sets rolled up for an aggregation with `dimensions`, smallest first:
    none, each single dimension, and all of them (in declaration order)."""
    sets: list[tuple[str, ...]] = [()]
    sets += [(d,) for d in dimensions]
    if len(dimensions) > 1:
        sets.append(tuple(dimensions))
    return sets


def dims_tag(dimension_set: Sequence[str]) -> str:
    """The `dims` tag value naming a dimension set (`direction,mailer`; `_all` for none)."""
    return ",".join(dimension_set) or ALL_DIMS


def covering_dimension_set(
    dimensions: Sequence[str], wanted: Iterable[str]
) -> tuple[str, ...] | None:
    """The smallest rolled-up dimension set holding every dimension in `wanted` (`dc` is always
    a tag, so it needs none); None when no set does."""
    need = {w for w in wanted if w != "dc"}
    for candidate in rollup_dimension_sets(dimensions):
        if need <= set(candidate):
            return candidate
    return None


@dataclass(frozen=True)
class RemergeOutcome:
    """What re-merging one (tz, day, dc) did: `status` is `written`, `no data` or
    `mixed versions` (not rolled up; reports read that day's windows)."""

    aggregation: str
    tz: str
    day: str
    dc: str
    status: str
    windows: int = 0
    groups: int = 0
    version: str = ""


def _check_dimensions(aggregation: str, dimensions: Sequence[str]) -> None:
    clash = _RESERVED_TAGS.intersection(dimensions)
    if clash:
        raise InvalidInput(
            f"aggregation {aggregation}: dimension(s) {sorted(clash)} clash with rollup tags"
        )


def _day_period(day: date | str, tz: str) -> CalendarPeriod:
    found = periods("day", day, day, tz)
    if not found:
        raise CalendarError(f"day {day} does not exist in {tz}")
    return found[0]


def remerge_day(
    config: FederationConfig,
    central: CentralWriter,
    aggregation: str,
    tz: str,
    day: date | str,
    *,
    dcs: Iterable[str] | None = None,
) -> list[RemergeOutcome]:
    """Rebuild the rollups of one local day in `tz` for `dcs` (default: every DC of the fleet).

    Guarantees, per DC: when all of the day's manifests name one plan version, the written
    rollup of each declared dimension set holds, per group, exactly the bucket counts of that
    day's window histograms (so a report from it equals one from the windows), then a marker
    with the digest of those manifests; a day with several versions or no manifest writes
    nothing. Raises CalendarError when the aggregation's windows cannot tile the day in `tz`,
    InvalidInput for an unknown aggregation, InfluxError when central fails (a partly written
    day keeps its old marker, which no longer matches, so reports read its windows).
    """
    spec = config.aggregations.get(aggregation)
    if spec is None:
        raise InvalidInput(f"unknown aggregation {aggregation!r}")
    _check_dimensions(aggregation, spec.dimensions)
    period = _day_period(day, tz)
    period_windows(period, spec.window)
    chosen = sorted(set(dcs) if dcs is not None else set(config.fleet.dcs))
    database = config.fleet.central.database
    sets = rollup_dimension_sets(spec.dimensions)
    outcomes: list[RemergeOutcome] = []
    for rp, rp_dcs in dcs_by_retention_policy(config, chosen):
        manifests = read_manifests(
            central, config, aggregation, rp_dcs, period.start_ns, period.end_ns
        )
        per_dc: dict[str, list[WindowManifest]] = defaultdict(list)
        for m in manifests.values():
            per_dc[m.dc].append(m)
        for dc in rp_dcs:
            outcome = _remerge_dc(
                central, database, rp, aggregation, spec.dimensions, sets, tz, period, dc,
                per_dc.get(dc, []),
            )  # fmt: skip
            outcomes.append(outcome)
    return outcomes


def _remerge_dc(
    central: CentralWriter,
    database: str,
    rp: str,
    aggregation: str,
    dimensions: Sequence[str],
    sets: Sequence[tuple[str, ...]],
    tz: str,
    period: CalendarPeriod,
    dc: str,
    manifests: Sequence[WindowManifest],
) -> RemergeOutcome:
    base = RemergeOutcome(aggregation, tz, period.label, dc, "no data")
    if not manifests:
        return base
    versions = {m.version for m in manifests}
    if len(versions) > 1:
        log.info("%s %s %s %s: mixed versions, not rolled up", aggregation, tz, period.label, dc)
        return RemergeOutcome(
            aggregation, tz, period.label, dc, "mixed versions", windows=len(manifests)
        )
    version = versions.pop()
    build = fingerprint(manifests)
    merger: SketchMerger[tuple[int, tuple[str, ...]]] = SketchMerger()
    q = select_query(
        database,
        rp,
        aggregation,
        ("sketch",),
        (dc_condition([dc]),),
        period.start_ns,
        period.end_ns,
        tuple(dimensions),
    )
    positions = [[dimensions.index(d) for d in s] for s in sets]
    for tags, (t, text) in stream_rows(central, q, database):
        values = tuple(tag_value(tags, d) for d in dimensions)
        keys = tuple(
            (index, tuple(values[i] for i in picks)) for index, picks in enumerate(positions)
        )
        merger.add_encoded(keys, text, (aggregation, dc, t))
    measurement = rollup_measurement(aggregation)
    points: list[Point] = []
    for (index, key), sketch in sorted(merger.results().items()):
        dimension_set = sets[index]
        tags = {"tz": tz, "dims": dims_tag(dimension_set), "dc": dc}
        tags.update(zip(dimension_set, key, strict=True))
        fields: dict[str, FieldValue] = {
            "count": sketch.count,
            "sketch": sketch.encode(),
            "version": version,
            "build": build,
        }
        points.append(Point(measurement, tags, fields, period.start_ns))
    for i in range(0, len(points), _WRITE_BATCH):
        central.write(
            serialize(points[i : i + _WRITE_BATCH]), database=database, retention_policy=rp
        )
    marker = Point(
        ROLLUP_MARKER_MEASUREMENT,
        {"aggregation": aggregation, "tz": tz, "dc": dc},
        {
            "fingerprint": build,
            "version": version,
            "windows": len(manifests),
            "events": sum(m.events for m in manifests),
            "dims": "|".join(dims_tag(s) for s in sets),
        },
        period.start_ns,
    )
    central.write(serialize([marker]), database=database, retention_policy=rp)
    return RemergeOutcome(
        aggregation, tz, period.label, dc, "written", len(manifests), len(points), version
    )


def days_touched(start_ns: int, window_ns: int, tz: str) -> list[date]:
    """The local days in `tz` that the window `[start, start + window)` overlaps."""
    first = period_of(start_ns, "day", tz)
    last = period_of(start_ns + window_ns - 1, "day", tz)
    days = [date.fromisoformat(first.label)]
    while days[-1].isoformat() != last.label:
        days.append(days[-1] + timedelta(days=1))
    return days


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
    it was read (or the day is left to windows, see `remerge_day`). A zone whose days the
    aggregation's windows cannot tile is skipped with a warning. Each day is re-merged once
    however many of its windows changed.
    """
    spec = config.aggregations.get(aggregation)
    if spec is None:
        raise InvalidInput(f"unknown aggregation {aggregation!r}")
    targets: dict[tuple[str, date], set[str]] = defaultdict(set)
    changed = list(changed_windows)
    for tz in zones if zones is not None else config.fleet.central.reporting_timezones:
        for dc, start_ns in changed:
            for day in days_touched(start_ns, spec.window, tz):
                targets[(tz, day)].add(dc)
    outcomes: list[RemergeOutcome] = []
    for (tz, day), dcs in sorted(targets.items()):
        try:
            outcomes += remerge_day(config, central, aggregation, tz, day, dcs=dcs)
        except CalendarError as exc:
            log.warning("rollups of %s in %s skipped: %s", aggregation, tz, exc)
    return outcomes
