"""The hot path: one decoded JSON event to one line of line protocol, or a reason it cannot be.

The output is byte for byte what `federation.core.lineprotocol.serialize` writes for the same point
(tags and fields sorted by key, floats as `repr`, integers with `i`, the same escaping), which
the tests check property by property. It is written here rather than by building a `Point` and
calling `serialize` because that costs about three times as much per event, and ingest has to
keep up with InfluxDB itself. Names the schema declares are escaped once, when the encoder is
built; only values are looked at per event, and a value holding a character that needs escaping
takes a slower path that asks `serialize` whether InfluxDB can carry it at all.

Equal timestamps in one series are kept apart by `TieBreaker` (see there for its limits).
"""

from __future__ import annotations

import re
from collections import deque
from collections.abc import Callable
from datetime import UTC, datetime
from decimal import ROUND_HALF_EVEN, Decimal, InvalidOperation
from enum import StrEnum
from typing import Any

from federation.core.lineprotocol import INT64_MAX, INT64_MIN, TIME_MAX, TIME_MIN, serialize
from federation.core.pii import personal_data_kind
from federation.core.points import Point
from federation.errors import InvalidInput
from federation.ingest.schema import EventSchema, FieldType, TimeFormat

_MEASUREMENT_TABLE = str.maketrans({",": "\\,", " ": "\\ "})
_KEY_TABLE = str.maketrans({",": "\\,", "=": "\\=", " ": "\\ "})
_TAG_SPECIAL = frozenset(",= \\\n\r")


class Reason(StrEnum):
    """Why a line was dead-lettered instead of written."""

    not_json = "not_json"  # not valid JSON (or not UTF-8)
    not_object = "not_object"  # valid JSON, but not an object
    missing_key = "missing_key"  # a required key is absent or null
    wrong_type = "wrong_type"  # a value of the wrong JSON type for its tag, field or timestamp
    not_finite = "not_finite"  # NaN or ±Infinity for a float field
    out_of_range = "out_of_range"  # an integer beyond int64 (or float64, for a float field)
    string_too_long = "string_too_long"  # a string beyond the schema's max_string_bytes
    empty_tag = "empty_tag"  # an empty string as a tag value
    unrepresentable = "unrepresentable"  # a tag line protocol cannot carry, or invalid Unicode
    personal_value = "personal_value"  # a tag value that looks like personal data (detail: kind)
    bad_timestamp = "bad_timestamp"  # a timestamp that does not parse or is out of range
    no_fields = "no_fields"  # every field is optional and none is present
    field_type_conflict = "field_type_conflict"  # InfluxDB holds the field with another type
    beyond_retention = "beyond_retention"  # older than the retention policy keeps
    influx_rejected = "influx_rejected"  # InfluxDB refused the line for another reason


class Rejected(Exception):
    """An event that cannot become a point; `key` names the offending key where there is one,
    `detail` what was wrong with its value (never the value)."""

    def __init__(self, reason: Reason, key: str | None = None, detail: str | None = None) -> None:
        super().__init__(reason.value if key is None else f"{reason.value}: {key}")
        self.reason = reason
        self.key = key
        self.detail = detail


class _Bad(Exception):
    """A value converter's refusal; the encoder adds the key."""

    def __init__(self, reason: Reason, detail: str | None = None) -> None:
        self.reason = reason
        self.detail = detail


_KNOWN_TAGS_LIMIT = 100_000
"""Tag values already checked, remembered with their escaped form (tags repeat: a few thousand
distinct values over millions of events), so each distinct value is looked at once."""


def _check_tag(value: object, limit: int, known: dict[str, str]) -> str:
    """The escaped form of a tag value not seen before; `_Bad` when it cannot be a tag.

    Besides what line protocol and the schema demand, a value that looks like personal data is
    refused (the gateway's own detector; the detail names the kind, never the value): a tag is
    a series key, so an address there would be exported by any aggregation grouping by it (the
    gateway then refuses the DC's whole shipment), and cannot be redacted in place.
    """
    escaped = value
    if (
        type(value) is not str
        or not value
        or len(value) > limit // 4
        or not _TAG_SPECIAL.isdisjoint(value)
    ):
        escaped = _tag_value(value, limit)
    if type(value) is not str:
        return str(escaped)  # an integer: digits only
    kind = personal_data_kind(value)
    if kind is not None:
        raise _Bad(Reason.personal_value, f"the value looks like an {kind}")
    if len(known) >= _KNOWN_TAGS_LIMIT:
        known.clear()
    known[value] = str(escaped)
    return str(escaped)


def _float(value: Any) -> str:
    kind = type(value)
    if kind is float:
        if value - value == 0.0:  # false for NaN and both infinities
            return repr(value)
        raise _Bad(Reason.not_finite)
    if kind is int:
        try:
            return repr(float(value))
        except OverflowError:
            raise _Bad(Reason.out_of_range) from None
    raise _Bad(Reason.wrong_type)


def _integer(value: Any) -> str:
    if type(value) is int:
        if INT64_MIN <= value <= INT64_MAX:
            return f"{value}i"
        raise _Bad(Reason.out_of_range)
    raise _Bad(Reason.wrong_type)


def _boolean(value: Any) -> str:
    if type(value) is bool:
        return "true" if value else "false"
    raise _Bad(Reason.wrong_type)


def _string(limit: int) -> Callable[[Any], str]:
    quick = limit // 4  # a code point is at most four UTF-8 bytes

    def convert(value: object) -> str:
        if not isinstance(value, str):
            raise _Bad(Reason.wrong_type)
        if len(value) > quick and _utf8_size(value) > limit:
            raise _Bad(Reason.string_too_long)
        if "\\" in value or '"' in value:
            value = value.replace("\\", "\\\\").replace('"', '\\"')
        return '"' + value + '"'

    return convert


def _utf8_size(value: str) -> int:
    return len(value.encode("utf-8", "surrogatepass"))


def _tag_value(value: object, limit: int) -> str:
    """The slow path for a tag value: convert, check and escape it."""
    if type(value) is int:
        value = str(value)
    elif not isinstance(value, str):
        raise _Bad(Reason.wrong_type)
    if not value:
        raise _Bad(Reason.empty_tag)
    if len(value) > limit // 4 and _utf8_size(value) > limit:
        raise _Bad(Reason.string_too_long)
    if "\\" in value or "\n" in value or "\r" in value:
        try:
            serialize([Point("m", {"k": value}, {"f": 1})])
        except InvalidInput:
            raise _Bad(Reason.unrepresentable) from None
    return value.translate(_KEY_TABLE)


_RFC3339 = re.compile(
    r"(\d{4}-\d{2}-\d{2})[Tt ](\d{2}):(\d{2}):(\d{2})(?:\.(\d{1,9}))?(?:[Zz]|([+-])(\d{2}):(\d{2}))"
)


class _Rfc3339:
    """RFC 3339 text to epoch nanoseconds; remembers the last whole second it converted."""

    def __init__(self) -> None:
        self._last_prefix = ""
        self._last_seconds = 0

    def __call__(self, value: Any) -> int:
        if type(value) is not str:
            raise _Bad(Reason.wrong_type)
        match = _RFC3339.fullmatch(value)
        if match is None:
            raise _Bad(Reason.bad_timestamp)
        prefix = value[:19]
        if prefix == self._last_prefix:
            seconds = self._last_seconds
        else:
            date, hour, minute, second = match.group(1, 2, 3, 4)
            try:
                moment = datetime.fromisoformat(f"{date}T{hour}:{minute}:{second}+00:00")
            except ValueError:
                raise _Bad(Reason.bad_timestamp) from None
            seconds = (moment - _EPOCH).days * 86400 + (moment - _EPOCH).seconds
            self._last_prefix, self._last_seconds = prefix, seconds
        fraction, sign, off_hours, off_minutes = match.group(5, 6, 7, 8)
        if sign is not None:
            offset = int(off_hours) * 3600 + int(off_minutes) * 60
            seconds = seconds - offset if sign == "+" else seconds + offset
        nanos = int(fraction.ljust(9, "0")) if fraction else 0
        return seconds * 1_000_000_000 + nanos


_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_EPOCH_UNITS = {
    TimeFormat.epoch_s: 1_000_000_000,
    TimeFormat.epoch_ms: 1_000_000,
    TimeFormat.epoch_us: 1_000,
    TimeFormat.epoch_ns: 1,
}


def _epoch(multiplier: int) -> Callable[[Any], int]:
    def convert(value: Any) -> int:
        kind = type(value)
        if kind is int:
            return int(value * multiplier)
        if kind is float:
            # Through the shortest decimal form, so that 1700000000.123 s is ...123000000 ns
            # and not the binary float's nearest neighbour.
            try:
                scaled = Decimal(repr(value)) * multiplier
                return int(scaled.to_integral_value(ROUND_HALF_EVEN))
            except (InvalidOperation, ValueError, OverflowError):
                raise _Bad(Reason.bad_timestamp) from None
        raise _Bad(Reason.wrong_type)

    return convert


class TieBreaker:
    """Keeps events of one series with equal timestamps apart, deterministically.

    InfluxDB keeps one point per series and timestamp, so a second event at the same nanosecond
    would overwrite the first. `place` returns the first nanosecond at or after the event's own
    time that no earlier event of the same series took: the k-th event of a series at time t
    gets t + k (when t + 1 … t + k were free). The result depends only on the order of the
    input, never on batching, timing or retries, so the same input ingested twice writes the
    same points and the second run overwrites each point with itself.

    Limits: it remembers the (series, time) of the last `window` events only (about 200 bytes
    each), so a tie whose earlier event lies further back is not seen and the later event
    overwrites it (identically in every run); ties are seen within one run only, so events split
    across separate runs may overwrite each other; and a shifted point is k ns later than the
    event said, invisible at ms precision but visible to a nanosecond query. `window=0` turns
    tie-breaking off.
    """

    def __init__(self, window: int = 100_000) -> None:
        self._window = window
        self._taken: set[tuple[str, int]] = set()
        self._order: deque[tuple[str, int]] = deque()

    def place(self, series: str, time_ns: int) -> int:
        """The timestamp to write for an event of `series` at `time_ns` (see the class)."""
        if not self._window:
            return time_ns
        taken = self._taken
        key = (series, time_ns)
        while key in taken:
            time_ns += 1
            key = (series, time_ns)
        taken.add(key)
        order = self._order
        order.append(key)
        if len(order) > self._window:
            taken.discard(order.popleft())
        return time_ns


class Encoder:
    """Turns decoded JSON events into line-protocol lines, by one schema."""

    def __init__(self, schema: EventSchema, *, tie_window: int = 100_000) -> None:
        limit = schema.max_string_bytes
        self._limit = limit
        self._measurement = schema.measurement.translate(_MEASUREMENT_TABLE)
        self._tags = tuple(
            (key, f",{key.translate(_KEY_TABLE)}=", spec.required)
            for key, spec in sorted(schema.tags.items())
        )
        converters: dict[FieldType, Callable[[Any], str]] = {
            FieldType.float: _float,
            FieldType.integer: _integer,
            FieldType.string: _string(limit),
            FieldType.boolean: _boolean,
        }
        self._fields = tuple(
            (key, f"{key.translate(_KEY_TABLE)}=", converters[spec.type], spec.required)
            for key, spec in sorted(schema.fields.items())
        )
        self._time_key = schema.timestamp.name
        fmt = schema.timestamp.format
        self._time: Callable[[Any], int] = (
            _Rfc3339() if fmt is TimeFormat.rfc3339 else _epoch(_EPOCH_UNITS[fmt])
        )
        self.ties = TieBreaker(tie_window)
        self._known_tags: dict[str, str] = {}
        # Leave room above the latest timestamp for the tie-break's shifts.
        self._time_max = TIME_MAX - tie_window

    def encode(self, event: object) -> bytes:
        """One line of line protocol (UTF-8, ending in a newline) for one decoded event.

        Raises `Rejected` with the reason and the key when the event does not fit the schema or
        holds a value InfluxDB cannot store. Only an accepted event takes a tie-break slot.
        """
        if type(event) is not dict:
            raise Rejected(Reason.not_object)
        get = event.get
        known = self._known_tags
        head = [self._measurement]
        fields: list[str] = []
        key = ""
        try:
            for key, prefix, required in self._tags:
                value = get(key)
                if value is None:
                    if required:
                        raise _Bad(Reason.missing_key)
                    continue
                escaped = known.get(value) if type(value) is str else None
                if escaped is None:
                    escaped = _check_tag(value, self._limit, known)
                head.append(prefix)
                head.append(escaped)
            for key, prefix, convert, required in self._fields:
                value = get(key)
                if value is None:
                    if required:
                        raise _Bad(Reason.missing_key)
                    continue
                fields.append(prefix + convert(value))
            key = self._time_key
            stamp = get(key)
            if stamp is None:
                raise _Bad(Reason.missing_key)
            time_ns = self._time(stamp)
        except _Bad as exc:
            raise Rejected(exc.reason, key, exc.detail) from None
        if not TIME_MIN <= time_ns <= self._time_max:
            raise Rejected(Reason.bad_timestamp, key)
        if not fields:
            raise Rejected(Reason.no_fields)
        series = "".join(head)
        try:
            start = f"{series} {','.join(fields)} ".encode()
        except UnicodeEncodeError:
            raise Rejected(Reason.unrepresentable) from None
        return start + b"%d\n" % self.ties.place(series, time_ns)
