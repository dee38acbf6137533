from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from federation.core.sketch import Sketch
from federation.core.stats import (
    GroupedValues,
    GroupSummary,
    apply_k_anonymity,
    nearest_rank,
    percentile_field,
    summarize_groups,
)

ALPHA = 0.01
finite = st.floats(min_value=-1e9, max_value=1e9, allow_nan=False, allow_infinity=False)
ps = st.floats(min_value=0.0, max_value=100.0, exclude_min=True)


@pytest.mark.parametrize(
    ("p", "name"),
    [
        (50, "p50"),
        (50.0, "p50"),
        (95, "p95"),
        (99.9, "p99_9"),
        (99.99, "p99_99"),
        (100, "p100"),
        (0.5, "p0_5"),
        (0.00001, "p0_00001"),
        (12.25, "p12_25"),
    ],
)
def test_percentile_field(p, name):
    assert percentile_field(p) == name


@pytest.mark.parametrize("p", [0, -1, 100.5, math.nan, math.inf, True])
def test_percentile_field_rejects(p):
    with pytest.raises(ValueError):
        percentile_field(p)


def reference_nearest_rank(values: list[float], p: float) -> float | None:
    # InfluxQL: sort, i = int(floor(N * p / 100 + 0.5)) - 1, nothing when out of range.
    ordered = sorted(values)
    i = math.floor(len(ordered) * p / 100.0 + 0.5) - 1
    if i < 0 or i >= len(ordered):
        return None
    return ordered[i]


@given(st.lists(finite, max_size=100), ps)
def test_nearest_rank_matches_reference(values, p):
    assert nearest_rank(np.sort(np.array(values, dtype=np.float64)), p) == (
        reference_nearest_rank(values, p)
    )


def test_nearest_rank_small_cases():
    v = np.array([10.0, 20.0, 30.0, 40.0])
    assert nearest_rank(v, 50) == 20.0  # floor(2.5) - 1 = 1
    assert nearest_rank(v, 100) == 40.0
    assert nearest_rank(v, 12.5) == 10.0  # floor(1.0) - 1 = 0
    assert nearest_rank(v, 12.4) is None  # floor(0.996) - 1 = -1
    assert nearest_rank(np.array([], dtype=np.float64), 50) is None


def reference_summaries(values, codes, n_groups, percentiles, alpha):
    out: list[GroupSummary | None] = []
    for g in range(n_groups):
        vals = [float(v) + 0.0 for v, c in zip(values, codes, strict=True) if c == g]
        if not vals:
            out.append(None)
            continue
        pct = {}
        for p in percentiles:
            x = reference_nearest_rank(vals, p)
            if x is not None:
                pct[percentile_field(p)] = x
        out.append(
            GroupSummary(
                count=len(vals),
                sum=math.fsum(vals),
                min=min(vals),
                max=max(vals),
                percentiles=pct,
                sketch=Sketch.from_values(np.array(vals), alpha),
            )
        )
    return out


@st.composite
def grouped(draw, elements=finite):
    n_groups = draw(st.integers(1, 12))
    n = draw(st.integers(0, 150))
    values = draw(hnp.arrays(np.float64, n, elements=elements))
    codes = draw(hnp.arrays(np.int64, n, elements=st.integers(0, n_groups - 1)))
    return values, codes, n_groups


@settings(max_examples=200)
@given(grouped(), st.lists(ps, max_size=4, unique_by=percentile_field))
def test_summarize_groups_equals_per_group_reference(data, percentiles):
    values, codes, n_groups = data
    got = summarize_groups(values, codes, n_groups, percentiles, ALPHA)
    assert got == reference_summaries(values, codes, n_groups, percentiles, ALPHA)


@settings(max_examples=200)
@given(grouped(), st.lists(ps, max_size=4, unique_by=percentile_field), st.data())
def test_any_groups_summaries_equal_the_whole_windows(data, percentiles, draw):
    """Summaries asked a few groups at a time, in any order, are those of `summarize_groups`."""
    values, codes, n_groups = data
    every = reference_summaries(values, codes, n_groups, percentiles, ALPHA)
    present = [g for g, summary in enumerate(every) if summary is not None]
    asked = draw.draw(st.lists(st.sampled_from(present), max_size=8) if present else st.just([]))
    grouped_values = GroupedValues(values, codes, n_groups, percentiles, ALPHA)
    assert grouped_values.sizes.tolist() == np.bincount(codes, minlength=n_groups).tolist()
    assert grouped_values.summaries(asked) == [every[g] for g in asked]


def test_a_group_without_values_has_no_summary():
    grouped_values = GroupedValues(np.array([1.0, 2.0]), np.array([0, 0]), 2, [50], ALPHA)
    with pytest.raises(ValueError, match="without values"):
        grouped_values.summaries([1])


# Few distinct magnitudes and values differing only in their last bits: many ties and
# near-ties within a group, which the packed sort key cannot tell apart on its own.
near_ties = st.builds(
    lambda base, ulps, sign: sign * base * (1 + ulps * 2.0**-52),
    st.sampled_from([1.0, 3.0, 200.0, 0.0]),
    st.integers(0, 64),
    st.sampled_from([-1.0, 1.0]),
)


@settings(max_examples=200)
@given(grouped(elements=near_ties))
def test_summarize_groups_orders_near_ties(data):
    values, codes, n_groups = data
    got = summarize_groups(values, codes, n_groups, [50, 99], ALPHA)
    assert got == reference_summaries(values, codes, n_groups, [50, 99], ALPHA)


def test_summarize_groups_sum_is_exact_fsum():
    values = np.array([1e16, 1.0, -1e16, 1.0, 0.1, 0.2, 0.3])
    codes = np.zeros(values.size, dtype=np.int64)
    (summary,) = summarize_groups(values, codes, 1, [50], ALPHA)
    assert summary is not None
    assert summary.sum == math.fsum(values.tolist())
    assert summary.sum != float(np.sum(values))


def test_summarize_groups_large_many_groups():
    rng = np.random.default_rng(3)
    values = rng.lognormal(math.log(200), 1.0, 50_000)
    values[::97] = 0.0
    values[::89] *= -1
    n_groups = 70_000  # more than 16 bits of group code
    codes = rng.integers(0, n_groups, values.size)
    got = summarize_groups(values, codes, n_groups, [50, 95, 99.9], ALPHA)
    order = np.lexsort((values, codes))
    sv, sc = values[order], codes[order]
    bounds = np.searchsorted(sc, np.arange(n_groups + 1))
    for g in range(0, n_groups, 7):
        a, b = bounds[g], bounds[g + 1]
        s = got[g]
        if a == b:
            assert s is None
            continue
        assert s is not None
        group = sv[a:b]
        assert s.count == b - a
        assert s.sum == math.fsum(group.tolist())
        assert (s.min, s.max) == (group[0], group[-1])
        assert s.percentiles.get("p95") == nearest_rank(group, 95)
        assert s.sketch == Sketch.from_values(group, ALPHA)


def test_summarize_groups_rejects_bad_input():
    v = np.array([1.0, 2.0])
    c = np.array([0, 1])
    with pytest.raises(ValueError, match="finite"):
        summarize_groups(np.array([1.0, math.nan]), c, 2, [50], ALPHA)
    with pytest.raises(ValueError, match="group codes"):
        summarize_groups(v, np.array([0, 2]), 2, [50], ALPHA)
    with pytest.raises(ValueError, match="group codes"):
        summarize_groups(v, np.array([0, -1]), 2, [50], ALPHA)
    with pytest.raises(ValueError, match="group codes"):
        summarize_groups(v, np.array([0]), 2, [50], ALPHA)
    with pytest.raises(ValueError, match="twice"):
        summarize_groups(v, c, 2, [50, 50.0], ALPHA)
    with pytest.raises(ValueError, match="alpha"):
        summarize_groups(v, c, 2, [50], 1.0)
    assert summarize_groups(np.array([]), np.array([], dtype=np.int64), 3, [50], ALPHA) == [
        None,
        None,
        None,
    ]


def test_apply_k_anonymity():
    summaries = summarize_groups(
        np.arange(1.0, 11.0), np.array([0, 0, 0, 1, 1, 3, 3, 3, 3, 3]), 4, [50], ALPHA
    )
    assert apply_k_anonymity(summaries, 3) == ([0, 3], 2)
    assert apply_k_anonymity(summaries, 1) == ([0, 1, 3], 0)
    assert apply_k_anonymity(summaries, 100) == ([], 10)
    with pytest.raises(ValueError):
        apply_k_anonymity(summaries, 0)


@pytest.mark.parametrize("n_groups", [5, 70_000])
def test_summarize_groups_without_packed_key(monkeypatch, n_groups):
    # Force the argsort/lexsort ordering used when the packed key has too few value bits.
    import federation.core.stats as stats

    monkeypatch.setattr(stats, "_MIN_VALUE_BITS", 65)
    rng = np.random.default_rng(5)
    values = np.round(rng.lognormal(3, 1, 400), 1) * rng.choice([-1.0, 0.0, 1.0], 400)
    codes = rng.integers(0, 5, 400)
    got = summarize_groups(values, codes, n_groups, [50, 90], ALPHA)
    assert got[:5] == reference_summaries(values, codes, 5, [50, 90], ALPHA)
    assert all(s is None for s in got[5:])


@settings(max_examples=100, deadline=None)
@given(
    st.lists(st.tuples(st.integers(0, 5), st.floats(-1e6, 1e6)), max_size=60),
    st.integers(1, 6),
)
def test_min_count_leaves_out_small_groups_and_nothing_else(
    rows: list[tuple[int, float]], k: int
) -> None:
    codes = np.array([c for c, _ in rows], dtype=np.int64)
    values = np.array([v for _, v in rows], dtype=np.float64)
    every = summarize_groups(values, codes, 6, [50, 99], 0.01)
    some = summarize_groups(values, codes, 6, [50, 99], 0.01, min_count=k)
    for full, kept in zip(every, some, strict=True):
        assert kept == (full if full is not None and full.count >= k else None)
