"""Rollups go stale when a window changes, reports then read windows, and a refresh restores."""

from __future__ import annotations

from datetime import date
from pathlib import Path

import numpy as np

from federation.config.resolve import resolve_plan
from federation.core.clock import parse_rfc3339
from federation.core.durations import HOUR_NS
from federation.influx import InfluxClient
from federation.reporting import (
    covering_dimension_set,
    percentile_report,
    refresh_rollups,
    remerge_day,
    rollup_dimension_sets,
)
from federation.reporting.rollups import days_touched

from .data import Raw, copy_config, prepare_central, ship_values, ship_window, write_points

AGG = "delivery_latency"


def test_declared_dimension_sets_and_the_one_a_report_reads() -> None:
    dims = ("direction", "mailer", "customer")
    assert rollup_dimension_sets(dims) == [
        (),
        ("direction",),
        ("mailer",),
        ("customer",),
        ("direction", "mailer", "customer"),
    ]
    assert covering_dimension_set(dims, ["dc"]) == ()
    assert covering_dimension_set(dims, ["customer", "dc"]) == ("customer",)
    assert covering_dimension_set(dims, ["customer", "direction"]) == dims
    assert covering_dimension_set(dims, ["sender"]) is None


def test_days_touched_by_a_window_in_each_zone() -> None:
    t = parse_rfc3339("2026-11-12T04:00:00Z")
    assert days_touched(t, HOUR_NS, "UTC") == [date(2026, 11, 12)]
    assert days_touched(t, HOUR_NS, "America/Toronto") == [date(2026, 11, 11)]
    assert days_touched(t, 2 * HOUR_NS, "America/Toronto") == [
        date(2026, 11, 11),
        date(2026, 11, 12),
    ]


def test_a_late_window_makes_the_rollup_stale_until_refreshed(
    influx: InfluxClient, tmp_path: Path
) -> None:
    config = copy_config(tmp_path / "config")
    prepare_central(influx, config)
    plan = resolve_plan(config, AGG, "dub1")
    day = parse_rfc3339("2026-11-12T00:00:00Z")
    raw = Raw()
    rng = np.random.default_rng(12)
    late = day + 5 * HOUR_NS
    late_values = np.round(rng.lognormal(5.0, 0.8, 40), 1)
    late_keys = [("in", "mx1", "acme")] * 20 + [("out", "mx2", "blue")] * 20
    points = []
    for i in range(24):
        if day + i * HOUR_NS == late:
            points += ship_values(plan, late, late_values, late_keys, raw)
        else:
            points += ship_window(plan, day + i * HOUR_NS, rng, raw)
    write_points(influx, plan, points)
    [outcome] = remerge_day(config, influx, AGG, "UTC", "2026-11-12", dcs=["dub1"])
    assert (outcome.status, outcome.windows, outcome.version) == ("written", 24, plan.version)

    def report(use_rollups: bool = True) -> tuple[dict[str, int], str]:
        r = percentile_report(
            config, influx, AGG, period="day", from_date="2026-11-12", to_date="2026-11-12",
            dcs=["dub1"], by=["customer"], use_rollups=use_rollups,
        )  # fmt: skip
        return {row.group["customer"]: row.count for row in r.rows}, r.periods[0].sources

    counts, sources = report()
    assert sources.startswith("rollups UTC: 1 dc-days")
    assert sum(counts.values()) == raw.values(day, day + 24 * HOUR_NS).size

    # Late data: window 05:00 is recomputed (run 2) with more events, in a new customer too.
    values = np.concatenate([late_values, np.full(10, 5000.0)])
    keys = late_keys + [("in", "mx1", "dove")] * 10
    write_points(influx, plan, ship_values(plan, late, values, keys, raw, run=2))
    counts, sources = report()
    assert sources.startswith("rollups UTC: 0 dc-days")  # stale: the day is read from windows
    assert counts["dove"] == 10
    assert sum(counts.values()) == raw.values(day, day + 24 * HOUR_NS).size

    outcomes = refresh_rollups(config, influx, AGG, [("dub1", late)])
    assert {(o.level, o.tz, o.day, o.status) for o in outcomes} == {
        ("day", "UTC", "2026-11-12", "written"),
        ("day", "Europe/London", "2026-11-12", "written"),
        ("day", "America/Toronto", "2026-11-12", "written"),
        # Only one day of November has windows: no month is rolled up.
        ("month", "UTC", "2026-11", "incomplete"),
        ("month", "Europe/London", "2026-11", "incomplete"),
        ("month", "America/Toronto", "2026-11", "incomplete"),
    }
    refreshed, sources = report()
    assert sources.startswith("rollups UTC: 1 dc-days")
    assert refreshed == counts == report(use_rollups=False)[0]
