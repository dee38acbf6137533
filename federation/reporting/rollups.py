"""Daily and monthly rollups: one merged histogram per (time zone, local day or month, DC,
group), kept at central.

A monthly report over hourly windows would read ~720 points per DC and group; from rollups it
reads ~30. For each reporting time zone of the fleet and each declared dimension set of an
aggregation (`rollup_dimension_sets`: all dimensions, each single one, and none),
`federation.reporting.daily.remerge_day` merges a local day's window histograms per DC and writes:

- `<aggregation>__daily` points: tags `tz`, `dims` (the dimension set, `_all` for none), `dc`
  and the set's dimensions; fields `count` (int), `sketch`, `version` and `build`; timestamp =
  the day's local midnight (in UTC);
- one `federation_rollup` marker per (aggregation, tz, dc, day): fields `fingerprint` (a digest
  of the manifests the day was built from), `version`, `windows`, `events`, `dims`,
  `set_groups` (how many points each of those sets holds), `builds` (the builds whose points
  are current) and `merged` (the manifest entries of the windows merged, `;`-joined).

Points go to the DC's central retention policy, beside the windows they summarise. A report uses
a DC's rollup for a day only when the marker's fingerprint equals the digest of the manifests
central holds now, and only rollup points of a build the marker lists current (below): so a late
window or a backfill makes the old rollup stale (the report reads that day's windows instead) until
`refresh_rollups` re-merges the day. A day whose windows carry more than one plan version is not
rolled up (versions are never merged), and its days are read from windows.

Monthly rollups (`federation.reporting.monthly`) merge a local month's daily rollups the same
way, into `<aggregation>__monthly` points (same tags and fields; timestamp = the month's local
midnight of the 1st, in UTC) and one `federation_rollup_monthly` marker per (aggregation, tz, dc,
month) whose `fingerprint` digests every manifest of the month: a late window on any day makes
the month stale as well as the day. `refresh_rollups` there refreshes the touched days, then
their months, by what changed (`federation.reporting.daily`, `federation.reporting._merged`:
the day's marker lists the windows it merged (`merged`) and each window's previous content is
kept, so a late window costs that window and the groups it changed, not its day).

A refresh by what changed rewrites only the points whose histogram changed: the others keep the
build they were written with. The marker's `builds` lists every build whose points are current
(the fingerprint among them; a marker without it means the fingerprint alone), and readers take
a point only when its build is listed and, per set, only when the points they took number what
`set_groups` says: a point missing, or overwritten by a re-merge that raced with another or died
half-way, makes the period read from the level below, never a report short of a group. A whole
re-merge writes every point with the one build and starts the list again; so does a refresh once
the list would pass `federation.reporting._changes.MAX_BUILDS`.

Re-merging writes the same points again for the same windows, so it is idempotent and safe to
run from more than one process; a re-merge that raced with a newer shipment leaves a marker that
no longer matches, which costs speed (windows are read), never correctness.
"""

from __future__ import annotations

import logging
from collections import defaultdict
from collections.abc import Iterable, Iterator, Mapping, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, replace
from datetime import date, timedelta
from typing import Any

from federation.config import Aggregation, FederationConfig
from federation.core.calendar import CalendarPeriod, period_of, periods
from federation.core.influxql import quote_ident, quote_string
from federation.core.lineprotocol import serialize
from federation.core.points import FieldValue, Point
from federation.core.sketch import Sketch, encode_many, merge_all
from federation.errors import CalendarError, InvalidInput
from federation.reporting._central import (
    CentralWriter,
    WindowManifest,
    dc_condition,
    dcs_by_retention_policy,
    read_manifests,
    select_query,
    stream_rows,
)

log = logging.getLogger(__name__)

ROLLUP_SUFFIX = "__daily"
ROLLUP_MARKER_MEASUREMENT = "federation_rollup"
MONTHLY_SUFFIX = "__monthly"
MONTHLY_MARKER_MEASUREMENT = "federation_rollup_monthly"
ALL_DIMS = "_all"
"""The `dims` tag of the rollup over no dimension (one histogram per DC and day)."""
_RESERVED_TAGS = frozenset({"tz", "dims", "dc"})
_WRITE_BATCH = 5_000
MAX_FIELD_CHARS = 60_000
"""The longest string field written (InfluxDB's limit being 64 KiB)."""


def rollup_measurement(aggregation: str) -> str:
    """`<aggregation>__daily`: the measurement holding an aggregation's daily rollups."""
    return aggregation + ROLLUP_SUFFIX


def monthly_measurement(aggregation: str) -> str:
    """`<aggregation>__monthly`: the measurement holding an aggregation's monthly rollups."""
    return aggregation + MONTHLY_SUFFIX


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
    """What re-merging one (tz, day or month, dc) did: `status` is `written`, `no data`,
    `mixed versions` (not rolled up; reports read that day's windows) or, for a month,
    `incomplete` (a day has no current daily rollup; reports read the month's days). `day` is
    the period's label (`2026-11-12`, or `2026-11` when `level` is `month`)."""

    aggregation: str
    tz: str
    day: str
    dc: str
    status: str
    windows: int = 0
    groups: int = 0
    version: str = ""
    level: str = "day"


def _check_dimensions(aggregation: str, dimensions: Sequence[str]) -> None:
    clash = _RESERVED_TAGS.intersection(dimensions)
    if clash:
        raise InvalidInput(
            f"aggregation {aggregation}: dimension(s) {sorted(clash)} clash with rollup tags"
        )


def _spec(config: FederationConfig, aggregation: str) -> Aggregation:
    spec = config.aggregations.get(aggregation)
    if spec is None:
        raise InvalidInput(f"unknown aggregation {aggregation!r}")
    return spec


def _manifests_per_dc(
    central: CentralWriter,
    config: FederationConfig,
    aggregation: str,
    dcs: Iterable[str] | None,
    period: CalendarPeriod,
) -> Iterator[tuple[str, list[str], dict[str, list[WindowManifest]]]]:
    """Per central retention policy: the policy, its DCs among `dcs` (default: every DC of the
    fleet) and each DC's manifests of the windows starting in `period`."""
    chosen = config.fleet.dcs if dcs is None else dcs
    for rp, rp_dcs in dcs_by_retention_policy(config, chosen):
        manifests = read_manifests(
            central, config, aggregation, rp_dcs, period.start_ns, period.end_ns
        )
        per_dc: dict[str, list[WindowManifest]] = defaultdict(list)
        for m in manifests.values():
            per_dc[m.dc].append(m)
        yield rp, rp_dcs, per_dc


def _day_period(day: date | str, tz: str) -> CalendarPeriod:
    found = periods("day", day, day, tz)
    if not found:
        raise CalendarError(f"day {day} does not exist in {tz}")
    return found[0]


def _project(
    finest: Mapping[tuple[str, ...], Sketch],
    dimensions: Sequence[str],
    sets: Sequence[tuple[str, ...]],
) -> dict[tuple[int, tuple[str, ...]], Sketch]:
    """(set index, group) -> histogram for every dimension set, each group's histogram the
    exact sum of the finest groups (every dimension) it covers."""
    merged: dict[tuple[int, tuple[str, ...]], Sketch] = {}
    for index, dimension_set in enumerate(sets):
        if tuple(dimension_set) == tuple(dimensions):
            merged.update(((index, key), sketch) for key, sketch in finest.items())
            continue
        picks = [dimensions.index(d) for d in dimension_set]
        parts: dict[tuple[str, ...], list[Sketch]] = defaultdict(list)
        for key, sketch in finest.items():
            parts[tuple(key[i] for i in picks)].append(sketch)
        merged.update(((index, key), merge_all(group)) for key, group in parts.items())
    return merged


def days_touched(start_ns: int, window_ns: int, tz: str) -> list[date]:
    """The local days in `tz` that the window `[start, start + window)` overlaps."""
    first = period_of(start_ns, "day", tz)
    last = period_of(start_ns + window_ns - 1, "day", tz)
    days = [date.fromisoformat(first.label)]
    while days[-1].isoformat() != last.label:
        days.append(days[-1] + timedelta(days=1))
    return days


def _write_rollup(
    central: CentralWriter,
    database: str,
    rp: str,
    measurement: str,
    marker_measurement: str,
    merged: Mapping[tuple[int, tuple[str, ...]], Sketch],
    sets: Sequence[Sequence[str]],
    *,
    tz: str,
    dc: str,
    aggregation: str,
    version: str,
    build: str,
    start_ns: int,
    manifests: Sequence[WindowManifest],
    marker_fields: dict[str, FieldValue],
    builds: Sequence[str] = (),
    set_groups: Sequence[int] | None = None,
) -> int:
    """Write one (zone, period, DC)'s merged rollup points, then its marker (so a reader never
    trusts a rollup whose points are not all written); return how many points were written.

    `merged` is every point of the period, or (with `set_groups`, how many points each set
    holds now) only the ones that changed; `builds` lists the builds of the points left as they
    were (`build` alone when empty)."""
    points: list[Point] = []
    ordered = sorted(merged.items())
    texts = encode_many([sketch for _, sketch in ordered])
    for ((index, key), sketch), text in zip(ordered, texts, strict=True):
        dimension_set = sets[index]
        tags = {"tz": tz, "dims": dims_tag(dimension_set), "dc": dc}
        tags.update(zip(dimension_set, key, strict=True))
        fields: dict[str, FieldValue] = {
            "count": sketch.count,
            "sketch": text,
            "version": version,
            "build": build,
        }
        points.append(Point(measurement, tags, fields, start_ns))
    # The next batch is serialized while central stores the previous one (one write at a time,
    # in order; a failed write raises before the marker is written).
    with ThreadPoolExecutor(1, thread_name_prefix="rollup-write") as writer:
        pending: Future[None] | None = None
        for i in range(0, len(points), _WRITE_BATCH):
            body = serialize(points[i : i + _WRITE_BATCH])
            if pending is not None:
                pending.result()
            pending = writer.submit(central.write, body, database=database, retention_policy=rp)
        if pending is not None:
            pending.result()
    if set_groups is None:
        groups = [0] * len(sets)
        for index, _ in merged:
            groups[index] += 1
    else:
        groups = list(set_groups)
    marker_values: dict[str, FieldValue] = {
        "fingerprint": build,
        "builds": "|".join(dict.fromkeys([*builds, build])),
        "version": version,
        "windows": len(manifests),
        "events": sum(m.events for m in manifests),
        **marker_fields,
        "dims": "|".join(dims_tag(s) for s in sets),
        # How many points each set holds: a reader that finds fewer knows the set is not whole.
        "set_groups": "|".join(map(str, groups)),
    }
    marker = Point(
        marker_measurement,
        {"aggregation": aggregation, "tz": tz, "dc": dc},
        marker_values,
        start_ns,
    )
    central.write(serialize([marker]), database=database, retention_policy=rp)
    return len(points)


@dataclass(frozen=True)
class Marker:
    """What a daily or monthly rollup marker says of its period."""

    fingerprint: str
    version: str
    dims: tuple[str, ...]
    groups: Mapping[str, int]
    """`dims` tag -> how many points that set holds (empty: not recorded)."""
    builds: frozenset[str]
    """The builds whose points are current (the fingerprint alone for markers without it)."""
    merged: str = ""
    """Days: the window labels the rollup merged (`;`-joined); empty when not recorded."""
    day_builds: tuple[str, ...] | None = None
    """Months: the build of each day's rollup merged, in day order; None when not recorded."""

    def groups_of(self, sets: Sequence[Sequence[str]]) -> dict[int, int] | None:
        """Set index (in `sets`) -> how many points that set holds, or None if unknown."""
        if any(dims_tag(s) not in self.groups for s in sets):
            return None
        return {i: self.groups[dims_tag(s)] for i, s in enumerate(sets)}


def marker_builds(fingerprint: str, builds: Any) -> frozenset[str]:
    """The builds whose points are current for a rollup marker: its `builds` ("|"-joined) and
    its fingerprint (a marker written before `builds` existed: the fingerprint alone)."""
    return frozenset({fingerprint, *(b for b in str(builds or "").split("|") if b)})


def marker_set_groups(dims: Any, set_groups: Any) -> dict[str, int]:
    """`dims` tag -> how many points that dimension set holds, from a rollup marker's `dims`
    and `set_groups` fields; empty when they are missing or do not line up."""
    names = str(dims or "").split("|")
    counts = str(set_groups or "").split("|")
    if not set_groups or len(names) != len(counts) or not all(c.isdigit() for c in counts):
        return {}
    return dict(zip(names, map(int, counts), strict=True))


def read_markers(
    central: CentralWriter,
    database: str,
    rp: str,
    aggregation: str,
    tz: str,
    dcs: Sequence[str],
    start_ns: int,
    end_ns: int,
    *,
    monthly: bool,
) -> dict[tuple[str, int], Marker]:
    """(dc, period start) -> the daily (or monthly) rollup markers of `dcs` in [start, end)."""
    last = "day_builds" if monthly else "merged"
    q = select_query(
        database,
        rp,
        MONTHLY_MARKER_MEASUREMENT if monthly else ROLLUP_MARKER_MEASUREMENT,
        ("fingerprint", "version", "dims", "set_groups", "builds", last),
        (
            f'"aggregation" = {quote_string(aggregation)}',
            f'"tz" = {quote_string(tz)}',
            dc_condition(dcs),
        ),
        start_ns,
        end_ns,
        ("dc",),
    )  # fmt: skip
    found: dict[tuple[str, int], Marker] = {}
    for tags, (t, build, version, dims, counts, builds, extra) in stream_rows(central, q, database):
        marker = Marker(
            str(build), str(version or ""), tuple(str(dims or "").split("|")),
            marker_set_groups(dims, counts), marker_builds(str(build), builds),
        )  # fmt: skip
        if monthly:
            day_builds = tuple(str(extra).split("|")) if extra else None
            marker = replace(marker, day_builds=day_builds)
        else:
            marker = replace(marker, merged=str(extra or ""))
        found[(tags.get("dc", ""), int(t))] = marker
    return found


def current_rollups(
    central: CentralWriter, database: str, rps: Iterable[str], aggregation: str, dc: str = ""
) -> dict[str, list[tuple[list[tuple[str, str]], dict[str, Any]]]]:
    """Every daily and monthly rollup point a reader takes as current (build in its marker's
    `builds`) and every marker, of `aggregation` (of `dc` only, if given), by measurement, as
    (sorted tags, fields by name), sorted; without the builds, which depend on how the points
    were written, not on what they hold. For comparing two ways of making the same rollups."""
    held: dict[str, list[tuple[list[tuple[str, str]], dict[str, Any]]]] = defaultdict(list)
    builds: dict[tuple[str, str, str, Any], set[str]] = {}
    where = f" AND {dc_condition([dc])}" if dc else ""
    levels = (
        (ROLLUP_MARKER_MEASUREMENT, rollup_measurement(aggregation)),
        (MONTHLY_MARKER_MEASUREMENT, monthly_measurement(aggregation)),
    )
    for rp in sorted(set(rps)):
        for marker_measurement, measurement in levels:
            for source, condition in (
                (marker_measurement, f'"aggregation" = {quote_string(aggregation)}'),
                (measurement, "time >= 0"),
            ):
                q = (
                    f"SELECT * FROM {quote_ident(rp)}.{quote_ident(source)} "
                    f"WHERE {condition}{where} GROUP BY *"
                )
                for series in central.iter_series(q, database=database):
                    for row in series.values:
                        fields = {
                            k: v for k, v in zip(series.columns, row, strict=True) if v is not None
                        }
                        key = (
                            marker_measurement,
                            series.tags.get("tz", ""),
                            series.tags.get("dc", ""),
                            fields["time"],
                        )
                        if source == marker_measurement:
                            listed = str(fields.pop("builds", "") or "")
                            builds[key] = {str(fields["fingerprint"]), *listed.split("|")}
                        elif str(fields.pop("build", "")) not in builds.get(key, set()):
                            continue
                        held[source].append((sorted(series.tags.items()), fields))
    return {name: sorted(rows, key=repr) for name, rows in held.items()}
