from __future__ import annotations

import threading
import time
from collections.abc import Callable
from datetime import UTC, datetime, timedelta, timezone
from functools import partial

import pytest
from hypothesis import given
from hypothesis import strategies as st

from federation.core.clock import (
    MAX_INSTANT_NS,
    MIN_INSTANT_NS,
    Clock,
    FakeClock,
    SkewedClock,
    SystemClock,
    TimeInputError,
    datetime_to_ns,
    format_rfc3339,
    ns_to_datetime,
    parse_instant,
    parse_rfc3339,
)
from federation.core.durations import HOUR_NS, SECOND_NS
from federation.errors import InvalidInput

T0 = parse_rfc3339("2026-11-28T10:00:00Z")
instants = st.integers(min_value=MIN_INSTANT_NS, max_value=MAX_INSTANT_NS)


def _start(target: Callable[[], object]) -> threading.Thread:
    thread = threading.Thread(target=target, daemon=True)
    thread.start()
    return thread


# --- clocks ---------------------------------------------------------------------------------


def test_every_clock_satisfies_the_protocol() -> None:
    fake = FakeClock(0)
    for clock in (SystemClock(), fake, SkewedClock(fake, 5)):
        assert isinstance(clock, Clock)


def test_system_clock_reads_wall_time() -> None:
    before = time.time_ns()
    now = SystemClock().now_ns()
    assert before <= now <= time.time_ns()


def test_system_clock_sleep_until_past_and_stop() -> None:
    clock = SystemClock()
    assert clock.sleep_until_ns(clock.now_ns() - SECOND_NS) is True
    stop = threading.Event()
    stop.set()
    assert clock.sleep_until_ns(clock.now_ns() + 3600 * SECOND_NS, stop) is False


def test_system_clock_sleep_until_is_stopped_from_another_thread() -> None:
    clock = SystemClock()
    stop = threading.Event()
    result: list[bool] = []
    thread = _start(lambda: result.append(clock.sleep_until_ns(clock.now_ns() + HOUR_NS, stop)))
    time.sleep(0.05)
    stop.set()
    thread.join(timeout=2)
    assert result == [False]


def test_system_clock_sleep_until_reaches_a_near_deadline() -> None:
    clock = SystemClock()
    target = clock.now_ns() + 20_000_000
    assert clock.sleep_until_ns(target, threading.Event()) is True
    assert clock.now_ns() >= target


def test_fake_clock_advance_and_set() -> None:
    clock = FakeClock(T0)
    assert clock.now_ns() == T0
    assert clock.advance(5) == T0 + 5
    clock.set(T0 - HOUR_NS)
    assert clock.now_ns() == T0 - HOUR_NS
    with pytest.raises(ValueError, match="non-negative"):
        clock.advance(-1)


def test_fake_clock_sleep_advances_at_once() -> None:
    clock = FakeClock(T0)
    started = time.monotonic()
    clock.sleep(3600)
    clock.sleep(0.5)
    assert clock.now_ns() == T0 + HOUR_NS + SECOND_NS // 2
    assert time.monotonic() - started < 1
    with pytest.raises(ValueError):
        clock.sleep(-1)


def test_fake_clock_sleep_until_never_moves_backward() -> None:
    clock = FakeClock(T0)
    assert clock.sleep_until_ns(T0 - HOUR_NS) is True
    assert clock.now_ns() == T0
    assert clock.sleep_until_ns(T0 + 7) is True
    assert clock.now_ns() == T0 + 7


def test_fake_clock_stop_already_set() -> None:
    clock = FakeClock(T0)
    stop = threading.Event()
    stop.set()
    assert clock.sleep_until_ns(T0 + HOUR_NS, stop) is False
    assert clock.now_ns() == T0


def test_fake_clock_blocking_sleeper_wakes_only_at_its_deadline() -> None:
    clock = FakeClock(T0, auto_advance=False)
    result: list[bool] = []
    thread = _start(lambda: result.append(clock.sleep_until_ns(T0 + 10 * SECOND_NS)))
    assert clock.wait_for_sleepers(1)
    clock.advance(9 * SECOND_NS)
    thread.join(timeout=0.1)
    assert thread.is_alive() and result == []
    clock.advance(SECOND_NS)
    thread.join(timeout=2)
    assert result == [True]
    assert clock.sleepers == 0


def test_fake_clock_one_advance_wakes_every_due_sleeper() -> None:
    clock = FakeClock(T0, auto_advance=False)
    results: list[int] = []
    lock = threading.Lock()

    def sleeper(k: int) -> None:
        clock.sleep_until_ns(T0 + k * SECOND_NS)
        with lock:
            results.append(k)

    threads = [_start(partial(sleeper, k)) for k in (1, 2, 3, 10)]
    assert clock.wait_for_sleepers(4)
    clock.set(T0 + 3 * SECOND_NS)
    for thread in threads[:3]:
        thread.join(timeout=2)
    assert sorted(results) == [1, 2, 3]
    assert clock.wait_for_sleepers(1)
    assert threads[3].is_alive()
    clock.advance(7 * SECOND_NS)
    threads[3].join(timeout=2)
    assert sorted(results) == [1, 2, 3, 10]


def test_fake_clock_blocking_sleeper_is_stopped() -> None:
    clock = FakeClock(T0, auto_advance=False)
    stop = threading.Event()
    result: list[bool] = []
    thread = _start(lambda: result.append(clock.sleep_until_ns(T0 + HOUR_NS, stop)))
    assert clock.wait_for_sleepers(1)
    stop.set()
    thread.join(timeout=2)
    assert result == [False]
    assert clock.now_ns() == T0


def test_fake_clock_blocking_sleep_measures_from_the_call() -> None:
    clock = FakeClock(T0, auto_advance=False)
    done = threading.Event()

    def sleeper() -> None:
        clock.sleep(2)
        done.set()

    thread = _start(sleeper)
    assert clock.wait_for_sleepers(1)
    clock.advance(SECOND_NS)
    assert not done.wait(0.05)
    clock.advance(SECOND_NS)
    assert done.wait(2)
    thread.join(timeout=2)


def test_fake_clock_concurrent_advances_are_not_lost() -> None:
    clock = FakeClock(0)

    def worker() -> None:
        for _ in range(1000):
            clock.advance(1)

    threads = [_start(worker) for _ in range(8)]
    for thread in threads:
        thread.join(timeout=10)
    assert clock.now_ns() == 8000


def test_fake_clock_auto_advance_sleepers_in_threads() -> None:
    clock = FakeClock(T0)
    threads = [_start(partial(clock.sleep_until_ns, T0 + k)) for k in range(1, 50)]
    for thread in threads:
        thread.join(timeout=2)
    assert clock.now_ns() == T0 + 49


def test_skewed_clock_reads_ahead_and_sleeps_on_its_own_scale() -> None:
    base = FakeClock(T0)
    ahead = SkewedClock(base, 90 * SECOND_NS)
    behind = SkewedClock(base, -90 * SECOND_NS)
    assert ahead.now_ns() == T0 + 90 * SECOND_NS
    assert behind.now_ns() == T0 - 90 * SECOND_NS
    assert ahead.sleep_until_ns(T0 + HOUR_NS) is True
    assert ahead.now_ns() == T0 + HOUR_NS
    assert base.now_ns() == T0 + HOUR_NS - 90 * SECOND_NS
    behind.sleep(1)
    assert base.now_ns() == T0 + HOUR_NS - 89 * SECOND_NS


# --- instants -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("ns", "text"),
    [
        (T0, "2026-11-28T10:00:00Z"),
        (T0 + SECOND_NS // 2, "2026-11-28T10:00:00.5Z"),
        (T0 + 1, "2026-11-28T10:00:00.000000001Z"),
        (T0 + 123_456_789, "2026-11-28T10:00:00.123456789Z"),
        (0, "1970-01-01T00:00:00Z"),
        (-1, "1969-12-31T23:59:59.999999999Z"),
    ],
)
def test_format_rfc3339_examples(ns: int, text: str) -> None:
    assert format_rfc3339(ns) == text
    assert parse_rfc3339(text) == ns


@given(instants)
def test_rfc3339_round_trip_at_nanosecond_precision(ns: int) -> None:
    text = format_rfc3339(ns)
    assert text.endswith("Z")
    assert parse_rfc3339(text) == ns


@given(instants, st.integers(min_value=-(23 * 60 + 59), max_value=23 * 60 + 59))
def test_rfc3339_offsets_name_the_same_instant(ns: int, offset_min: int) -> None:
    seconds, frac = divmod(ns, SECOND_NS)
    local = datetime(1970, 1, 1) + timedelta(seconds=seconds + offset_min * 60)
    sign = "-" if offset_min < 0 else "+"
    hours, minutes = divmod(abs(offset_min), 60)
    text = (
        f"{local.year:04d}-{local.month:02d}-{local.day:02d}T"
        f"{local.hour:02d}:{local.minute:02d}:{local.second:02d}"
        f".{frac:09d}{sign}{hours:02d}:{minutes:02d}"
    )
    assert parse_rfc3339(text) == ns


@given(st.datetimes(timezones=st.just(UTC)))
def test_datetime_conversion_round_trip(dt: datetime) -> None:
    ns = datetime_to_ns(dt)
    assert ns_to_datetime(ns) == dt
    whole, micros = dt.replace(tzinfo=None).isoformat(timespec="microseconds").split(".")
    micros = micros.rstrip("0")
    assert format_rfc3339(ns) == whole + (f".{micros}" if micros else "") + "Z"


def test_ns_to_datetime_floors_sub_microseconds_and_converts_zones() -> None:
    assert ns_to_datetime(T0 + 999) == ns_to_datetime(T0)
    assert ns_to_datetime(-1) == datetime(1969, 12, 31, 23, 59, 59, 999_999, tzinfo=UTC)
    paris = ns_to_datetime(T0, timezone(timedelta(hours=1)))
    assert paris.hour == 11 and datetime_to_ns(paris) == T0


def test_naive_datetime_is_refused() -> None:
    with pytest.raises(TimeInputError, match="no time zone"):
        datetime_to_ns(datetime(2026, 11, 28))


def test_parse_instant_forms() -> None:
    clock = FakeClock(T0)
    assert parse_instant("now", clock) == T0
    assert parse_instant(" NOW ", clock) == T0
    assert parse_instant("-6h", clock) == T0 - 6 * HOUR_NS
    assert parse_instant("now-30m", clock) == T0 - 30 * 60 * SECOND_NS
    assert parse_instant("now - 30m", clock) == T0 - 30 * 60 * SECOND_NS
    assert parse_instant("+1d", clock) == T0 + 24 * HOUR_NS
    assert parse_instant("2026-11-01", clock) == parse_rfc3339("2026-11-01T00:00:00Z")
    assert parse_instant("2026-11-28T11:00:00+01:00", clock) == T0
    assert parse_instant("2026-11-28t10:00:00.5z", clock) == T0 + SECOND_NS // 2


@pytest.mark.parametrize(
    "text",
    [
        "yesterday",
        "",
        "2026-13-01",
        "2026-02-30T00:00:00Z",
        "2026-11-28T10:00:00",
        "2026-11-28T24:00:00Z",
        "2026-11-28T10:00:60Z",
        "2026-11-28T10:00:00.1234567891Z",
        "2026-11-28T10:00:00+24:00",
        "-6x",
        "now-1.5h",
        "2263-01-01T00:00:00Z",
        "1677-01-01",
    ],
)
def test_parse_instant_refuses_bad_text_naming_it(text: str) -> None:
    with pytest.raises(TimeInputError) as info:
        parse_instant(text, FakeClock(T0))
    assert repr(text) in str(info.value)
    assert isinstance(info.value, InvalidInput) and isinstance(info.value, ValueError)


def test_parse_rfc3339_requires_an_offset() -> None:
    with pytest.raises(ValueError, match="RFC 3339"):
        parse_rfc3339("2026-11-01")
