"""Calendar periods in any IANA time zone: day, ISO week, month, quarter.

Reports merge windows over these periods. A period runs from local midnight of its first day
to local midnight after its last day, so its length follows the zone's daylight-saving rules
(a London day is 23, 24 or 25 hours). Weeks are ISO weeks starting Monday 00:00 local; InfluxQL's
`GROUP BY time(1w)` is never a substitute, since its weeks start on Thursday (the epoch's
weekday).

`period_windows` refuses, with `CalendarError`, a window size whose windows cannot tile a period
exactly (its start or end is not a multiple of the size since the epoch), rather than letting a
report count a window in two periods or in none.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import date, datetime, time, timedelta
from typing import Literal, get_args
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from federation.core.clock import TimeInputError, datetime_to_ns, format_rfc3339, parse_date
from federation.core.durations import SECOND_NS, format_duration
from federation.errors import CalendarError

PeriodKind = Literal["day", "week", "month", "quarter"]
PERIOD_KINDS: tuple[PeriodKind, ...] = get_args(PeriodKind)


@dataclass(frozen=True)
class CalendarPeriod:
    """One calendar period: `[start_ns, end_ns)` in UTC nanoseconds, labelled in its zone.

    Labels: day `2026-11-28`, week `2026-W48` (ISO year and week), month `2026-11`,
    quarter `2026-Q4`. `tz` is the IANA zone name.
    """

    kind: PeriodKind
    label: str
    start_ns: int
    end_ns: int
    tz: str

    @property
    def duration_ns(self) -> int:
        """The period's real length (a DST day is 23 or 25 hours)."""
        return self.end_ns - self.start_ns

    def contains(self, t_ns: int) -> bool:
        """True iff start <= t < end."""
        return self.start_ns <= t_ns < self.end_ns


def zone(tz: str) -> ZoneInfo:
    """The IANA zone named `tz`; TimeInputError naming it when it does not exist."""
    try:
        return ZoneInfo(tz)
    except (ZoneInfoNotFoundError, ValueError, OSError):
        raise TimeInputError(
            f"unknown time zone {tz!r}: use an IANA name such as Europe/London"
        ) from None


def check_kind(kind: str) -> PeriodKind:
    """`kind` as a PeriodKind; TimeInputError listing the kinds when it is not one."""
    for known in PERIOD_KINDS:
        if kind == known:
            return known
    raise TimeInputError(f"unknown period {kind!r}: use one of {', '.join(PERIOD_KINDS)}")


def local_midnight_ns(day: date, tz: ZoneInfo) -> int:
    """The first instant of `day` in `tz`.

    Where a zone skips midnight (a DST change at 00:00), the day starts when the clock jumps:
    a gap time with fold=0 resolves to the offset before the change, which is that instant.
    """
    return datetime_to_ns(datetime.combine(day, time(0), tzinfo=tz))


def _first_day(kind: PeriodKind, day: date) -> date:
    if kind == "day":
        return day
    if kind == "week":
        return day - timedelta(days=day.weekday())
    if kind == "month":
        return day.replace(day=1)
    return date(day.year, (day.month - 1) // 3 * 3 + 1, 1)


def _next_first_day(kind: PeriodKind, first: date) -> date:
    if kind == "day":
        return first + timedelta(days=1)
    if kind == "week":
        return first + timedelta(days=7)
    months = 1 if kind == "month" else 3
    month_index = first.year * 12 + first.month - 1 + months
    return date(month_index // 12, month_index % 12 + 1, 1)


def _label(kind: PeriodKind, first: date) -> str:
    if kind == "day":
        return first.isoformat()
    if kind == "week":
        iso = first.isocalendar()
        return f"{iso.year:04d}-W{iso.week:02d}"
    if kind == "month":
        return f"{first.year:04d}-{first.month:02d}"
    return f"{first.year:04d}-Q{(first.month - 1) // 3 + 1}"


def _period_from(kind: PeriodKind, first: date, tz: ZoneInfo, tz_name: str) -> CalendarPeriod:
    return CalendarPeriod(
        kind=kind,
        label=_label(kind, first),
        start_ns=local_midnight_ns(first, tz),
        end_ns=local_midnight_ns(_next_first_day(kind, first), tz),
        tz=tz_name,
    )


def _as_date(value: date | str) -> date:
    if isinstance(value, datetime):
        raise TimeInputError(f"expected a date, got the datetime {value.isoformat()!r}")
    return value if isinstance(value, date) else parse_date(value)


def periods(
    kind: PeriodKind | str, from_date: date | str, to_date: date | str, tz: str
) -> list[CalendarPeriod]:
    """The whole periods of `kind` that cover local days `from_date` … `to_date` (inclusive).

    Guarantees, in zone `tz`: every instant of [local midnight of from_date, local midnight
    after to_date) lies in exactly one returned period; periods are in order and contiguous
    (each ends where the next starts). Periods are never cut: the first may start before
    from_date (the Monday of its week, the 1st of its month) and the last may end after
    to_date. Days that a zone skipped entirely (zero length) are left out. Dates may be given
    as `YYYY-MM-DD`; to_date before from_date raises TimeInputError.
    """
    kind_ = check_kind(kind)
    tz_info = zone(tz)
    first_day, last_day = _as_date(from_date), _as_date(to_date)
    if last_day < first_day:
        raise TimeInputError(f"period range ends ({last_day}) before it starts ({first_day})")
    result: list[CalendarPeriod] = []
    first = _first_day(kind_, first_day)
    while first <= last_day:
        period = _period_from(kind_, first, tz_info, tz)
        if period.end_ns > period.start_ns:
            result.append(period)
        first = _next_first_day(kind_, first)
    return result


def period_of(t_ns: int, kind: PeriodKind | str, tz: str) -> CalendarPeriod:
    """The one period of `kind` in zone `tz` that contains the instant `t_ns`."""
    kind_ = check_kind(kind)
    tz_info = zone(tz)
    # Zone offsets are whole seconds, so every period boundary is too, and flooring t to the
    # second never moves it across one.
    local = datetime.fromtimestamp(t_ns // SECOND_NS, tz_info)
    return _period_from(kind_, _first_day(kind_, local.date()), tz_info, tz)


def _offset_text(t_ns: int, tz: ZoneInfo) -> str:
    offset = datetime.fromtimestamp(t_ns // SECOND_NS, tz).utcoffset()
    assert offset is not None  # a ZoneInfo always knows its offset
    total = int(offset.total_seconds())
    sign = "-" if total < 0 else "+"
    hours, rest = divmod(abs(total), 3600)
    minutes, seconds = divmod(rest, 60)
    text = f"UTC{sign}{hours:02d}:{minutes:02d}"
    return text + (f":{seconds:02d}" if seconds else "")


def period_windows(period: CalendarPeriod, size_ns: int) -> range:
    """The starts of the windows of `size_ns` that exactly tile `period`, oldest first.

    Guarantees: the windows `[s, s + size)` for the returned starts are contiguous, the first
    starts at the period's start and the last ends at its end. When the start or end is not a
    multiple of the size since the epoch (1h windows in Asia/Kolkata, UTC+05:30; 1d windows in
    any zone away from UTC+0 at that boundary), raises CalendarError naming the zone, the
    boundary and the window size.
    """
    if size_ns <= 0:
        raise ValueError(f"window size must be positive, got {size_ns} ns")
    tz_info = zone(period.tz)
    for name, boundary in (("start", period.start_ns), ("end", period.end_ns)):
        if boundary % size_ns:
            raise CalendarError(
                f"{format_duration(size_ns)} windows cannot tile {period.kind} {period.label} "
                f"in {period.tz}: its {name} {format_rfc3339(boundary)} (local midnight, "
                f"{_offset_text(boundary, tz_info)}) is not a multiple of "
                f"{format_duration(size_ns)} since the epoch; choose a window size that "
                "divides the zone's UTC offset"
            )
    return range(period.start_ns, period.end_ns, size_ns)
