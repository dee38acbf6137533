"""The gateway's fast paths never accept more than the general routines, and agree with them."""

from __future__ import annotations

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

from federation.coordinator.wire import parse_lines, sketch_checker
from federation.errors import InvalidInput, SketchDecodeError
from federation.lineprotocol import parse, serialize
from federation.points import Point
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
