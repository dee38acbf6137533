"""Line protocol: escaping, types, precisions, error positions, round trips and speed."""

from __future__ import annotations

import math
import struct
import time

import pytest
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from federation.core import lineprotocol
from federation.core.lineprotocol import parse, serialize
from federation.core.points import FieldValue, Point
from federation.errors import InvalidInput, LineProtocolError

T0 = 1_700_000_000_000_000_000


def one(text: str, precision: str = "ns") -> Point:
    points = parse(text, precision, default_time_ns=T0)
    assert len(points) == 1
    return points[0]


# --- escaping -------------------------------------------------------------------------------


def test_measurement_escapes_comma_and_space_only() -> None:
    assert one(r"my\,meas\ x f=1").measurement == "my,meas x"
    # `=` needs no escape in a measurement, and `\=` there keeps its backslash.
    assert one(r"a=b f=1").measurement == "a=b"
    assert one(r"a\=b f=1").measurement == r"a\=b"


def test_tag_keys_and_values_escape_comma_equals_space() -> None:
    point = one(r"m,k\,1\=\ x=v\,1\=\ y f=1")
    assert point.tags == {"k,1= x": "v,1= y"}


def test_field_key_escapes() -> None:
    assert one(r"m f\,1\=\ x=1i").fields == {"f,1= x": 1}


def test_backslash_before_other_characters_is_literal() -> None:
    point = one(r"m\x,t=a\b f\q=1")
    assert point.measurement == r"m\x"
    assert point.tags == {"t": r"a\b"}
    assert point.fields == {r"f\q": 1.0}
    # Two backslashes are two backslashes (InfluxDB 1.x does not unescape `\\` in names).
    assert one(r"m,t=a\\ f=1").tags == {"t": "a\\\\"}


def test_string_field_escapes_quote_and_backslash() -> None:
    point = one(r'm s="a \"q\" \\ \n b"')
    assert point.fields == {"s": 'a "q" \\ \\n b'}


def test_string_field_may_hold_separators_and_newlines() -> None:
    points = parse('m s="a, b=c d\nsecond line" 5\nm2 f=1 6\n', default_time_ns=T0)
    assert points == [
        Point("m", {}, {"s": "a, b=c d\nsecond line"}, 5),
        Point("m2", {}, {"f": 1.0}, 6),
    ]


# --- types ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        ("1.5", 1.5),
        ("1e3", 1000.0),
        ("-2", -2.0),
        ("1E-2", 0.01),
        ("1e+300", 1e300),
        (".5", 0.5),
        ("12i", 12),
        ("-9223372036854775808i", -(2**63)),
        ("9223372036854775807i", 2**63 - 1),
        ('"txt"', "txt"),
        ('""', ""),
    ]
    + [(b, True) for b in ("t", "T", "true", "True", "TRUE")]
    + [(b, False) for b in ("f", "F", "false", "False", "FALSE")],
)
def test_field_types(raw: str, expected: FieldValue) -> None:
    value = one(f"m v={raw}").fields["v"]
    assert value == expected
    assert type(value) is type(expected)


def test_floats_are_floats_even_without_a_dot() -> None:
    assert isinstance(one("m v=-2").fields["v"], float)


def test_duplicate_field_keeps_the_last() -> None:
    assert one("m a=1,b=2,a=3i").fields == {"a": 3, "b": 2.0}


def test_blank_and_comment_lines_and_crlf() -> None:
    body = b'# comment with "quote\r\n\r\n   \nm f=1 1\r\n  # indented comment\r\nm f=2 2\r\n'
    assert parse(body) == [Point("m", {}, {"f": 1.0}, 1), Point("m", {}, {"f": 2.0}, 2)]


def test_missing_timestamp_uses_default_or_now() -> None:
    assert one("m f=1").time_ns == T0
    before = time.time_ns()
    points = parse("m f=1\nm f=2")
    assert before <= points[0].time_ns <= time.time_ns()
    assert points[0].time_ns == points[1].time_ns


@pytest.mark.parametrize(
    ("precision", "factor"),
    [
        ("n", 1),
        ("ns", 1),
        ("", 1),
        ("u", 10**3),
        ("ms", 10**6),
        ("s", 10**9),
        ("m", 60 * 10**9),
        ("h", 3600 * 10**9),
    ],
)
def test_precisions(precision: str, factor: int) -> None:
    assert one("m f=1 7", precision).time_ns == 7 * factor
    assert one("m f=1 -3", precision).time_ns == -3 * factor
    assert parse(serialize([Point("m", {}, {"f": 1}, 7 * factor)], precision), precision) == [
        Point("m", {}, {"f": 1}, 7 * factor)
    ]


@pytest.mark.parametrize("precision", ["us", "µ", "d", "NS", "x"])
def test_unknown_precisions_refused(precision: str) -> None:
    with pytest.raises(InvalidInput, match="invalid precision"):
        parse("m f=1 1", precision)


# --- errors ---------------------------------------------------------------------------------

SECRET = "alice@example.com"


@pytest.mark.parametrize(
    ("body", "line", "column", "message"),
    [
        ("m", 1, 2, "missing fields"),
        ("m ", 1, 2, "missing fields"),
        ("m,t=v", 1, 6, "missing fields"),
        (",t=v f=1", 1, 1, "missing measurement"),
        (" ,t=v f=1", 1, 2, "missing measurement"),
        ("m,=v f=1", 1, 3, "missing tag key"),
        ("m,t f=1", 1, 4, "missing '=' after tag key 't'"),
        ("m,t= f=1", 1, 5, "missing tag value"),
        (f"m,t={SECRET}=x f=1", 1, 22, "unescaped '='"),
        ("m,t=1,t=2 f=1", 1, 7, "duplicate tag key 't'"),
        ("m,time=1 f=1", 1, 3, "tag key 'time'"),
        ("m =1", 1, 3, "missing field key"),
        ("m f", 1, 4, "missing '=' after field key 'f'"),
        ("m f=", 1, 5, "missing value"),
        ("m f=1,", 1, 7, "missing field key"),
        ("m time=1", 1, 3, "field key 'time'"),
        (f"m f={SECRET}", 1, 5, "invalid value for field 'f'"),
        ("m f=1.2.3", 1, 5, "invalid value"),
        ("m f=NaN", 1, 5, "invalid value"),
        ("m f=Inf", 1, 5, "invalid value"),
        ("m f=+1", 1, 5, "invalid value"),
        ("m f=1_0", 1, 5, "invalid value"),
        ("m f=1u", 1, 5, "invalid value"),
        ("m f=1e400", 1, 5, "out of range"),
        ("m f=9223372036854775808i", 1, 5, "int64"),
        ("m f=-9223372036854775809i", 1, 5, "int64"),
        (f'm f="{SECRET}', 1, 5, "unterminated string"),
        (f'm f="{SECRET}"x', 1, 24, "unexpected character"),
        ("m f=1 12a", 1, 7, "invalid timestamp"),
        ("m f=1 1 2", 1, 9, "unexpected text"),
        ("m f=1 99999999999999999999", 1, 7, "out of range"),
        ("ok f=1\n\n# c\n  m f=x", 4, 7, "invalid value"),
        ('ok s="a\nb" 1\nm f=x', 3, 5, "invalid value"),
        ("m,t=a\\\n f=1", 1, 6, "backslash"),
    ],
)
def test_errors_name_line_and_column(body: str, line: int, column: int, message: str) -> None:
    with pytest.raises(LineProtocolError) as caught:
        parse(body, default_time_ns=0)
    error = caught.value
    assert message in error.message
    assert (error.line, error.column) == (line, column)
    assert SECRET not in str(error)


def test_big_timestamp_with_coarse_precision_out_of_range() -> None:
    with pytest.raises(LineProtocolError, match="out of range"):
        parse("m f=1 9999999999999", "h")


def test_invalid_utf8_is_a_line_protocol_error() -> None:
    with pytest.raises(LineProtocolError) as caught:
        parse(b"m f=1\nm,t=\xff f=1")
    assert (caught.value.line, caught.value.column) == (2, 5)


def test_nothing_is_returned_on_error() -> None:
    with pytest.raises(LineProtocolError):
        parse("m f=1 1\nm f=bad 2")


# --- serialize ------------------------------------------------------------------------------


def test_serialize_is_sorted_typed_and_escaped() -> None:
    point = Point(
        "m e,a",
        {"z": "1", "a b": "x=y,z"},
        {"s": 'say "hi" \\', "b": True, "i": 3, "f": 0.1, "n": False},
        1_000,
    )
    assert serialize([point]) == (
        b'm\\ e\\,a,a\\ b=x\\=y\\,z,z=1 b=true,f=0.1,i=3i,n=false,s="say \\"hi\\" \\\\" 1000\n'
    )


def test_bool_is_not_an_int() -> None:
    assert serialize([Point("m", {}, {"b": True}, 0)]) == b"m b=true 0\n"
    assert one(serialize([Point("m", {}, {"b": True}, 0)]).decode()).fields["b"] is True


def test_float_bit_patterns_survive() -> None:
    values = [0.1, 1 / 3, 5e-324, 1.7976931348623157e308, -0.0, 1e16, 123456789.123456789]
    fields: dict[str, FieldValue] = {f"f{i}": v for i, v in enumerate(values)}
    back = one(serialize([Point("m", {}, fields, 0)]).decode()).fields
    for key, value in fields.items():
        assert struct.pack(">d", back[key]) == struct.pack(">d", value)


@pytest.mark.parametrize(
    "point",
    [
        Point("m", {}, {}, 0),
        Point("", {}, {"f": 1}, 0),
        Point("#m", {}, {"f": 1}, 0),
        Point("m", {"t": ""}, {"f": 1}, 0),
        Point("m", {"": "v"}, {"f": 1}, 0),
        Point("m", {}, {"f": math.nan}, 0),
        Point("m", {}, {"f": math.inf}, 0),
        Point("m", {}, {"f": 2**63}, 0),
        Point("m", {"t": "ends\\"}, {"f": 1}, 0),
        Point("m", {"t": "a\\,b"}, {"f": 1}, 0),
        Point("m", {"t": "two\nlines"}, {"f": 1}, 0),
        Point("m", {}, {"f": 1}, 1),  # not a whole number of seconds, below
    ],
)
def test_serialize_refuses_what_influxdb_cannot_carry(point: Point) -> None:
    precision = "s" if point.time_ns == 1 else "ns"
    with pytest.raises(InvalidInput):
        serialize([point], precision)


# --- properties -----------------------------------------------------------------------------

_NAME_CHARS = st.characters(codec="utf-8", exclude_characters="\n\r")
_SPICY = st.sampled_from([" ", ",", "=", '"', "\\", "\t", "#", "é", "日", "\\ ", "\\,"])
_names = st.lists(st.one_of(_NAME_CHARS, _SPICY), min_size=1, max_size=12).map("".join)
_values = st.one_of(
    st.floats(allow_nan=False, allow_infinity=False),
    st.integers(min_value=-(2**63), max_value=2**63 - 1),
    st.booleans(),
    st.text(st.characters(codec="utf-8"), max_size=20),
)


def _representable(name: str, escapable: frozenset[str]) -> bool:
    try:
        lineprotocol._check_name(0, name, escapable, "name")
    except InvalidInput:
        return False
    return name != "time"


_keys = _names.filter(lambda name: _representable(name, frozenset(",= ")))
_measurements = _names.filter(
    lambda name: name[0] not in "# \t" and _representable(name, frozenset(", "))
)
_points = st.builds(
    Point,
    _measurements,
    st.dictionaries(_keys, _keys, max_size=4),
    st.dictionaries(_keys, _values, min_size=1, max_size=4),
    st.integers(min_value=-(2**63) + 2, max_value=2**63 - 2),
)


def _serializable(points: list[Point]) -> bytes | None:
    try:
        return serialize(points)
    except InvalidInput:
        return None


@settings(max_examples=400, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(_points, min_size=1, max_size=5))
def test_round_trip_points(points: list[Point]) -> None:
    body = serialize(points)
    assert parse(body) == points
    assert serialize(parse(body)) == body


@settings(max_examples=300)
@given(_names)
def test_serialize_refuses_exactly_the_names_that_would_not_read_back(name: str) -> None:
    point = Point("m", {"k": name}, {"f": 1}, 0)
    body = _serializable([point])
    if body is None:
        assert not _representable(name, frozenset(",= "))
    else:
        assert parse(body) == [point]
    # What InfluxDB would read back for the naive escaping differs exactly when refused.
    naive = f"m,k={name.translate(lineprotocol._KEY_TABLE)} f=1 0"
    try:
        read_back = parse(naive)
    except LineProtocolError:
        read_back = []
    assert (read_back == [point]) == (body is not None)


@settings(max_examples=500)
@given(st.binary(max_size=200))
def test_fuzzed_bytes_parse_or_raise_line_protocol_error(body: bytes) -> None:
    try:
        points = parse(body, default_time_ns=0)
    except LineProtocolError:
        return
    for point in points:
        assert isinstance(point, Point)


_lp_alphabet = st.sampled_from(list('mtfsab,= "\\\n\r#0123456789.-ieTF\t'))


@settings(max_examples=1000)
@given(st.lists(_lp_alphabet, max_size=40).map("".join))
def test_fuzzed_text_round_trips_or_raises(text: str) -> None:
    try:
        points = parse(text, default_time_ns=0)
    except LineProtocolError:
        return
    body = _serializable(points)
    if body is not None:
        assert parse(body) == points


@settings(max_examples=500)
@given(st.lists(_lp_alphabet, min_size=1, max_size=40).map("".join))
def test_fast_paths_agree_with_exact_path(line: str) -> None:
    assume("\n" not in line and '"' not in line)
    line = line.rstrip("\r")
    assume(line)
    try:
        if "\\" in line:
            fast: Point | None = lineprotocol._parse_escaped(line, 1, 0)
        else:
            fast = lineprotocol._parse_fast(line, 1, 0)
    except lineprotocol._Bail:
        fast = None
    try:
        _, exact = lineprotocol._Exact(line, 0, 1, 1, 0).parse()
    except LineProtocolError:
        exact = None
    if fast is not None:
        assert fast == exact


# --- speed (printed, never asserted) -------------------------------------------------------


def test_parse_speed_is_printed(capsys: pytest.CaptureFixture[str]) -> None:
    lines = [
        f"latency,dc=fra1,direction=out,mailer=m{i % 7},customer=c{i % 1000} "
        f"count={i}i,sum={i * 1.5},p50=0.25,ok=true {T0 + i}"
        for i in range(50_000)
    ]
    body = ("\n".join(lines) + "\n").encode()
    started = time.perf_counter()
    points = parse(body)
    fast = len(points) / (time.perf_counter() - started)
    escaped = body.replace(b"customer=c", b"customer=c\\ x")
    started = time.perf_counter()
    parse(escaped)
    slow = len(points) / (time.perf_counter() - started)
    started = time.perf_counter()
    serialize(points)
    out = len(points) / (time.perf_counter() - started)
    with capsys.disabled():
        print(
            f"\nline protocol: parse {fast:,.0f} points/s (plain), {slow:,.0f} points/s "
            f"(escaped); serialize {out:,.0f} points/s"
        )
