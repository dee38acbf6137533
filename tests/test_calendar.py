from __future__ import annotations

from datetime import UTC, date, datetime, time, timedelta
from itertools import pairwise
from zoneinfo import ZoneInfo

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from federation.core.calendar import (
    PERIOD_KINDS,
    CalendarPeriod,
    period_of,
    period_windows,
    periods,
)
from federation.core.clock import TimeInputError, datetime_to_ns, parse_rfc3339
from federation.core.durations import DAY_NS, HOUR_NS, SECOND_NS
from federation.errors import CalendarError, InvalidInput

ZONES = ["Europe/London", "America/New_York", "Europe/Dublin", "UTC", "Australia/Lord_Howe"]
zones = st.sampled_from(ZONES)
kinds = st.sampled_from(PERIOD_KINDS)
dates = st.dates(min_value=date(1990, 1, 1), max_value=date(2060, 12, 31))
window_sizes = st.sampled_from(
    [SECOND_NS, 60 * SECOND_NS, 15 * 60 * SECOND_NS, 30 * 60 * SECOND_NS, HOUR_NS, DAY_NS]
)


def _utc_offset_ns(t_ns: int, tz: str) -> int:
    local = datetime.fromtimestamp(t_ns // SECOND_NS, ZoneInfo(tz))
    offset = local.utcoffset()
    assert offset is not None
    return int(offset.total_seconds()) * SECOND_NS


def _local(t_ns: int, tz: str) -> datetime:
    return datetime.fromtimestamp(t_ns // SECOND_NS, ZoneInfo(tz))


@settings(max_examples=200)
@given(zones, kinds, dates, st.integers(min_value=0, max_value=120), st.data())
def test_periods_cover_every_instant_exactly_once(
    tz: str, kind: str, first: date, days: int, data: st.DataObject
) -> None:
    last = first + timedelta(days=days)
    got = periods(kind, first, last, tz)
    range_start = datetime_to_ns(datetime.combine(first, time(0), tzinfo=ZoneInfo(tz)))
    range_end = datetime_to_ns(
        datetime.combine(last + timedelta(days=1), time(0), tzinfo=ZoneInfo(tz))
    )
    assert got[0].start_ns <= range_start
    assert got[-1].end_ns >= range_end
    for before, after in pairwise(got):
        assert before.end_ns == after.start_ns
    assert len({p.label for p in got}) == len(got)
    for p in got:
        assert p.kind == kind and p.tz == tz and p.start_ns < p.end_ns
        assert period_of(p.start_ns, kind, tz) == p
        assert period_of(p.end_ns - 1, kind, tz) == p
        start_local = _local(p.start_ns, tz)
        assert (start_local.hour, start_local.minute, start_local.second) == (0, 0, 0)
        assert _local(p.start_ns - 1, tz).date() < start_local.date()
    t = data.draw(st.integers(min_value=range_start, max_value=range_end - 1))
    assert sum(p.contains(t) for p in got) == 1
    assert period_of(t, kind, tz) in got


@given(zones, dates)
def test_day_length_follows_the_offset_change(tz: str, day: date) -> None:
    (p,) = periods("day", day, day, tz)
    change = _utc_offset_ns(p.start_ns, tz) - _utc_offset_ns(p.end_ns, tz)
    assert p.duration_ns == DAY_NS + change


@given(zones, dates)
def test_a_week_starts_on_monday_and_is_labelled_iso(tz: str, day: date) -> None:
    week = period_of(
        datetime_to_ns(datetime.combine(day, time(12), tzinfo=ZoneInfo(tz))), "week", tz
    )
    start = _local(week.start_ns, tz)
    assert start.weekday() == 0 and start.time() == time(0)
    assert _local(week.end_ns, tz).weekday() == 0
    assert start.date() <= day < start.date() + timedelta(days=7)
    iso = day.isocalendar()
    assert week.label == f"{iso.year:04d}-W{iso.week:02d}"


def _period_holding(kind: str, day: date, tz: str) -> CalendarPeriod:
    return period_of(datetime_to_ns(datetime.combine(day, time(12), tzinfo=ZoneInfo(tz))), kind, tz)


@settings(max_examples=200)
@given(zones, kinds, dates, window_sizes)
def test_period_windows_tile_the_period_or_are_refused(
    tz: str, kind: str, day: date, size: int
) -> None:
    p = _period_holding(kind, day, tz)
    # Independent expectation: local midnight lies `offset` before a UTC midnight, and every
    # size here divides a day, so a boundary is aligned iff the offset there is a multiple.
    tiles = all(_utc_offset_ns(b, tz) % size == 0 for b in (p.start_ns, p.end_ns))
    if tiles:
        # A range, not a list: a quarter of one-second windows has ~8M starts.
        starts = period_windows(p, size)
        assert starts[0] == p.start_ns
        assert starts[-1] + size == p.end_ns
        assert starts.step == size
        assert len(starts) * size == p.duration_ns
    else:
        with pytest.raises(CalendarError) as info:
            period_windows(p, size)
        assert tz in str(info.value) and p.label in str(info.value)
    assert tiles or tz != "UTC"


@pytest.mark.parametrize(
    ("day", "hours"), [("2026-03-29", 23), ("2026-10-25", 25), ("2026-11-28", 24)]
)
def test_london_dst_days_have_23_and_25_hourly_windows(day: str, hours: int) -> None:
    (p,) = periods("day", day, day, "Europe/London")
    assert len(period_windows(p, HOUR_NS)) == hours
    assert p.duration_ns == hours * HOUR_NS


def test_hourly_windows_in_kolkata_are_refused_with_a_clear_message() -> None:
    (p,) = periods("day", "2026-11-28", "2026-11-28", "Asia/Kolkata")
    with pytest.raises(CalendarError) as info:
        period_windows(p, HOUR_NS)
    message = str(info.value)
    for part in ("Asia/Kolkata", "1h", "2026-11-28", "start", "2026-11-27T18:30:00Z", "+05:30"):
        assert part in message
    assert isinstance(info.value, InvalidInput)
    assert len(period_windows(p, 30 * 60 * SECOND_NS)) == 48


def test_daily_windows_need_utc_plus_zero_at_both_boundaries() -> None:
    (winter,) = periods("day", "2026-01-15", "2026-01-15", "Europe/London")
    assert list(period_windows(winter, DAY_NS)) == [parse_rfc3339("2026-01-15T00:00:00Z")]
    (summer,) = periods("day", "2026-06-15", "2026-06-15", "Europe/London")
    with pytest.raises(CalendarError, match="1d windows cannot tile day 2026-06-15"):
        period_windows(summer, DAY_NS)
    (spring,) = periods("day", "2026-03-29", "2026-03-29", "Europe/London")
    with pytest.raises(CalendarError, match="its end 2026-03-29T23:00:00Z"):
        period_windows(spring, DAY_NS)
    (december,) = periods("month", "2026-12-01", "2026-12-01", "Europe/London")
    assert len(period_windows(december, DAY_NS)) == 31


def test_lord_howe_half_hour_dst() -> None:
    (p,) = periods("day", "2026-04-05", "2026-04-05", "Australia/Lord_Howe")
    assert p.duration_ns == 24 * HOUR_NS + 30 * 60 * SECOND_NS
    with pytest.raises(CalendarError):
        period_windows(p, HOUR_NS)
    assert len(period_windows(p, 30 * 60 * SECOND_NS)) == 49


def test_labels() -> None:
    t = parse_rfc3339("2026-11-28T10:00:00Z")
    assert period_of(t, "day", "UTC").label == "2026-11-28"
    assert period_of(t, "week", "UTC").label == "2026-W48"
    assert period_of(t, "month", "UTC").label == "2026-11"
    assert period_of(t, "quarter", "UTC").label == "2026-Q4"
    # Late evening UTC is already the next day in Auckland.
    assert period_of(parse_rfc3339("2026-12-31T12:00:00Z"), "day", "Pacific/Auckland").label == (
        "2027-01-01"
    )
    # ISO week years: 2027-01-01 (a Friday) belongs to 2026's week 53.
    assert period_of(parse_rfc3339("2027-01-01T12:00:00Z"), "week", "UTC").label == "2026-W53"


def test_week_is_monday_based_not_influxql_thursday() -> None:
    thursday = parse_rfc3339("2026-11-26T12:00:00Z")
    week = period_of(thursday, "week", "UTC")
    assert week.start_ns == parse_rfc3339("2026-11-23T00:00:00Z")
    assert week.end_ns == parse_rfc3339("2026-11-30T00:00:00Z")
    # InfluxQL buckets 1w from the epoch, a Thursday; ours never start there.
    assert week.start_ns % (7 * DAY_NS) != 0


def test_periods_extend_to_whole_periods() -> None:
    got = periods("quarter", date(2026, 2, 10), date(2026, 4, 2), "Europe/London")
    assert [p.label for p in got] == ["2026-Q1", "2026-Q2"]
    assert got[0].start_ns == parse_rfc3339("2026-01-01T00:00:00Z")
    assert got[1].end_ns == parse_rfc3339("2026-06-30T23:00:00Z")
    months = periods("month", "2026-12-15", "2027-01-03", "UTC")
    assert [p.label for p in months] == ["2026-12", "2027-01"]


def test_skipped_midnight_starts_the_day_when_the_clock_jumps() -> None:
    # Havana moves clocks from 00:00 to 01:00 on 2026-03-08.
    (p,) = periods("day", "2026-03-08", "2026-03-08", "America/Havana")
    assert p.start_ns == parse_rfc3339("2026-03-08T05:00:00Z")
    assert p.duration_ns == 23 * HOUR_NS
    assert period_of(p.start_ns - 1, "day", "America/Havana").label == "2026-03-07"


def test_bad_arguments_are_named() -> None:
    with pytest.raises(TimeInputError, match="'Mars/Olympus'"):
        periods("day", "2026-01-01", "2026-01-02", "Mars/Olympus")
    with pytest.raises(TimeInputError, match="'fortnight'"):
        periods("fortnight", "2026-01-01", "2026-01-02", "UTC")
    with pytest.raises(TimeInputError, match="before it starts"):
        periods("day", "2026-01-02", "2026-01-01", "UTC")
    with pytest.raises(TimeInputError, match="'2026-1-1'"):
        periods("day", "2026-1-1", "2026-01-02", "UTC")
    with pytest.raises(TimeInputError, match="datetime"):
        periods("day", datetime(2026, 1, 1, tzinfo=UTC), "2026-01-02", "UTC")
    (p,) = periods("day", "2026-01-01", "2026-01-01", "UTC")
    with pytest.raises(ValueError, match="positive"):
        period_windows(p, 0)
