"""Packed histograms: `unpack(pack(s))` gives back the same histograms, and anything else is
refused rather than read as histograms."""

from __future__ import annotations

import base64
import zlib

import hypothesis.extra.numpy as hnp
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from federation.core.sketch import Sketch
from federation.core.sketch_pack import pack, unpack

finite = st.floats(min_value=-1e12, max_value=1e12, allow_nan=False, allow_infinity=False)
value_arrays = hnp.arrays(np.float64, st.integers(0, 60), elements=finite)


@settings(max_examples=100, deadline=None)
@given(st.lists(value_arrays, max_size=12), st.sampled_from([0.001, 0.01, 0.05]))
def test_unpack_gives_back_what_pack_packed(arrays: list[np.ndarray], alpha: float) -> None:
    sketches = [Sketch.from_values(a, alpha) for a in arrays]
    back = unpack(pack(sketches), len(sketches))
    assert back == sketches
    assert [s.encode() for s in back] == [s.encode() for s in sketches]


def _raw(text: str) -> np.ndarray:
    return np.frombuffer(zlib.decompress(base64.b64decode(text.split(";")[1])), "<i8").copy()


def _text(values: np.ndarray, alpha: float = 0.01) -> str:
    return (
        f"a={alpha!r};" + base64.b64encode(zlib.compress(values.astype("<i8").tobytes())).decode()
    )


def test_anything_pack_would_not_write_is_refused() -> None:
    good = pack([Sketch.from_values([1.0, 2.0, 2.0, -3.0, 0.0], 0.01), Sketch(0.01)])
    assert len(unpack(good, 2)) == 2
    values = _raw(good)
    with pytest.raises(ValueError):
        unpack(good, 3)  # not as many histograms
    with pytest.raises(ValueError):
        unpack("v1:a=0.01:n=1:p=5,A", 1)
    with pytest.raises(ValueError):
        unpack(good[:-4], 2)  # cut short
    broken = values.copy()
    broken[0] += 1  # a count that its buckets do not add up to
    with pytest.raises(ValueError, match="add up"):
        unpack(_text(broken), 2)
    # counts 0 | zeros: 2 | sizes: pos 2, neg 1 per histogram... swap two positive indexes
    pos_at = 8
    swapped = values.copy()
    swapped[pos_at], swapped[pos_at + 1] = swapped[pos_at + 1], swapped[pos_at]
    with pytest.raises(ValueError, match="order"):
        unpack(_text(swapped), 2)
    zero = values.copy()
    zero[pos_at + 2] = 0  # a bucket holding no value
    with pytest.raises(ValueError):
        unpack(_text(zero), 2)
    with pytest.raises(ValueError):
        unpack(_text(values, alpha=1.5), 2)
