"""Time for federation: one injectable clock, and instants as integer nanoseconds.

An instant is an `int` of nanoseconds since the Unix epoch, UTC, the unit InfluxDB timestamps
use, so that every window computation is exact integer arithmetic. Nothing in federation reads
the system time directly: code takes a `Clock` and asks it. Three clocks exist:

- `SystemClock`: the real wall clock.
- `FakeClock`: time that moves only when told to (or, by default, when someone sleeps), so tests
  and scenarios run many one-second windows in a fraction of a second.
- `SkewedClock`: another clock running ahead or behind by a fixed offset, for a DC whose clock
  is wrong.

The conversions at the bottom turn instants into aware `datetime`s and RFC 3339 strings and
back, and `parse_instant` reads what a user types (`2026-11-28T10:00:00Z`, `2026-11-01`, `now`,
`-6h`).
"""

from __future__ import annotations

import re
import threading
import time
from datetime import UTC, date, datetime, timedelta, tzinfo
from typing import Protocol, runtime_checkable

from federation.core.durations import SECOND_NS, parse_duration
from federation.errors import InvalidInput

# InfluxDB refuses timestamps outside this range (the int64 extremes are reserved).
MIN_INSTANT_NS = -9_223_372_036_854_775_806
MAX_INSTANT_NS = 9_223_372_036_854_775_806

_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_EPOCH_ORDINAL = date(1970, 1, 1).toordinal()
# A blocked FakeClock sleeper cannot be woken by a threading.Event it does not own, so it
# re-checks its stop event this often (real seconds).
_STOP_POLL_S = 0.005
# SystemClock waits in slices this long so that a wall-clock step (NTP) is noticed promptly.
_MAX_WAIT_SLICE_S = 1.0


class TimeInputError(InvalidInput, ValueError):
    """Text or a value that is not a valid instant, date or time zone; the message quotes it.

    It is both an `InvalidInput` (the CLI exits 2) and a `ValueError` (for callers that only
    know the standard library's convention).
    """


@runtime_checkable
class Clock(Protocol):
    """The one source of time that every part of federation takes."""

    def now_ns(self) -> int:
        """The current instant, in nanoseconds since the epoch (UTC)."""
        ...

    def sleep(self, seconds: float) -> None:
        """Return after `seconds` have passed on this clock."""
        ...

    def sleep_until_ns(self, t: int, stop: threading.Event | None = None) -> bool:
        """Return True once this clock reads `t` or later; False as soon as `stop` is set."""
        ...


def _seconds_to_ns(seconds: float) -> int:
    if seconds < 0:
        raise ValueError(f"sleep length must be non-negative, got {seconds}")
    return round(seconds * SECOND_NS)


class SystemClock:
    """The real wall clock (`time.time_ns`)."""

    def now_ns(self) -> int:
        """The current wall-clock instant."""
        return time.time_ns()

    def sleep(self, seconds: float) -> None:
        """Block the calling thread for `seconds` of real time."""
        time.sleep(_seconds_to_ns(seconds) / SECOND_NS)

    def sleep_until_ns(self, t: int, stop: threading.Event | None = None) -> bool:
        """Block until the wall clock reads `t`; return False as soon as `stop` is set.

        The wall clock is re-read at least once a second, so a clock step while waiting is
        honoured rather than sleeping for a stale interval.
        """
        while True:
            if stop is not None and stop.is_set():
                return False
            remaining_ns = t - time.time_ns()
            if remaining_ns <= 0:
                return True
            slice_s = min(remaining_ns / SECOND_NS, _MAX_WAIT_SLICE_S)
            if stop is not None:
                if stop.wait(slice_s):
                    return False
            else:
                time.sleep(slice_s)


class FakeClock:
    """A manual clock for tests and scenarios; safe to share between threads.

    Time moves with `advance` and `set`. With `auto_advance=True` (the default) a sleeper moves
    time forward to its own deadline at once, so code that sleeps between windows runs without
    real waiting. With `auto_advance=False` sleepers block until another thread moves time to
    their deadline; `wait_for_sleepers` lets a test wait until they are parked.
    """

    def __init__(self, start_ns: int = 0, *, auto_advance: bool = True) -> None:
        self._now = start_ns
        self._auto_advance = auto_advance
        self._cond = threading.Condition()
        self._sleepers = 0

    def now_ns(self) -> int:
        """The clock's current reading."""
        with self._cond:
            return self._now

    def advance(self, ns: int) -> int:
        """Move time forward by `ns` (never backward), wake sleepers, return the new reading."""
        if ns < 0:
            raise ValueError(f"FakeClock.advance needs a non-negative step, got {ns}")
        with self._cond:
            self._now += ns
            self._cond.notify_all()
            return self._now

    def set(self, ns: int) -> None:
        """Set the reading to `ns` (backward too, e.g. to model a clock step) and wake sleepers."""
        with self._cond:
            self._now = ns
            self._cond.notify_all()

    @property
    def sleepers(self) -> int:
        """How many threads are blocked in `sleep`/`sleep_until_ns` right now."""
        with self._cond:
            return self._sleepers

    def wait_for_sleepers(self, n: int, timeout_s: float = 5.0) -> bool:
        """Wait (real time, at most `timeout_s`) until at least `n` threads are blocked here."""
        with self._cond:
            return self._cond.wait_for(lambda: self._sleepers >= n, timeout=timeout_s)

    def sleep(self, seconds: float) -> None:
        """Return once the clock has moved `seconds` past the reading at the call."""
        step = _seconds_to_ns(seconds)
        with self._cond:
            target = self._now + step
        self.sleep_until_ns(target)

    def sleep_until_ns(self, t: int, stop: threading.Event | None = None) -> bool:
        """Return True once the reading is `t` or later, False as soon as `stop` is set.

        With auto-advance the reading jumps to `t` (never backward) and other sleepers whose
        deadline that passes are woken too.
        """
        with self._cond:
            self._sleepers += 1
            self._cond.notify_all()
            try:
                while True:
                    if stop is not None and stop.is_set():
                        return False
                    if self._now >= t:
                        return True
                    if self._auto_advance:
                        self._now = t
                        self._cond.notify_all()
                        return True
                    self._cond.wait(_STOP_POLL_S if stop is not None else None)
            finally:
                self._sleepers -= 1
                self._cond.notify_all()


class SkewedClock:
    """A clock that reads `offset_ns` ahead of `base` (behind, when negative)."""

    def __init__(self, base: Clock, offset_ns: int) -> None:
        self.base = base
        self.offset_ns = offset_ns

    def now_ns(self) -> int:
        """The base clock's reading plus the offset."""
        return self.base.now_ns() + self.offset_ns

    def sleep(self, seconds: float) -> None:
        """Sleep as the base clock does: a skew shifts readings, not the length of intervals."""
        self.base.sleep(seconds)

    def sleep_until_ns(self, t: int, stop: threading.Event | None = None) -> bool:
        """Return True once this clock (not the base) reads `t`; False as soon as `stop` is set."""
        return self.base.sleep_until_ns(t - self.offset_ns, stop)


# --- instants ---------------------------------------------------------------------------------


def datetime_to_ns(dt: datetime) -> int:
    """The exact instant of an aware `datetime` (microsecond precision, as datetime has).

    A naive datetime is refused: guessing its zone is how an hour of data goes missing.
    """
    if dt.tzinfo is None or dt.utcoffset() is None:
        raise TimeInputError(f"datetime {dt.isoformat()!r} has no time zone")
    delta = dt - _EPOCH
    return (delta.days * 86_400 + delta.seconds) * SECOND_NS + delta.microseconds * 1_000


def ns_to_datetime(ns: int, tz: tzinfo = UTC) -> datetime:
    """An aware datetime for `ns` in `tz` (UTC by default).

    datetime holds microseconds, so sub-microsecond digits are dropped by rounding down
    (towards the past), which keeps the datetime inside any window that holds `ns`.
    """
    dt = _EPOCH + timedelta(microseconds=ns // 1_000)
    return dt if tz is UTC else dt.astimezone(tz)


def format_rfc3339(ns: int) -> str:
    """RFC 3339 in UTC with a `Z`, and only as many fraction digits as needed (up to 9).

    `2026-11-28T10:00:00Z`, `2026-11-28T10:00:00.5Z`, `2026-11-28T10:00:00.000000001Z`;
    `parse_rfc3339` reads every output back to the same integer.
    """
    seconds, frac = divmod(ns, SECOND_NS)
    dt = _EPOCH + timedelta(seconds=seconds)
    text = (
        f"{dt.year:04d}-{dt.month:02d}-{dt.day:02d}T{dt.hour:02d}:{dt.minute:02d}:{dt.second:02d}"
    )
    if frac:
        text += "." + f"{frac:09d}".rstrip("0")
    return text + "Z"


_RFC3339 = re.compile(
    r"(\d{4})-(\d{2})-(\d{2})[Tt ](\d{2}):(\d{2}):(\d{2})(?:\.(\d+))?([Zz]|[+-]\d{2}:\d{2})"
)
_DATE = re.compile(r"(\d{4})-(\d{2})-(\d{2})")
_RELATIVE = re.compile(r"(?:now)?\s*([+-])\s*(\S+)", re.IGNORECASE)
_FORMS = (
    "write RFC 3339 (2026-11-28T10:00:00Z, 2026-11-28T10:00:00.5+01:00), "
    "a date (2026-11-01, meaning midnight UTC), 'now', or a time relative to now (-6h, now-30m)"
)


def _check_range(ns: int, text: str) -> int:
    if not MIN_INSTANT_NS <= ns <= MAX_INSTANT_NS:
        raise TimeInputError(f"{text!r} is outside the range of InfluxDB timestamps (1677–2262)")
    return ns


def _date_from_parts(text: str, year: str, month: str, day: str) -> date:
    try:
        return date(int(year), int(month), int(day))
    except ValueError as exc:
        raise TimeInputError(f"{text!r} is not a valid date: {exc}") from None


def parse_rfc3339(text: str) -> int:
    """Parse an RFC 3339 timestamp with an explicit offset into exact nanoseconds.

    Accepts up to 9 fraction digits, `Z`/`z` or `±hh:mm`, and `T`, `t` or a space between date
    and time. Anything else (no offset, leap second 60, 10+ fraction digits, out of range)
    raises `TimeInputError` quoting the text.
    """
    match = _RFC3339.fullmatch(text.strip())
    if match is None:
        raise TimeInputError(f"{text!r} is not an RFC 3339 timestamp (e.g. 2026-11-28T10:00:00Z)")
    year, month, day, hh, mm, ss, frac, offset = match.groups()
    day_ = _date_from_parts(text, year, month, day)
    hour, minute, second = int(hh), int(mm), int(ss)
    if hour > 23 or minute > 59 or second > 59:
        raise TimeInputError(f"{text!r} has an invalid time of day {hh}:{mm}:{ss}")
    if frac is not None and len(frac) > 9:
        raise TimeInputError(f"{text!r} has more than 9 fraction digits (finer than nanoseconds)")
    offset_s = 0
    if offset not in ("Z", "z"):
        off_h, off_m = int(offset[1:3]), int(offset[4:6])
        if off_h > 23 or off_m > 59:
            raise TimeInputError(f"{text!r} has an invalid UTC offset {offset}")
        offset_s = (off_h * 3600 + off_m * 60) * (-1 if offset[0] == "-" else 1)
    days = day_.toordinal() - _EPOCH_ORDINAL
    seconds = days * 86_400 + hour * 3600 + minute * 60 + second - offset_s
    frac_ns = int(frac.ljust(9, "0")) if frac else 0
    return _check_range(seconds * SECOND_NS + frac_ns, text)


def parse_date(text: str) -> date:
    """Parse `YYYY-MM-DD` into a date, raising `TimeInputError` quoting the text."""
    match = _DATE.fullmatch(text.strip())
    if match is None:
        raise TimeInputError(f"{text!r} is not a date: write YYYY-MM-DD (e.g. 2026-11-01)")
    return _date_from_parts(text, *match.groups())


def parse_instant(text: str, clock: Clock) -> int:
    """Read a user-supplied time into nanoseconds since the epoch.

    Accepted: RFC 3339 (`2026-11-28T10:00:00Z`, with an offset or `Z`); a date (`2026-11-01`,
    meaning 00:00 UTC that day); `now`; a duration relative to `clock`'s now, with a sign
    (`-6h`, `+30m`, `now-7d`). Anything else raises `TimeInputError` quoting the text and
    listing the accepted forms.
    """
    stripped = text.strip()
    if stripped.lower() == "now":
        return clock.now_ns()
    relative = _RELATIVE.fullmatch(stripped)
    if relative is not None:
        sign, duration = relative.groups()
        try:
            step = parse_duration(duration)
        except ValueError as exc:
            raise TimeInputError(f"{text!r} is not a relative time: {exc}") from None
        return _check_range(clock.now_ns() + (step if sign == "+" else -step), text)
    if _DATE.fullmatch(stripped):
        midnight = datetime.combine(parse_date(stripped), datetime.min.time(), UTC)
        return _check_range(datetime_to_ns(midnight), text)
    if _RFC3339.fullmatch(stripped):
        return parse_rfc3339(stripped)
    raise TimeInputError(f"{text!r} is not a time: {_FORMS}")
