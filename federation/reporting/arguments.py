"""Report arguments as people write them, for the CLI and the reports API alike: a
threshold (`250ms`, `30s`), what `worst` ranks by (`p99`, `count_over:30s`), a `--last` span."""

from __future__ import annotations

import re
from dataclasses import dataclass

from federation.core.durations import NS_PER_UNIT, parse_duration
from federation.errors import InvalidInput

# The time units a threshold may be written in (sizes from the one table of units).
_UNIT_NS = {unit: float(NS_PER_UNIT[unit]) for unit in ("ns", "us", "µs", "u", "ms", "s", "m", "h")}


_THRESHOLD = re.compile(r"^\s*([0-9]+(?:\.[0-9]+)?)\s*(ns|us|µs|u|ms|s|m|h)?\s*$")


def parse_threshold(text: str, unit: str = "ms") -> float:
    """A threshold in the aggregation's `unit`: `30s` -> 30000.0 for `ms`; a bare number is
    already in `unit`. InvalidInput for anything else, or a duration when `unit` is not a time
    unit."""
    match = _THRESHOLD.match(text)
    if match is None:
        raise InvalidInput(
            f"threshold {text!r}: write a number in {unit} or a duration such as 250ms or 30s"
        )
    number, suffix = float(match.group(1)), match.group(2)
    if suffix is None or suffix == unit:
        return number
    if unit not in _UNIT_NS:
        raise InvalidInput(f"threshold {text!r}: the aggregation's unit {unit!r} is not a time")
    return number * _UNIT_NS[suffix] / _UNIT_NS[unit]


@dataclass(frozen=True)
class Metric:
    """What `worst` ranks by: a percentile (`p99`) or the count of events over a threshold."""

    text: str
    percentile: float | None = None
    threshold: float | None = None


def parse_metric(text: str, unit: str = "ms") -> Metric:
    """`p99`, `p99.9`, `p99_9` or `count_over:<threshold>`; InvalidInput otherwise."""
    if text.startswith("count_over:"):
        return Metric(text, threshold=parse_threshold(text.removeprefix("count_over:"), unit))
    match = re.fullmatch(r"p([0-9]+(?:[._][0-9]+)?)", text)
    if match is not None:
        p = float(match.group(1).replace("_", "."))
        if 0 < p <= 100:
            return Metric(text, percentile=p)
    raise InvalidInput(f"metric {text!r}: use p50, p95, p99, p99.9 or count_over:<threshold>")


def parse_last(text: str) -> int:
    """A `--last` duration (`24h`, `7d`) in nanoseconds; InvalidInput otherwise."""
    try:
        return parse_duration(text)
    except ValueError as exc:
        raise InvalidInput(f"--last: {exc}") from None
