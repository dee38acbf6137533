"""The gateway's fast paths never accept more than the general routines, and agree with them."""

from __future__ import annotations

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

from federation.coordinator.wire import parse_lines, sketch_checker
from federation.errors import InvalidInput, SketchDecodeError
from federation.lineprotocol import parse, serialize
from federation.points import FieldValue, Point
from federation.sketch import Sketch

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


@given(st.text(alphabet='mf,=" \\1i.eaT-#\n', max_size=30))
@settings(max_examples=500, deadline=None)
def test_fast_parse_never_accepts_what_the_general_parser_refuses(text: str) -> None:
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


@given(one_shape_bodies())
@settings(max_examples=300, deadline=None)
def test_lines_of_one_shape_take_the_fast_path_and_agree(text: str) -> None:
    fast = parse_lines(text, "ns", 0)
    assert fast is not None
    assert len({id(line.shape) for line in fast}) == 1
    assert_agrees(text)


@given(
    one_shape_bodies(),
    st.integers(0, 10**6),
    st.integers(0, 10**6),
    st.text(alphabet='mf,=" \\1i.eEaT-#\r9x', max_size=6),
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
