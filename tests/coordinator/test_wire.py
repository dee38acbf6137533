"""The gateway's fast paths never accept more than the general routines, and agree with them."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from federation.coordinator.gateway.wire import parse_lines, read_columns, sketch_checker
from federation.core.lineprotocol import parse, serialize
from federation.core.points import FieldValue, Point
from federation.core.sketch import Sketch
from federation.errors import InvalidInput, SketchDecodeError

names = st.text(alphabet="abcxyz_019-.", min_size=1, max_size=8)
values = st.one_of(
    st.integers(-(2**63), 2**63 - 1),
    st.floats(allow_nan=False, allow_infinity=False),
    st.booleans(),
    st.text(alphabet="ab ,=c@.1\"'", max_size=10),
)
points = st.builds(
    Point,
    names,
    st.dictionaries(names, names, max_size=3),
    st.dictionaries(names, values, min_size=1, max_size=4),
    st.integers(-(10**18), 10**18),
)


@given(st.lists(points, min_size=1, max_size=5))
@settings(max_examples=300, deadline=None)
def test_fast_parse_agrees_with_the_general_parser(batch: list[Point]) -> None:
    try:
        text = serialize(batch).decode()
    except InvalidInput:
        return
    fast = parse_lines(text, "ns", 0)
    if fast is not None:
        assert [line.point for line in fast] == parse(text, "ns", 0)


@given(st.text(alphabet='mf,=" \\1i.eaT-#\n\r', max_size=40))
@settings(max_examples=500, deadline=None)
def test_fast_parse_never_accepts_what_the_general_parser_refuses(text: str) -> None:
    assert_columns_agree(text)
    fast = parse_lines(text, "ns", 0)
    if fast is None:
        return
    assert [line.point for line in fast] == parse(text, "ns", 0)


plain_strings = st.text(alphabet="ab ,=c@.1'", max_size=10)
typed_values: dict[type, st.SearchStrategy[FieldValue]] = {
    int: st.integers(-(2**63), 2**63 - 1),
    float: st.floats(allow_nan=False, allow_infinity=False),
    bool: st.booleans(),
    str: plain_strings,
}
shapes = st.tuples(
    names,
    st.lists(names, unique=True, max_size=3),
    st.lists(
        st.tuples(names, st.sampled_from([int, float, bool, str])),
        min_size=1,
        max_size=4,
        unique_by=lambda item: item[0],
    ),
)


@st.composite
def one_shape_bodies(draw: st.DrawFn) -> str:
    """A body whose lines all have one shape (measurement, keys, value types), as a batch of
    one aggregation is: the lines the fast parser reads with one pattern per shape."""
    measurement, tag_keys, field_types = draw(shapes)
    batch = [
        Point(
            measurement,
            {key: draw(names) for key in tag_keys},
            {key: draw(typed_values[kind]) for key, kind in field_types},
            draw(st.integers(-(10**18), 10**18)),
        )
        for _ in range(draw(st.integers(1, 6)))
    ]
    return serialize(batch).decode()


def assert_agrees(text: str) -> None:
    """Whatever the fast parser accepts, the general parser reads to the same points, and
    each point carries the number of the line it came from."""
    fast = parse_lines(text, "ns", 7)
    if fast is None:
        return
    assert [line.point for line in fast] == parse(text, "ns", 7)
    numbers = [n for n, raw in enumerate(text.split("\n"), start=1) if raw.removesuffix("\r")]
    assert [line.line for line in fast] == numbers


_FROM_TEXT = {int: int, str: str, bool: lambda t: t in ("t", "T", "true", "True", "TRUE")}


def assert_columns_agree(text: str) -> None:
    """Whatever `read_columns` accepts, the general parser reads to the same points: the lines
    of the main shape hold the column texts, the others are read whole with their numbers."""
    columns = read_columns(text, "ns", 7)
    if columns is None:
        return
    points = parse(text, "ns", 7)
    numbers = [n for n, raw in enumerate(text.split("\n"), start=1) if raw.removesuffix("\r")]
    by_number = dict(zip(numbers, points, strict=True))
    assert [line.point for line in columns.others] == [by_number[ln.line] for ln in columns.others]
    assert by_number[columns.sample.line] == columns.sample.point
    other_numbers = {line.line for line in columns.others}
    rows = [p for n, p in by_number.items() if n not in other_numbers]
    assert columns.rows == len(rows) > 0
    measurement, tag_keys, field_types = columns.shape
    assert all(p.measurement == measurement for p in rows)
    assert columns.times == {p.time_ns for p in rows}
    for p in rows:
        assert set(p.tags) == set(tag_keys)
        assert {k: type(v) for k, v in p.fields.items()} == dict(field_types)
    for key in tag_keys:
        assert columns.tag(key) == tuple(p.tags[key] for p in rows)
    for key, kind in field_types:
        if kind is float:  # checked, not kept
            with pytest.raises(KeyError):
                columns.field(key)
            continue
        texts = columns.field(key)
        assert tuple(map(_FROM_TEXT[kind], texts)) == tuple(p.fields[key] for p in rows)


@given(one_shape_bodies())
@settings(max_examples=300, deadline=None)
def test_lines_of_one_shape_take_the_fast_path_and_agree(text: str) -> None:
    fast = parse_lines(text, "ns", 0)
    assert fast is not None
    assert len({id(line.shape) for line in fast}) == 1
    assert_agrees(text)
    assert_columns_agree(text)


@given(
    one_shape_bodies(),
    st.integers(0, 10**6),
    st.integers(0, 10**6),
    st.text(alphabet='mf,=" \\1i.eEaT-#\r\n9x', max_size=6),
)
@settings(max_examples=1000, deadline=None)
def test_a_line_unlike_its_shape_is_declined_or_read_as_the_general_parser_reads_it(
    text: str, which: int, where: int, junk: str
) -> None:
    lines = text.split("\n")
    i = which % len(lines)
    at = where % (len(lines[i]) + 1)
    lines[i] = lines[i][:at] + junk + lines[i][at + len(junk) // 2 :]
    assert_agrees("\n".join(lines))
    assert_columns_agree("\n".join(lines))


@given(
    st.sampled_from(["1e999", "-1e400", "9223372036854775808i", "-9223372036854775809i"]),
    st.integers(1, 4),
)
@settings(max_examples=40, deadline=None)
def test_out_of_range_numbers_in_a_known_shape_are_declined(value: str, at: int) -> None:
    good = "m,t=a f=1.5,g=2i 10"
    bad = good.replace("1.5" if value[-1] != "i" else "2i", value)
    assert parse_lines("\n".join([good] * at + [bad]), "ns", 0) is None


@given(
    st.lists(st.floats(-1e12, 1e12, allow_nan=False), min_size=1, max_size=200),
    st.integers(0, 10**6),
    st.text(alphabet="ABCDab_-0gz:,=vn1", min_size=1, max_size=2),
)
@settings(max_examples=300, deadline=None)
def test_sketch_totals_are_what_decode_says(values: list[float], where: int, junk: str) -> None:
    check = sketch_checker(0.01)
    text = Sketch.from_values(np.array(values), 0.01).encode()
    assert check(text) == len(values)
    assert check(Sketch.from_values(np.array(values), 0.02).encode()) is None
    i = where % len(text)
    mutated = text[:i] + junk + text[i + 1 :]
    try:
        expected: int | None = Sketch.decode(mutated, expected_alpha=0.01).count
    except SketchDecodeError:
        expected = None
    assert check(mutated) == expected


def test_a_body_of_many_shapes_is_read_whole_and_agrees() -> None:
    # More shapes than one body may compile patterns for: the rest take the general path.
    text = "\n".join(f"m,t=a f{i % 150}={i}i,g=1.5 {i}" for i in range(600))
    fast = parse_lines(text, "ns", 0)
    assert fast is not None
    assert [line.point for line in fast] == parse(text, "ns", 0)
    assert [line.line for line in fast] == list(range(1, 601))


# -- read_columns -----------------------------------------------------------------------------


@given(
    st.lists(
        st.tuples(names, st.integers(-(10**17), 10**17), st.floats(-1e12, 1e12), plain_strings),
        min_size=1,
        max_size=30,
    )
)
@settings(max_examples=200, deadline=None)
def test_a_summary_like_body_is_read_column_by_column(
    rows: list[tuple[str, int, float, str]],
) -> None:
    # Floats in a summary's range spell without a three-digit exponent: all in the columns.
    batch = [
        Point("agg", {"dc": "dub1", "mailer": m}, {"count": c, "p50": f, "sketch": t}, 3600)
        for m, c, f, t in rows
        if f == 0 or abs(f) > 1e-90
    ]
    if not batch:
        return
    text = serialize(batch).decode()
    columns = read_columns(text, "ns", 0)
    assert columns is not None and columns.rows == len(batch) and not columns.others
    assert_columns_agree(text)


@pytest.mark.parametrize(
    "value",
    ["1e999", "-1e400", "9223372036854775808i", "1e100", "1" * 201 + ".5", "1000000000000000000i"],
)
def test_numbers_columns_cannot_prove_in_range_leave_the_columns(value: str) -> None:
    good = "m,t=a f=1.5,g=2i 10"
    bad = good.replace("1.5" if value[-1] != "i" else "2i", value)
    text = "\n".join([good, good, bad, good])
    columns = read_columns(text, "ns", 0)
    if value in ("1e999", "-1e400", "9223372036854775808i"):  # out of range: not plain at all
        assert columns is None
    else:  # in range, but only the general line pattern can tell: read whole
        assert columns is not None and [line.line for line in columns.others] == [3]
        assert_columns_agree(text)


def test_a_manifest_first_or_last_is_read_whole_with_its_line_number() -> None:
    summary = 'agg,dc=dub1 count=12i,sketch="v1:a=0.01:n=12:z=12" 3600'
    manifest = "federation_manifest,aggregation=agg,dc=dub1 events=24i 3600"
    for text, line in [
        ("\n".join([manifest, summary, summary, summary]), 1),
        ("\n".join([summary, summary, summary, manifest, ""]), 4),
    ]:
        columns = read_columns(text, "ns", 0)
        assert columns is not None and columns.rows == 3
        assert [ln.line for ln in columns.others] == [line]
        assert columns.others[0].point.measurement == "federation_manifest"
        assert_columns_agree(text)
