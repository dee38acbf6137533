from __future__ import annotations

import contextlib
import math
import re

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from federation.core._sketch_fast import read_batch, read_one, read_total
from federation.core._sketch_reference import EMPTY as _EMPTY
from federation.core._sketch_write import write_many
from federation.core.sketch import (
    Sketch,
    _stores,
    decode_many,
    decode_sums,
    encode_many,
    merge_all,
    subtract,
    total_count,
)
from federation.core.sketch import _decode as _reference_decode
from federation.core.stats import nearest_rank
from federation.errors import SketchDecodeError

ALPHA = 0.01
# The bound is exact in real arithmetic; float rounding may add a few ulps.
TOLERANCE = 1e-9

finite = st.floats(min_value=-1e12, max_value=1e12, allow_nan=False, allow_infinity=False)
value_arrays = hnp.arrays(np.float64, st.integers(0, 200), elements=finite)
alphas = st.sampled_from([0.001, 0.01, 0.02, 0.05, 0.3])
percentiles = st.floats(min_value=0.0, max_value=100.0, exclude_min=True)


def assert_within(estimate: float | None, exact: float | None, alpha: float) -> None:
    assert (estimate is None) == (exact is None)
    if exact is None or estimate is None:
        return
    if exact == 0:
        assert estimate == 0.0
    else:
        assert math.copysign(1, estimate) == math.copysign(1, exact)
        assert abs(estimate - exact) <= alpha * abs(exact) * (1 + TOLERANCE)


@given(value_arrays, value_arrays, value_arrays, alphas)
def test_merge_is_order_independent_and_equals_concatenation(a, b, c, alpha):
    sa, sb, sc = (Sketch.from_values(x, alpha) for x in (a, b, c))
    whole = Sketch.from_values(np.concatenate([a, b, c]), alpha)
    assert sa.merge(sb).merge(sc) == whole
    assert sc.merge(sa.merge(sb)) == whole
    assert merge_all([sb, sc, sa]) == whole
    assert merge_all([sa, sb, sc]).encode() == whole.encode()
    assert whole.count == a.size + b.size + c.size


@given(st.lists(value_arrays, max_size=8), alphas)
def test_merge_all_equals_pairwise_merges(parts, alpha):
    sketches = [Sketch.from_values(p, alpha) for p in parts]
    expected = Sketch(alpha)
    for s in sketches:
        expected = expected.merge(s)
    assert merge_all(sketches, alpha=alpha) == expected


def test_merge_rejects_different_alpha():
    with pytest.raises(ValueError, match="different accuracy"):
        Sketch.from_values([1.0], 0.01).merge(Sketch.from_values([1.0], 0.02))
    with pytest.raises(ValueError):
        merge_all([])


@given(value_arrays, alphas)
def test_encode_decode_round_trip(values, alpha):
    s = Sketch.from_values(values, alpha)
    text = s.encode()
    back = Sketch.decode(text, expected_alpha=alpha)
    assert back == s
    assert back.encode() == text
    assert back.count == s.count == values.size


@given(
    st.dictionaries(st.integers(-2000, 2000), st.integers(1, 10**15), max_size=50),
    st.dictionaries(st.integers(-2000, 2000), st.integers(1, 10**6), max_size=50),
    st.integers(0, 10**6),
)
def test_round_trip_of_arbitrary_buckets(positive, negative, zeros):
    s = Sketch.from_buckets(ALPHA, positive, negative, zeros)
    back = Sketch.decode(s.encode(), ALPHA)
    assert back.positive_buckets() == positive
    assert back.negative_buckets() == negative
    assert back.zero_count == zeros
    assert back.count == zeros + sum(positive.values()) + sum(negative.values())


def test_encoding_is_compact_and_names_alpha():
    rng = np.random.default_rng(7)
    s = Sketch.from_values(rng.lognormal(math.log(200), 1.0, 100_000), ALPHA)
    text = s.encode()
    assert text.startswith("v1:a=0.01:n=100000:p=")
    assert len(s.positive_buckets()) > 300
    assert len(text) < 3 * len(s.positive_buckets())
    assert Sketch(ALPHA).encode() == "v1:a=0.01:n=0"
    assert Sketch.from_values([0.0, -0.0], ALPHA).encode() == "v1:a=0.01:n=2:z=2"


def test_encoding_spelled_out():
    s = Sketch.from_buckets(0.01, {5: 1, 6: 3, 9: 40}, {-2: 2}, 1)
    # 5:1 -> A, 6:3 -> E, gap of 2 -> D, 9:40 -> token 78 = 14 + 2*32 -> "uC"
    assert s.encode() == "v1:a=0.01:n=47:z=1:p=5,AEDuC:m=-2,C"


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("", "no version"),
        ("hello", "no version"),
        ("v2:a=0.01:n=0", "unknown encoding version 'v2'"),
        ("v1:n=0", "missing"),
        ("v1:a=0.01", "missing"),
        ("v1:a=0.010:n=0", "canonical"),
        ("v1:a=1.5:n=0", "canonical"),
        ("v1:a=nan:n=0", "canonical"),
        ("v1:a=x:n=0", "not a number"),
        ("v1:a=0.01:n=-1", "non-negative"),
        ("v1:a=0.01:n=01", "non-negative"),
        ("v1:a=0.01:n=1:z=-1", "non-negative"),
        ("v1:a=0.01:n=0:z=0", "omitted"),
        ("v1:a=0.01:n=1", "sum to 0"),
        ("v1:a=0.01:n=2:p=5,A", "sum to 1"),
        ("v1:a=0.01:n=1:p=5", "first index"),
        ("v1:a=0.01:n=1:p=5,", "no buckets"),
        ("v1:a=0.01:n=1:p=x,A", "first index"),
        ("v1:a=0.01:n=1:p=5,A!", "alphabet"),
        ("v1:a=0.01:n=1:p=5,Aé", "alphabet"),
        ("v1:a=0.01:n=1:p=5,g", "ends inside"),
        ("v1:a=0.01:n=1:p=5,gA", "superfluous"),
        ("v1:a=0.01:n=2:p=5,BA", "start and end"),
        ("v1:a=0.01:n=2:p=5,ABBA", "two gaps"),
        ("v1:a=0.01:n=1:p=99999999,A", "out of range"),
        ("v1:a=0.01:n=1:p=5,A:p=5,A", "repeated or out of order"),
        ("v1:a=0.01:p=5,A:n=1", "repeated or out of order"),
        ("v1:a=0.01:n=1:q=5", "unknown key"),
        ("v1:a=0.01:n=1:zz", "not key=value"),
        ("v1:a=0.01:n=1:p=5," + "g" * 20 + "A", "too large"),
    ],
)
def test_decode_rejects_malformed(text, message):
    with pytest.raises(SketchDecodeError, match=message):
        Sketch.decode(text)


def test_decode_rejects_foreign_alpha_and_keeps_message_short():
    text = Sketch.from_values(np.arange(1.0, 5000.0), 0.02).encode()
    with pytest.raises(SketchDecodeError, match=r"expected 0\.01") as info:
        Sketch.decode(text, expected_alpha=0.01)
    assert len(str(info.value)) < 120
    assert text[30:60] not in str(info.value)
    assert Sketch.decode(text, expected_alpha=0.02).count == 4999


@given(st.text(max_size=60))
def test_decode_of_noise_never_raises_anything_else(text):
    with contextlib.suppress(SketchDecodeError):
        Sketch.decode(text)


def _exact_check(values: np.ndarray, alpha: float, ps: list[float]) -> None:
    s = Sketch.from_values(values, alpha)
    ordered = np.sort(values)
    for p in ps:
        assert_within(s.quantile(p), nearest_rank(ordered, p), alpha)


STANDARD_PS = [0.1, 1, 5, 10, 25, 50, 75, 90, 95, 99, 99.9, 99.99, 100]
RNG = np.random.default_rng(12345)


@pytest.mark.parametrize(
    "values",
    [
        pytest.param(RNG.lognormal(math.log(200), 1.0, 20_000), id="lognormal"),
        pytest.param(
            np.concatenate([RNG.normal(20, 2, 5000), RNG.normal(3000, 300, 5000)]), id="bimodal"
        ),
        pytest.param(RNG.pareto(1.1, 20_000) + 1, id="pareto"),
        pytest.param(np.full(1000, 217.5), id="constant"),
        pytest.param(np.array([42.0]), id="single"),
        pytest.param(
            np.concatenate([np.zeros(300), -RNG.lognormal(3, 2, 700), RNG.lognormal(3, 2, 700)]),
            id="zeros-and-negatives",
        ),
        pytest.param(np.array([5e-324, 1e-300, 1.0, 1e300, 1.7e308]), id="extremes"),
    ],
)
@pytest.mark.parametrize("alpha", [0.001, 0.01, 0.05])
def test_quantile_within_alpha_of_exact_nearest_rank(values, alpha):
    _exact_check(values, alpha, STANDARD_PS)


@settings(max_examples=200)
@given(hnp.arrays(np.float64, st.integers(0, 300), elements=finite), alphas, percentiles)
def test_quantile_within_alpha_property(values, alpha, p):
    _exact_check(values, alpha, [p])


def test_quantile_out_of_range_is_none():
    s = Sketch.from_values([1.0, 2.0, 3.0], ALPHA)
    assert s.quantile(10) is None  # floor(0.3 + 0.5) - 1 = -1
    assert s.quantile(0) is None
    assert s.quantile(150) is None  # floor(4.5 + 0.5) - 1 = 4 >= N
    assert Sketch(ALPHA).quantile(50) is None
    with pytest.raises(ValueError):
        s.quantile(math.nan)


@given(value_arrays, alphas, finite)
def test_fraction_at_most_bounds_the_exact_share(values, alpha, threshold):
    s = Sketch.from_values(values, alpha)
    bounds = s.fraction_at_most(threshold)
    if values.size == 0:
        assert bounds is None
        return
    assert bounds is not None
    lower, upper = bounds
    exact = float(np.count_nonzero(values <= threshold)) / values.size
    assert lower <= exact <= upper
    low_n, high_n = s.count_at_most(threshold)
    # Only the one bucket holding the threshold is uncertain.
    if threshold > 0:
        k = math.ceil(math.log(threshold) / math.log((1 + alpha) / (1 - alpha)))
        assert high_n - low_n <= s.positive_buckets().get(k, 0) + s.positive_buckets().get(
            k + 1, 0
        ) + s.positive_buckets().get(k - 1, 0)


def test_fraction_at_most_edges():
    s = Sketch.from_values([-1.0, 0.0, 0.0, 5.0], ALPHA)
    assert s.fraction_at_most(0.0) == (0.75, 0.75)
    assert s.fraction_at_most(math.inf) == (1.0, 1.0)
    assert s.fraction_at_most(-math.inf) == (0.0, 0.0)
    assert s.fraction_at_most(1000.0) == (1.0, 1.0)


def test_from_values_rejects_non_finite():
    for bad in (math.nan, math.inf, -math.inf):
        with pytest.raises(ValueError, match="finite"):
            Sketch.from_values(np.array([1.0, bad]), ALPHA)
    for alpha in (0.0, 1.0, -0.1, math.nan):
        with pytest.raises(ValueError, match="alpha"):
            Sketch.from_values([1.0], alpha)


@given(value_arrays, alphas)
def test_count_equals_sum_of_bucket_counts(values, alpha):
    s = Sketch.from_values(values, alpha)
    total = s.zero_count + sum(s.positive_buckets().values()) + sum(s.negative_buckets().values())
    assert s.count == total == values.size


def test_bucket_boundaries_follow_the_definition():
    alpha = 0.5  # gamma = 3
    s = Sketch.from_values([1.0, 2.0, 3.0, 3.5, 9.0, 10.0], alpha)
    assert s.positive_buckets() == {0: 1, 1: 2, 2: 2, 3: 1}
    assert s.representative(1) == pytest.approx(1.5)


# -- the fast readers agree with the reference decoder ---------------------------------------

JUNK = "ABCDEFabfgz09-_:,=vn1pzm.é\n"


def _reference(text: object, alpha: float | None) -> Sketch | SketchDecodeError:
    try:
        return _reference_decode(text, alpha)  # type: ignore[arg-type]
    except SketchDecodeError as exc:
        return exc


def _mutations(text: str, data: st.DataObject) -> list[str]:
    """A few near-misses of a valid encoding: characters replaced, inserted or dropped."""
    out = []
    for _ in range(4):
        i = data.draw(st.integers(0, len(text)))
        junk = data.draw(st.text(alphabet=JUNK, max_size=3))
        cut = data.draw(st.integers(0, 2))
        out.append(text[:i] + junk + text[i + cut :])
    return out


sketch_strategy = st.builds(
    lambda pos, neg, zeros, alpha: Sketch.from_buckets(alpha, pos, neg, zeros),
    st.dictionaries(st.integers(-1100, 1100), st.integers(1, 2**40), max_size=30),
    st.dictionaries(st.integers(-300, 300), st.sampled_from([1, 2, 17, 600, 2**35]), max_size=8),
    st.integers(0, 3),
    alphas,
)


@settings(max_examples=300, deadline=None)
@given(sketch_strategy, st.data())
def test_fast_readers_equal_the_reference_decoder(s: Sketch, data: st.DataObject) -> None:
    text = s.encode()
    assert Sketch.decode(text) == s == _reference_decode(text, None)
    assert Sketch.decode(text).encode() == text
    assert total_count(text, s.alpha) == s.count
    for candidate in [text, *_mutations(text, data)]:
        for alpha in (None, s.alpha, 0.01):
            expected = _reference(candidate, alpha)
            fast = read_one(candidate, alpha)
            total = read_total(candidate, alpha)
            if isinstance(expected, SketchDecodeError):
                # The fast readers decline; the public functions then raise the reference's error.
                assert fast is None and total is None
                with pytest.raises(SketchDecodeError, match=re.escape(str(expected))):
                    Sketch.decode(candidate, alpha)
                with pytest.raises(SketchDecodeError, match=re.escape(str(expected))):
                    total_count(candidate, alpha)
            else:
                assert fast is None or Sketch._make(*fast) == expected
                assert total in (None, expected.count)
                assert Sketch.decode(candidate, alpha) == expected
                assert total_count(candidate, alpha) == expected.count


@settings(max_examples=200, deadline=None)
@given(st.lists(sketch_strategy, min_size=1, max_size=6), st.data())
def test_decode_many_equals_decoding_one_by_one(
    sketches: list[Sketch], data: st.DataObject
) -> None:
    texts: list[object] = [s.encode() for s in sketches]
    if data.draw(st.booleans()):
        i = data.draw(st.integers(0, len(texts) - 1))
        texts[i] = data.draw(st.sampled_from([*_mutations(str(texts[i]), data), None, 5]))
    alpha = data.draw(st.sampled_from([None, sketches[0].alpha]))
    expected = [_reference(t, alpha) for t in texts]
    failures = [e for e in expected if isinstance(e, SketchDecodeError)]
    batch = read_batch(texts, alpha)
    if failures:
        assert batch is None
        with pytest.raises(SketchDecodeError, match=re.escape(str(failures[0]))):
            decode_many(texts, alpha)
    else:
        assert decode_many(texts, alpha) == expected
        assert [s.encode() for s in decode_many(texts, alpha)] == texts


@given(st.lists(value_arrays, min_size=2, max_size=5), alphas)
def test_decode_many_of_real_histograms_takes_the_batch_path(parts, alpha):
    sketches = [Sketch.from_values(p, alpha) for p in parts]
    texts = [s.encode() for s in sketches]
    assert read_batch(texts, alpha) is not None
    assert decode_many(texts, alpha) == sketches


def test_total_counts_of_a_batch_equal_one_by_one_totals() -> None:
    from federation.core.sketch import total_count, total_counts

    rng = np.random.default_rng(11)
    texts: list[object] = [
        Sketch.from_values(rng.lognormal(5, 1, int(n)), 0.01).encode()
        for n in rng.integers(1, 300, 40)
    ]
    assert total_counts(texts, 0.01) == [total_count(t, 0.01) for t in texts]
    mixed = [*texts[:3], "v1:a=0.01:n=2:p=0,A", Sketch.from_values([1.0, 2.0], 0.02).encode(), 7]
    expected: list[int | None] = []
    for text in mixed:
        try:
            expected.append(total_count(text, 0.01))
        except SketchDecodeError:
            expected.append(None)
    assert total_counts(mixed, 0.01) == expected
    assert expected[3:] == [None, None, None]


# -- the batch writer agrees with the reference writer ---------------------------------------


@settings(max_examples=300, deadline=None)
@given(st.lists(sketch_strategy, max_size=8))
def test_encode_many_equals_encoding_one_by_one(sketches: list[Sketch]) -> None:
    assert encode_many(sketches) == [s.encode() for s in sketches]


@settings(max_examples=100, deadline=None)
@given(st.lists(value_arrays, min_size=2, max_size=6), alphas)
def test_encode_many_of_real_histograms_takes_the_batch_path(parts, alpha):
    sketches = [Sketch.from_values(p, alpha) for p in parts]
    texts = write_many(
        [repr(alpha)] * len(sketches),
        [s.count for s in sketches],
        [s.zero_count for s in sketches],
        _stores([s._pos_idx for s in sketches], [s._pos_cnt for s in sketches]),
        _stores([s._neg_idx for s in sketches], [s._neg_cnt for s in sketches]),
    )
    assert texts == [s.encode() for s in sketches]


def test_encode_many_keeps_the_golden_strings():
    spelled = Sketch.from_buckets(0.01, {5: 1, 6: 3, 9: 40}, {-2: 2}, 1)
    zeros = Sketch.from_values([0.0, -0.0], ALPHA)
    long_gap = Sketch.from_buckets(0.3, {-100: 1, 900: 2**40, 901: 33})
    assert encode_many([spelled, Sketch(ALPHA), zeros, long_gap]) == [
        "v1:a=0.01:n=47:z=1:p=5,AEDuC:m=-2,C",
        "v1:a=0.01:n=0",
        "v1:a=0.01:n=2:z=2",
        "v1:a=0.3:n=1099511627810:p=-100,At-B-_______BgC",
    ]
    # Counts past the batch writer's digit arithmetic are written by the reference writer.
    huge = Sketch.from_buckets(ALPHA, {1: 2**59, 3: 1})
    assert write_many(
        ["0.01", "0.01"], [huge.count, 1], [0, 1],
        _stores([huge._pos_idx, _EMPTY], [huge._pos_cnt, _EMPTY]),
        _stores([_EMPTY, _EMPTY], [_EMPTY, _EMPTY]),
    ) is None  # fmt: skip
    assert encode_many([huge, spelled]) == [huge.encode(), spelled.encode()]


@given(value_arrays, value_arrays, alphas)
def test_subtract_takes_a_merged_part_away_exactly(a, b, alpha):
    part = Sketch.from_values(b, alpha)
    whole = Sketch.from_values(a, alpha)
    assert subtract(merge_all([whole, part]), part) == whole
    assert subtract(part, part) == Sketch(alpha)
    if part.count and whole != merge_all([whole, part]):
        with pytest.raises(ValueError):
            subtract(whole, merge_all([whole, part]))


def test_subtract_refuses_what_the_total_does_not_hold():
    total = Sketch.from_buckets(ALPHA, {3: 2, 5: 1}, zero_count=1)
    with pytest.raises(ValueError, match="lacks"):
        subtract(total, Sketch.from_buckets(ALPHA, {4: 1}))
    with pytest.raises(ValueError, match="in a bucket"):
        subtract(total, Sketch.from_buckets(ALPHA, {5: 2}))
    with pytest.raises(ValueError, match="more values"):
        subtract(total, Sketch.from_buckets(ALPHA, zero_count=2))
    with pytest.raises(ValueError, match="accuracy"):
        subtract(total, Sketch(0.02))
    assert subtract(total, Sketch.from_buckets(ALPHA, {3: 2})).encode() == "v1:a=0.01:n=2:z=1:p=5,A"


@settings(max_examples=200, deadline=None)
@given(st.lists(sketch_strategy, min_size=2, max_size=8), st.data())
def test_decode_sums_equal_merging_the_decoded_histograms(
    sketches: list[Sketch], data: st.DataObject
) -> None:
    alpha = sketches[0].alpha
    same = [Sketch.from_buckets(alpha, s.positive_buckets(), s.negative_buckets(), s.zero_count)
            for s in sketches]  # fmt: skip
    n_owners = data.draw(st.integers(1, len(same)))
    owners = [i % n_owners for i in range(len(same))]
    data.draw(st.randoms()).shuffle(owners)
    texts: list[object] = [s.encode() for s in same]
    expected = [
        merge_all([s for s, o in zip(same, owners, strict=True) if o == k]) for k in range(n_owners)
    ]
    # Narrower, never broader: what the batch reader declines is left to the one-by-one path.
    assert decode_sums(texts, owners, n_owners) in (None, expected)
    assert decode_sums([*texts[:-1], "v1:a=0.01:n=2:p=5,A"], owners, n_owners) is None
    real = [Sketch.from_values(np.abs(data.draw(value_arrays)), alpha) for _ in same]
    assert decode_sums([s.encode() for s in real], owners, n_owners) == [
        merge_all([s for s, o in zip(real, owners, strict=True) if o == k], alpha)
        for k in range(n_owners)
    ]


@given(st.lists(value_arrays, min_size=2, max_size=8), st.data())
@settings(max_examples=60, deadline=None)
def test_signed_decode_sums_take_parts_away_exactly(
    arrays: list[np.ndarray], data: st.DataObject
) -> None:
    # Owner k holds its wholes merged with its parts; taking the parts away leaves the wholes.
    n_owners = data.draw(st.integers(1, len(arrays)))
    wholes = [Sketch.from_values(a, ALPHA) for a in arrays]
    parts = [Sketch.from_values(a[: data.draw(st.integers(0, a.size))], ALPHA) for a in arrays]
    owners = [i % n_owners for i in range(len(arrays))]
    texts: list[object] = [merge_all([w, p]).encode() for w, p in zip(wholes, parts, strict=True)]
    texts += [p.encode() for p in parts]
    sums = decode_sums(texts, owners + owners, n_owners, [1] * len(arrays) + [-1] * len(arrays))
    expected = [
        merge_all([w for w, o in zip(wholes, owners, strict=True) if o == k], ALPHA)
        for k in range(n_owners)
    ]
    assert sums in (None, expected)
    if sums is not None:
        assert [s.encode() for s in sums] == [s.encode() for s in expected]
    if sums is not None and any(w.count for w in wholes):
        with pytest.raises(ValueError):  # more taken away than an owner holds
            decode_sums(texts, owners + owners, n_owners, [-1] * len(arrays) + [1] * len(arrays))
