"""A month of hourly windows from three DCs (two central retention policies) in Europe/London,
whose October 2026 has a 25-hour day: percentiles, SLA and rollups against the raw events."""

from __future__ import annotations

import dataclasses
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import numpy as np
import pytest

from federation.config import FederationConfig
from federation.config.resolve import resolve_plan
from federation.core.calendar import periods
from federation.core.clock import parse_rfc3339
from federation.core.durations import HOUR_NS
from federation.influx import InfluxClient, Series
from federation.reporting import (
    PercentileRow,
    percentile_report,
    refresh_rollups,
    remerge_day,
    remerge_month,
    sla_report,
)
from federation.reporting._collect import collect, rollup_days, whole_months
from federation.reporting._merged import merged_measurement
from federation.reporting.rollups import current_rollups, monthly_measurement, rollup_measurement

from .data import (
    CUSTOMERS,
    DIMS,
    Raw,
    copy_config,
    nearest_rank,
    prepare_central,
    ship_window,
    write_points,
)

AGG = "delivery_latency"
DCS = ("dub1", "lon1", "tor1")
TZ = "Europe/London"
# A little before and after the London month, so that its boundaries are tested.
FIRST = parse_rfc3339("2026-09-30T20:00:00Z")
LAST = parse_rfc3339("2026-11-01T03:00:00Z")
MONTH_START = parse_rfc3339("2026-09-30T23:00:00Z")  # 2026-10-01 00:00 BST
MONTH_END = parse_rfc3339("2026-11-01T00:00:00Z")  # 2026-11-01 00:00 GMT


@dataclass
class Month:
    config: FederationConfig
    central: InfluxClient
    raw: Raw


@pytest.fixture(scope="module")
def month(
    module_central: InfluxClient, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Month]:
    config = copy_config(tmp_path_factory.mktemp("config") / "config")
    prepare_central(module_central, config)
    rng = np.random.default_rng(20261025)
    raw = Raw()
    for dc in DCS:
        plan = resolve_plan(config, AGG, dc)
        points = []
        for start in range(FIRST, LAST, HOUR_NS):
            points += ship_window(plan, start, rng, raw, scale={"blue": 1.5, "cyan": 3.0})
        write_points(module_central, plan, points)
    yield Month(config, module_central, raw)


def _check_within_alpha(merged: float | None, exact: float, alpha: float) -> None:
    assert merged is not None
    assert abs(merged - exact) <= alpha * exact * (1 + 1e-9)


def test_month_spanning_the_dst_change_counts_every_window_once(month: Month) -> None:
    report = percentile_report(
        month.config, month.central, AGG, period="month", from_date="2026-10-01",
        to_date="2026-10-31", tz=TZ, percentiles=(50, 95, 99, 99.9), use_rollups=False,
    )  # fmt: skip
    [status] = report.periods
    assert status.period.label == "2026-10"
    assert (status.period.start_ns, status.period.end_ns) == (MONTH_START, MONTH_END)
    assert status.windows == 31 * 24 + 1  # the 25-hour day of 2026-10-25
    assert status.manifests == len(DCS) * status.windows
    raw_events = sum(n for (_, t), n in month.raw.events.items() if MONTH_START <= t < MONTH_END)
    assert status.events == raw_events
    assert status.suppressed_events == sum(
        n for (_, t), n in month.raw.suppressed.items() if MONTH_START <= t < MONTH_END
    )
    assert status.suppressed_share is not None and 0 < status.suppressed_share < 1
    [row] = report.rows
    exact = month.raw.values(MONTH_START, MONTH_END)
    assert row.count == exact.size
    assert row.alpha == 0.01
    for p in (50, 95, 99, 99.9):
        field = "p" + f"{p:g}".replace(".", "_")
        _check_within_alpha(row.values[field], nearest_rank(exact, p), row.alpha)
        lo, hi = row.bounds(field) or (0.0, 0.0)
        assert lo <= nearest_rank(exact, p) <= hi


def test_the_25_hour_day_has_25_windows(month: Month) -> None:
    report = percentile_report(
        month.config, month.central, AGG, period="day", from_date="2026-10-24",
        to_date="2026-10-26", tz=TZ, use_rollups=False,
    )  # fmt: skip
    assert [(s.period.label, s.windows) for s in report.periods] == [
        ("2026-10-24", 24),
        ("2026-10-25", 25),
        ("2026-10-26", 24),
    ]
    for status, row in zip(report.periods, report.rows, strict=True):
        p = status.period
        assert row.count == month.raw.values(p.start_ns, p.end_ns).size
        assert status.manifests == 3 * status.windows


@pytest.mark.parametrize("by", [("dc",), ("customer",), ("direction", "dc"), DIMS])
def test_merged_percentiles_are_within_alpha_of_the_raw_events(
    month: Month, by: tuple[str, ...]
) -> None:
    report = percentile_report(
        month.config, month.central, AGG, period="month", from_date="2026-10-01",
        to_date="2026-10-01", tz=TZ, by=by, use_rollups=False,
    )  # fmt: skip
    assert report.rows
    total = 0
    for row in report.rows:
        exact = month.raw.values(MONTH_START, MONTH_END, where=row.group)
        assert row.count == exact.size
        total += row.count
        for field, p in zip(
            ("p50", "p90", "p95", "p99", "p99_9"), (50, 90, 95, 99, 99.9), strict=True
        ):
            _check_within_alpha(row.values[field], nearest_rank(exact, p), row.alpha)
    assert total == month.raw.values(MONTH_START, MONTH_END).size


def test_sla_bounds_contain_the_true_share(month: Month) -> None:
    report = sla_report(
        month.config, month.central, AGG, threshold=300.0, period="week",
        from_date="2026-10-05", to_date="2026-10-18", tz=TZ, by=("customer",), use_rollups=False,
    )  # fmt: skip
    assert [s.period.label for s in report.periods] == ["2026-W41", "2026-W42"]
    for row in report.rows:
        status = next(s for s in report.periods if s.period.label == row.period)
        exact = month.raw.values(status.period.start_ns, status.period.end_ns, where=row.group)
        within = int((exact <= 300.0).sum())
        assert row.within_low <= within <= row.within_high
        share = row.share
        assert share is not None and share[0] <= within / exact.size <= share[1]
        assert row.within_high - row.within_low < 0.05 * row.count


def test_rollups_give_the_same_answers_as_windows(month: Month) -> None:
    days = periods("day", "2026-10-01", "2026-10-31", TZ)
    for day in days:
        outcomes = remerge_day(month.config, month.central, AGG, TZ, day.label)
        written = {o.dc for o in outcomes if o.status == "written"}
        assert written == set(DCS)  # the other DCs shipped nothing: "no data"
        hours = 25 if day.label == "2026-10-25" else 24
        assert {o.windows for o in outcomes if o.status == "written"} == {hours}
    for by in [(), ("customer",), ("direction", "dc"), DIMS]:
        kwargs = dict(
            period="month", from_date="2026-10-01", to_date="2026-10-31", tz=TZ, by=by,
            percentiles=(50, 99),
        )  # fmt: skip
        from_windows = percentile_report(
            month.config,
            month.central,
            AGG,
            use_rollups=False,
            **kwargs,  # type: ignore[arg-type]
        )
        from_rollups = percentile_report(
            month.config,
            month.central,
            AGG,
            use_rollups=True,
            **kwargs,  # type: ignore[arg-type]
        )
        assert from_rollups.rows == from_windows.rows
        assert from_rollups.periods[0].sources.startswith(f"rollups {TZ}: 93 dc-days")
        assert from_rollups.periods[0].events == from_windows.periods[0].events
    # A UTC month is not whole London days: the first 23 hours come from windows (the edge).
    utc_start, utc_end = parse_rfc3339("2026-10-01T00:00:00Z"), MONTH_END
    mixed = collect(
        month.config, month.central, AGG, utc_start, utc_end, by=("customer",), dcs=DCS,
        zones=[TZ],
    )  # fmt: skip
    plain = collect(month.config, month.central, AGG, utc_start, utc_end, by=("customer",), dcs=DCS)
    assert mixed.rollup_dc_days == 3 * 30
    edge = collect(
        month.config, month.central, AGG, utc_start, utc_start + 23 * HOUR_NS, by=("customer",),
        dcs=DCS,
    )  # fmt: skip
    assert mixed.points_read["window"] == edge.points_read["window"] > 0
    assert mixed.sketches == plain.sketches
    assert (
        sum(s.count for s in mixed.sketches.values()) == month.raw.values(utc_start, utc_end).size
    )


def test_rollup_points_are_daily_at_local_midnight(month: Month) -> None:
    remerge_day(month.config, month.central, AGG, TZ, "2026-10-26", dcs=["dub1"])
    [series] = month.central.query(
        f'SELECT "count", "version" FROM "federation"."agg_400d"."{rollup_measurement(AGG)}" '
        "WHERE \"dims\" = '_all' AND \"dc\" = 'dub1' AND \"tz\" = 'Europe/London' "
        "AND time >= '2026-10-26T00:00:00Z' AND time < '2026-10-27T00:00:00Z'"
    )
    [[t, count, version]] = series.values
    assert t == parse_rfc3339("2026-10-26T00:00:00Z")  # GMT after the change
    start, end = t, t + 24 * HOUR_NS
    assert count == month.raw.values(start, end, dcs=["dub1"]).size
    assert version == resolve_plan(month.config, AGG, "dub1").version


def test_whole_local_months_inside_a_range() -> None:
    zone, days = rollup_days(FIRST, LAST, [TZ])
    assert zone == TZ
    [october] = whole_months(days, TZ)
    assert (october.label, october.start_ns, october.end_ns) == ("2026-10", MONTH_START, MONTH_END)
    # One day short of the month at either end: no whole month.
    for start, end in [(MONTH_START + 24 * HOUR_NS, MONTH_END), (MONTH_START, MONTH_END - HOUR_NS)]:
        assert whole_months(rollup_days(start, end, [TZ])[1], TZ) == []
    # A UTC range of two months: both, in order.
    utc_start, utc_end = (
        parse_rfc3339("2026-10-01T00:00:00Z"),
        parse_rfc3339("2026-12-01T00:00:00Z"),
    )
    utc_days = rollup_days(utc_start, utc_end, ["UTC"])[1]
    assert [m.label for m in whole_months(utc_days, "UTC")] == ["2026-10", "2026-11"]


def _remerge_october(month: Month) -> None:
    for day in periods("day", "2026-10-01", "2026-10-31", TZ):
        remerge_day(month.config, month.central, AGG, TZ, day.label, dcs=DCS)


def test_a_month_is_not_rolled_up_until_every_day_is(month: Month) -> None:
    # 2026-11 has three hours of windows: its days are not all rolled up.
    remerge_day(month.config, month.central, AGG, TZ, "2026-11-01", dcs=DCS)
    outcomes = remerge_month(month.config, month.central, AGG, TZ, "2026-11")
    assert {o.dc: o.status for o in outcomes if o.dc in DCS} == dict.fromkeys(DCS, "incomplete")
    assert {o.status for o in outcomes if o.dc not in DCS} == {"no data"}
    assert {o.level for o in outcomes} == {"month"}
    for o in outcomes:
        assert o.groups == 0
    # September: its last four hours only, and no daily rollup.
    september = remerge_month(month.config, month.central, AGG, TZ, "2026-09-30")
    assert {o.status for o in september} <= {"incomplete", "no data"}


def test_monthly_rollups_give_the_same_answers_as_days_and_windows(month: Month) -> None:
    _remerge_october(month)
    outcomes = remerge_month(month.config, month.central, AGG, TZ, "2026-10", dcs=DCS)
    assert {(o.dc, o.status, o.windows, o.level) for o in outcomes} == {
        (dc, "written", 31 * 24 + 1, "month") for dc in DCS
    }
    [series] = month.central.query(
        f'SELECT "count" FROM "federation"."agg_400d"."{monthly_measurement(AGG)}" '
        "WHERE \"dims\" = '_all' AND \"dc\" = 'dub1' AND \"tz\" = 'Europe/London'"
    )
    [[t, count]] = series.values
    assert t == MONTH_START  # local midnight of the 1st, BST
    assert count == month.raw.values(MONTH_START, MONTH_END, dcs=["dub1"]).size
    for by in [(), ("dc",), ("customer",), ("direction", "dc"), DIMS]:
        kwargs = dict(
            period="month", from_date="2026-10-01", to_date="2026-10-31", tz=TZ, by=by,
            percentiles=(50, 99, 99.9),
        )  # fmt: skip
        from_windows = percentile_report(
            month.config, month.central, AGG, use_rollups=False, **kwargs,  # type: ignore[arg-type]
        )  # fmt: skip
        from_months = percentile_report(
            month.config, month.central, AGG, use_rollups=True, **kwargs,  # type: ignore[arg-type]
        )  # fmt: skip
        assert from_months.rows == from_windows.rows
        assert from_months.periods[0].sources.startswith(
            f"rollups {TZ}: 93 dc-days (3 dc-months monthly"
        )
        assert from_months.periods[0].events == from_windows.periods[0].events
    sla = [
        sla_report(
            month.config, month.central, AGG, threshold=300.0, period="month",
            from_date="2026-10-01", to_date="2026-10-31", tz=TZ, by=("customer",),
            use_rollups=use,
        ).rows
        for use in (False, True)
    ]  # fmt: skip
    assert sla[0] == sla[1]
    # A range wider than the month: the month from its rollup, the edges from windows.
    wide = collect(
        month.config, month.central, AGG, FIRST, LAST, by=("customer",), dcs=DCS, zones=[TZ]
    )
    plain = collect(month.config, month.central, AGG, FIRST, LAST, by=("customer",), dcs=DCS)
    assert (wide.rollup_dc_months, wide.rollup_dc_days, wide.points_read["daily"]) == (3, 93, 0)
    assert wide.points_read["monthly"] == len(DCS) * len(CUSTOMERS)
    assert wide.points_read["window"] > 0  # the 4 hours before and 3 after the month
    assert wide.sketches == plain.sketches
    assert sum(s.count for s in wide.sketches.values()) == month.raw.values(FIRST, LAST).size


def test_a_late_window_makes_the_month_stale_until_refreshed(month: Month) -> None:
    """Runs last: it re-ships one window of the module's data."""
    _remerge_october(month)
    remerge_month(month.config, month.central, AGG, TZ, "2026-10", dcs=DCS)
    plan = resolve_plan(month.config, AGG, "lon1")
    late = parse_rfc3339("2026-10-17T09:00:00Z")
    rng = np.random.default_rng(17)
    shipped = ship_window(plan, late, rng, month.raw, n=90, run=2)
    write_points(month.central, plan, shipped)

    def report(use_rollups: bool = True) -> tuple[list[PercentileRow], str]:
        r = percentile_report(
            month.config, month.central, AGG, period="month", from_date="2026-10-01",
            to_date="2026-10-31", tz=TZ, by=("customer", "dc"), use_rollups=use_rollups,
        )  # fmt: skip
        return list(r.rows), r.periods[0].sources

    # Its day is stale, so the month is not re-merged from it.
    [held] = remerge_month(month.config, month.central, AGG, TZ, "2026-10", dcs=["lon1"])
    assert held.status == "incomplete"
    rows, sources = report()
    # lon1's month and its 2026-10-17 are stale: its other 30 days come from daily rollups.
    assert sources.startswith(f"rollups {TZ}: 92 dc-days (2 dc-months monthly")
    assert rows == report(use_rollups=False)[0]
    total = sum(r.count for r in rows)
    assert total == month.raw.values(MONTH_START, MONTH_END).size

    counting = CountingCentral(month.central)
    outcomes = refresh_rollups(month.config, counting, AGG, [("lon1", late)], zones=[TZ])
    assert [(o.level, o.day, o.dc, o.status) for o in outcomes] == [
        ("day", "2026-10-17", "lon1", "written"),
        ("month", "2026-10", "lon1", "written"),
    ]
    # The refresh cost what changed: the late window's points (not the day's other 23
    # windows), its previous content (a packed point), and of the day and the month only the
    # points of the groups it changed, each written again.
    assert counting.rows[AGG] == sum(p.measurement == AGG for p in shipped)
    assert counting.rows[merged_measurement(AGG)] == 1
    day_written, month_written = (o.groups for o in outcomes)
    assert 0 < counting.rows[rollup_measurement(AGG)] <= day_written
    assert 0 < counting.rows[monthly_measurement(AGG)] <= month_written
    refreshed, sources = report()
    assert sources.startswith(f"rollups {TZ}: 93 dc-days (3 dc-months monthly")
    assert refreshed == rows
    incremental = _monthly_points(month, "lon1")
    remerge_month(month.config, month.central, AGG, TZ, "2026-10", dcs=["lon1"])  # whole
    assert _monthly_points(month, "lon1") == incremental


def _monthly_points(month: Month, dc: str) -> list[Any]:
    """The monthly points of `dc` a reader takes as current (without their builds)."""
    held = current_rollups(month.central, "federation", ["agg_400d"], AGG, dc)
    return held.get(monthly_measurement(AGG), [])


@dataclass
class CountingCentral:
    """Central, counting the rows each measurement's reads return."""

    inner: InfluxClient
    rows: Counter[str] = dataclasses.field(default_factory=Counter)

    def iter_series(self, q: str, **kwargs: Any) -> Iterator[Series]:
        for series in self.inner.iter_series(q, **kwargs):
            self.rows[series.name] += len(series.values)
            yield series

    def write(self, body: bytes, **kwargs: Any) -> None:
        self.inner.write(body, **kwargs)
