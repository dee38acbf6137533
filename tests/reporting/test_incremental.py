"""A late window costs what changed: `refresh_rollups` applies only the changed windows to a
day's merged record, and the rollups it writes equal, point for point, those of re-merging the
days and months whole.

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
from federation.reporting import percentile_report, refresh_rollups, remerge_day, remerge_month
from federation.reporting._merged import merged_measurement
from federation.reporting.rollups import (
    current_rollups,
    days_touched,
    monthly_measurement,
    rollup_measurement,
)

from .data import (
    CUSTOMERS,
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
    fed: Central, late: Sequence[tuple[str, int]], *, n: int = 30, new_group: bool = False
) -> int:
    """Ship the `late` windows again, with their exported events and `n` more (raw data only
    grows), as a later run; return their summary point count. With `new_group`, the events
    added are of a group (customer `dove`) that no window had before."""
    shipped = 0
    for dc, start in late:
        plan = resolve_plan(fed.config, AGG, dc)
        old_values, old_keys = fed.raw.windows.get((dc, start), (np.zeros(0), []))
        if new_group:
            added = [("out", "mx2", "dove")] * n
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
