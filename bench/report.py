"""Benchmark a monthly p99-per-customer report read from monthly rollups (and, for comparison,
from daily ones), against reading the rollup points it uses, and the time to re-merge one day
and its month after a late window.

Run with ``python bench/report.py [--customers N]``. It starts its own influxd, writes a month of
per-customer daily rollups for 10 DCs straight into it (with the manifests and markers that make
them current), then times:

1. ``percentile_report`` for the month, per customer, from daily rollups only (no monthly rollup
   exists yet), and a chunked read of exactly the daily points it uses;
2. ``remerge_month`` of the month for every DC (builds the monthly `customer` rollups);
3. the same report, now from monthly rollups, and a read of exactly the monthly points it uses
   (the floor for any report from them);
4. one DC-day of hourly windows at full group count, rolled up as they arrive (whole: no
   merged windows listed yet); then one of its windows re-shipped as three later runs (the
   same events, as a look-back run finds them; one late event in 1% of its groups; one late
   event in every group), each followed by ``refresh_rollups`` of the day and its month, which
   applies that window alone and rewrites the groups it changed, against re-merging the day
   (from its 24 windows) and the month (from all of its days) whole, whose rollups (as a
   reader takes them) and report must be the same.

The real fleet has 2,000 customers x 16 direction/mailer pairs; the default here is 200
customers (a printed scale factor), so that the month of rollups is written in under a minute
on a 2-core machine. Figures are printed, never asserted.
"""

from __future__ import annotations

import argparse
import math
import os
import shutil
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import yaml

from federation.config import FederationConfig, load_config
from federation.config.resolve import resolve_plan
from federation.core.aggregate import manifest_point, window_points
from federation.core.calendar import periods
from federation.core.durations import HOUR_NS, format_influx_duration
from federation.core.influxql import quote_ident
from federation.core.lineprotocol import serialize
from federation.core.plan import NONE_VALUE, AggregationPlan
from federation.core.points import Point
from federation.core.sketch import Sketch
from federation.devstack.localstack import LocalStack
from federation.influx import InfluxClient
from federation.reporting import (
    PercentileReport,
    percentile_report,
    refresh_rollups,
    remerge_day,
    remerge_month,
)
from federation.reporting._central import WindowManifest, fingerprint, flat_rows
from federation.reporting._merged import merged_measurement
from federation.reporting.rollups import (
    ROLLUP_MARKER_MEASUREMENT,
    current_rollups,
    monthly_measurement,
    rollup_measurement,
)

REPO = Path(__file__).resolve().parent.parent
AGG = "delivery_latency"
REAL_CUSTOMERS = 2_000
PAIRS = [(d, f"mx{m}") for d in ("in", "out") for m in range(1, 9)]  # 16 direction/mailer pairs
DCS = 10
DAYS = 30
EVENTS_PER_GROUP_HOUR = 31  # 10^6 events an hour over 32k groups
SEED = 20261101
POOL = 256
BATCH = 5_000


def bench_config(root: Path) -> FederationConfig:
    """The example config with 10 DCs (the extra ones in the EU and North America)."""
    for name in ("policies", "tickscripts"):
        shutil.copytree(REPO / name, root / name)
    fleet = yaml.safe_load((REPO / "fleet.yaml").read_text())
    for i in range(len(fleet["dcs"]), DCS):
        fleet["dcs"][f"dc{i:02d}"] = {
            "region": "eu" if i % 2 else "na",
            "influxdb": {"url": f"http://influxdb.dc{i:02d}.mail.internal:8086"},
            "agent_token_env": f"FEDERATION_DC{i:02d}_AGENT_TOKEN",
        }
    fleet["central"]["reporting_timezones"] = ["UTC"]
    (root / "fleet.yaml").write_text(yaml.safe_dump(fleet))
    return load_config(root)


def write(central: InfluxClient, plan: AggregationPlan, points: list[Point]) -> None:
    for i in range(0, len(points), BATCH):
        central.write(
            serialize(points[i : i + BATCH]),
            database=plan.central_database,
            retention_policy=plan.central_retention_policy,
        )


def daily_pool(rng: np.random.Generator, alpha: float) -> list[Sketch]:
    """Daily per-customer histograms: 16 pairs x 24 hours x 31 events of lognormal latency."""
    n = len(PAIRS) * 24 * EVENTS_PER_GROUP_HOUR
    return [
        Sketch.from_values(rng.lognormal(math.log(200 * rng.uniform(0.5, 3)), 0.8, n), alpha)
        for _ in range(POOL)
    ]


def fill_month(
    central: InfluxClient, config: FederationConfig, customers: int, rng: np.random.Generator
) -> int:
    """Manifests for every hourly window, and current `customer` rollups + markers per DC-day."""
    days = periods("day", "2026-11-01", "2026-11-30", "UTC")
    alpha = config.aggregations[AGG].accuracy
    pool = daily_pool(rng, alpha)
    encoded = [s.encode() for s in pool]
    # Only the `customer` rollups are written, and the markers say so (a month is merged from the
    # dimension sets every one of its days holds).
    dims_list = "customer"
    written = 0
    for dc in sorted(config.fleet.dcs):
        plan = resolve_plan(config, AGG, dc)
        points: list[Point] = []
        for day in days:
            manifests = []
            for start in range(day.start_ns, day.end_ns, HOUR_NS):
                events = customers * len(PAIRS) * EVENTS_PER_GROUP_HOUR
                manifests.append(WindowManifest(dc, start, plan.version, 1, events, 0))
                points.append(
                    manifest_point(
                        plan, start, events=events, groups=customers * len(PAIRS),
                        suppressed_events=0, run=1,
                    )
                )  # fmt: skip
            build = fingerprint(manifests)
            picks = rng.integers(0, POOL, customers)
            for c in range(customers):
                k = int(picks[c])
                tags = {"tz": "UTC", "dims": "customer", "dc": dc, "customer": f"cust{c:04d}"}
                fields: dict[str, Any] = {
                    "count": pool[k].count,
                    "sketch": encoded[k],
                    "version": plan.version,
                    "build": build,
                }
                points.append(Point(rollup_measurement(AGG), tags, fields, day.start_ns))
            points.append(
                Point(
                    ROLLUP_MARKER_MEASUREMENT,
                    {"aggregation": AGG, "tz": "UTC", "dc": dc},
                    {
                        "fingerprint": build,
                        "version": plan.version,
                        "windows": len(manifests),
                        "events": sum(m.events for m in manifests),
                        "dims": dims_list,
                        "set_groups": str(customers),
                    },
                    day.start_ns,
                )
            )
        write(central, plan, points)
        written += len(points)
    return written


def hourly_day(
    central: InfluxClient, plan: AggregationPlan, day_start: int, customers: int,
    rng: np.random.Generator,
) -> tuple[list[np.ndarray], list[list[list[str]]]]:  # fmt: skip
    """24 hourly windows of one DC at full group count, shipped with `window_points`."""
    n = customers * len(PAIRS) * EVENTS_PER_GROUP_HOUR
    group = np.repeat(np.arange(customers * len(PAIRS)), EVENTS_PER_GROUP_HOUR)
    direction = [PAIRS[g % len(PAIRS)][0] for g in group.tolist()]
    mailer = [PAIRS[g % len(PAIRS)][1] for g in group.tolist()]
    customer = [f"cust{g // len(PAIRS):04d}" for g in group.tolist()]
    columns = [direction, mailer, customer]
    all_values = []
    for h in range(24):
        values = rng.lognormal(math.log(200), 0.8, n)
        all_values.append(values)
        write(central, plan, window_points(plan, day_start + h * HOUR_NS, values, columns, run=1))
    return all_values, [columns] * 24


def timed(fn: Callable[[], Any]) -> tuple[float, Any]:
    t0 = time.perf_counter()
    result = fn()
    return time.perf_counter() - t0, result


def read_rollup_points(central: InfluxClient, config: FederationConfig, measurement: str) -> int:
    """Stream exactly the rollup points the report reads (same query shape), decoding nothing."""
    database = config.fleet.central.database
    month = periods("month", "2026-11-01", "2026-11-01", "UTC")[0]
    rows = 0
    rps = sorted({config.policy_for(dc).central.retention_policy for dc in config.fleet.dcs})
    for rp in rps:
        dcs = [
            d
            for d in sorted(config.fleet.dcs)
            if config.policy_for(d).central.retention_policy == rp
        ]
        source = ".".join(quote_ident(p) for p in (database, rp, measurement))
        dc_cond = " OR ".join(f"\"dc\" = '{d}'" for d in dcs)
        where = (
            f"WHERE \"tz\" = 'UTC' AND \"dims\" = 'customer' AND ({dc_cond}) "
            f"AND time >= {month.start_ns} AND time < {month.end_ns}"
        )
        fields = '"sketch", "version", "build"'
        if measurement == monthly_measurement(AGG):  # one point per series: read flat
            q = f'SELECT {fields}, "customer"::tag, "dc"::tag FROM {source} {where}'
        else:
            q = f'SELECT {fields} FROM {source} {where} GROUP BY "customer", "dc"'
        for series in central.iter_series(q, database=database, chunk_size=10_000):
            rows += len(series.values)
    return rows


def read_day_windows(central: InfluxClient, config: FederationConfig, dc: str, day: int) -> int:
    """Stream the `sketch` of every window point of one DC-day, decoding nothing."""
    database = config.fleet.central.database
    rp = config.policy_for(dc).central.retention_policy
    source = ".".join(quote_ident(p) for p in (database, rp, AGG))
    q = (
        f'SELECT "sketch" FROM {source} WHERE "dc" = \'{dc}\' AND time >= {day} '
        f'AND time < {day + 24 * HOUR_NS} GROUP BY "direction", "mailer", "customer"'
    )
    return sum(len(s.values) for s in central.iter_series(q, database=database, chunk_size=10_000))


def month_report(central: InfluxClient, config: FederationConfig) -> PercentileReport:
    return percentile_report(
        config, central, AGG, period="month", from_date="2026-11-01", to_date="2026-11-30",
        tz="UTC", by=["customer"], percentiles=[99],
    )  # fmt: skip


def compare(
    central: InfluxClient, config: FederationConfig, measurement: str, label: str, tries: int
) -> tuple[float, PercentileReport]:
    """Best-of-`tries` report time and read time of the `measurement` points it uses; prints both."""
    reads: list[float] = []
    runs: list[float] = []
    report: PercentileReport | None = None
    rows = 0
    for _ in range(tries):
        t, rows = timed(lambda: read_rollup_points(central, config, measurement))
        reads.append(t)
        t, report = timed(lambda: month_report(central, config))
        runs.append(t)
    assert report is not None
    t_read, t_report = min(reads), min(runs)
    print(f"  read the {rows:,} {label} points it uses: {t_read:.2f} s (best of {tries})")
    print(
        f"  report (p99 per customer, month, from {label} rollups): {t_report:.2f} s (best of "
        f"{tries}; runs {', '.join(f'{r:.2f}' for r in runs)} s) = {t_report / t_read:.2f}x the read"
    )
    print(f"  {len(report.rows)} rows; sources: {report.periods[0].sources}")
    return t_report, report


def rollup_points(central: InfluxClient, config: FederationConfig, dc: str) -> Any:
    """Every daily and monthly rollup point a reader takes as current and every marker of `dc`
    (without builds), and its window parts, to compare."""
    database = config.fleet.central.database
    rp = config.policy_for(dc).central.retention_policy
    held: dict[str, Any] = dict(current_rollups(central, database, [rp], AGG, dc))
    source = f"{quote_ident(rp)}.{quote_ident(merged_measurement(AGG))}"
    q = f"SELECT * FROM {source} WHERE \"dc\" = '{dc}'"
    held["parts"] = sorted(
        (sorted(series.tags.items()), series.values)
        for series in central.iter_series(q + " GROUP BY *", database=database, chunk_size=10_000)
    )
    return held


def rewrite_floor(
    central: InfluxClient, config: FederationConfig, dc: str, day: int, window: int
) -> tuple[float, float, float, int]:
    """What a refresh of a window that changed in every group cannot skip, each timed alone:
    (reading the window's summaries, reading the day's and the month's rollup points, writing
    those points again, how many). The points are written back as read: nothing changes."""
    database = config.fleet.central.database
    rp = config.policy_for(dc).central.retention_policy
    dimensions = ("direction", "mailer", "customer")
    where = [f"\"dc\" = '{dc}'"]
    t_window, _ = timed(
        lambda: sum(1 for _ in flat_rows(central, database, rp, AGG, ("sketch", "count"),
                                         dimensions, where, window, window + 1))
    )  # fmt: skip
    month = periods("month", "2026-11-01", "2026-11-01", "UTC")[0].start_ns
    tags = ("tz", "dims", "dc", *dimensions)
    fields = ("count", "sketch", "version", "build")

    def read() -> list[Point]:
        points = []
        for measurement, at in ((rollup_measurement(AGG), day), (monthly_measurement(AGG), month)):
            for key, (t, *values) in flat_rows(
                central, database, rp, measurement, fields, tags, where, at, at + 1
            ):
                held = {k: v for k, v in zip(tags, key, strict=True) if v != NONE_VALUE}
                points.append(Point(measurement, held, dict(zip(fields, values, strict=True)), t))
        return points

    t_read, points = timed(read)

    def write() -> None:
        for i in range(0, len(points), BATCH):
            central.write(serialize(points[i : i + BATCH]), database=database, retention_policy=rp)

    t_write, _ = timed(write)
    return t_window, t_read, t_write, len(points)


LATE_CASES = (
    ("run again, nothing new (a look-back run)", 0.0),
    ("one late event in 1% of its groups", 0.01),
    ("one late event in every group (the worst case)", 1.0),
)


def late_window(
    central: InfluxClient, config: FederationConfig, customers: int, rng: np.random.Generator
) -> None:
    """One DC-day of hourly windows, rolled up as they arrive; then one window re-shipped as
    later runs (the same events; a late event in 1% of its groups; one in every group), each
    followed by `refresh_rollups` (by what changed), against re-merging the day and the month
    whole, whose rollups and reports must be the same."""
    dc = "dub1"
    plan = resolve_plan(config, AGG, dc)
    day = periods("day", "2026-11-12", "2026-11-12", "UTC")[0]
    t_hourly, (hours, columns) = timed(
        lambda: hourly_day(central, plan, day.start_ns, customers, rng)
    )
    groups = customers * len(PAIRS)
    print(
        f"late window: {dc} {day.label}, 24 hourly windows x {groups:,} groups shipped in "
        f"{t_hourly:.1f} s"
    )
    starts = [day.start_ns + h * HOUR_NS for h in range(24)]
    # Read once first: points just written are slow to read once, whoever reads them first.
    t_read, rows = timed(lambda: read_day_windows(central, config, dc, day.start_ns))
    t_first, first = timed(
        lambda: refresh_rollups(config, central, AGG, [(dc, s) for s in starts], zones=["UTC"])
    )
    print(
        f"  the day rolled up as its windows arrived (no merged windows listed yet: whole): "
        f"{t_first:.1f} s ({', '.join(f'{o.level} {o.status}' for o in first)})"
    )
    late = day.start_ns + 5 * HOUR_NS
    values, keys = hours[5], [list(column) for column in columns[5]]
    refreshes: list[tuple[str, float]] = []
    for run, (label, share) in enumerate(LATE_CASES, start=2):
        touched = rng.choice(groups, int(groups * share), replace=False)
        for g in sorted(touched.tolist()):
            pair = PAIRS[g % len(PAIRS)]
            for column, value in zip(keys, (*pair, f"cust{g // len(PAIRS):04d}"), strict=True):
                column.append(value)
        values = np.concatenate([values, rng.lognormal(math.log(200), 0.8, touched.size)])
        write(central, plan, window_points(plan, late, values, keys, run=run))
        read_day_windows(central, config, dc, day.start_ns)  # the new points, read once
        t_merge, outcomes = timed(
            lambda: refresh_rollups(config, central, AGG, [(dc, late)], zones=["UTC"])
        )
        [outcome, month_outcome] = outcomes
        print(
            f"  window {day.label}T05:00Z re-shipped (run {run}): {label}; refresh_rollups "
            f"{t_merge:.2f} s (day: {outcome.status}, {outcome.groups:,} rollup points written; "
            f"month: {month_outcome.status}, {month_outcome.groups:,} monthly points written)"
        )
        refreshes.append((label, t_merge))
    refreshed = rollup_points(central, config, dc)
    after = month_report(central, config)
    # Same-run baselines: the day's window points read bare, and each level re-merged whole
    # (the day from its 24 windows, the month from all of its days).
    t_read = min(t_read, timed(lambda: read_day_windows(central, config, dc, day.start_ns))[0])
    t_day, _ = timed(lambda: remerge_day(config, central, AGG, "UTC", day.label, dcs=[dc]))
    t_month, _ = timed(lambda: remerge_month(config, central, AGG, "UTC", "2026-11", dcs=[dc]))
    t_whole = t_day + t_month
    t_window, t_points, t_write, n_points = rewrite_floor(central, config, dc, day.start_ns, late)
    floor = t_window + t_points + t_write
    assert rollup_points(central, config, dc) == refreshed, "refresh != whole re-merge"
    assert month_report(central, config).rows == after.rows, "reports differ"
    print(
        f"  whole re-merge: the day {t_day:.2f} s + the month {t_month:.2f} s = {t_whole:.2f} s;"
        f" bare read of the day's {rows:,} window points: {t_read:.2f} s"
    )
    print(
        "  after the three refreshes, rollups a reader takes and reports equal the whole re-merge's"
    )
    print(
        f"  a change in every group reads the window's summaries ({t_window:.2f} s) and the "
        f"day's and month's {n_points:,} rollup points ({t_points:.2f} s), and writes them again "
        f"({t_write:.2f} s): {floor:.2f} s of reads and writes alone, each timed by itself"
    )
    for label, t_merge in refreshes:
        target = (
            f"; {t_merge / floor:.2f}x those reads and writes"
            if label.endswith("(the worst case)")
            else f"; target < 2 s {'ok' if t_merge < 2 else 'MISSED'}"
        )
        print(
            f"  {label}: refresh {t_merge:.2f} s = {t_merge / t_whole:.3f}x the whole re-merge"
            f"{target}"
        )
    print(f"  (load average {os.getloadavg()[0]:.1f} on {os.cpu_count()} cores)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--customers", type=int, default=200)
    args = parser.parse_args()
    customers = args.customers
    rng = np.random.default_rng(SEED)
    root = Path(tempfile.mkdtemp(prefix="federation-bench-"))
    try:
        config = bench_config(root / "config")
        with LocalStack(root / "servers") as stack:
            central = InfluxClient(stack.influxd("central").url, timeout=300)
            database = config.fleet.central.database
            central.create_database(database)
            for policy in config.policies.values():
                central.execute(
                    f"CREATE RETENTION POLICY {quote_ident(policy.central.retention_policy)} ON "
                    f"{quote_ident(database)} DURATION "
                    f"{format_influx_duration(policy.central.retention)} REPLICATION 1"
                )
            print(
                f"monthly p99 per customer: {customers} customers x {len(PAIRS)} direction/mailer"
                f" pairs x {DCS} DCs x {DAYS} days, hourly windows"
            )
            print(
                f"  scaled down {REAL_CUSTOMERS / customers:g}x from {REAL_CUSTOMERS} customers "
                f"(≈{REAL_CUSTOMERS * len(PAIRS) * DCS * DAYS * 24 / 1e6:.0f}M hourly group points "
                "in reality)"
            )
            t_fill, points = timed(lambda: fill_month(central, config, customers, rng))
            print(f"  wrote {points:,} points (rollups, markers, manifests) in {t_fill:.1f} s")

            print("old path (daily rollups only):")
            t_daily, by_days = compare(central, config, rollup_measurement(AGG), "daily", 2)
            t_build, built = timed(lambda: remerge_month(config, central, AGG, "UTC", "2026-11"))
            print(
                f"remerge_month 2026-11 for {DCS} DCs: {t_build:.1f} s "
                f"({sum(o.groups for o in built):,} monthly points; "
                f"{sorted({o.status for o in built})})"
            )
            print("new path (monthly rollups):")
            t_monthly, by_months = compare(central, config, monthly_measurement(AGG), "monthly", 3)
            assert by_months.rows == by_days.rows, "monthly and daily reports differ"
            print(
                f"  identical rows; {t_daily / t_monthly:.1f}x faster than daily-only "
                f"({t_daily:.2f} s -> {t_monthly:.2f} s)"
            )
            print("  targets: report < 10 s, within 3x of the read")

            late_window(central, config, customers, rng)
            central.close()
    finally:
        shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    main()
