"""Durations as InfluxQL and TICKscript write them: an integer and one unit (`90m`, `1h`, `7d`).

Durations are held as whole nanoseconds, the unit InfluxDB timestamps use, so that window math
is exact integer arithmetic.
"""

from __future__ import annotations

import re

# The one table of time units, in every spelling some reader accepts: InfluxQL and TICKscript
# durations, line-protocol precisions (`n`), Go's durations (`us`, `µs`). Each reader names the
# spellings it accepts; the sizes are written here alone.
NS_PER_UNIT: dict[str, int] = {
    "n": 1,
    "ns": 1,
    "u": 1_000,
    "us": 1_000,
    "µ": 1_000,
    "µs": 1_000,
    "ms": 1_000_000,
    "s": 1_000_000_000,
    "m": 60 * 1_000_000_000,
    "h": 3600 * 1_000_000_000,
    "d": 86400 * 1_000_000_000,
    "w": 7 * 86400 * 1_000_000_000,
}
SECOND_NS = NS_PER_UNIT["s"]
HOUR_NS = NS_PER_UNIT["h"]
DAY_NS = NS_PER_UNIT["d"]

_DURATION = re.compile(r"^([0-9]+)(ns|u|µ|ms|s|m|h|d|w)$")
# Largest unit first, so that formatting picks the most compact exact form; days rather than
# weeks, which read more naturally in retention policies (28d, not 4w).
_FORMAT_ORDER = ("d", "h", "m", "s", "ms", "u", "ns")


def parse_duration(text: str) -> int:
    """Parse `<integer><unit>` into nanoseconds; raise ValueError naming the accepted forms.

    `0` alone is accepted (InfluxDB writes `INF` retention as 0). Compound (`1h30m`) and
    fractional (`1.5h`) forms are refused, as TICKscript refuses them.
    """
    if text == "0":
        return 0
    match = _DURATION.match(text.strip())
    if not match:
        raise ValueError(
            f"{text!r} is not a duration: write an integer and one unit of "
            "ns, u, ms, s, m, h, d, w (e.g. 90m, 1h, 400d)"
        )
    return int(match.group(1)) * NS_PER_UNIT[match.group(2)]


def format_duration(ns: int) -> str:
    """Format nanoseconds in the largest single unit that represents them exactly (`90m`)."""
    if ns < 0:
        raise ValueError("durations are never negative")
    if ns == 0:
        return "0s"
    for unit in _FORMAT_ORDER:
        size = NS_PER_UNIT[unit]
        if ns % size == 0:
            return f"{ns // size}{unit}"
    raise AssertionError("unreachable: ns is a multiple of 1")


def format_influx_duration(ns: int) -> str:
    """Format for InfluxQL retention statements, which accept `w d h m s` (and `INF` for 0)."""
    if ns == 0:
        return "INF"
    for unit in ("w", "d", "h", "m", "s"):
        size = NS_PER_UNIT[unit]
        if ns % size == 0:
            return f"{ns // size}{unit}"
    raise ValueError("retention durations must be whole seconds")
