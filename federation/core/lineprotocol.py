"""InfluxDB 1.x line protocol: `parse` a write body into points, `serialize` points back.

    measurement[,tag=value...] field=value[,field=value...] [timestamp]

Escaping follows InfluxDB 1.x: in the measurement `\\,` and `\\ `; in tag keys, tag values and
field keys `\\,`, `\\=` and `\\ `; a backslash before any other character is kept as a literal
backslash (both characters stay). String field values are double-quoted with `\\"` and `\\\\`
unescaped (any other backslash is literal) and may span lines. Field types: float (`1.5`, `1e3`,
`-2`), integer (`12i`), boolean (`t T true True TRUE f F false False FALSE`) and string.

InfluxDB 1.x cannot write a name (measurement, tag key or value, field key) that ends with a
backslash, that has an odd run of backslashes before an escaped character, that contains a line
break, or a measurement that starts with `#` or whitespace: `serialize` refuses those with
`InvalidInput` instead of writing a line InfluxDB would read differently.

Errors name the 1-based line and column (counted in characters) and never quote a value.
"""

from __future__ import annotations

import math
import re
import time
from collections.abc import Iterable
from math import isfinite
from typing import NamedTuple

from federation.core.durations import NS_PER_UNIT
from federation.core.points import FieldValue, Point
from federation.errors import InvalidInput, LineProtocolError

__all__ = [
    "BOOLEANS",
    "INT64_MAX",
    "INT64_MIN",
    "PRECISIONS",
    "TIME_MAX",
    "TIME_MIN",
    "parse",
    "serialize",
]

#: Nanoseconds per unit of every precision InfluxDB 1.x's `/write` accepts (`""` means ns).
PRECISIONS: dict[str, int] = {
    "": 1,
    **{unit: NS_PER_UNIT[unit] for unit in ("n", "ns", "u", "ms", "s", "m", "h")},
}

#: The range of an integer field (`12i`).
INT64_MIN = -(2**63)
INT64_MAX = 2**63 - 1
#: The range of a timestamp: InfluxDB reserves the two extreme int64 values, so two narrower.
TIME_MIN = INT64_MIN + 2
TIME_MAX = INT64_MAX - 1

#: Every spelling of a boolean field value, and what it means.
BOOLEANS: dict[str, bool] = {
    "t": True, "T": True, "true": True, "True": True, "TRUE": True,
    "f": False, "F": False, "false": False, "False": False, "FALSE": False,
}  # fmt: skip
# ASCII only: Python's int() and float() also accept `_`, `+`, unicode digits, nan and inf.
_INT_RE = re.compile(r"-?[0-9]+")
_FLOAT_RE = re.compile(r"-?(?:[0-9]+\.?[0-9]*|\.[0-9]+)(?:[eE][-+]?[0-9]+)?")

_MEASUREMENT_ESC = frozenset(", ")
_KEY_ESC = frozenset(",= ")
_MEASUREMENT_TABLE = str.maketrans({",": "\\,", " ": "\\ "})
_KEY_TABLE = str.maketrans({",": "\\,", "=": "\\=", " ": "\\ "})
_STRING_TABLE = str.maketrans({"\\": "\\\\", '"': '\\"'})
_STRING_ESC = frozenset('"\\')

# Escaped separators become private-use placeholders so that plain str.split finds the real ones.
_PAIR = re.compile(r"\\(.)", re.DOTALL)
_PLACEHOLDERS = re.compile("[\ue000-\ue002]")
_HIDDEN = {",": "\ue000", " ": "\ue001", "=": "\ue002"}
_RESTORE_KEY = str.maketrans({"\ue000": ",", "\ue001": " ", "\ue002": "="})
_RESTORE_MEASUREMENT = str.maketrans({"\ue000": ",", "\ue001": " ", "\ue002": "\\="})


class _Bail(Exception):
    """The fast path met something it does not handle; the exact path decides."""


def parse(
    body: bytes | str, precision: str = "ns", default_time_ns: int | None = None
) -> list[Point]:
    """Parse a whole write body into points, in order; all of it or nothing.

    Blank lines and `#` comment lines are skipped and CRLF line ends accepted. A point without a
    timestamp gets `default_time_ns`, or the time of this call (one value for the whole body,
    as InfluxDB does). A repeated field keeps its last value, as InfluxDB does; a repeated tag
    key is refused. Raises `LineProtocolError` (1-based line and column, no value quoted) on
    the first malformed line, and `InvalidInput` for a precision InfluxDB 1.x does not accept.
    """
    multiplier = _multiplier(precision)
    text = _decode(body) if isinstance(body, bytes | bytearray) else body
    now = time.time_ns() if default_time_ns is None else default_time_ns
    points: list[Point] = []
    append = points.append
    pos = 0
    line_no = 1
    size = len(text)
    while pos < size:
        newline = text.find("\n", pos)
        if newline < 0:
            newline = size
        line = text[pos:newline]
        if line and line[-1] == "\r":
            line = line[:-1]
        if not line:
            pos = newline + 1
            line_no += 1
            continue
        if '"' not in line and line[0] not in " \t#":
            try:
                if "\\" in line:
                    append(_parse_escaped(line, multiplier, now))
                else:
                    append(_parse_fast(line, multiplier, now))
            except _Bail:
                pass
            else:
                pos = newline + 1
                line_no += 1
                continue
        end, point = _Exact(text, pos, line_no, multiplier, now).parse()
        if point is not None:
            append(point)
        line_no += text.count("\n", pos, end) + 1
        pos = end + 1
    return points


def serialize(points: Iterable[Point], precision: str = "ns") -> bytes:
    """Write points as UTF-8 line protocol, one line per point, each ending in a newline.

    Deterministic: tags and fields sorted by key; floats written with `repr`, so they parse
    back to the same float64 bit pattern; integers with `i`; booleans as `true`/`false`.
    `parse(serialize(points, p), p) == points` for every point it accepts. Raises
    `InvalidInput` (naming the point's index and the key, never a value) for a point InfluxDB
    could not store or read back: no fields, a NaN/infinite float, an integer outside int64, a
    timestamp not a whole number of `precision` units or out of range, a name it cannot escape.
    """
    multiplier = _multiplier(precision)
    out: list[str] = []
    # Points of one write share most names: each measurement, (tag key, value) and field key
    # is checked and escaped once.
    names = _Names({}, {}, {})
    for index, point in enumerate(points):
        out.append(_serialize_point(index, point, multiplier, names))
    return "".join(out).encode("utf-8")


def _multiplier(precision: str) -> int:
    multiplier = PRECISIONS.get(precision)
    if multiplier is None:
        raise InvalidInput(f"invalid precision {precision!r} (use n, ns, u, ms, s, m or h)")
    return multiplier


def _decode(body: bytes | bytearray) -> str:
    try:
        return bytes(body).decode("utf-8")
    except UnicodeDecodeError as exc:
        raw = bytes(body)
        line_start = raw.rfind(b"\n", 0, exc.start) + 1
        prefix = raw[line_start : exc.start].decode("utf-8", errors="replace")
        line = raw.count(b"\n", 0, exc.start) + 1
        raise LineProtocolError(line, len(prefix) + 1, "invalid UTF-8") from None


def _parse_escaped(line: str, multiplier: int, now: int) -> Point:
    """A line with escapes but no quotes: hide escaped separators, then take the fast path."""
    if _PLACEHOLDERS.search(line) or line[-1] == "\\":
        raise _Bail
    return _parse_fast(_PAIR.sub(_hide, line), multiplier, now, escaped=True)


def _hide(match: re.Match[str]) -> str:
    return _HIDDEN.get(match.group(1)) or match.group(0)


def _parse_fast(line: str, multiplier: int, now: int, escaped: bool = False) -> Point:
    """A line without quotes or odd spacing; raises _Bail for anything else.

    With `escaped`, escaped separators were replaced by placeholders that this restores.
    """
    parts = line.split(" ")
    if len(parts) == 2:
        key, field_part = parts
        stamp = None
    elif len(parts) == 3:
        key, field_part, stamp = parts
    else:
        raise _Bail
    names = key.split(",")
    measurement = names[0]
    if not measurement:
        raise _Bail
    if escaped:
        measurement = measurement.translate(_RESTORE_MEASUREMENT)
    tags: dict[str, str] = {}
    for item in names[1:]:
        tag_key, _, tag_value = item.partition("=")
        if not tag_key or not tag_value or "=" in tag_value:
            raise _Bail
        if escaped:
            tag_key = tag_key.translate(_RESTORE_KEY)
            tag_value = tag_value.translate(_RESTORE_KEY)
        if tag_key in tags or tag_key == "time":
            raise _Bail
        tags[tag_key] = tag_value
    fields: dict[str, FieldValue] = {}
    for item in field_part.split(","):
        field_key, _, raw = item.partition("=")
        if not field_key or not raw:
            raise _Bail
        if escaped:
            field_key = field_key.translate(_RESTORE_KEY)
        if field_key == "time":
            raise _Bail
        value = _value(raw)
        if value is None:
            raise _Bail
        fields[field_key] = value
    if stamp is None:
        return Point(measurement, tags, fields, now)
    if not _INT_RE.fullmatch(stamp):
        raise _Bail
    time_ns = int(stamp) * multiplier
    if not TIME_MIN <= time_ns <= TIME_MAX:
        raise _Bail
    return Point(measurement, tags, fields, time_ns)


def _value(raw: str) -> FieldValue | None:
    """A non-string field value, or None when it is not valid (the caller says why)."""
    last = raw[-1]
    if last == "i":
        digits = raw[:-1]
        if _INT_RE.fullmatch(digits):
            number = int(digits)
            if INT64_MIN <= number <= INT64_MAX:
                return number
        return None
    boolean = BOOLEANS.get(raw)
    if boolean is not None:
        return boolean
    if _FLOAT_RE.fullmatch(raw):
        result = float(raw)
        if math.isfinite(result):
            return result
    return None


class _Exact:
    """Character-by-character parse of one logical line, with precise error positions.

    Works on absolute offsets into the whole body because a string field may span lines.
    """

    def __init__(self, text: str, start: int, line_no: int, multiplier: int, now: int) -> None:
        self.text = text
        self.start = start
        self.line_no = line_no
        self.multiplier = multiplier
        self.now = now
        self.stop = start

    def fail(self, at: int, message: str) -> LineProtocolError:
        text = self.text
        line = self.line_no + text.count("\n", self.start, at)
        column = at - (text.rfind("\n", 0, at) + 1) + 1
        return LineProtocolError(line, column, message)

    def _extent(self, i: int) -> int:
        """Offset of the newline (or end of body) ending the logical line whose text starts at i."""
        text = self.text
        size = len(text)
        in_fields = False
        after_equals = False
        while i < size:
            char = text[i]
            if char == "\\":
                i += 2
                after_equals = False
                continue
            if char == "\n":
                return i
            if char == " ":
                in_fields = True
            elif in_fields and char == '"' and after_equals:
                closing = self._string_end(i + 1)
                if closing < 0:
                    return size
                i = closing + 1
                after_equals = False
                continue
            after_equals = in_fields and char == "="
            i += 1
        return min(i, size)

    def _string_end(self, i: int) -> int:
        """Offset of the quote closing a string opened just before `i`, or -1."""
        text = self.text
        size = len(text)
        while i < size:
            char = text[i]
            if char == "\\":
                i += 2
            elif char == '"':
                return i
            else:
                i += 1
        return -1

    def parse(self) -> tuple[int, Point | None]:
        """(offset of the line's end, the point or None for a blank or comment line)."""
        text = self.text
        i = self.start
        while i < len(text) and text[i] in " \t\r":
            i += 1
        if i >= len(text) or text[i] in "#\n":
            # A comment is one physical line: quotes in it open no string.
            newline = text.find("\n", i)
            return (len(text) if newline < 0 else newline), None
        end = self._extent(i)
        stop = end
        # A CR right before the newline belongs to the line break, as does trailing blank space.
        while stop > i and text[stop - 1] in " \t\r":
            stop -= 1
        self.stop = stop
        measurement, i = self._name(i, ", ", _MEASUREMENT_ESC, "measurement")
        if not measurement:
            raise self.fail(i, "missing measurement")
        tags: dict[str, str] = {}
        while i < stop and text[i] == ",":
            i += 1
            key_at = i
            key, i = self._key(i, "tag key")
            tag_value, i = self._name(i, ",= ", _KEY_ESC, "tag value")
            if not tag_value:
                raise self.fail(i, f"missing tag value for tag key {key!r}")
            if i < stop and text[i] == "=":
                raise self.fail(i, f"unescaped '=' in the value of tag key {key!r}")
            if key in tags:
                raise self.fail(key_at, f"duplicate tag key {key!r}")
            tags[key] = tag_value
        if i >= stop:
            raise self.fail(i, "missing fields")
        while i < stop and text[i] == " ":
            i += 1
        if i >= stop:
            raise self.fail(i, "missing fields")
        fields: dict[str, FieldValue] = {}
        while True:
            key, i = self._key(i, "field key")
            value: FieldValue
            if i < stop and text[i] == '"':
                value, i = self._string(i, key)
            else:
                value_at = i
                while i < stop and text[i] not in ", ":
                    i += 1
                if i == value_at:
                    raise self.fail(i, f"missing value for field {key!r}")
                value = self._typed(text[value_at:i], value_at, key)
            fields[key] = value
            if i < stop and text[i] == ",":
                i += 1
                continue
            break
        if i >= stop:
            return end, Point(measurement, tags, fields, self.now)
        while i < stop and text[i] in " \t":
            i += 1
        stamp_at = i
        while i < stop and text[i] not in " \t":
            i += 1
        if i < stop:
            while text[i] in " \t":
                i += 1
            raise self.fail(i, "unexpected text after the timestamp")
        stamp = text[stamp_at:i]
        if not _INT_RE.fullmatch(stamp):
            raise self.fail(stamp_at, "invalid timestamp")
        time_ns = int(stamp) * self.multiplier
        if not TIME_MIN <= time_ns <= TIME_MAX:
            raise self.fail(stamp_at, "timestamp out of range")
        return end, Point(measurement, tags, fields, time_ns)

    def _key(self, i: int, what: str) -> tuple[str, int]:
        """A tag or field key starting at `i`, and the offset after the `=` that must follow it."""
        key, end = self._name(i, ",= ", _KEY_ESC, what)
        if not key:
            raise self.fail(end, f"missing {what}")
        if end >= self.stop or self.text[end] != "=":
            raise self.fail(end, f"missing '=' after {what} {key!r}")
        if key == "time":
            raise self.fail(i, f"{what} 'time' is not allowed")
        return key, end + 1

    def _name(self, i: int, stops: str, escapable: frozenset[str], what: str) -> tuple[str, int]:
        """Scan a measurement or key up to an unescaped stop character; unescape it."""
        text = self.text
        stop = self.stop
        begin = i
        while i < stop:
            char = text[i]
            if char == "\\":
                if i + 1 >= stop or text[i + 1] in "\r\n":
                    raise self.fail(i, f"{what} ends with a backslash")
                i += 2
                continue
            if char in stops or char == "\n":
                break
            i += 1
        if i < stop and text[i] == "\n":
            raise self.fail(i, f"line break in {what}")
        return _unescape(text[begin:i], escapable), i

    def _string(self, i: int, key: str) -> tuple[str, int]:
        """A double-quoted string value starting at the quote at `i`."""
        closing = self._string_end(i + 1)
        if closing < 0 or closing >= self.stop:
            raise self.fail(i, f"unterminated string value for field {key!r}")
        after = closing + 1
        if after < self.stop and self.text[after] not in ", ":
            raise self.fail(after, f"unexpected character after the string value of field {key!r}")
        return _unescape(self.text[i + 1 : closing], _STRING_ESC), after

    def _typed(self, raw: str, at: int, key: str) -> FieldValue:
        value = _value(raw)
        if value is not None:
            return value
        if raw[-1] == "i" and _INT_RE.fullmatch(raw[:-1]):
            raise self.fail(at, f"integer value of field {key!r} is out of the int64 range")
        if _FLOAT_RE.fullmatch(raw):
            raise self.fail(at, f"float value of field {key!r} is out of range")
        raise self.fail(at, f"invalid value for field {key!r}")


def _unescape(raw: str, escapable: frozenset[str]) -> str:
    """`raw` with each backslash before an escapable character dropped; any other backslash
    stays, with the character after it. Every backslash in `raw` is followed by a character."""
    if "\\" not in raw:
        return raw
    out: list[str] = []
    j = 0
    while j < len(raw):
        char = raw[j]
        if char == "\\":
            following = raw[j + 1]
            out.append(following if following in escapable else char + following)
            j += 2
        else:
            out.append(char)
            j += 1
    return "".join(out)


class _Names(NamedTuple):
    """What one `serialize` call checked and escaped already."""

    measurements: dict[str, str]
    pairs: dict[tuple[str, str], str]  # (tag key, value) -> ",key=value"
    fields: dict[str, str]  # field key -> "key="


def _serialize_point(index: int, point: Point, multiplier: int, names: _Names) -> str:
    measurement = names.measurements.get(point.measurement)
    if measurement is None:
        measurement = names.measurements[point.measurement] = _measurement(index, point)
    parts = [measurement]
    pairs = names.pairs
    for key in sorted(point.tags):
        value = point.tags[key]
        pair = pairs.get((key, value))
        if pair is None:
            if not key or not value or key == "time":
                raise InvalidInput(f"point {index}: tag {key!r}: empty key or value, or 'time'")
            _check_name(index, key, _KEY_ESC, "tag key")
            _check_name(index, value, _KEY_ESC, f"value of tag {key!r}")
            pair = pairs[(key, value)] = f",{_escape_key(key)}={_escape_key(value)}"
        parts.append(pair)
    fields = point.fields
    if not fields:
        raise InvalidInput(f"point {index}: no fields")
    separator = " "
    field_names = names.fields
    for key in sorted(fields):
        name = field_names.get(key)
        if name is None:
            if not key or key == "time":
                raise InvalidInput(f"point {index}: field key {key!r} is empty or 'time'")
            _check_name(index, key, _KEY_ESC, "field key")
            name = field_names[key] = _escape_key(key) + "="
        field = fields[key]
        # The common cases inline; `_format_value` decides everything else.
        if type(field) is float and isfinite(field):
            text = repr(field)
        elif type(field) is str and '"' not in field and "\\" not in field:
            text = '"' + field + '"'
        else:
            text = _format_value(index, key, field)
        parts.append(separator + name + text)
        separator = ","
    time_ns = point.time_ns
    if not TIME_MIN <= time_ns <= TIME_MAX:
        raise InvalidInput(f"point {index}: timestamp out of range")
    units, remainder = divmod(time_ns, multiplier)
    if remainder:
        raise InvalidInput(f"point {index}: timestamp is not a whole number of precision units")
    parts.append(f" {units}\n")
    return "".join(parts)


def _measurement(index: int, point: Point) -> str:
    """The measurement of `point` as line protocol writes it."""
    measurement = point.measurement
    if not measurement or measurement[0] in "# \t":
        raise InvalidInput(f"point {index}: measurement is empty or starts with '#' or a blank")
    _check_name(index, measurement, _MEASUREMENT_ESC, "measurement")
    escaped = "," in measurement or " " in measurement
    return measurement.translate(_MEASUREMENT_TABLE) if escaped else measurement


def _format_value(index: int, key: str, value: FieldValue) -> str:
    # bool before int: bool is a subclass of int, and True must not be written as 1i.
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        if not INT64_MIN <= value <= INT64_MAX:
            raise InvalidInput(f"point {index}: field {key!r}: integer outside int64")
        return f"{value}i"
    if isinstance(value, float):
        if not math.isfinite(value):
            raise InvalidInput(f"point {index}: field {key!r}: NaN or infinite float")
        return repr(value)
    if isinstance(value, str):
        # `translate` looks every character up; most strings (histograms) need no escape.
        if '"' in value or "\\" in value:
            value = value.translate(_STRING_TABLE)
        return '"' + value + '"'
    raise InvalidInput(f"point {index}: field {key!r}: unsupported type {type(value).__name__}")


def _escape_key(name: str) -> str:
    """A tag or field key or tag value as line protocol writes it."""
    if "," in name or "=" in name or " " in name:
        return name.translate(_KEY_TABLE)
    return name


def _check_name(index: int, name: str, escapable: frozenset[str], what: str) -> None:
    """Refuse a name InfluxDB's escaping cannot carry (see the module docstring)."""
    if "\n" in name or "\r" in name:
        raise InvalidInput(f"point {index}: {what} contains a line break")
    if "\\" not in name:
        return
    run = 0
    for char in name:
        if char == "\\":
            run += 1
            continue
        # An odd run of backslashes before an escaped character swallows its escape.
        if run % 2 and char in escapable:
            raise InvalidInput(f"point {index}: {what} has a backslash InfluxDB cannot escape")
        run = 0
    if run % 2:
        raise InvalidInput(f"point {index}: {what} ends with a backslash InfluxDB cannot escape")
