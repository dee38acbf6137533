"""The UDF's detection mode: a rendered detection's options init it, and a window it receives
gives exactly the points of `federation.core.detect` (findings kept in the DC, counts shipped)."""

from __future__ import annotations

import dataclasses
import random
from collections.abc import Sequence
from pathlib import Path

import pytest
from test_kapacitor_udf import (
    _CALL,
    START,
    TMAX,
    WINDOW,
    _tick_option,
    end,
    init,
    opt,
    run_inprocess,
    typed,
)

from federation.config import load_config
from federation.config.resolve import resolve_detection
from federation.core.detect import detect_window, finding_points, shipped_points
from federation.core.detection_plan import ROUTE_CENTRAL, ROUTE_LOCAL, ROUTE_TAG, DetectionPlan
from federation.core.points import Point
from federation.kapacitor import _udf_pb2 as pb
from federation.kapacitor.udf_detection import DETECTION_OPTION_TYPES
from federation.kapacitor.udf_wire import point_from_message
from federation.tickscript.render import render_detection

REPO = Path(__file__).resolve().parents[1]


def plan(name: str = "recipients_per_sender", **changes: object) -> DetectionPlan:
    resolved = resolve_detection(load_config(REPO), name, "dub1")
    return dataclasses.replace(resolved, window_ns=WINDOW, **changes)  # type: ignore[arg-type]


def options(p: DetectionPlan, as_mode: str, **overrides: object) -> list[pb.Option]:
    """The options the rendered template passes in `mode`; an override of None drops one."""
    values: dict[str, object] = {
        "detection": p.detection,
        "mode": as_mode,
        "dc": p.dc,
        "key": p.key,
        "distinct": p.distinct,
        "atLeast": p.at_least,
        "factor": p.factor,
        "window": p.window_ns,
        "version": p.version,
    }
    values.update(overrides)
    return [
        opt(name, value, DETECTION_OPTION_TYPES.get(name, pb.STRING))
        for name, value in values.items()
        if value is not None
    ]


Row = tuple[int, str | None, str | None]


def rows(n: int, seed: int = 3) -> list[Row]:
    """One window: most senders mail a few recipients, one mails many; some lack a key."""
    rng = random.Random(seed)
    out: list[Row] = []
    for i in range(n):
        if i % 5 == 0:
            sender, recipient = "big@example.test", f"r{i}@example.org"
        else:
            sender = rng.choice([f"s{j}@example.test" for j in range(20)] + [None])
            recipient = rng.choice([f"r{j}@example.org" for j in range(4)] + [None])
        out.append((START + rng.randrange(WINDOW), sender, recipient))
    return out


def batch(p: DetectionPlan, data: Sequence[Row], *, as_tags: bool) -> list[pb.Request]:
    """The window as Kapacitor delivers it: keys as tags, or as string fields (a `::field`)."""
    requests = [pb.Request()]
    requests[0].begin.name = p.measurement
    for t, sender, recipient in data:
        request = pb.Request()
        request.point.name = p.measurement
        request.point.time = t
        target = request.point.tags if as_tags else request.point.fieldsString
        for key, value in ((p.key, sender), (p.distinct, recipient)):
            if key is not None and value is not None:
                target[key] = value
        requests.append(request)
    return [*requests, end(TMAX)]


def udf_points(p: DetectionPlan, mode: str, data: Sequence[Row], *, as_tags: bool) -> list[Point]:
    code, responses = run_inprocess([init(options(p, mode)), *batch(p, data, as_tags=as_tags)])
    assert code == 0
    assert responses[0].init.success, responses[0].init.error
    return [point_from_message(r.point) for r in responses if r.WhichOneof("message") == "point"]


def test_the_rendered_detection_options_init_the_udf_once_per_branch() -> None:
    for name in ("recipients_per_sender", "senders_per_client_ip", "helos_per_sender"):
        p = resolve_detection(load_config(REPO), name, "dub1")
        script = render_detection(p, REPO / "tickscripts").script
        calls = script.split("@fedagg()")[1:]
        assert len(calls) == p.lookback_windows  # one UDF process per branch
        for call in calls:
            body = call.split("\nwindow", 1)[0]
            assert ".mode('split')" in body
            lines = body.splitlines()
            given = [_tick_option(*m.groups()) for line in lines if (m := _CALL.match(line))]
            for option in given:
                assert option.values[0].type == DETECTION_OPTION_TYPES[option.name], option.name
            code, responses = run_inprocess([init(given)])
            assert code == 0
            assert responses[0].init.success, responses[0].init.error


@pytest.mark.parametrize("as_tags", [True, False], ids=["tags", "fields"])
def test_a_window_gives_the_embedded_executors_findings_and_counts(as_tags: bool) -> None:
    p = plan(at_least=5, factor=3.0)
    data = rows(400)
    result = detect_window(p, START, [r[1] for r in data], [r[2] for r in data])
    assert [f.key for f in result.findings] == ["big@example.test"]  # the data finds something
    findings = udf_points(p, "findings", data, as_tags=as_tags)
    assert typed(findings) == typed(finding_points(p, result, run=0))
    counts = udf_points(p, "counts", data, as_tags=as_tags)
    assert typed(counts) == typed(shipped_points(p, result, run=0))
    # Only counts leave: no key value, not even as a string field.
    assert not any(isinstance(v, str) and "@" in v for q in counts for v in q.fields.values())


def test_split_mode_tags_each_point_with_where_it_goes() -> None:
    p = plan(at_least=5, factor=3.0)
    data = rows(400)
    result = detect_window(p, START, [r[1] for r in data], [r[2] for r in data])
    split = udf_points(p, "split", data, as_tags=False)
    routed: dict[str, list[Point]] = {ROUTE_LOCAL: [], ROUTE_CENTRAL: []}
    for q in split:
        tags = dict(q.tags)
        routed[tags.pop(ROUTE_TAG)].append(Point(q.measurement, tags, q.fields, q.time_ns))
    assert typed(routed[ROUTE_LOCAL]) == typed(finding_points(p, result, run=0))
    assert typed(routed[ROUTE_CENTRAL]) == typed(shipped_points(p, result, run=0))
    # Every key value is routed to the DC itself.
    assert not any(
        isinstance(v, str) and "@" in v for q in routed[ROUTE_CENTRAL] for v in q.fields.values()
    )


def test_counting_events_per_key_needs_no_distinct() -> None:
    p = plan(distinct=None, at_least=30, factor=1.0)
    data = rows(300, seed=9)
    result = detect_window(p, START, [r[1] for r in data])
    assert result.findings
    assert typed(udf_points(p, "findings", data, as_tags=False)) == typed(
        finding_points(p, result, run=0)
    )
    assert typed(udf_points(p, "counts", data, as_tags=False)) == typed(
        shipped_points(p, result, run=0)
    )


@pytest.mark.parametrize(
    ("overrides", "named"),
    [
        ({"mode": "everything"}, "mode: 'everything' is not one of findings, counts, split"),
        ({"key": None}, "key: missing"),
        ({"distinct": "sender"}, "distinct: must name another key than key"),
        ({"atLeast": 0}, "atLeast: 0 must be at least 1"),
        ({"window": 7 * 60 * 10**9}, "window: 7m must be positive and divide 24h"),
    ],
)
def test_init_refuses_bad_detection_options_naming_them(
    overrides: dict[str, object], named: str
) -> None:
    code, responses = run_inprocess([init(options(plan(), "counts", **overrides))])
    assert code == 0
    assert not responses[0].init.success
    assert named in responses[0].init.error


def test_an_aggregation_option_in_a_detection_is_unknown() -> None:
    given = [*options(plan(), "counts"), opt("field", "latency_ms", pb.STRING)]
    code, responses = run_inprocess([init(given)])
    assert code == 0
    assert not responses[0].init.success
    assert "field: unknown option for a detection" in responses[0].init.error


def test_a_misaligned_detection_batch_ships_nothing() -> None:
    p = plan()
    requests = batch(p, rows(10), as_tags=True)
    requests[-1] = end(TMAX + 1)
    code, responses = run_inprocess([init(options(p, "counts")), *requests])
    assert code == 0
    assert [r.WhichOneof("message") for r in responses] == ["init"]
