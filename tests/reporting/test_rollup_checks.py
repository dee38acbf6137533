"""A report takes a rollup only whole: points of a build its marker names current, as many as
the marker counts; otherwise that period is read from the level below (a month from its days'
rollups, a day from windows), with the same answer as from windows.

One DC, a UTC month of hourly windows rolled up by day and by month; each test alters a few
fields of central's rollup points or markers (as a race between replicas or a refresh that died
half-way would leave them) and puts them back.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator, Mapping
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass

import numpy as np
import pytest

from federation.config import FederationConfig
from federation.config.resolve import resolve_plan
from federation.core.calendar import periods
from federation.core.clock import parse_rfc3339
from federation.core.durations import HOUR_NS
from federation.core.influxql import quote_ident, quote_string
from federation.core.lineprotocol import serialize
from federation.core.plan import AggregationPlan
from federation.core.points import FieldValue, Point
from federation.influx import InfluxClient
from federation.reporting import PercentileRow, percentile_report, remerge_day, remerge_month
from federation.reporting.rollups import (
    MONTHLY_MARKER_MEASUREMENT,
    ROLLUP_MARKER_MEASUREMENT,
    monthly_measurement,
    rollup_measurement,
)

from .data import Raw, copy_config, prepare_central, ship_window, write_points
from .test_month import CountingCentral

AGG = "delivery_latency"
DC = "dub1"
TZ = "UTC"
MONTH = parse_rfc3339("2027-02-01T00:00:00Z")
MONTH_END = parse_rfc3339("2027-03-01T00:00:00Z")
DAY = 24 * HOUR_NS


@dataclass
class Fed:
    config: FederationConfig
    central: InfluxClient
    plan: AggregationPlan


@pytest.fixture(scope="module")
def fed(module_central: InfluxClient, tmp_path_factory: pytest.TempPathFactory) -> Fed:
    config = copy_config(tmp_path_factory.mktemp("config") / "config")
    prepare_central(module_central, config)
    plan = resolve_plan(config, AGG, DC)
    rng = np.random.default_rng(20270201)
    points: list[Point] = []
    for start in range(MONTH, MONTH_END, HOUR_NS):
        points += ship_window(plan, start, rng, Raw(), n=30, scale={"cyan": 3.0})
    write_points(module_central, plan, points)
    for day in periods("day", "2027-02-01", "2027-02-28", TZ):
        [written] = remerge_day(config, module_central, AGG, TZ, day.label, dcs=[DC])
        assert written.status == "written"
    [month] = remerge_month(config, module_central, AGG, TZ, "2027-02", dcs=[DC])
    assert month.status == "written"
    return Fed(config, module_central, plan)


def _report(
    fed: Fed,
    period: str,
    first: str,
    last: str,
    *,
    use_rollups: bool = True,
    central: CountingCentral | None = None,
) -> tuple[list[PercentileRow], str]:
    report = percentile_report(
        fed.config, central or fed.central, AGG, period=period, from_date=first, to_date=last, tz=TZ,
        by=("customer",), dcs=[DC], percentiles=(50, 99), use_rollups=use_rollups,
    )  # fmt: skip
    [status] = report.periods
    return list(report.rows), status.sources


def _point_tags(group: Mapping[str, str]) -> dict[str, str]:
    return {"tz": TZ, "dims": ",".join(group) or "_all", "dc": DC, **group}


MARKER_TAGS = {"aggregation": AGG, "tz": TZ, "dc": DC}


def _fields(fed: Fed, measurement: str, tags: Mapping[str, str], t: int) -> dict[str, object]:
    """Every field of the point of `measurement` with exactly `tags` at `t`."""
    source = ".".join(
        quote_ident(p)
        for p in (fed.plan.central_database, fed.plan.central_retention_policy, measurement)
    )
    where = " AND ".join(f"{quote_ident(k)} = {quote_string(v)}" for k, v in tags.items())
    [series] = fed.central.query(f"SELECT * FROM {source} WHERE {where} AND time = {t}")
    [row] = series.values
    return dict(zip(series.columns, row, strict=True))


@contextmanager
def _altered(
    fed: Fed, measurement: str, tags: Mapping[str, str], t: int, fields: dict[str, FieldValue]
) -> Iterator[None]:
    """Overwrite `fields` of one point at central (the rest of it kept), then put them back."""
    before = _fields(fed, measurement, tags, t)

    def write(values: dict[str, FieldValue]) -> None:
        fed.central.write(
            serialize([Point(measurement, dict(tags), values, t)]),
            database=fed.plan.central_database,
            retention_policy=fed.plan.central_retention_policy,
        )

    write(fields)
    try:
        yield
    finally:
        old = {k: before.get(k) for k in fields}
        write({k: v if isinstance(v, str | int | float) else "" for k, v in old.items()})


def test_a_daily_point_of_another_build_sends_its_day_to_windows(
    fed: Fed, caplog: pytest.LogCaptureFixture
) -> None:
    day, t = "2027-02-10", MONTH + 9 * DAY
    rows, sources = _report(fed, "day", day, day)
    assert sources.startswith(f"rollups {TZ}: 1 dc-days")
    blue = _point_tags({"customer": "blue"})
    # Another replica's write landed on one point after this build's marker: the rollup is
    # not whole, so the day comes from its windows, with every group.
    with (
        _altered(fed, rollup_measurement(AGG), blue, t, {"build": "x"}),
        caplog.at_level(logging.WARNING, logger="federation.reporting._collect"),
    ):
        rows, sources = _report(fed, "day", day, day)
    assert sources.startswith(f"rollups {TZ}: 0 dc-days")
    assert "windows: 1 dc-days" in sources
    assert rows == _report(fed, "day", day, day, use_rollups=False)[0]
    assert {r.group["customer"] for r in rows} == {"acme", "blue", "cyan"}
    [warning] = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert f"daily rollup of {AGG} tz={TZ} dc={DC} {day}: 2 points" in warning
    assert "marker counts 3" in warning
    assert "blue" not in warning  # names and counts, never a group's values
    assert _report(fed, "day", day, day)[1].startswith(f"rollups {TZ}: 1 dc-days")  # put back


def test_a_monthly_point_of_another_build_sends_its_month_to_its_days(fed: Fed) -> None:
    first, last = "2027-02-01", "2027-02-28"
    windows = _report(fed, "month", first, last, use_rollups=False)[0]
    counting = CountingCentral(fed.central)
    rows, sources = _report(fed, "month", first, last, central=counting)
    assert sources.startswith(f"rollups {TZ}: 28 dc-days (1 dc-months monthly, 3 points;")
    # A whole rollup is read once: its marker, its three points, no day and no window.
    assert counting.rows[monthly_measurement(AGG)] == 3
    assert counting.rows[MONTHLY_MARKER_MEASUREMENT] == 1
    assert counting.rows[rollup_measurement(AGG)] == counting.rows[AGG] == 0
    acme = _point_tags({"customer": "acme"})
    with _altered(fed, monthly_measurement(AGG), acme, MONTH, {"build": "x"}):
        rows, sources = _report(fed, "month", first, last)
        assert rows == windows
        assert sources.startswith(f"rollups {TZ}: 28 dc-days (0 dc-months monthly, 0 points;")
        assert "windows: 0 dc-days" in sources
        # One of its days is not whole either: that day comes from windows.
        cyan = _point_tags({"customer": "cyan"})
        with _altered(fed, rollup_measurement(AGG), cyan, MONTH + 20 * DAY, {"build": "y"}):
            rows, sources = _report(fed, "month", first, last)
        assert rows == windows
        assert sources.startswith(f"rollups {TZ}: 27 dc-days (0 dc-months monthly, 0 points;")
        assert "windows: 1 dc-days" in sources


LEVELS = {
    "day": ("2027-02-12", "2027-02-12", MONTH + 11 * DAY, rollup_measurement(AGG),
            ROLLUP_MARKER_MEASUREMENT, f"rollups {TZ}: 1 dc-days"),
    "month": ("2027-02-01", "2027-02-28", MONTH, monthly_measurement(AGG),
              MONTHLY_MARKER_MEASUREMENT, f"rollups {TZ}: 28 dc-days (1 dc-months monthly"),
}  # fmt: skip


@pytest.mark.parametrize("level", LEVELS)
def test_points_of_every_build_the_marker_lists_are_taken(fed: Fed, level: str) -> None:
    first, last, t, measurement, marker, used = LEVELS[level]
    build = str(_fields(fed, marker, MARKER_TAGS, t)["fingerprint"])
    # A refresh rewrote some groups: the others keep the build they were written with.
    with ExitStack() as changes:
        changes.enter_context(_altered(fed, marker, MARKER_TAGS, t, {"builds": f"old|{build}"}))
        for customer in ("acme", "cyan"):
            tags = _point_tags({"customer": customer})
            changes.enter_context(_altered(fed, measurement, tags, t, {"build": "old"}))
        rows, sources = _report(fed, level, first, last)
    assert sources.startswith(used)
    assert rows == _report(fed, level, first, last, use_rollups=False)[0]


@pytest.mark.parametrize(
    ("marker_fields", "point_build"),
    [
        pytest.param({"builds": "old|{build}"}, "other", id="a point of a build not listed"),
        pytest.param({"set_groups": ""}, None, id="a marker that counts no points"),
    ],
)
def test_a_rollup_not_known_whole_is_not_used(
    fed: Fed, marker_fields: dict[str, str], point_build: str | None
) -> None:
    day, t = "2027-02-14", MONTH + 13 * DAY
    build = str(_fields(fed, ROLLUP_MARKER_MEASUREMENT, MARKER_TAGS, t)["fingerprint"])
    fields: dict[str, FieldValue] = {k: v.format(build=build) for k, v in marker_fields.items()}
    with ExitStack() as changes:
        changes.enter_context(_altered(fed, ROLLUP_MARKER_MEASUREMENT, MARKER_TAGS, t, fields))
        if point_build is not None:
            tags = _point_tags({"customer": "acme"})
            changes.enter_context(
                _altered(fed, rollup_measurement(AGG), tags, t, {"build": point_build})
            )
        rows, sources = _report(fed, "day", day, day)
    assert sources.startswith(f"rollups {TZ}: 0 dc-days")
    assert rows == _report(fed, "day", day, day, use_rollups=False)[0]
