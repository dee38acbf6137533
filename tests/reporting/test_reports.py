"""Weeks, completeness from the ledger, version changes, worst-N, thresholds and metrics."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
import pytest

from federation.config.resolve import resolve_plan
from federation.coordinator.ledger import DcRow, TrackingRow, WindowRow, open_ledger
from federation.core.clock import parse_rfc3339
from federation.core.durations import HOUR_NS
from federation.errors import CalendarError, InvalidInput
from federation.influx import InfluxClient
from federation.reporting import (
    completeness,
    parse_metric,
    parse_threshold,
    percentile_report,
    remerge_day,
    worst_report,
)

from .data import Raw, copy_config, nearest_rank, prepare_central, ship_window, write_points

AGG = "delivery_latency"


def test_thresholds_are_read_in_the_aggregation_unit() -> None:
    assert parse_threshold("30s", "ms") == 30_000.0
    assert parse_threshold("250ms", "ms") == 250.0
    assert parse_threshold("1.5s", "ms") == 1500.0
    assert parse_threshold("2m", "s") == 120.0
    assert parse_threshold("42", "ms") == 42.0
    with pytest.raises(InvalidInput, match="30 seconds"):
        parse_threshold("30 seconds", "ms")
    assert parse_metric("p99").percentile == 99.0
    assert parse_metric("p99_9").percentile == 99.9
    assert parse_metric("count_over:30s").threshold == 30_000.0
    with pytest.raises(InvalidInput, match="metric"):
        parse_metric("mean")


def test_a_week_starts_on_monday(influx: InfluxClient, tmp_path: Path) -> None:
    config = copy_config(tmp_path / "config")
    prepare_central(influx, config)
    plan = resolve_plan(config, AGG, "dub1")
    raw = Raw()
    rng = np.random.default_rng(7)
    first, last = parse_rfc3339("2026-10-30T00:00:00Z"), parse_rfc3339("2026-11-11T00:00:00Z")
    points = []
    for start in range(first, last, HOUR_NS):
        points += ship_window(plan, start, rng, raw)
    write_points(influx, plan, points)
    # Wednesday 2026-11-04 lies in the ISO week starting Monday 2026-11-02.
    report = percentile_report(
        config, influx, AGG, period="week", from_date="2026-11-04", to_date="2026-11-04",
        tz="UTC", dcs=["dub1"],
    )  # fmt: skip
    [status] = report.periods
    monday, next_monday = (
        parse_rfc3339("2026-11-02T00:00:00Z"),
        parse_rfc3339("2026-11-09T00:00:00Z"),
    )
    assert status.period.label == "2026-W45"
    assert (status.period.start_ns, status.period.end_ns) == (monday, next_monday)
    assert status.windows == 7 * 24 == status.manifests
    [row] = report.rows
    exact = raw.values(monday, next_monday)
    assert row.count == exact.size
    value = row.values["p99"]
    assert value is not None and abs(value - nearest_rank(exact, 99)) <= 0.01 * nearest_rank(
        exact, 99
    )


def _ledger_rows(url: str, day_start: int, done: dict[str, int], missing: dict[str, int]) -> None:
    with open_ledger(url) as ledger, ledger.session(write=True) as session:
        for dc in done:
            session.add(DcRow(name=dc, region="eu"))
        session.flush()
        for dc in done:
            session.add(
                TrackingRow(
                    dc=dc, aggregation=AGG, window_ns=HOUR_NS, start_ns=day_start,
                    watermark_ns=day_start + 24 * HOUR_NS,
                )
            )  # fmt: skip
            for i in range(done[dc] + missing[dc]):
                state = "verified" if i < done[dc] else "missing"
                if i == 0:
                    state = "empty"
                session.add(
                    WindowRow(
                        dc=dc, aggregation=AGG, start_ns=day_start + i * HOUR_NS, state=state,
                        updated_ns=0,
                    )
                )  # fmt: skip


def test_an_incomplete_period_is_flagged(influx: InfluxClient, tmp_path: Path) -> None:
    config = copy_config(tmp_path / "config")
    prepare_central(influx, config)
    day = parse_rfc3339("2026-11-03T00:00:00Z")
    raw = Raw()
    rng = np.random.default_rng(3)
    for dc, hours in (("dub1", 24), ("fra1", 20)):
        plan = resolve_plan(config, AGG, dc)
        points = []
        for i in range(hours):
            points += ship_window(plan, day + i * HOUR_NS, rng, raw)
        write_points(influx, plan, points)
    url = f"sqlite:///{tmp_path / 'ledger.sqlite'}"
    # fra1: 20 windows done, 2 missing, 2 not classified yet (no row).
    _ledger_rows(url, day, {"dub1": 24, "fra1": 20}, {"dub1": 0, "fra1": 2})
    with open_ledger(url) as ledger:
        c = completeness(ledger.engine, AGG, ["dub1", "fra1"], day, day + 24 * HOUR_NS)
        assert (c.done, c.expected) == (44, 48)
        assert c.states == {"empty": 2, "verified": 42, "missing": 2, "expected": 2}
        assert c.per_dc == {"dub1": (24, 24), "fra1": (20, 24)}
        report = percentile_report(
            config, influx, AGG, period="day", from_date="2026-11-03", to_date="2026-11-03",
            dcs=["dub1", "fra1"], ledger=ledger.engine,
        )  # fmt: skip
        [status] = report.periods
        assert status.complete is False
        assert status.flags == ["incomplete 44/48 (expected 2, missing 2)"]
        # Without a DC split, the notes are the period's, and the columns say so.
        assert report.columns()[-3:] == ["period_suppressed", "period_complete", "flags"]
        assert report.table_rows()[0]["period_complete"] == "91.67%"
        # Split by DC, each row's suppressed share and completeness are its own DC's.
        by_dc = percentile_report(
            config, influx, AGG, period="day", from_date="2026-11-03", to_date="2026-11-04",
            dcs=["dub1", "fra1"], by=["dc"], ledger=ledger.engine,
        )  # fmt: skip
        assert by_dc.columns()[-3:] == ["suppressed", "complete", "flags"]
        rows = {(r["period"], r.get("dc")): r for r in by_dc.table_rows()}
        dub1, fra1 = rows["2026-11-03", "dub1"], rows["2026-11-03", "fra1"]
        assert (dub1["complete"], dub1["flags"]) == ("100.00%", "")
        assert (fra1["complete"], fra1["flags"]) == ("83.33%", "incomplete 20/24")
        per_dc = by_dc.periods[0].per_dc
        for dc, row in (("dub1", dub1), ("fra1", fra1)):
            events, suppressed = per_dc[dc]
            assert row["suppressed"] == f"{suppressed / events * 100:.2f}%"
        assert dub1["suppressed"] != fra1["suppressed"]
        # A day without any data says so instead of a row of blanks.
        empty_day = rows["2026-11-04", None]
        assert empty_day["flags"].startswith("no data")
        assert "events" not in empty_day and "p50" not in empty_day
        assert by_dc.to_json()["rows"][-1] == {
            "period": "2026-11-04", "start": "2026-11-04T00:00:00Z", "count": 0, "no_data": True,
        }  # fmt: skip
        only_dub1 = percentile_report(
            config, influx, AGG, period="day", from_date="2026-11-03", to_date="2026-11-03",
            dcs=["dub1"], ledger=ledger.engine,
        )  # fmt: skip
        assert only_dub1.periods[0].complete is True
        assert only_dub1.periods[0].flags == []


def test_a_version_change_inside_a_period_is_flagged_and_never_merged(
    influx: InfluxClient, tmp_path: Path
) -> None:
    config = copy_config(tmp_path / "config")
    prepare_central(influx, config)
    old = resolve_plan(config, AGG, "dub1")
    new = dataclasses.replace(old, accuracy=0.02)
    assert new.version != old.version
    day = parse_rfc3339("2026-11-05T00:00:00Z")
    raw_old, raw_new = Raw(), Raw()
    rng = np.random.default_rng(5)
    points = []
    for i in range(24):
        plan, raw = (old, raw_old) if i < 10 else (new, raw_new)
        points += ship_window(plan, day + i * HOUR_NS, rng, raw)
    write_points(influx, old, points)
    report = percentile_report(
        config, influx, AGG, period="day", from_date="2026-11-05", to_date="2026-11-05",
        dcs=["dub1"], by=["customer"],
    )  # fmt: skip
    [status] = report.periods
    at = "2026-11-05T10:00:00Z"
    assert status.flags == [f"version changes: dub1: {old.version} -> {new.version} at {at}"]
    by_version = {(r.version, r.group["customer"]): r for r in report.rows}
    for version, raw, alpha in ((old.version, raw_old, 0.01), (new.version, raw_new, 0.02)):
        for customer in ("acme", "blue", "cyan"):
            row = by_version[(version, customer)]
            exact = raw.values(day, day + 24 * HOUR_NS, where={"customer": customer})
            assert row.count == exact.size and row.alpha == alpha
            value = row.values["p95"]
            assert value is not None
            assert abs(value - nearest_rank(exact, 95)) <= alpha * nearest_rank(exact, 95)
    # A day of two versions is not rolled up: reports keep reading its windows.
    [outcome] = remerge_day(config, influx, AGG, "UTC", "2026-11-05", dcs=["dub1"])
    assert outcome.status == "mixed versions"
    again = percentile_report(
        config, influx, AGG, period="day", from_date="2026-11-05", to_date="2026-11-05",
        dcs=["dub1"], by=["customer"],
    )  # fmt: skip
    assert again.rows == report.rows


def test_worst_customers_in_order(influx: InfluxClient, tmp_path: Path) -> None:
    config = copy_config(tmp_path / "config")
    prepare_central(influx, config)
    day = parse_rfc3339("2026-11-20T00:00:00Z")
    raw = Raw()
    rng = np.random.default_rng(11)
    for dc in ("dub1", "tor1"):
        plan = resolve_plan(config, AGG, dc)
        points = []
        for i in range(-2, 26):  # a little outside the last 24 hours, too
            points += ship_window(
                plan, day + i * HOUR_NS, rng, raw, n=60, scale={"blue": 4.0, "cyan": 20.0}
            )
        write_points(influx, plan, points)
    now = day + 24 * HOUR_NS + 30 * 60 * 10**9  # 00:30 the next day: the last window is 23:00
    report = worst_report(
        config, influx, AGG, last_ns=24 * HOUR_NS, now_ns=now, by=["customer"], top=2,
        metric="p99",
    )  # fmt: skip
    assert (report.start_ns, report.end_ns) == (day, day + 24 * HOUR_NS)
    assert [(r.rank, r.group["customer"]) for r in report.rows] == [(1, "cyan"), (2, "blue")]
    for r in report.rows:
        exact = nearest_rank(raw.values(day, day + 24 * HOUR_NS, where=r.group), 99)
        assert r.low <= exact <= r.high
    assert report.rows[0].value >= report.rows[1].value
    over = worst_report(
        config, influx, AGG, last_ns=24 * HOUR_NS, now_ns=now, by=["customer", "dc"], top=20,
        metric="count_over:1s",
    )  # fmt: skip
    ranked = [(r.group["customer"], r.group["dc"]) for r in over.rows]
    assert {c for c, _ in ranked[:2]} == {"cyan"}
    values = [r.value for r in over.rows]
    assert values == sorted(values, reverse=True)
    for r in over.rows:
        events = raw.values(day, day + 24 * HOUR_NS, dcs=[r.group["dc"]], where=r.group)
        true_over = int(np.count_nonzero(events > 1000.0))
        assert r.low <= true_over <= r.high
    # The same answer when the whole UTC day comes from its rollups.
    remerge_day(config, influx, AGG, "UTC", "2026-11-20")
    rolled = worst_report(
        config, influx, AGG, last_ns=24 * HOUR_NS, now_ns=now, by=["customer"], top=2,
        metric="p99",
    )  # fmt: skip
    assert rolled.rows == report.rows
    assert rolled.status is not None and rolled.status.sources.startswith("rollups UTC: 2 dc-days")


def test_bad_requests_are_refused_with_a_clear_message(
    influx: InfluxClient, tmp_path: Path
) -> None:
    config = copy_config(tmp_path / "config")
    with pytest.raises(InvalidInput, match="unknown aggregation 'nope'"):
        percentile_report(
            config, influx, "nope", period="day", from_date="2026-11-01", to_date="2026-11-01"
        )
    with pytest.raises(InvalidInput, match="--by 'sender'"):
        percentile_report(
            config, influx, AGG, period="day", from_date="2026-11-01", to_date="2026-11-01",
            by=["sender"],
        )  # fmt: skip
    with pytest.raises(InvalidInput, match="unknown period"):
        percentile_report(
            config, influx, AGG, period="fortnight", from_date="2026-11-01", to_date="2026-11-01"
        )
    with pytest.raises(CalendarError, match="Asia/Kolkata"):
        percentile_report(
            config, influx, AGG, period="day", from_date="2026-11-01", to_date="2026-11-01",
            tz="Asia/Kolkata",
        )  # fmt: skip
