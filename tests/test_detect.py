"""One window of a detection: counts per key, the threshold over the median, what leaves."""

from __future__ import annotations

import dataclasses
import statistics
from pathlib import Path

from hypothesis import given, settings
from hypothesis import strategies as st

from federation.config import load_config
from federation.config.resolve import resolve_detection
from federation.core.detect import (
    DetectionCounter,
    detect_window,
    finding_points,
    key_id,
    shipped_points,
)
from federation.core.detection_plan import DetectionPlan

REPO = Path(__file__).resolve().parents[1]
CONFIG = load_config(REPO)
START = 1_700_000_000 * 10**9


def plan(name: str = "recipients_per_sender", **changes: object) -> DetectionPlan:
    return dataclasses.replace(resolve_detection(CONFIG, name, "dub1"), **changes)  # type: ignore[arg-type]


def test_a_sender_mailing_many_distinct_recipients_is_found_with_its_count() -> None:
    senders = ["a@x.test"] * 40 + ["b@x.test", "b@x.test", "c@x.test"]
    recipients = [f"r{i % 30}@y.test" for i in range(40)] + ["r1@y.test", "r1@y.test", "r2@y.test"]
    result = detect_window(plan(at_least=10, factor=5.0), START, senders, recipients)
    assert (result.events, result.keys) == (43, 3)
    # Medians of (30, 1, 1) = 1, so 5 x 1 < the floor 10: the floor decides.
    assert result.threshold == 10.0
    assert [(f.key, f.count) for f in result.findings] == [("a@x.test", 30)]


def test_the_factor_over_the_median_raises_the_threshold_above_the_floor() -> None:
    senders = [f"s{i}" for i in range(9) for _ in range(4)] + ["big"] * 30
    recipients = [f"r{j}" for _ in range(9) for j in range(4)] + [f"r{j}" for j in range(30)]
    result = detect_window(plan(at_least=2, factor=8.0), START, senders, recipients)
    assert result.threshold == 32.0  # median 4 x 8
    assert result.findings == ()
    result = detect_window(plan(at_least=2, factor=7.0), START, senders, recipients)
    assert [f.key for f in result.findings] == ["big"]


def test_counting_events_needs_no_values_and_skips_rows_without_a_key() -> None:
    events = plan(distinct=None, at_least=3, factor=1.0)
    result = detect_window(events, START, ["ip1", "ip1", "ip1", None, "", "ip2"])
    assert (result.events, result.keys) == (6, 2)
    assert [(f.key, f.count) for f in result.findings] == [("ip1", 3)]


def test_a_key_seen_only_without_a_counted_value_is_evaluated_with_count_zero() -> None:
    result = detect_window(plan(at_least=2, factor=1.0), START, ["a", "a", "b"], ["x", "y", None])
    assert result.keys == 2
    assert [(f.key, f.count) for f in result.findings] == [("a", 2)]


def naive(
    senders: list[str | None], recipients: list[str | None], p: DetectionPlan
) -> set[tuple[str, int]]:
    sets: dict[str, set[str]] = {}
    for s, r in zip(senders, recipients, strict=True):
        if s:
            sets.setdefault(s, set())
            if r:
                sets[s].add(r)
    if not sets:
        return set()
    threshold = max(p.at_least, p.factor * statistics.median(len(v) for v in sets.values()))
    return {(k, len(v)) for k, v in sets.items() if len(v) >= threshold}


values = st.one_of(st.none(), st.sampled_from(["", "a", "b", "c", "d", "e", "f"]))


@settings(max_examples=150, deadline=None)
@given(
    rows=st.lists(st.tuples(values, values), max_size=60),
    cut=st.integers(0, 60),
    at_least=st.integers(2, 4),
    factor=st.sampled_from([1.0, 1.5, 3.0]),
)
def test_any_chunking_and_row_order_equals_a_set_per_key(
    rows: list[tuple[str | None, str | None]], cut: int, at_least: int, factor: float
) -> None:
    p = plan(at_least=at_least, factor=factor)
    senders, recipients = [r[0] for r in rows], [r[1] for r in rows]
    counter = DetectionCounter(p)
    counter.add(senders[:cut], recipients[:cut])
    counter.add(senders[cut:], recipients[cut:])
    chunked = counter.finish(START)
    assert {(f.key, f.count) for f in chunked.findings} == naive(senders, recipients, p)
    reversed_ = detect_window(p, START, senders[::-1], recipients[::-1])
    assert reversed_ == chunked


def test_only_the_dc_tag_and_counts_leave_and_an_empty_window_ships_its_manifest() -> None:
    p = plan(at_least=2, factor=1.0)
    result = detect_window(p, START, ["a@x.test", "a@x.test"], ["b@y.test", "c@y.test"])
    count, manifest = shipped_points(p, result, run=7)
    assert (count.measurement, count.tags, count.time_ns) == (p.detection, {"dc": "dub1"}, START)
    assert count.fields == {"count": 2, "keys": 1, "findings": 1}
    assert manifest.tags == {"aggregation": p.detection, "dc": "dub1"}
    assert manifest.fields == {
        "events": 2, "groups": 1, "suppressed_events": 0, "personal_value_events": 0,
        "version": p.version, "run": 7,
    }  # fmt: skip
    assert not any(
        "@" in str(v) for pt in (count, manifest) for v in (*pt.tags.values(), *pt.fields.values())
    )
    (empty,) = shipped_points(p, detect_window(p, START, [], []), run=8)
    assert empty.fields["events"] == 0 and empty.fields["groups"] == 0


def test_a_finding_point_keeps_the_key_in_a_field_and_a_stable_hash_as_its_tag() -> None:
    p = plan(at_least=2, factor=1.0)
    result = detect_window(p, START, ["a@x.test", "a@x.test"], ["b@y.test", "c@y.test"])
    point, run = finding_points(p, result, run=3)
    assert (run.measurement, run.tags) == ("federation_detection_runs", {"detection": p.detection})
    assert run.fields == {"run": 3, "keys": 1, "findings": 1}
    assert point.measurement == "federation_findings"
    assert point.tags == {"detection": p.detection, "key_id": key_id("a@x.test")}
    assert point.fields == {"key": "a@x.test", "count": 2, "threshold": 2.0, "run": 3}
    assert key_id("a@x.test") == key_id("a@x.test") != key_id("b@x.test")
