"""Fast paths for the gateway: line protocol of the usual shape, and `sketch` totals.

The gateway checks every point of every batch, at the rate DCs ship after each hour.
`federation.lineprotocol.parse` dominates that cost (its exact path walks quoted strings
character by character), so `parse_lines` accepts only the plain, common form and returns None
for anything else; the caller then falls back to the general parser, which decides and
explains. It may be narrower than the general parser, never broader: every body `parse_lines`
accepts, `lineprotocol.parse` reads to the same points. Sketch totals come from
`federation.sketch.total_count`, the one place that knows the encoding.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable
from dataclasses import dataclass

from federation.errors import SketchDecodeError
from federation.lineprotocol import PRECISIONS
from federation.points import FieldValue, Point
from federation.sketch import total_count

_NAME = r'[^\s,="\\]+'
_STRING = r'"[^"\\]*"'
_BOOL = r"(?:t|T|true|True|TRUE|f|F|false|False|FALSE)"
_NUMBER = r"-?(?:[0-9]+\.?[0-9]*|\.[0-9]+)(?:[eE][-+]?[0-9]+)?"
# A value is a string, an integer, a boolean or a float, each followed by `,`, ` ` or the end,
# so the line pattern alone proves every value well-formed.
_VALUE = rf"(?:{_STRING}|-?[0-9]+i|{_BOOL}|{_NUMBER})(?=[, ]|$)"
_LINE = re.compile(
    rf'([^\s,="\\#][^\s,="\\]*)((?:,{_NAME}={_NAME})*) ({_NAME}={_VALUE}(?:,{_NAME}={_VALUE})*)'
    r"(?: (-?[0-9]+))?"
)
_FIELD = re.compile(rf'({_NAME})=("[^"\\]*"|[^,]+)')
_BOOLS: dict[str, bool] = {
    "t": True, "T": True, "true": True, "True": True, "TRUE": True,
    "f": False, "F": False, "false": False, "False": False, "FALSE": False,
}  # fmt: skip
_INT64_MIN = -(2**63)
_INT64_MAX = 2**63 - 1
_TIME_MIN = _INT64_MIN + 2
_TIME_MAX = _INT64_MAX - 1
_INFINITIES = (math.inf, -math.inf)


@dataclass(frozen=True, slots=True)
class Line:
    """A parsed point and the 1-based line of the body it came from."""

    point: Point
    line: int


def parse_lines(body: str, precision: str, default_time_ns: int) -> list[Line] | None:
    """Points of a body whose every line has the plain shape; None when any line does not.

    Plain: no backslash, no comment or indented line, no string spanning lines, no repeated
    tag key, no `time` key, valid typed values, timestamp in range. Blank lines are skipped and
    a CR before the newline is dropped, as `lineprotocol.parse` does.
    """
    multiplier = PRECISIONS.get(precision)
    if multiplier is None or "\\" in body:
        return None
    result: list[Line] = []
    append = result.append
    match_line = _LINE.fullmatch
    fields_of = _FIELD.findall
    for number, text in enumerate(body.split("\n"), start=1):
        if text and text[-1] == "\r":
            text = text[:-1]
        if not text:
            continue
        m = match_line(text)
        if m is None:
            return None
        measurement, tag_part, field_part, stamp = m.groups()
        tags: dict[str, str] = {}
        if tag_part:
            for item in tag_part[1:].split(","):
                key, _, value = item.partition("=")
                if key in tags or key == "time":
                    return None
                tags[key] = value
        fields: dict[str, FieldValue] = {}
        for key, raw in fields_of(field_part):
            if key == "time":
                return None
            # The line pattern has already proved each value well-formed; only ranges remain.
            first = raw[0]
            if first == '"':
                fields[key] = raw[1:-1]
            elif raw[-1] == "i":
                number = int(raw[:-1])
                if not _INT64_MIN <= number <= _INT64_MAX:
                    return None
                fields[key] = number
            elif raw in _BOOLS:
                fields[key] = _BOOLS[raw]
            else:
                number_f = float(raw)
                if number_f in _INFINITIES:
                    return None
                fields[key] = number_f
        if stamp is None:
            time_ns = default_time_ns
        else:
            time_ns = int(stamp) * multiplier
            if not _TIME_MIN <= time_ns <= _TIME_MAX:
                return None
        append(Line(Point(measurement, tags, fields, time_ns), number))
    return result


# --- sketches ---------------------------------------------------------------------------------


def sketch_checker(alpha: float) -> Callable[[str], int | None]:
    """A function returning the total count of a `sketch` of this accuracy, or None when it
    does not decode (the caller then asks `Sketch.decode` for the verdict).

    The encoding is known only to `federation.sketch`: this defers to its `total_count`, which
    checks a string as completely as `Sketch.decode` without building the histogram.
    """
    expected = float(alpha)

    def total(text: str) -> int | None:
        try:
            return total_count(text, expected)
        except SketchDecodeError:
            return None

    return total
