"""The aggregation UDF speaking Kapacitor's process-UDF protocol, and `kapacitor config`.

The UDF runs as a real process (`python -m federation.cli kapacitor-udf`) or as `serve` on
real pipes, and is driven with real protobuf messages; its points are compared with what the
embedded executor computes (`window_points` on the plan) for the same raw values.
"""

from __future__ import annotations

import io
import os
import queue
import random
import re
import subprocess
import sys
import threading
import time
import tomllib
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from typer.testing import CliRunner

from federation.cli import app
from federation.config import load_config
from federation.config.resolve import resolve_plan
from federation.core.aggregate import window_points
from federation.core.clock import FakeClock
from federation.core.durations import HOUR_NS, SECOND_NS
from federation.core.plan import MANIFEST_MEASUREMENT, AggregationPlan
from federation.core.points import Point
from federation.errors import ConfigError
from federation.kapacitor import _udf_pb2 as pb
from federation.kapacitor.conf import kapacitor_conf
from federation.kapacitor.udf import AGGREGATION_OPTION_TYPES, OPTION_TYPES, UdfProcess, serve
from federation.kapacitor.udf_wire import (
    ProtocolError,
    encode_varint,
    frame,
    iter_frames,
    point_from_message,
    read_frame,
)
from federation.tickscript.render import render_plan

# 2026-11-28T10:00:00Z, a window boundary for every window that divides a day.
START = 1_795_860_000 * SECOND_NS
WINDOW = HOUR_NS
TMAX = START + WINDOW
DIMENSIONS = ("direction", "mailer", "customer")
# Long enough for a slow CI machine; a healthy run answers in well under a second.
DEADLINE_S = 60.0

# --- building requests --------------------------------------------------------------------------


def opt(name: str, value: object, kind: int) -> pb.Option:
    option = pb.Option(name=name)
    v = option.values.add()
    v.type = kind  # type: ignore[assignment]
    if kind == pb.STRING:
        v.stringValue = str(value)
    elif kind == pb.DURATION:
        v.durationValue = int(value)  # type: ignore[call-overload]
    elif kind == pb.DOUBLE:
        v.doubleValue = float(value)  # type: ignore[arg-type]
    elif kind == pb.INT:
        v.intValue = int(value)  # type: ignore[call-overload]
    else:
        v.boolValue = bool(value)
    return option


def init_options(
    *,
    dimensions: Sequence[str] = DIMENSIONS,
    percentiles: Sequence[float] = (50.0, 90.0, 99.0),
    **overrides: Any,
) -> list[pb.Option]:
    """The options a rendered TICKscript passes, in its order; an override of None drops one."""
    values: dict[str, Any] = {
        "aggregation": "delivery_latency",
        "dc": "dub1",
        "field": "latency_ms",
        "window": WINDOW,
        "accuracy": 0.01,
        "minGroupEvents": 2,
        "version": "e46a4c37f733",
    }
    values.update(overrides)
    options = [
        opt(name, values[name], OPTION_TYPES[name])
        for name in ("aggregation", "dc", "field")
        if values[name] is not None
    ]
    options += [opt("dimension", d, pb.STRING) for d in dimensions]
    for name in ("window", "accuracy"):
        if values[name] is not None:
            options.append(opt(name, values[name], OPTION_TYPES[name]))
    options += [opt("percentile", p, pb.DOUBLE) for p in percentiles]
    for name in ("minGroupEvents", "version"):
        if values[name] is not None:
            options.append(opt(name, values[name], OPTION_TYPES[name]))
    return options


def init(options: Iterable[pb.Option]) -> pb.Request:
    request = pb.Request()
    request.init.options.extend(options)
    return request


def plan_options(plan: AggregationPlan) -> list[pb.Option]:
    """The options the TICKscript rendered from `plan` passes to the UDF."""
    return init_options(
        aggregation=plan.aggregation,
        dc=plan.dc,
        field=plan.value_field,
        dimensions=plan.dimensions,
        window=plan.window_ns,
        accuracy=plan.accuracy,
        percentiles=plan.percentiles,
        minGroupEvents=plan.min_group_events,
        version=plan.version,
    )


def keepalive(t: int) -> pb.Request:
    request = pb.Request()
    request.keepalive.time = t
    return request


def begin(**tags: str) -> pb.Request:
    request = pb.Request()
    request.begin.name = "delivery"
    request.begin.tags.update(tags)
    return request


def end(tmax: int = TMAX) -> pb.Request:
    request = pb.Request()
    request.end.name = "delivery"
    request.end.tmax = tmax
    return request


Row = tuple[int, float | int | str | None, dict[str, str | None]]


def point_request(row: Row, *, field: str = "latency_ms", as_tags: bool = True) -> pb.Request:
    """A raw point as Kapacitor delivers it; dimensions as tags, or as string fields."""
    t, value, dims = row
    request = pb.Request()
    point = request.point
    point.name = "delivery"
    point.time = t
    if isinstance(value, float):
        point.fieldsDouble[field] = value
    elif isinstance(value, int):
        point.fieldsInt[field] = value
    elif isinstance(value, str):
        point.fieldsString[field] = value
    for key, dim_value in dims.items():
        if dim_value is not None:
            (point.tags if as_tags else point.fieldsString)[key] = dim_value
    return request


def batch(rows: Sequence[Row], *, tmax: int = TMAX, as_tags: bool = True) -> list[pb.Request]:
    return [begin(), *(point_request(r, as_tags=as_tags) for r in rows), end(tmax)]


def raw_rows(n: int, seed: int = 7, start: int = START) -> list[Row]:
    """Raw events of one window: skewed groups (some below k), missing dimensions, int values."""
    rng = random.Random(seed)
    rows: list[Row] = []
    for _ in range(n):
        dims: dict[str, str | None] = {
            "direction": rng.choice(["in", "out"]),
            "mailer": rng.choice(["m1", "m2", "m3", None]),
            "customer": f"c{int(rng.paretovariate(1.2)) % 40}",
        }
        value: float | int = (
            rng.randint(0, 5000) if rng.random() < 0.2 else rng.lognormvariate(4, 1.5)
        )
        rows.append((start + rng.randrange(WINDOW), value, dims))
    return rows


def expected_points(spec: Any, rows: Sequence[Row], start: int = START) -> list[Point]:
    """What the embedded executor ships for these rows: `window_points` on float64 values."""
    values = np.array([float(v) for _, v, _ in rows if isinstance(v, int | float)], np.float64)
    kept = [dims for _, v, dims in rows if isinstance(v, int | float)]
    columns = [[dims.get(d) for dims in kept] for d in spec.dimensions]
    return window_points(spec, start, values, columns, run=0)


def typed(points: Iterable[Point]) -> list[tuple[Any, ...]]:
    """Points as comparable tuples with each field's type, `run` left out (it differs per run)."""
    return [
        (
            p.measurement,
            sorted(p.tags.items()),
            sorted((k, type(v).__name__, v) for k, v in p.fields.items() if k != "run"),
            p.time_ns,
        )
        for p in points
    ]


# --- driving the UDF ----------------------------------------------------------------------------


class UdfSubprocess:
    """`python -m federation.cli kapacitor-udf` on pipes, its responses read by a thread."""

    def __init__(self) -> None:
        env = {**os.environ, "PYTHONUNBUFFERED": "0"}
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "federation.cli", "--verbose", "kapacitor-udf"],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            env=env,
        )
        assert self.proc.stdin is not None and self.proc.stdout is not None
        self.stdin = self.proc.stdin
        self.responses: queue.Queue[pb.Response | BaseException | None] = queue.Queue()
        self.stderr = b""
        threading.Thread(target=self._read, daemon=True).start()
        threading.Thread(target=self._read_stderr, daemon=True).start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        try:
            for data in iter_frames(self.proc.stdout):
                self.responses.put(pb.Response.FromString(data))
            self.responses.put(None)
        except BaseException as exc:  # handed to the test thread
            self.responses.put(exc)

    def _read_stderr(self) -> None:
        assert self.proc.stderr is not None
        self.stderr = self.proc.stderr.read()

    def send(self, *requests: pb.Request) -> None:
        self.stdin.write(b"".join(frame(r) for r in requests))
        self.stdin.flush()

    def send_bytes(self, data: bytes) -> None:
        self.stdin.write(data)
        self.stdin.flush()

    def recv(self, timeout: float = DEADLINE_S) -> pb.Response:
        item = self.responses.get(timeout=timeout)
        if item is None:
            raise AssertionError(f"stdout ended; stderr: {self.stderr.decode()[-2000:]}")
        if isinstance(item, BaseException):
            raise item
        return item

    def recv_until(self, done: Any, timeout: float = DEADLINE_S) -> list[pb.Response]:
        """Responses up to and including the first for which `done(response)` is true."""
        deadline = time.monotonic() + timeout
        got: list[pb.Response] = []
        while True:
            got.append(self.recv(max(0.01, deadline - time.monotonic())))
            if done(got[-1]):
                return got

    def close(self, timeout: float = DEADLINE_S) -> tuple[int, list[pb.Response]]:
        """Close stdin; the exit code and every response not yet received."""
        self.stdin.close()
        code = self.proc.wait(timeout)
        rest: list[pb.Response] = []
        while (item := self.responses.get(timeout=timeout)) is not None:
            if isinstance(item, BaseException):
                raise item
            rest.append(item)
        return code, rest

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()


@pytest.fixture
def udf() -> Iterator[UdfSubprocess]:
    process = UdfSubprocess()
    try:
        yield process
    finally:
        process.kill()


def run_inprocess(
    requests: Sequence[pb.Request], clock: FakeClock | None = None
) -> tuple[int, list[pb.Response]]:
    """`serve` on a finite stdin; the exit code and every response written."""
    stdin = io.BytesIO(b"".join(frame(r) for r in requests))
    stdout = io.BytesIO()
    code = serve(stdin, stdout, clock=clock or FakeClock(START + 2 * WINDOW))
    return code, [pb.Response.FromString(d) for d in iter_frames(io.BytesIO(stdout.getvalue()))]


def points_of(responses: Iterable[pb.Response]) -> list[Point]:
    return [point_from_message(r.point) for r in responses if r.WhichOneof("message") == "point"]


def is_manifest(response: pb.Response) -> bool:
    return response.WhichOneof("message") == "point" and response.point.name == MANIFEST_MEASUREMENT


@pytest.fixture
def plan(config_dir: Path) -> AggregationPlan:
    return resolve_plan(load_config(config_dir), "delivery_latency", "dub1")


# --- management requests ------------------------------------------------------------------------


def test_info_declares_batch_in_stream_out_and_every_option(udf: UdfSubprocess) -> None:
    request = pb.Request()
    request.info.SetInParent()
    udf.send(request)
    info = udf.recv().info
    assert info.wants == pb.BATCH
    assert info.provides == pb.STREAM
    declared = {name: list(o.valueTypes) for name, o in info.options.items()}
    assert declared == {
        "aggregation": [pb.STRING],
        "dc": [pb.STRING],
        "field": [pb.STRING],
        "dimension": [pb.STRING],
        "window": [pb.DURATION],
        "accuracy": [pb.DOUBLE],
        "percentile": [pb.DOUBLE],
        "minGroupEvents": [pb.INT],
        "version": [pb.STRING],
        # Detection mode (`test_kapacitor_udf_detection.py`).
        "detection": [pb.STRING],
        "mode": [pb.STRING],
        "key": [pb.STRING],
        "distinct": [pb.STRING],
        "atLeast": [pb.INT],
        "factor": [pb.DOUBLE],
    }
    assert udf.close()[0] == 0


_CALL = re.compile(r"^\s*\.(\w+)\((.*)\)\s*$")


def _tick_option(name: str, literal: str) -> pb.Option:
    """One option call of a rendered TICKscript as Kapacitor passes it to the UDF."""
    if literal.startswith("'"):
        return opt(name, literal[1:-1].replace("\\'", "'"), pb.STRING)
    if match := re.fullmatch(r"(\d+)(s|m|h)", literal):
        unit = {"s": SECOND_NS, "m": 60 * SECOND_NS, "h": HOUR_NS}[match.group(2)]
        return opt(name, int(match.group(1)) * unit, pb.DURATION)
    if "." in literal:
        return opt(name, float(literal), pb.DOUBLE)
    return opt(name, int(literal), pb.INT)


def test_the_rendered_tickscript_options_init_the_udf(plan: AggregationPlan) -> None:
    """Every `@fedagg()` call of the rendered template is declared with the literal's type."""
    script = render_plan(plan, Path(__file__).parents[1] / "tickscripts").script
    body = script.split("@fedagg()", 1)[1].split("|influxDBOut()", 1)[0]
    options = [_tick_option(*m.groups()) for line in body.splitlines() if (m := _CALL.match(line))]
    assert {o.name for o in options} == set(AGGREGATION_OPTION_TYPES)
    for option in options:
        assert option.values[0].type == OPTION_TYPES[option.name], option.name
    code, responses = run_inprocess([init(options)])
    assert code == 0
    assert responses[0].init.success, responses[0].init.error


def test_init_accepts_valid_options(udf: UdfSubprocess) -> None:
    udf.send(init(init_options()))
    response = udf.recv().init
    assert response.success, response.error
    assert response.error == ""


def test_init_accepts_no_dimensions() -> None:
    code, responses = run_inprocess([init(init_options(dimensions=()))])
    assert code == 0
    assert responses[0].init.success, responses[0].init.error


def _replace(options: list[pb.Option], name: str, value: object, kind: int) -> list[pb.Option]:
    return [opt(name, value, kind) if o.name == name else o for o in options]


INIT_FAILURES: dict[str, tuple[list[pb.Option], str]] = {
    "window missing": (init_options(window=None), "window"),
    "window 0": (init_options(window=0), "window"),
    "window negative": (init_options(window=-HOUR_NS), "window"),
    "window 7h": (init_options(window=7 * HOUR_NS), "window"),
    "window as a string": (_replace(init_options(), "window", "1h", pb.STRING), "window"),
    "accuracy 0": (init_options(accuracy=0.0), "accuracy"),
    "accuracy 0.5": (init_options(accuracy=0.5), "accuracy"),
    "accuracy missing": (init_options(accuracy=None), "accuracy"),
    "no percentile": (init_options(percentiles=()), "percentile"),
    "percentile 0": (init_options(percentiles=(0.0, 50.0)), "percentile"),
    "percentile 100": (init_options(percentiles=(50.0, 100.0)), "percentile"),
    "percentile twice": (init_options(percentiles=(50.0, 50.0)), "percentile"),
    "minGroupEvents 0": (init_options(minGroupEvents=0), "minGroupEvents"),
    "minGroupEvents missing": (init_options(minGroupEvents=None), "minGroupEvents"),
    "aggregation empty": (init_options(aggregation=""), "aggregation"),
    "dc empty": (init_options(dc=""), "dc"),
    "field empty": (init_options(field=" "), "field"),
    "version missing": (init_options(version=None), "version"),
    "dimension twice": (init_options(dimensions=("mailer", "mailer")), "dimension"),
    "dimension empty": (init_options(dimensions=("",)), "dimension"),
    "window given twice": (
        [*init_options(), opt("window", 2 * HOUR_NS, pb.DURATION)],
        "window",
    ),
    "unknown option": ([*init_options(), opt("period", HOUR_NS, pb.DURATION)], "period"),
}


@pytest.mark.parametrize("case", sorted(INIT_FAILURES))
def test_init_refuses_a_bad_option_and_names_it(case: str) -> None:
    options, name = INIT_FAILURES[case]
    code, responses = run_inprocess([init(options), keepalive(1)])
    assert code == 0
    assert [r.WhichOneof("message") for r in responses] == ["init", "keepalive"]
    assert not responses[0].init.success
    assert responses[0].init.error.startswith(f"{name}: ") or f"; {name}: " in (
        responses[0].init.error
    )


def test_init_failure_over_a_real_process(udf: UdfSubprocess) -> None:
    udf.send(init(init_options(window=7 * HOUR_NS)))
    response = udf.recv().init
    assert not response.success
    assert "window: 7h must be positive and divide 24h" in response.error


def test_keepalive_is_answered_with_its_time(udf: UdfSubprocess) -> None:
    udf.send(keepalive(123_456_789))
    response = udf.recv(timeout=10)
    assert response.WhichOneof("message") == "keepalive"
    assert response.keepalive.time == 123_456_789


def test_snapshot_is_empty_and_restore_succeeds(udf: UdfSubprocess) -> None:
    snapshot = pb.Request()
    snapshot.snapshot.SetInParent()
    restore = pb.Request()
    restore.restore.snapshot = b""
    udf.send(snapshot, restore)
    assert udf.recv().snapshot.snapshot == b""
    assert udf.recv().restore.success


# --- batches ------------------------------------------------------------------------------------


def test_a_window_gives_the_embedded_executors_points(
    udf: UdfSubprocess, plan: AggregationPlan
) -> None:
    rows = raw_rows(3000)
    udf.send(init(plan_options(plan)))
    assert udf.recv().init.success
    udf.send(*batch(rows))
    got = points_of(udf.recv_until(is_manifest))
    expected = expected_points(plan, rows)
    assert len(expected) > 10  # several groups shipped ...
    assert expected[-1].fields["suppressed_events"]  # ... and some suppressed
    assert typed(got) == typed(expected)
    manifest = got[-1]
    assert isinstance(manifest.fields["run"], int) and manifest.fields["run"] > 0
    assert isinstance(manifest.fields["events"], int) and manifest.fields["events"] == 3000
    summary = got[0]
    assert isinstance(summary.fields["count"], int)
    assert isinstance(summary.fields["sketch"], str)
    assert all(p.time_ns == START for p in got)
    assert udf.close()[0] == 0


def test_points_carry_no_database_or_retention_policy(plan: AggregationPlan) -> None:
    code, responses = run_inprocess([init(plan_options(plan)), *batch(raw_rows(200))])
    assert code == 0
    messages = [r.point for r in responses if r.WhichOneof("message") == "point"]
    assert messages
    assert all(m.database == "" and m.retentionPolicy == "" for m in messages)


def test_run_is_the_clocks_now(plan: AggregationPlan) -> None:
    clock = FakeClock(START + 5 * WINDOW + 17)
    code, responses = run_inprocess([init(plan_options(plan)), *batch(raw_rows(50))], clock)
    assert code == 0
    assert points_of(responses)[-1].fields["run"] == START + 5 * WINDOW + 17


def test_an_empty_batch_gives_a_zero_manifest(udf: UdfSubprocess) -> None:
    udf.send(init(init_options()))
    assert udf.recv().init.success
    udf.send(begin(), end())
    (manifest,) = points_of(udf.recv_until(is_manifest))
    assert manifest.measurement == MANIFEST_MEASUREMENT
    assert manifest.tags == {"aggregation": "delivery_latency", "dc": "dub1"}
    assert manifest.time_ns == START
    fields = {k: v for k, v in manifest.fields.items() if k != "run"}
    assert fields == {
        "events": 0,
        "groups": 0,
        "suppressed_events": 0,
        "personal_value_events": 0,
        "version": "e46a4c37f733",
    }
    assert all(type(v) is int for k, v in fields.items() if k != "version")


def test_dimensions_as_tags_or_as_string_fields_give_the_same_points() -> None:
    rows = raw_rows(1000, seed=3)
    options = init(init_options())
    _, as_tags = run_inprocess([options, *batch(rows, as_tags=True)])
    _, as_fields = run_inprocess([options, *batch(rows, as_tags=False)])
    assert typed(points_of(as_tags)) == typed(points_of(as_fields))
    groups = {tuple(sorted(p.tags.items())) for p in points_of(as_tags)}
    assert any(("mailer", "_none") in key for key in groups)


def test_a_missing_or_non_numeric_value_is_skipped_and_counted(
    caplog: pytest.LogCaptureFixture,
) -> None:
    rows = raw_rows(100, seed=5)
    bad: list[Row] = [
        (START + 1, None, {"direction": "in", "customer": "c1"}),
        (START + 2, "fast", {"direction": "in", "customer": "c1"}),
        (START + 3, float("nan"), {"direction": "in", "customer": "c1"}),
    ]
    with caplog.at_level("WARNING", logger="federation.kapacitor.udf"):
        _, responses = run_inprocess([init(init_options()), *batch(rows + bad)])
    manifest = points_of(responses)[-1]
    assert manifest.fields["events"] == 100
    assert typed(points_of(responses)) == typed(expected_points(_spec(), rows))
    assert "skipped 3 points" in caplog.text
    assert "fast" not in caplog.text


def _spec() -> Any:
    from federation.kapacitor.udf import parse_options

    return parse_options(init(init_options()).init)


def test_a_misaligned_tmax_is_refused(udf: UdfSubprocess) -> None:
    udf.send(init(init_options()))
    assert udf.recv().init.success
    rows = raw_rows(50, start=START + 30 * SECOND_NS)
    udf.send(*batch(rows, tmax=TMAX + 30 * SECOND_NS), keepalive(99))
    assert udf.recv().keepalive.time == 99
    code, rest = udf.close()
    assert code == 0
    assert rest == []
    assert b"not aligned to the 1h window" in udf.stderr


def test_a_batch_with_points_outside_its_window_is_refused() -> None:
    rows = raw_rows(50)
    early: Row = (START - 1, 5.0, {"direction": "in"})
    code, responses = run_inprocess([init(init_options()), *batch([*rows, early]), keepalive(1)])
    assert code == 0
    assert [r.WhichOneof("message") for r in responses] == ["init", "keepalive"]


def test_a_grouped_batch_is_refused() -> None:
    code, responses = run_inprocess(
        [init(init_options()), begin(direction="in"), end(), keepalive(1)]
    )
    assert code == 0
    assert [r.WhichOneof("message") for r in responses] == ["init", "keepalive"]


def test_keepalive_after_a_big_batch_is_answered(udf: UdfSubprocess) -> None:
    """200k points, then a keepalive: answered before, between or after the window's points."""
    n = 200_000
    udf.send(init(init_options()))
    assert udf.recv().init.success
    rng = random.Random(11)
    template = pb.Request()
    template.point.name = "delivery"
    frames = [frame(begin())]
    for i in range(n):
        template.point.time = START + i * (WINDOW // n)
        template.point.fieldsDouble["latency_ms"] = rng.lognormvariate(4, 1)
        template.point.tags["direction"] = "in" if i % 3 else "out"
        template.point.tags["customer"] = f"c{i % 997}"
        frames.append(frame(template))
    frames += [frame(end()), frame(keepalive(424242))]
    writer = threading.Thread(target=udf.send_bytes, args=(b"".join(frames),))
    writer.start()
    seen_keepalive = seen_manifest = False
    kinds: list[str] = []
    while not (seen_keepalive and seen_manifest):
        response = udf.recv()
        kinds.append(response.WhichOneof("message") or "")
        if kinds[-1] == "keepalive":
            assert response.keepalive.time == 424242
            seen_keepalive = True
        seen_manifest = seen_manifest or is_manifest(response)
    writer.join()
    assert kinds.count("keepalive") == 1
    # Every (direction, customer) pair occurs about 100 times: 2 x 997 summaries + the manifest.
    assert kinds.count("point") == 2 * 997 + 1
    code, rest = udf.close()
    assert code == 0 and rest == []


class _GateClock(FakeClock):
    """A clock whose reading blocks until released: the window computation waits on it."""

    def __init__(self, start_ns: int) -> None:
        super().__init__(start_ns)
        self.release = threading.Event()
        self.asked = threading.Event()

    def now_ns(self) -> int:
        self.asked.set()
        if not self.release.wait(DEADLINE_S):
            raise AssertionError("never released")
        return super().now_ns()


def test_keepalives_are_answered_while_a_window_is_computed() -> None:
    """With the computation held up, a keepalive sent after EndBatch is answered at once."""
    stdin_r, stdin_w = os.pipe()
    stdout_r, stdout_w = os.pipe()
    clock = _GateClock(START + 2 * WINDOW)
    with (
        open(stdin_r, "rb") as stdin,
        open(stdout_w, "wb") as stdout,
        open(stdin_w, "wb") as feed,
        open(stdout_r, "rb") as responses,
    ):
        process = UdfProcess(stdin, stdout, clock)
        result: list[int] = []
        server = threading.Thread(target=lambda: result.append(process.run()), daemon=True)
        server.start()
        feed.write(b"".join(frame(r) for r in [init(init_options()), *batch(raw_rows(100))]))
        feed.flush()
        assert pb.Response.FromString(read_frame(responses) or b"").init.success
        assert clock.asked.wait(DEADLINE_S)  # the window's computation has started and waits
        feed.write(frame(keepalive(7)))
        feed.flush()
        answer = pb.Response.FromString(read_frame(responses) or b"")
        assert answer.WhichOneof("message") == "keepalive" and answer.keepalive.time == 7
        clock.release.set()
        feed.close()
        # Read up to the window's manifest while the UDF writes, so neither side waits on a
        # full pipe or on an end-of-file the other has not sent yet.
        rest: list[pb.Response] = []
        while not rest or not is_manifest(rest[-1]):
            data = read_frame(responses)
            assert data is not None, "the stream ended before the window's manifest"
            rest.append(pb.Response.FromString(data))
        server.join(DEADLINE_S)
        assert not server.is_alive()
    assert result == [0]
    assert all(r.WhichOneof("message") == "point" for r in rest)


# --- protocol errors ----------------------------------------------------------------------------


def test_a_truncated_message_gets_an_error_response_and_a_failing_exit(
    udf: UdfSubprocess,
) -> None:
    data = frame(init(init_options()))
    udf.send_bytes(data[: len(data) // 2])
    code, rest = udf.close()
    assert code != 0
    assert [r.WhichOneof("message") for r in rest] == ["error"]
    assert "ended after" in rest[0].error.error


def test_an_unknown_request_gets_an_error_response(udf: UdfSubprocess) -> None:
    # Field 7 of Request is no message Kapacitor knows: a varint 1 under field number 7.
    udf.send_bytes(encode_varint(2) + bytes([7 << 3, 1]))
    assert udf.recv().error.error == "fedagg: a request of no known kind arrived"
    assert udf.proc.wait(DEADLINE_S) != 0


def test_bytes_that_are_no_request_get_an_error_response() -> None:
    stdin = io.BytesIO(encode_varint(3) + b"\xff\xff\xff")
    stdout = io.BytesIO()
    assert serve(stdin, stdout) == 1
    (data,) = list(iter_frames(io.BytesIO(stdout.getvalue())))
    assert pb.Response.FromString(data).WhichOneof("message") == "error"


@pytest.mark.parametrize(
    "requests",
    [
        pytest.param([init(init_options()), point_request(raw_rows(1)[0])], id="point-outside"),
        pytest.param([init(init_options()), end()], id="end-without-begin"),
        pytest.param([init(init_options()), begin(), begin()], id="begin-inside-batch"),
        pytest.param([begin(), end()], id="batch-before-init"),
    ],
)
def test_out_of_order_requests_are_protocol_errors(requests: list[pb.Request]) -> None:
    code, responses = run_inprocess(requests)
    assert code == 1
    assert responses[-1].WhichOneof("message") == "error"


def test_eof_exits_zero(udf: UdfSubprocess) -> None:
    code, rest = udf.close()
    assert code == 0
    assert rest == []


def test_eof_inside_a_batch_ships_nothing_and_exits_zero() -> None:
    code, responses = run_inprocess([init(init_options()), begin(), *batch(raw_rows(5))[1:-1]])
    assert code == 0
    assert [r.WhichOneof("message") for r in responses] == ["init"]


# --- framing ------------------------------------------------------------------------------------


class ChunkedSource:
    """A stream that hands out its bytes in the given chunk sizes, as pipes may."""

    def __init__(self, data: bytes, sizes: Sequence[int]) -> None:
        self._data = data
        self._sizes = list(sizes)
        self._pos = 0

    def read(self, n: int, /) -> bytes:
        size = self._sizes.pop(0) if self._sizes else n
        chunk = self._data[self._pos : self._pos + max(1, min(n, size))]
        self._pos += len(chunk)
        return chunk


@settings(max_examples=200, deadline=None)
@given(
    messages=st.lists(
        st.one_of(st.binary(max_size=40), st.binary(min_size=120, max_size=20_000)), max_size=12
    ),
    sizes=st.lists(st.integers(min_value=1, max_value=300), max_size=200),
)
def test_framing_round_trips_whatever_the_read_boundaries(
    messages: list[bytes], sizes: list[int]
) -> None:
    stream = b"".join(frame(m) for m in messages)
    assert list(iter_frames(ChunkedSource(stream, sizes))) == messages


@settings(max_examples=200, deadline=None)
@given(
    messages=st.lists(st.binary(max_size=300), min_size=1, max_size=5),
    cut=st.integers(min_value=1),
    sizes=st.lists(st.integers(min_value=1, max_value=50), max_size=50),
)
def test_a_stream_cut_inside_a_message_is_a_protocol_error(
    messages: list[bytes], cut: int, sizes: list[int]
) -> None:
    stream = b"".join(frame(m) for m in messages)
    boundaries = set()
    position = 0
    for m in messages:
        position += len(frame(m))
        boundaries.add(position)
    cut_at = cut % len(stream)
    if cut_at in boundaries or cut_at == 0:
        return
    with pytest.raises(ProtocolError):
        list(iter_frames(ChunkedSource(stream[:cut_at], sizes)))


@settings(max_examples=100, deadline=None)
@given(
    times=st.lists(st.integers(min_value=-(2**63), max_value=2**63 - 1), max_size=20),
    tags=st.dictionaries(st.text(max_size=20), st.text(max_size=40), max_size=5),
    sizes=st.lists(st.integers(min_value=1, max_value=64), max_size=100),
)
def test_requests_round_trip_through_frames(
    times: list[int], tags: dict[str, str], sizes: list[int]
) -> None:
    requests = []
    for t in times:
        request = pb.Request()
        if t % 2:
            request.keepalive.time = t
        else:
            request.point.time = t
            request.point.tags.update(tags)
            request.point.fieldsDouble["v"] = t / 3
        requests.append(request)
    stream = b"".join(frame(r) for r in requests)
    decoded = [pb.Request.FromString(d) for d in iter_frames(ChunkedSource(stream, sizes))]
    assert decoded == requests


@given(st.integers(min_value=0, max_value=2**64 - 1))
def test_varint_matches_protobufs_own_encoding(n: int) -> None:
    # A uint64 field 1 is encoded as the tag byte 0x08 followed by the varint.
    message = pb.Request()
    message.keepalive.time = n if n < 2**63 else n - 2**64
    inner = message.keepalive.SerializeToString()
    assert inner == (b"\x08" + encode_varint(n) if n else b"")


# --- kapacitor config ---------------------------------------------------------------------------

runner = CliRunner()


def test_kapacitor_config_for_a_dc(config_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("FEDERATION_DUB1_AGENT_TOKEN", raising=False)
    result = runner.invoke(
        app, ["kapacitor", "config", "--dc", "dub1", "--config", str(config_dir)]
    )
    assert result.exit_code == 0, result.output
    conf = tomllib.loads(result.stdout)
    udf_conf = conf["udf"]["functions"]["fedagg"]
    prog = Path(udf_conf["prog"])
    assert prog.is_absolute() and prog.is_file() and os.access(prog, os.X_OK)
    assert prog.name == "federation"
    assert udf_conf["args"] == ["kapacitor-udf"]
    assert udf_conf["timeout"] == "10s"
    (cluster,) = conf["influxdb"]
    assert cluster["name"] == "federation_gateway"
    assert cluster["urls"] == ["https://federation.mail.internal"]
    assert cluster["username"] == "dub1"
    assert cluster["default"] is False and cluster["enabled"] is True
    assert cluster["disable-subscriptions"] is True
    assert "startup-timeout" in cluster
    assert "password" not in cluster
    assert "FEDERATION_DUB1_AGENT_TOKEN" in result.stdout
    assert "default cluster" in result.stdout


def test_kapacitor_config_fills_in_the_token(
    config_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("FEDERATION_DUB1_AGENT_TOKEN", 'tok"en\\x')
    result = runner.invoke(
        app, ["kapacitor", "config", "--dc", "dub1", "--config", str(config_dir)]
    )
    assert result.exit_code == 0, result.output
    assert tomllib.loads(result.stdout)["influxdb"][0]["password"] == 'tok"en\\x'


def test_kapacitor_config_lists_every_coordinator_replica(config_dir: Path) -> None:
    """Kapacitor 1.5.7 sends each write to the next URL of the cluster in turn (no fail-over),
    so every replica is listed: one down then costs a share of the writes, not all of them."""
    fleet = config_dir / "fleet.yaml"
    fleet.write_text(
        fleet.read_text().replace(
            "  coordinator_url: https://federation.mail.internal\n",
            "  coordinator_url: https://federation.mail.internal\n"
            "  coordinator_replicas: [https://central-2.mail.internal:8086]\n",
        )
    )
    conf = kapacitor_conf(load_config(config_dir), "dub1", prog=Path("/bin/federation"))
    (cluster,) = tomllib.loads(conf.text)["influxdb"]
    assert cluster["urls"] == [
        "https://federation.mail.internal",
        "https://central-2.mail.internal:8086",
    ]
    assert "no fail-over" in conf.text


def test_kapacitor_config_refuses_a_dc_without_kapacitor(config_dir: Path) -> None:
    result = runner.invoke(
        app, ["kapacitor", "config", "--dc", "fra1", "--config", str(config_dir)]
    )
    assert isinstance(result.exception, ConfigError)
    assert result.exception.key_path == "dcs.fra1.kapacitor"
    assert result.stdout == ""


def test_kapacitor_conf_takes_the_token_from_the_environment_given(config_dir: Path) -> None:
    config = load_config(config_dir)
    prog = Path("/opt/federation/bin/federation")
    unset = kapacitor_conf(config, "lon1", prog=prog, environ={})
    assert not unset.password_set and unset.password_env == "FEDERATION_LON1_AGENT_TOKEN"
    assert tomllib.loads(unset.text)["udf"]["functions"]["fedagg"]["prog"] == str(prog)
    secret = "lon1-secret-token"
    with_token = kapacitor_conf(
        config, "lon1", prog=prog, environ={"FEDERATION_LON1_AGENT_TOKEN": secret}
    )
    assert with_token.password_set
    assert tomllib.loads(with_token.text)["influxdb"][0]["password"] == secret
    assert secret not in unset.text


def test_the_udf_command_starts_without_loading_the_cli() -> None:
    # Kapacitor starts every UDF process of a task at once and kills one that is slow to answer:
    # the installed `federation kapacitor-udf` goes straight to the UDF.
    code = (
        "import sys\n"
        "sys.argv = ['federation', 'kapacitor-udf']\n"
        "from federation._entry import main\n"
        "try:\n"
        "    main()\n"
        "except SystemExit as exc:\n"
        "    print(exc.code, sorted(m for m in sys.modules if m.startswith('federation.cli')))\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", code],
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    assert done.stdout.strip() == "0 []"
