"""Fast paths for the gateway: line protocol of the usual shape, and `sketch` totals.

The gateway checks every point of every batch, at the rate DCs ship after each hour.
`federation.core.lineprotocol.parse` dominates that cost (its exact path walks quoted strings
character by character), so the readers here accept only the plain, common form and return
None for anything else; the caller then falls back to the general parser, which decides and
explains. They may be narrower than the general parser, never broader: every body they accept,
`lineprotocol.parse` reads to the same points.

- `parse_lines` reads a body line by line into points. Within the plain form, the lines of a
  batch nearly all share one shape (measurement, keys, value types): a pattern compiled for
  that shape reads such a line in one match, and any line it does not match is read by the
  general line pattern.
- `read_columns` reads the lines of a body's main shape in one pass over the whole body, into a
  column of texts per key, without building a point per line (the gateway's checks of a shape
  are the same for each of its lines, and its values are checked a column at a time); the
  body's other lines, such as its manifest, are read whole.

Sketch totals come from `federation.core.sketch.total_count`, the one place that knows the encoding.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable
from dataclasses import dataclass
from operator import itemgetter

from federation.core.lineprotocol import (
    BOOLEANS,
    INT64_MAX,
    INT64_MIN,
    PRECISIONS,
    TIME_MAX,
    TIME_MIN,
)
from federation.core.points import FieldValue, Point
from federation.core.sketch import total_count
from federation.errors import SketchDecodeError

_NAME = r'[^\s,="\\]+'
_STRING = r'"[^"\\]*"'
_BOOL = f"(?:{'|'.join(sorted(BOOLEANS, key=len, reverse=True))})"
_NUMBER = r"-?(?:[0-9]+\.?[0-9]*|\.[0-9]+)(?:[eE][-+]?[0-9]+)?"
# A value is a string, an integer, a boolean or a float, each followed by `,`, ` ` or the end,
# so the line pattern alone proves every value well-formed.
_VALUE = rf"(?:{_STRING}|-?[0-9]+i|{_BOOL}|{_NUMBER})(?=[, ]|$)"
_LINE = re.compile(
    rf'([^\s,="\\#][^\s,="\\]*)((?:,{_NAME}={_NAME})*) ({_NAME}={_VALUE}(?:,{_NAME}={_VALUE})*)'
    r"(?: (-?[0-9]+))?"
)
_FIELD = re.compile(rf'({_NAME})=("[^"\\]*"|[^,]+)')
_INFINITIES = (math.inf, -math.inf)


Shape = tuple[str, tuple[str, ...], tuple[tuple[str, type], ...]]
"""A line's measurement, tag keys and (field key, value type) pairs, in the line's order."""


@dataclass(frozen=True, slots=True)
class Line:
    """A parsed point and the 1-based line of the body it came from.

    `shape` is the point's `Shape` when `parse_lines` read it: one object shared by the lines
    of a shape, so a checker can tell by identity that it has just checked that shape.
    """

    point: Point
    line: int
    shape: Shape | None = None


# A line read up to its timestamp: measurement, tags, fields, the raw timestamp (None when
# absent) and the shape (None when a field key repeats, which no shape pattern expresses).
_Read = tuple[str, dict[str, str], dict[str, FieldValue], str | None, Shape | None]


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
    # The lines of a batch nearly all have the shape of the line before, and the pattern made
    # for a shape reads a line of it in one match; any other line takes the general path.
    reader: _ShapeReader | None = None
    last_stamp, last_time_ns = "", 0
    new_readers = _NEW_READERS_PER_BODY
    for number, text in enumerate(body.split("\n"), start=1):
        if text and text[-1] == "\r":
            text = text[:-1]
        if not text:
            continue
        m = None if reader is None else reader.fullmatch(text)
        if m is not None:
            assert reader is not None
            groups = m.groups()
            # The pattern has proved every value well-formed, and every integer in range.
            fields: dict[str, FieldValue] = {
                key: convert(raw)
                for key, convert, raw in zip(
                    reader.field_keys, reader.convert, groups[reader.tag_count : -1], strict=True
                )
            }
            if reader.floats:
                values = fields.values()
                if math.inf in values or -math.inf in values:
                    return None
            shape: Shape | None = reader.shape
            measurement = reader.measurement
            tags = dict(zip(reader.tag_keys, groups, strict=False))
            stamp = groups[-1]
        else:
            read = _read_line(text)
            if read is None:
                return None
            measurement, tags, fields, stamp, shape = read
            reader = None
            if shape is not None:
                reader = _readers.get(shape)
                if reader is None and new_readers:
                    # Bounded per body: each new shape costs a compiled pattern.
                    new_readers -= 1
                    reader = _new_reader(shape)
                if reader is not None:
                    shape = reader.shape
        if stamp is None:
            time_ns = default_time_ns
        elif stamp != last_stamp:
            read_ns = _time_ns(stamp, multiplier, default_time_ns)
            if read_ns is None:
                return None
            # A batch holds a few windows, so its lines repeat a few timestamps.
            last_stamp, last_time_ns = stamp, read_ns
            time_ns = read_ns
        else:
            time_ns = last_time_ns
        append(Line(Point(measurement, tags, fields, time_ns), number, shape))
    return result


def _read_line(text: str) -> _Read | None:
    """A line of any plain shape, read by the general line pattern; None if it is not plain."""
    m = _LINE.fullmatch(text)
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
    items = _FIELD.findall(field_part)
    for key, raw in items:
        if key == "time":
            return None
        # The line pattern has already proved each value well-formed; only ranges remain.
        if raw[0] == '"':
            fields[key] = raw[1:-1]
        elif raw[-1] == "i":
            integer = int(raw[:-1])
            if not INT64_MIN <= integer <= INT64_MAX:
                return None
            fields[key] = integer
        elif raw in BOOLEANS:
            fields[key] = BOOLEANS[raw]
        else:
            real = float(raw)
            if real in _INFINITIES:
                return None
            fields[key] = real
    shape: Shape | None = None
    if len(fields) == len(items):
        shape = (measurement, tuple(tags), tuple((k, type(v)) for k, v in fields.items()))
    return measurement, tags, fields, stamp, shape


# What a value of each type looks like once its key and type are known: the alternative of
# `_VALUE` for that type, with the quotes or the `i` suffix outside the group.
_TYPED_VALUE: dict[type, str] = {
    str: r'"([^"\\\n]*)"',
    # At most 18 digits: always within int64. Longer integers take the general path.
    int: r"(-?[0-9]{1,18})i",
    bool: rf"({_BOOL})",
    float: rf"({_NUMBER})",
}
# A float the column reader accepts is finite without being converted: at most 200 digits before
# the point and an exponent of at most two digits stay below 1e300.
_FINITE_FLOAT = r"-?(?:[0-9]{1,200}(?:\.[0-9]*)?|\.[0-9]+)(?:[eE][-+]?[0-9]{1,2})?"
_READER_CACHE_LIMIT = 1_000
_NEW_READERS_PER_BODY = 64


_CONVERT: dict[type, Callable[[str], FieldValue]] = {
    str: str,  # the group is the string already: `str` hands the same object back
    int: int,
    bool: BOOLEANS.__getitem__,
    float: float,
}


class _ShapeReader:
    """The pattern for the lines of one shape, and how to turn its groups into a point.

    A line it matches is one the general line pattern reads to the same measurement, keys
    and value types (the pattern spells out that pattern's alternatives for this shape, with
    integers short enough to be in range); the caller still checks that floats are finite.
    """

    __slots__ = (
        "convert", "field_columns", "field_keys", "findall", "floats", "fullmatch", "measurement",
        "shape", "tag_count", "tag_keys",
    )  # fmt: skip

    def __init__(self, shape: Shape) -> None:
        measurement, tag_keys, field_types = shape
        tags = "".join(f",{re.escape(key)}=({_NAME})" for key in tag_keys)
        fields = ",".join(f"{re.escape(key)}={_TYPED_VALUE[kind]}" for key, kind in field_types)
        pattern = re.compile(rf"{re.escape(measurement)}{tags} {fields}(?: (-?[0-9]+))?")
        self.fullmatch = pattern.fullmatch
        # For `read_columns`: a whole line of the shape with finite floats (checked, not kept),
        # or any other line whole, in the last group.
        finite = ",".join(
            f"{re.escape(key)}={_FINITE_FLOAT if kind is float else _TYPED_VALUE[kind]}"
            for key, kind in field_types
        )
        self.findall = re.compile(
            rf"^(?:{re.escape(measurement)}{tags} {finite}(?: (-?[0-9]+))?|(.+))$", re.MULTILINE
        ).findall
        kept = [key for key, kind in field_types if kind is not float]
        self.field_columns = {key: i for i, key in enumerate(kept, start=len(tag_keys))}
        self.shape = shape
        self.measurement = measurement
        self.tag_keys = tag_keys
        self.tag_count = len(tag_keys)
        self.field_keys = tuple(key for key, _ in field_types)
        self.convert = tuple(_CONVERT[kind] for _, kind in field_types)
        self.floats = any(kind is float for _, kind in field_types)


_readers: dict[Shape, _ShapeReader] = {}


@dataclass(frozen=True, slots=True)
class Columns:
    """A body read by `read_columns`: the lines of its main shape, a column per key on demand,
    and the rest whole.

    A column holds one text per line of the shape, in body order: tag values (`tag`), strings
    without their quotes, integers without their `i`, booleans as written (`field`). Floats
    are checked (well-formed and finite by their spelling) but not kept. `times` are the distinct
    timestamps of those lines, in nanoseconds. `sample` is one line of the shape read whole,
    for the checks that depend on the shape alone; `others` are the body's lines of any other
    shape, with their line numbers.
    """

    shape: Shape
    sample: Line
    rows: int
    times: frozenset[int]
    others: list[Line]
    _matches: list[tuple[str, ...]]
    _fields: dict[str, int]

    @property
    def tag_keys(self) -> tuple[str, ...]:
        return self.shape[1]

    def tag(self, key: str) -> tuple[str, ...]:
        """The values of a tag of the shape; ValueError for any other key."""
        return tuple(map(itemgetter(self.shape[1].index(key)), self._matches))

    def field(self, key: str) -> tuple[str, ...]:
        """The texts of a field of the shape that is not a float; KeyError for any other key."""
        return tuple(map(itemgetter(self._fields[key]), self._matches))


def read_columns(body: str, precision: str, default_time_ns: int) -> Columns | None:
    """The body's main shape column by column, or None when it is not all plain (see
    `parse_lines`) or its main shape is not plain in a stricter sense: floats finite by their
    spelling, integers of at most 18 digits, no CR before the newline."""
    multiplier = PRECISIONS.get(precision)
    if multiplier is None or "\\" in body:
        return None
    # A batch is nearly all one shape, and its middle line has it: manifests come first or last.
    start = body.rfind("\n", 0, len(body) // 2) + 1
    end = body.find("\n", start)
    text = body[start:] if end < 0 else body[start:end]
    read = _read_line(text)
    if read is None:
        return None
    measurement, tags, fields, stamp, shape = read
    time_ns = _time_ns(stamp, multiplier, default_time_ns)
    if shape is None or time_ns is None:
        return None
    reader = _readers.get(shape) or _new_reader(shape)
    sample = Line(Point(measurement, tags, fields, time_ns), body.count("\n", 0, start) + 1, shape)
    matches = reader.findall(body)
    others: list[Line] = []
    other = itemgetter(-1)
    if any(map(other, matches)):
        texts = set(map(other, matches))
        found = _read_others(body, texts, multiplier, default_time_ns)
        if found is None:
            return None
        others = found
        matches = [m for m in matches if not m[-1]]
        if not matches:
            return None
    times = set()
    for distinct in set(map(itemgetter(-2), matches)):
        t = _time_ns(distinct or None, multiplier, default_time_ns)
        if t is None:
            return None
        times.add(t)
    return Columns(
        reader.shape, sample, len(matches), frozenset(times), others, matches, reader.field_columns
    )


def _read_others(
    body: str, texts: set[str], multiplier: int, default_time_ns: int
) -> list[Line] | None:
    """The lines of `body` whose text is in `texts`, read whole with their numbers; None when
    one is not plain."""
    texts.discard("")
    found: list[Line] = []
    for number, text in enumerate(body.split("\n"), start=1):
        if text not in texts:
            continue
        if text[-1] == "\r":
            text = text[:-1]
            if not text:
                continue
        read = _read_line(text)
        if read is None:
            return None
        measurement, tags, fields, stamp, shape = read
        time_ns = _time_ns(stamp, multiplier, default_time_ns)
        if time_ns is None:
            return None
        found.append(Line(Point(measurement, tags, fields, time_ns), number, shape))
    return found


def _time_ns(stamp: str | None, multiplier: int, default_time_ns: int) -> int | None:
    """A timestamp in nanoseconds, the default when absent; None when out of range."""
    if stamp is None:
        return default_time_ns
    time_ns = int(stamp) * multiplier
    return time_ns if TIME_MIN <= time_ns <= TIME_MAX else None


def _new_reader(shape: Shape) -> _ShapeReader:
    reader = _ShapeReader(shape)
    # Bounded: a sender can make up any number of shapes. Threads that race here at worst
    # compile one pattern twice.
    if len(_readers) >= _READER_CACHE_LIMIT:
        _readers.clear()
    _readers[shape] = reader
    return reader


# --- sketches ---------------------------------------------------------------------------------


def sketch_checker(alpha: float) -> Callable[[str], int | None]:
    """A function returning the total count of a `sketch` of this accuracy, or None when it
    does not decode (the caller then asks `Sketch.decode` for the verdict).

    The encoding is known only to `federation.core.sketch`: this defers to its `total_count`, which
    checks a string as completely as `Sketch.decode` without building the histogram.
    """
    expected = float(alpha)

    def total(text: str) -> int | None:
        try:
            return total_count(text, expected)
        except SketchDecodeError:
            return None

    return total
