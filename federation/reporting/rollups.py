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
  of the manifests the day was built from), `version`, `windows`, `events`, `dims` and
  `set_groups` (how many points each of those sets holds).

Points go to the DC's central retention policy, beside the windows they summarise. A report uses
a DC's rollup for a day only when the marker's fingerprint equals the digest of the manifests
central holds now, and only rollup points whose `build` is that fingerprint: so a late window or
a backfill makes the old rollup stale (the report reads that day's windows instead) until
`refresh_rollups` re-merges the day. A day whose windows carry more than one plan version is not
rolled up (versions are never merged), and its days are read from windows.

Monthly rollups (`federation.reporting.monthly`) merge a local month's daily rollups the same
way, into `<aggregation>__monthly` points (same tags and fields; timestamp = the month's local
midnight of the 1st, in UTC) and one `federation_rollup_monthly` marker per (aggregation, tz, dc,
month) whose `fingerprint` digests every manifest of the month: a late window on any day makes
the month stale as well as the day. `refresh_rollups` there refreshes the touched days, then
their months, by what changed (`federation.reporting.daily`, `federation.reporting._merged`:
what each day merged is kept, so a late window costs that window, not its day).

Re-merging writes the same points again for the same windows, so it is idempotent and safe to
run from more than one process; a re-merge that raced with a newer shipment leaves a marker that
no longer matches, which costs speed (windows are read), never correctness.
"""

from __future__ import annotations

import logging
from collections import defaultdict
from collections.abc import Iterable, Iterator, Mapping, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from datetime import date, timedelta

from federation.config import Aggregation, FederationConfig
from federation.core.calendar import CalendarPeriod, period_of, periods
from federation.core.lineprotocol import serialize
from federation.core.points import FieldValue, Point
from federation.core.sketch import Sketch, encode_many, merge_all
from federation.errors import CalendarError, InvalidInput
from federation.reporting._central import (
    CentralWriter,
    WindowManifest,
    dcs_by_retention_policy,
    read_manifests,
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
) -> int:
    """Write one (zone, period, DC)'s merged rollup points, then its marker (so a reader never
    trusts a rollup whose points are not all written); return how many points were written."""
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
    groups = [0] * len(sets)
    for index, _ in merged:
        groups[index] += 1
    marker_values: dict[str, FieldValue] = {
        "fingerprint": build,
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
