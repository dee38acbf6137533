"""A late window costs what changed: `refresh_rollups` applies only the changed windows to a
day and rewrites only the groups they changed, and the rollups a reader then takes equal, point
for point, those of re-merging the days and months whole.

Two DCs in two central retention policies, two reporting zones (UTC and Toronto, whose days and
months start at other instants), a month of hourly windows; every test re-ships or adds windows,
refreshes, reads what central holds, re-merges the same days and months whole and compares.
"""

from __future__ import annotations

import itertools
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from datetime import date
from typing import Any

import numpy as np
import pytest

from federation.config import FederationConfig
from federation.config.resolve import resolve_plan
from federation.core.calendar import periods
from federation.core.clock import parse_rfc3339
from federation.core.durations import HOUR_NS
from federation.core.points import Point
from federation.influx import InfluxClient
from federation.reporting import (
    _changes,
    percentile_report,
    refresh_rollups,
    remerge_day,
    remerge_month,
)
from federation.reporting._merged import merged_measurement
from federation.reporting.rollups import (
    Marker,
    current_rollups,
    days_touched,
    monthly_measurement,
    read_markers,
    rollup_dimension_sets,
    rollup_measurement,
)

from .data import (
    CUSTOMERS,
    DIMS,
    DIRECTIONS,
    MAILERS,
    Raw,
    copy_config,
    prepare_central,
    ship_values,
    ship_window,
    write_points,
)
from .test_month import CountingCentral

AGG = "delivery_latency"
DCS = ("dub1", "tor1")
ZONES = ("UTC", "America/Toronto")
FIRST = parse_rfc3339("2027-01-31T00:00:00Z")
LAST = parse_rfc3339("2027-03-02T06:00:00Z")
# Windows never shipped at first: they arrive late, adding a day's events.
MISSING = {("dub1", parse_rfc3339("2027-02-10T05:00:00Z"))}


@dataclass
class Central:
    config: FederationConfig
    central: InfluxClient
    raw: Raw
    rng: np.random.Generator
    run: int = 1


@pytest.fixture(scope="module")
def fed(
    module_central: InfluxClient, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Central]:
    config = copy_config(tmp_path_factory.mktemp("config") / "config")
    prepare_central(module_central, config)
    rng = np.random.default_rng(20270201)
    raw = Raw()
    for dc in DCS:
        plan = resolve_plan(config, AGG, dc)
        points: list[Point] = []
        for start in range(FIRST, LAST, HOUR_NS):
            if (dc, start) not in MISSING:
                points += ship_window(plan, start, rng, raw, n=24)
        write_points(module_central, plan, points)
    fed = Central(config, module_central, raw, rng)
    for tz in ZONES:
        _whole(fed, _days(tz))
    yield fed


def _days(tz: str) -> list[date]:
    first, last = date(2027, 1, 31), date(2027, 3, 1)
    return [date.fromisoformat(p.label) for p in periods("day", first, last, tz)]


def _whole(fed: Central, days: Sequence[date], tz: str | None = None) -> None:
    """Re-merge `days` whole in every zone (or `tz`), then their months."""
    for zone in [tz] if tz else ZONES:
        for day in days:
            remerge_day(fed.config, fed.central, AGG, zone, day)
        for month in sorted({d.isoformat()[:7] for d in days}):
            remerge_month(fed.config, fed.central, AGG, zone, month)


def _held(fed: Central) -> dict[str, list[Any]]:
    """Every rollup point a reader takes as current and every marker (without the builds,
    which depend on how the points were written), and every window part central holds."""
    rps = sorted({fed.config.policy_for(dc).central.retention_policy for dc in DCS})
    held: dict[str, list[Any]] = dict(current_rollups(fed.central, "federation", rps, AGG))
    parts = []
    for rp in rps:
        for series in fed.central.query(
            f'SELECT * FROM "federation"."{rp}"."{merged_measurement(AGG)}" GROUP BY *'
        ):
            parts.append((sorted(series.tags.items()), series.values))
    held[merged_measurement(AGG)] = sorted(parts, key=repr)
    return held


def _reship(
    fed: Central,
    late: Sequence[tuple[str, int]],
    *,
    n: int = 30,
    new_group: bool = False,
    largest: bool = False,
) -> int:
    """Ship the `late` windows again, with their exported events and `n` more (raw data only
    grows), as a later run; return their summary point count. With `new_group`, the events
    added are of a group (customer `dove`) that no window had before; with `largest`, of the
    window's largest group (so they change what it exports)."""
    shipped = 0
    for dc, start in late:
        plan = resolve_plan(fed.config, AGG, dc)
        old_values, old_keys = fed.raw.windows.get((dc, start), (np.zeros(0), []))
        if new_group:
            added = [("out", "mx2", "dove")] * n
        elif largest:
            added = [max(old_keys, key=old_keys.count)] * n
        else:
            groups = list(itertools.product(DIRECTIONS, MAILERS, CUSTOMERS))
            added = [groups[i] for i in fed.rng.integers(0, len(groups), n)]
        values = np.concatenate([old_values, np.round(fed.rng.lognormal(5.5, 0.8, n), 1)])
        fed.run += 1
        points = ship_values(plan, start, values, [*old_keys, *added], fed.raw, run=fed.run)
        write_points(fed.central, plan, points)
        shipped += sum(p.measurement == AGG for p in points)
    return shipped


def _refresh_equals_whole(fed: Central, late: Sequence[tuple[str, int]], shipped: int) -> None:
    """Refresh after `late` changed: only those windows are read (once, whatever the zones)
    and only the rollup points it writes again; a reader of central then finds exactly what
    re-merging the touched days and months whole writes, and reports from rollups equal
    reports from windows."""
    counting = CountingCentral(fed.central)
    outcomes = refresh_rollups(fed.config, counting, AGG, late, zones=ZONES)
    assert {o.status for o in outcomes if o.level == "day"} == {"written"}
    assert counting.rows[AGG] == shipped
    for level, measurement in (
        ("day", rollup_measurement(AGG)),
        ("month", monthly_measurement(AGG)),
    ):
        written = sum(o.groups for o in outcomes if o.level == level)
        assert 0 < counting.rows[measurement] <= written
    _equals_whole(fed, late)


def _equals_whole(fed: Central, late: Sequence[tuple[str, int]]) -> None:
    """A reader of central finds exactly what re-merging the days and months `late` touched
    whole writes, and reports from rollups equal reports from windows."""
    refreshed = _held(fed)
    for tz in ZONES:
        _whole(fed, sorted({d for _, t in late for d in days_touched(t, HOUR_NS, tz)}), tz)
    assert _held(fed) == refreshed
    for tz in ZONES:
        kwargs: dict[str, Any] = dict(
            period="month", from_date="2027-02-01", to_date="2027-02-28", tz=tz,
            by=("customer", "dc"), percentiles=(50, 99),
        )  # fmt: skip
        from_rollups = percentile_report(fed.config, fed.central, AGG, **kwargs)
        assert from_rollups.periods[0].sources.startswith(f"rollups {tz}: 56 dc-days (2 dc-mon")
        from_windows = percentile_report(fed.config, fed.central, AGG, use_rollups=False, **kwargs)
        assert from_rollups.rows == from_windows.rows


def test_a_window_arriving_late_adds_its_events(fed: Central) -> None:
    [(dc, start)] = MISSING
    _refresh_equals_whole(fed, [(dc, start)], _reship(fed, [(dc, start)]))


def test_a_reshipped_window_replaces_its_content(fed: Central) -> None:
    late = [("tor1", parse_rfc3339("2027-02-12T10:00:00Z"))]
    _refresh_equals_whole(fed, late, _reship(fed, late, new_group=True))


def test_the_first_and_last_hours_of_a_day(fed: Central) -> None:
    late = [
        ("dub1", parse_rfc3339("2027-02-15T00:00:00Z")),
        ("dub1", parse_rfc3339("2027-02-15T23:00:00Z")),
    ]
    _refresh_equals_whole(fed, late, _reship(fed, late))


def test_windows_on_both_sides_of_month_boundaries(fed: Central) -> None:
    late = [
        ("dub1", parse_rfc3339("2027-02-28T23:00:00Z")),  # UTC: February's last hour
        ("dub1", parse_rfc3339("2027-03-01T00:00:00Z")),  # UTC: March's first
        ("tor1", parse_rfc3339("2027-03-01T04:00:00Z")),  # Toronto: February's last hour
        ("tor1", parse_rfc3339("2027-03-01T05:00:00Z")),  # Toronto: March's first
        ("tor1", parse_rfc3339("2027-02-01T00:00:00Z")),  # UTC February's first, Toronto's Jan
    ]
    _refresh_equals_whole(fed, late, _reship(fed, late))


def test_several_late_windows_at_once_in_several_days_and_dcs(fed: Central) -> None:
    late = [
        (dc, parse_rfc3339(f"2027-02-{day:02d}T{hour:02d}:00:00Z"))
        for dc in DCS
        for day, hour in ((3, 1), (3, 2), (3, 17), (20, 9))
    ]
    _refresh_equals_whole(fed, late, _reship(fed, late))
    again = late[:3]  # and once more: the record of each day now lists the new runs
    _refresh_equals_whole(fed, again, _reship(fed, again, n=40))


def test_refreshing_what_did_not_change_writes_nothing(fed: Central) -> None:
    late = [("dub1", parse_rfc3339("2027-02-05T07:00:00Z"))]
    shipped = _reship(fed, late)
    _refresh_equals_whole(fed, late, shipped)
    held = _held(fed)
    counting = CountingCentral(fed.central)
    outcomes = refresh_rollups(fed.config, counting, AGG, late, zones=ZONES)
    assert {(o.level, o.status) for o in outcomes} == {("day", "unchanged"), ("month", "unchanged")}
    assert counting.rows[AGG] <= shipped  # read ahead, as said to have changed; nothing else
    assert _held(fed) == held


def test_without_a_window_part_the_day_is_remerged_whole(fed: Central) -> None:
    dc, start = "dub1", parse_rfc3339("2027-02-22T13:00:00Z")
    fed.central.execute(
        f'DELETE FROM "{merged_measurement(AGG)}" WHERE "dc" = \'{dc}\' AND "kind" = \'window\' '
        f"AND time = {start}",
        database="federation",
    )
    shipped = _reship(fed, [(dc, start)])
    counting = CountingCentral(fed.central)
    outcomes = refresh_rollups(fed.config, counting, AGG, [(dc, start)], zones=["UTC"])
    assert [(o.level, o.status) for o in outcomes] == [("day", "written"), ("month", "written")]
    assert counting.rows[AGG] > 10 * shipped  # all 24 windows of the day
    refreshed = _held(fed)
    _whole(fed, [date(2027, 2, 22)], "UTC")
    assert _held(fed) == refreshed
    _whole(fed, [date(2027, 2, 22)], "America/Toronto")  # not refreshed here: whole again


def _day_marker(fed: Central, dc: str, start_ns: int, tz: str = "UTC") -> Marker:
    day = periods("day", *[days_touched(start_ns, HOUR_NS, tz)[0]] * 2, tz)[0]
    rp = fed.config.policy_for(dc).central.retention_policy
    found = read_markers(
        fed.central, "federation", rp, AGG, tz, [dc], day.start_ns, day.start_ns + 1,
        monthly=False,
    )  # fmt: skip
    return found[(dc, day.start_ns)]


def test_late_events_in_a_few_groups_rewrite_only_those_groups_points(fed: Central) -> None:
    late = [("dub1", parse_rfc3339("2027-02-08T11:00:00Z"))]
    sets = len(rollup_dimension_sets(fed.config.aggregations[AGG].dimensions))
    builds = [len(_day_marker(fed, *late[0]).builds)]
    # Late events in one group, a look-back run that finds nothing new, one more late event:
    # each refresh writes the points of the group it changed (one per set), no other.
    written = []
    for n in (3, 0, 1):
        _reship(fed, late, n=n, largest=True)
        outcomes = refresh_rollups(fed.config, fed.central, AGG, late, zones=ZONES)
        assert {o.status for o in outcomes} == {"written"}
        assert all(o.groups <= sets for o in outcomes)  # one group changed, or none
        written.append(sum(o.groups for o in outcomes))
        builds.append(len(_day_marker(fed, *late[0]).builds))
    assert written[0] > 0 and written[1] == 0 and written[2] > 0
    assert builds == [1, 2, 3, 4]  # the points left as they were keep their builds
    _equals_whole(fed, late)
    assert len(_day_marker(fed, *late[0]).builds) == 1


def test_a_changed_group_without_a_current_point_makes_its_day_remerged_whole(
    fed: Central,
) -> None:
    """As a re-merge that raced with another, or died half-way, can leave it: the points of
    the groups a window changes are of a build the marker does not list."""
    dc, start = "tor1", parse_rfc3339("2027-02-17T08:00:00Z")
    damaged = _damage(fed, dc, "2027-02-17")
    _reship(fed, [(dc, start)], n=3, largest=True)
    outcomes = refresh_rollups(fed.config, fed.central, AGG, [(dc, start)], zones=ZONES)
    [written] = [o for o in outcomes if (o.level, o.tz) == ("day", "UTC")]
    assert written.groups == damaged  # every point of the day, written again
    _equals_whole(fed, [(dc, start)])


def test_a_marker_lists_at_most_max_builds_then_the_day_is_remerged_whole(
    fed: Central, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(_changes, "MAX_BUILDS", 3)
    late = [("dub1", parse_rfc3339("2027-02-24T19:00:00Z"))]
    listed = []
    for _ in range(4):
        _reship(fed, late, n=1)
        refresh_rollups(fed.config, fed.central, AGG, late, zones=ZONES)
        listed.append(len(_day_marker(fed, *late[0]).builds))
    assert listed == [2, 3, 1, 2]
    _equals_whole(fed, late)


def _damage(fed: Central, dc: str, day: str, points: int | None = None) -> int:
    """Overwrite the daily rollup points of `dc`'s UTC `day` (the first `points` of them) with
    a build its marker does not list, as a re-merge that raced with another can leave them;
    return how many."""
    start = periods("day", day, day, "UTC")[0].start_ns
    rp = fed.config.policy_for(dc).central.retention_policy
    [series] = fed.central.query(
        f'SELECT * FROM "federation"."{rp}"."{rollup_measurement(AGG)}" WHERE "dc" = \'{dc}\' '
        f"AND \"tz\" = 'UTC' AND time = {start}"
    )
    damaged = []
    for row in series.values[:points]:
        point = dict(zip(series.columns, row, strict=True))
        tags = {k: str(point.pop(k)) for k in list(point) if k in ("tz", "dims", "dc", *DIMS)}
        tags = {k: v for k, v in tags.items() if v != "None"}
        fields = {k: v for k, v in point.items() if k != "time" and v is not None}
        damaged.append(Point(rollup_measurement(AGG), tags, {**fields, "build": "x"}, start))
    write_points(fed.central, resolve_plan(fed.config, AGG, dc), damaged)
    return len(damaged)


def test_a_month_is_not_merged_from_a_day_missing_a_point(fed: Central) -> None:
    def report() -> Any:
        return percentile_report(
            fed.config, fed.central, AGG, period="month", from_date="2027-02-01",
            to_date="2027-02-28", tz="UTC", by=("customer", "dc"), percentiles=(50, 99),
            use_rollups=True,
        )  # fmt: skip

    before = report()
    _damage(fed, "dub1", "2027-02-19", points=1)
    [outcome] = remerge_month(fed.config, fed.central, AGG, "UTC", "2027-02", dcs=["dub1"])
    assert outcome.status == "incomplete"  # the month merged before stays, whole and current
    assert report().rows == before.rows
    remerge_day(fed.config, fed.central, AGG, "UTC", "2027-02-19", dcs=["dub1"])
    [outcome] = remerge_month(fed.config, fed.central, AGG, "UTC", "2027-02", dcs=["dub1"])
    assert outcome.status == "written"
    assert report().rows == before.rows


@pytest.mark.parametrize("share", [0.0, 2.0], ids=["every-point-again", "changed-points-only"])
def test_a_refresh_writes_what_a_whole_re_merge_does_whether_it_rewrites_every_point_or_not(
    fed: Central, monkeypatch: pytest.MonkeyPatch, share: float
) -> None:
    monkeypatch.setattr(_changes, "_DENSE_SHARE", share)
    late = [("tor1", parse_rfc3339("2027-02-26T03:00:00Z"))]
    _reship(fed, late, n=3, largest=True)
    outcomes = refresh_rollups(fed.config, fed.central, AGG, late, zones=ZONES)
    marker = _day_marker(fed, *late[0])
    held = sum(marker.groups.values())
    day = [o for o in outcomes if (o.level, o.tz) == ("day", "UTC")]
    if share == 0.0:
        assert [o.groups for o in day] == [held] and len(marker.builds) == 1
    else:
        assert 0 < day[0].groups < held and len(marker.builds) == 2
    _equals_whole(fed, late)
