"""Window points from raw values: summaries, k-anonymity, manifest, against an independent computation."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from federation.config import load_config
from federation.config.resolve import resolve_plan
from federation.core.aggregate import (
    RowGrouper,
    group_rows,
    lazy_window_points,
    manifest_point,
    window_points,
)
from federation.core.lineprotocol import serialize
from federation.core.points import Point
from federation.core.sketch import Sketch
from federation.core.stats import GroupedValues, GroupSummary, summarize_groups

REPO = Path(__file__).resolve().parent.parent
PLAN = resolve_plan(load_config(REPO), "delivery_latency", "dub1")  # k = 5


def reference_percentile(values: list[float], p: float) -> float | None:
    ordered = sorted(values)
    index = math.floor(len(ordered) * p / 100 + 0.5) - 1
    return ordered[index] if 0 <= index < len(ordered) else None


def test_summaries_match_an_independent_computation() -> None:
    rng = np.random.default_rng(7)
    n = 4000
    values = rng.lognormal(5, 1, n)
    direction = rng.choice(["inbound", "outbound"], n).tolist()
    mailer = rng.choice(["mx1", "mx2", "mx3"], n).tolist()
    customer = rng.choice([f"c{i}" for i in range(40)] + [None], n).tolist()  # type: ignore[list-item]
    points = window_points(PLAN, 3600 * 10**9, values, [direction, mailer, customer], run=42)
    manifest = points[-1]
    assert manifest.measurement == "federation_manifest"
    assert manifest.fields["events"] == n and manifest.fields["run"] == 42
    assert manifest.fields["version"] == PLAN.version
    groups: dict[tuple[str, str, str], list[float]] = {}
    for v, d, m, c in zip(values.tolist(), direction, mailer, customer, strict=True):
        groups.setdefault((d, m, c or "_none"), []).append(v)
    kept = {k: v for k, v in groups.items() if len(v) >= 5}
    summaries = points[:-1]
    assert len(summaries) == len(kept) == manifest.fields["groups"]
    assert manifest.fields["suppressed_events"] == sum(
        len(v) for k, v in groups.items() if k not in kept
    )
    assert (
        sum(int(p.fields["count"]) for p in summaries) + int(manifest.fields["suppressed_events"])
        == n
    )
    for point in summaries:
        key = (point.tags["direction"], point.tags["mailer"], point.tags["customer"])
        raw = kept[key]
        assert point.tags["dc"] == "dub1" and point.time_ns == 3600 * 10**9
        assert point.fields["count"] == len(raw)
        assert point.fields["sum"] == math.fsum(raw)
        assert point.fields["min"] == min(raw) and point.fields["max"] == max(raw)
        for p, name in zip(PLAN.percentiles, PLAN.percentile_fields, strict=True):
            assert point.fields.get(name) == reference_percentile(raw, p)
        sketch = Sketch.decode(str(point.fields["sketch"]), expected_alpha=PLAN.accuracy)
        assert sketch.count == len(raw)
    assert [p.tags for p in summaries] == sorted(
        (p.tags for p in summaries), key=lambda t: tuple(t.values())
    )


def test_empty_window_still_has_a_manifest() -> None:
    points = window_points(PLAN, 0, np.array([], dtype=np.float64), [[], [], []], run=1)
    assert len(points) == 1
    assert points[0].fields == {
        "events": 0,
        "groups": 0,
        "suppressed_events": 0,
        "personal_value_events": 0,
        "version": PLAN.version,
        "run": 1,
    }


def test_a_group_with_a_personal_looking_dimension_value_is_withheld() -> None:
    # Raw data written by something other than ingest may hold an address in a dimension tag.
    # The gateway refuses any batch carrying it, so the group stays in the DC, counted.
    n = 60
    values = np.arange(1.0, n + 1.0)
    direction = ["inbound"] * n
    mailer = ["mx1"] * 20 + ["192.0.2.55"] * 20 + ["mx2"] * 20
    customer = ["c1"] * 10 + ["bob@example.org"] * 10 + ["c1"] * 20 + ["c2"] * 20
    points = window_points(PLAN, 0, values, [direction, mailer, customer], run=3)
    manifest = points[-1].fields
    summaries = points[:-1]
    assert [(p.tags["mailer"], p.tags["customer"]) for p in summaries] == [
        ("mx1", "c1"),
        ("mx2", "c2"),
    ]
    assert manifest["events"] == n and manifest["groups"] == 2
    # (mx1, bob@…) 10 events, (192.0.2.55, c1) 20 events
    assert manifest["personal_value_events"] == 30
    assert manifest["suppressed_events"] == 30
    assert sum(int(p.fields["count"]) for p in summaries) + 30 == n
    # One point per line, so the gateway's own detector would see any value that slipped by.
    assert "@" not in serialize(points).decode() and "192.0.2" not in serialize(points).decode()


def test_personal_groups_below_k_count_in_both_totals() -> None:
    values = np.arange(1.0, 13.0)
    customer = ["c1"] * 10 + ["2001:db8::1"] * 2
    points = window_points(PLAN, 0, values, [["in"] * 12, ["mx1"] * 12, customer], run=1)
    assert points[-1].fields["suppressed_events"] == 2
    assert points[-1].fields["personal_value_events"] == 2


def test_no_personal_key_or_value_in_output() -> None:
    values = np.full(10, 12.0)
    points = window_points(PLAN, 0, values, [["inbound"] * 10, ["mx1"] * 10, ["c1"] * 10], run=1)
    for point in points:
        assert not (set(point.tags) | set(point.fields)) & PLAN.personal_keys


@settings(max_examples=60, deadline=None)
@given(
    st.lists(
        st.tuples(st.sampled_from(["a", "b", "", None]), st.sampled_from(["x", None])), max_size=60
    )
)
def test_grouping_is_order_independent_and_maps_missing_to_none(
    rows: list[tuple[str | None, str | None]],
) -> None:
    first = [r[0] for r in rows]
    second = [r[1] for r in rows]
    codes, keys = group_rows([first, second], len(rows))
    for i, (a, b) in enumerate(rows):
        assert keys[codes[i]] == (a or "_none", b or "_none")
    assert len(set(keys)) == len(keys)


def test_row_order_does_not_change_points() -> None:
    rng = np.random.default_rng(3)
    values = rng.lognormal(4, 0.5, 500)
    dims = [
        rng.choice(["in", "out"], 500).tolist(),
        rng.choice(["m1", "m2"], 500).tolist(),
        ["c"] * 500,
    ]
    order = rng.permutation(500)
    shuffled = [[col[i] for i in order] for col in dims]
    assert window_points(PLAN, 0, values, dims, run=5) == window_points(
        PLAN, 0, values[order], shuffled, run=5
    )


# -- the vectorised paths equal the straightforward ones -------------------------------------


def reference_group_rows(
    columns: list[list[str | None]], n_rows: int
) -> tuple[list[int], list[tuple[str, ...]]]:
    """Group codes the plain way: per-row dictionaries, in the same numbering."""
    if not columns:
        return [0] * n_rows, [()]
    per_column = []
    for column in columns:
        index: dict[str | None, int] = {}
        codes = [index.setdefault(v, len(index)) for v in column]
        per_column.append((codes, [v or "_none" for v in index]))
    combined = [0] * n_rows
    for codes, labels in per_column:
        combined = [c * max(len(labels), 1) + x for c, x in zip(combined, codes, strict=True)]
    unique = sorted(set(combined))
    keys = []
    for value in unique:
        parts = []
        for _, labels in reversed(per_column):
            value, code = divmod(value, max(len(labels), 1))
            parts.append(labels[code])
        keys.append(tuple(reversed(parts)))
    canonical: dict[tuple[str, ...], int] = {}
    remap = [canonical.setdefault(k, len(canonical)) for k in keys]
    position = {v: i for i, v in enumerate(unique)}
    return [remap[position[c]] for c in combined], list(canonical)


def reference_window_points(values: np.ndarray, dims: list[list[str | None]]) -> bytes:
    """`window_points` as written before k-anonymity moved into `summarize_groups`."""
    codes, keys = reference_group_rows(dims, len(values))
    summaries = summarize_groups(
        values, np.array(codes, dtype=np.int64), len(keys), PLAN.percentiles, PLAN.accuracy
    )
    points, suppressed = [], 0
    for code in sorted(range(len(keys)), key=keys.__getitem__):
        s = summaries[code]
        if s is None:
            continue
        if s.count < PLAN.min_group_events:
            suppressed += s.count
            continue
        fields = {"count": s.count, "sum": s.sum, "min": s.min, "max": s.max, **s.percentiles}
        fields["sketch"] = s.sketch.encode()
        tags = {"dc": PLAN.dc, **dict(zip(PLAN.dimensions, keys[code], strict=True))}
        points.append(Point(PLAN.aggregation, tags, fields, 0))
    points.append(
        manifest_point(
            PLAN, 0, events=len(values), groups=len(points), suppressed_events=suppressed, run=3
        )
    )
    return serialize(points)


tag_values = st.sampled_from(["a", "b", "", None, "c", "dd"])


@settings(max_examples=200, deadline=None)
@given(st.integers(0, 3), st.integers(0, 60), st.data())
def test_group_codes_equal_the_plain_computation(
    n_columns: int, n_rows: int, data: st.DataObject
) -> None:
    """All rows at once, and in chunks as the executor reads them: the same codes and keys."""
    columns = [
        data.draw(st.lists(tag_values, min_size=n_rows, max_size=n_rows)) for _ in range(n_columns)
    ]
    expected_codes, expected_keys = reference_group_rows(columns, n_rows)
    codes, keys = group_rows(columns, n_rows)
    assert codes.tolist() == expected_codes
    assert keys == expected_keys
    cuts = sorted(data.draw(st.lists(st.integers(0, n_rows), max_size=5)))
    grouper = RowGrouper(n_columns)
    for a, b in zip([0, *cuts], [*cuts, n_rows], strict=True):
        grouper.add([column[a:b] for column in columns], b - a)
    codes, keys = grouper.finish()
    assert codes.tolist() == expected_codes
    assert keys == expected_keys


@settings(max_examples=100, deadline=None)
@given(st.integers(0, 200), st.data())
def test_window_points_are_byte_identical_to_the_plain_computation(
    n_rows: int, data: st.DataObject
) -> None:
    """Whatever the number of groups whose points are made at a time while shipping."""
    slice_groups = data.draw(st.sampled_from([1, 2, 5, 1_000]))
    values = np.array(
        data.draw(st.lists(st.floats(-1e6, 1e6), min_size=n_rows, max_size=n_rows)),
        dtype=np.float64,
    )
    dims = [
        data.draw(st.lists(st.sampled_from(["in", "out", None]), min_size=n_rows, max_size=n_rows)),
        data.draw(st.lists(st.sampled_from(["mx1", ""]), min_size=n_rows, max_size=n_rows)),
        data.draw(st.lists(st.sampled_from(["c1", "c2", "c3"]), min_size=n_rows, max_size=n_rows)),
    ]
    got = serialize(window_points(PLAN, 0, values, dims, run=3))
    assert got == reference_window_points(values, dims)
    codes, keys = group_rows(dims, n_rows)
    lazy = lazy_window_points(PLAN, 0, values, codes, keys, run=3, slice_groups=slice_groups)
    assert (serialize(lazy), serialize(lazy)) == (got, got)  # the same, iterated twice
    assert len(lazy) == len(got.splitlines())
    assert serialize([lazy.manifest]) == got.splitlines(keepends=True)[-1]


def test_summaries_are_made_a_slice_of_groups_at_a_time(monkeypatch: pytest.MonkeyPatch) -> None:
    """Nothing per group is made before the points are asked for, so a shipper has the first
    batch as soon as its groups are made."""
    asked: list[int] = []
    summaries = GroupedValues.summaries

    def recorded(self: GroupedValues, groups: list[int]) -> list[GroupSummary]:
        asked.append(len(groups))
        return summaries(self, groups)

    monkeypatch.setattr(GroupedValues, "summaries", recorded)
    values = np.arange(500, dtype=np.float64)
    customers = [f"c{i % 50:02d}" for i in range(500)]
    codes, keys = group_rows([["in"] * 500, ["mx1"] * 500, customers], 500)
    lazy = lazy_window_points(PLAN, 0, values, codes, keys, run=1, slice_groups=20)
    assert asked == []
    first = next(iter(lazy))
    assert asked == [20] and first.tags["customer"] == "c00"
    assert len(list(lazy)) == 51 and asked == [20, 20, 20, 10]
