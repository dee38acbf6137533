"""Fast paths for the gateway: line protocol of the usual shape, and `sketch` totals.

The gateway checks every point of every batch, at the rate DCs ship after each hour. Two
general-purpose routines dominate that cost: `federation.lineprotocol.parse` (whose exact path
walks quoted strings character by character) and `Sketch.decode` (vectorised for big
histograms, so each call carries numpy overhead). The functions here accept only the plain,
common forms and return None for anything else; the caller then falls back to the general
routine, which decides and explains. So these may be narrower than the general routines, never
broader: every body `parse_lines` accepts, `lineprotocol.parse` reads to the same points, and
every text `sketch_total` certifies, `Sketch.decode` accepts with the same count.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable
from dataclasses import dataclass

from federation.lineprotocol import PRECISIONS
from federation.points import FieldValue, Point

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

_ALPHABET = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_"
_DIGIT = {char: value for value, char in enumerate(_ALPHABET)}
_UINT = re.compile(r"0|[1-9][0-9]{0,17}")
_SINT = re.compile(r"-?(?:0|[1-9][0-9]{0,17})")
_MAX_TOKEN_DIGITS = 12
_MAX_TEXT = 1 << 20


def _safe_index_range(alpha: float) -> tuple[int, int]:
    """Bucket indexes a finite positive float64 certainly reaches for this alpha.

    Narrower than what the decoder allows, so a sketch inside it is never refused there.
    """
    log_gamma = math.log((1.0 + alpha) / (1.0 - alpha))
    low = math.ceil(math.log(5e-324) / log_gamma) + 1
    high = math.floor(math.log(1.7976931348623157e308) / log_gamma) - 1
    return low, high


_MORE = _ALPHABET[32:]
_LAST = _ALPHABET[:32]
_TOKEN = re.compile(f"[{re.escape(_MORE)}]{{0,{_MAX_TOKEN_DIGITS - 1}}}[{_LAST}]")


def _token_table() -> dict[str, int]:
    # Tokens of one or two digits are looked up; a two-digit token ending in a zero digit is
    # not canonical and so is absent (the lookup fails and the caller gives up).
    table = {char: value for value, char in enumerate(_LAST)}
    for low, more in enumerate(_MORE):
        for high, last in enumerate(_LAST):
            if high:
                table[more + last] = low | high << 5
    return table


_TOKENS = _token_table()
# Per token: the values it counts (0 for a gap), the buckets it spans, and its kind.
_COUNT = {k: 0 if v & 1 else (v >> 1) + 1 for k, v in _TOKENS.items()}
_SPAN = {k: (v >> 1) + 1 if v & 1 else 1 for k, v in _TOKENS.items()}
_KIND = {k: "g" if v & 1 else "b" for k, v in _TOKENS.items()}


def _store_total(value: str, low: int, high: int) -> int | None:
    """Σ bucket counts of one store `<first>,<body>`; None unless plainly canonical.

    Only tokens of one or two digits (counts and gaps up to 512) are handled here; the maps
    run over the tokens without a Python-level loop.
    """
    first_text, comma, body = value.partition(",")
    if not comma or not body or not _SINT.fullmatch(first_text):
        return None
    index = int(first_text)
    if not low <= index <= high:
        return None
    tokens = _TOKEN.findall(body)
    if sum(map(len, tokens)) != len(body):
        return None
    try:
        kinds = "".join(map(_KIND.__getitem__, tokens))
        total = sum(map(_COUNT.__getitem__, tokens))
        span = sum(map(_SPAN.__getitem__, tokens))
    except KeyError:
        return None
    # A body starts and ends with a bucket and never has two gaps in a row.
    if kinds[0] == "g" or kinds[-1] == "g" or "gg" in kinds or index + span - 1 > high:
        return None
    return total


def sketch_checker(alpha: float) -> Callable[[str], int | None]:
    """A function returning the total count of a canonical v1 sketch of this alpha, or None.

    None means "not certified here": the caller asks `Sketch.decode` for the verdict.
    """
    alpha_text = repr(float(alpha))
    low, high = _safe_index_range(float(alpha))

    def total(text: str) -> int | None:
        if len(text) > _MAX_TEXT:
            return None
        parts = text.split(":")
        if len(parts) < 3 or parts[0] != "v1" or parts[1] != "a=" + alpha_text:
            return None
        n_part = parts[2]
        if not n_part.startswith("n=") or not _UINT.fullmatch(n_part[2:]):
            return None
        n = int(n_part[2:])
        counted = 0
        order = "zpm"
        position = 0
        for part in parts[3:]:
            key, eq, value = part.partition("=")
            if not eq or len(key) != 1 or key not in order[position:]:
                return None
            position = order.index(key) + 1
            if key == "z":
                if not _UINT.fullmatch(value) or value == "0":
                    return None
                counted += int(value)
                continue
            store = _store_total(value, low, high)
            if store is None:
                return None
            counted += store
        return n if counted == n else None

    return total
