"""The embedded executor against real InfluxDB: a DC with raw data, a central as the gateway."""

from __future__ import annotations

import math
import random
import threading
from collections import defaultdict
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any

import httpx
import numpy as np
import pytest

from federation.agent import (
    EmbeddedMode,
    RangeResult,
    RunIds,
    ShipmentError,
    Shipper,
    WindowRunner,
    run_range,
)
from federation.core import aggregate
from federation.core.aggregate import window_points
from federation.core.clock import FakeClock
from federation.core.lineprotocol import serialize
from federation.core.plan import ShippedPlan
from federation.core.points import Point
from federation.core.retry import RetryPolicy
from federation.core.stats import nearest_rank, percentile_field
from federation.devstack.localstack import InfluxServer
from federation.influx import InfluxClient, Series

from .conftest import (
    PERSONAL_VALUES,
    SECOND,
    Event,
    base_time,
    central_points,
    make_plan,
    random_events,
    write_events,
)
from .helpers import Forwarding

DIMS = ("direction", "mailer", "customer")


def shipper_for(server: InfluxServer, **kwargs: object) -> Shipper:
    return Shipper(server.url, dc="dc1", token="secret", **kwargs)  # type: ignore[arg-type]


def test_results_equal_an_independent_numpy_computation(
    dc: InfluxClient, central: InfluxClient, central_influxd: InfluxServer
) -> None:
    plan = make_plan()
    base = base_time()
    events = random_events(random.Random(42), base, 3, 3000)
    write_events(dc, events)
    with shipper_for(central_influxd) as shipper:
        result = run_range(
            plan,
            base,
            base + 3 * SECOND,
            source=dc,
            sink=shipper,
            clock=FakeClock(base + 5 * SECOND),
        )
    assert result.ok and result.shipped == 3

    groups: dict[tuple[int, tuple[str, ...]], list[float]] = defaultdict(list)
    for e in events:
        key = tuple(v or "_none" for v in (e.direction, e.mailer, e.customer))
        groups[(e.time_ns - e.time_ns % SECOND, key)].append(e.latency)
    expected = {}
    suppressed: dict[int, int] = defaultdict(int)
    for (start, key), values in groups.items():
        if len(values) < plan.min_group_events:
            suppressed[start] += len(values)
            continue
        ordered = np.sort(np.array(values, dtype=np.float64))
        row: dict[str, object] = {
            "count": len(values),
            "sum": math.fsum(values),
            "min": float(ordered[0]),
            "max": float(ordered[-1]),
        }
        for p in plan.percentiles:
            rank = math.floor(len(values) * p / 100 + 0.5) - 1  # nearest rank, as InfluxQL
            row[percentile_field(p)] = float(ordered[rank]) if 0 <= rank < len(values) else None
            assert row[percentile_field(p)] == nearest_rank(ordered, p)
        expected[(start, key)] = row

    shipped = central_points(central, plan.aggregation)
    assert len(shipped) == len(expected)
    assert any(key[2] == "_none" for _, key in expected)  # the missing-tag group is exported
    for point in shipped:
        at = int(point["time"])  # type: ignore[call-overload]
        want = expected[(at, tuple(str(point[d]) for d in DIMS))]
        assert point["count"] == want["count"]
        for name in ("sum", "min", "max", *plan.percentile_fields):
            got = point[name]
            assert (None if got is None else float(got)) == want[name], name  # type: ignore[arg-type]
        assert point["dc"] == "dc1"
        assert str(point["sketch"]).startswith("v1:a=0.01:")

    manifests = central_points(central, "federation_manifest")
    assert [int(m["time"]) for m in manifests] == [base + i * SECOND for i in range(3)]  # type: ignore[call-overload]
    for m in manifests:
        start = int(m["time"])  # type: ignore[call-overload]
        assert m["events"] == sum(len(v) for (s, _), v in groups.items() if s == start)
        assert m["suppressed_events"] == suppressed[start]
        assert m["groups"] == sum(1 for s, _ in expected if s == start)
        assert m["version"] == plan.version


def test_personal_data_never_appears_in_what_is_shipped(
    dc: InfluxClient, central: InfluxClient, central_influxd: InfluxServer
) -> None:
    plan = make_plan(min_group_events=1)
    base = base_time()
    write_events(dc, random_events(random.Random(3), base, 2, 400))
    recorder = Forwarding()
    with shipper_for(central_influxd, transport=recorder) as shipper:
        assert run_range(
            plan, base, base + 2 * SECOND, source=dc, sink=shipper, clock=FakeClock(base)
        ).ok
    shipped = b"".join(recorder.bodies).decode()
    stored = repr(
        central.query(
            'SELECT * FROM "federation"."agg_400d"./.*/ GROUP BY *', database="federation"
        )
    )
    assert "delivery_latency" in shipped and "delivery_latency" in stored
    for value in PERSONAL_VALUES:
        assert value not in shipped
        assert value not in stored
    for key in ("sender", "recipient", "client_ip", "helo"):
        assert key not in shipped
        assert key not in stored


def _without_run(rows: list[dict[str, object]]) -> list[dict[str, object]]:
    return [{k: v for k, v in row.items() if k != "run"} for row in rows]


def test_running_the_same_range_twice_changes_nothing_but_the_run(
    dc: InfluxClient, central: InfluxClient, central_influxd: InfluxServer
) -> None:
    plan = make_plan()
    base = base_time()
    write_events(dc, random_events(random.Random(5), base, 4, 2000))
    clock = FakeClock(base + 10 * SECOND)
    run_ids = RunIds(clock)
    with shipper_for(central_influxd) as shipper:
        kwargs = {"source": dc, "sink": shipper, "clock": clock, "run_ids": run_ids}
        assert run_range(plan, base, base + 4 * SECOND, **kwargs).ok  # type: ignore[arg-type]
        first = central_points(central, plan.aggregation)
        first_manifests = central_points(central, "federation_manifest")
        clock.advance(SECOND)
        assert run_range(plan, base, base + 4 * SECOND, **kwargs).ok  # type: ignore[arg-type]
    assert central_points(central, plan.aggregation) == first
    second_manifests = central_points(central, "federation_manifest")
    assert _without_run(second_manifests) == _without_run(first_manifests)
    for before, after in zip(first_manifests, second_manifests, strict=True):
        assert int(after["run"]) > int(before["run"])  # type: ignore[call-overload]


def test_a_range_never_cuts_a_window(
    dc: InfluxClient, central: InfluxClient, central_influxd: InfluxServer
) -> None:
    plan = make_plan()
    base = base_time()
    with shipper_for(central_influxd) as shipper:
        result = run_range(
            plan,
            base + SECOND // 2,
            base + 3 * SECOND + SECOND // 2,
            source=dc,
            sink=shipper,
            clock=FakeClock(base),
        )
    assert [w.window.start_ns for w in result.windows] == [base + SECOND, base + 2 * SECOND]
    # Empty windows still get their manifest: empty differs from missing.
    manifests = central_points(central, "federation_manifest")
    assert [m["events"] for m in manifests] == [0, 0]


def test_late_data_inside_the_lookback_is_picked_up_by_the_next_run(
    dc: InfluxClient, central: InfluxClient, central_influxd: InfluxServer
) -> None:
    plan = make_plan()  # 1 s windows, a look-back of 3 windows
    base = base_time()
    clock = FakeClock(base + SECOND + SECOND // 10)
    with shipper_for(central_influxd) as shipper:
        mode = EmbeddedMode(
            WindowRunner(dc, shipper, clock), stop=threading.Event(), schedule=False
        )
        mode.apply([plan])
        write_events(dc, [Event(base + i * 1000, 10.0 + i) for i in range(5)])
        first = mode.run_lookback(plan)
        assert [w.window.start_ns for w in first.windows] == [
            base - 2 * SECOND,
            base - SECOND,
            base,
        ]
        (manifest,) = [m for m in central_points(central, "federation_manifest") if m["events"]]
        assert manifest["events"] == 5

        write_events(dc, [Event(base + 500_000_000 + i, 100.0) for i in range(4)])  # late
        clock.advance(SECOND)  # the next run: window `base` is now at offset 1
        mode.run_lookback(plan)
        (manifest2,) = [m for m in central_points(central, "federation_manifest") if m["events"]]
        assert manifest2["events"] == 9
        assert int(manifest2["run"]) > int(manifest["run"])  # type: ignore[call-overload]
        (summary,) = central_points(central, plan.aggregation)
        assert summary["count"] == 9 and summary["max"] == 100

        # Past the look-back, late data waits for a backfill: it is not silently merged.
        write_events(dc, [Event(base + 600_000_000 + i, 1.0) for i in range(3)])
        clock.advance(3 * SECOND)
        mode.run_lookback(plan)
        (summary,) = central_points(central, plan.aggregation)
        assert summary["count"] == 9
        assert mode.health()[0].healthy


def _manifests(central: InfluxClient) -> list[dict[str, object]]:
    return central_points(central, "federation_manifest")


def test_a_shipment_failing_after_the_first_batch_ships_no_manifest(
    dc: InfluxClient, central: InfluxClient, central_influxd: InfluxServer
) -> None:
    plan = make_plan(min_group_events=1)
    base = base_time()
    write_events(dc, random_events(random.Random(9), base, 1, 600))

    def fail_after_first(n: int, request: httpx.Request) -> httpx.Response | None:
        if n > 1:
            raise httpx.ConnectError("gateway went away", request=request)
        return None

    failing = Forwarding(fail_after_first)
    with shipper_for(
        central_influxd,
        transport=failing,
        batch_points=5,
        retry=RetryPolicy(attempts=3, initial_s=0.01),
        sleep=lambda _s: None,
    ) as shipper:
        result = run_range(
            plan, base, base + SECOND, source=dc, sink=shipper, clock=FakeClock(base)
        )
    assert not result.ok and result.error and "gave up after 3 attempts" in result.error
    assert result.shipped == 0 and not result.windows[0].shipped
    assert len(central_points(central, plan.aggregation)) == 5  # the first batch only
    assert _manifests(central) == []  # so the window is not shipped

    with shipper_for(central_influxd) as shipper:  # the next run repairs it
        assert run_range(
            plan, base, base + SECOND, source=dc, sink=shipper, clock=FakeClock(base)
        ).ok
    assert [m["events"] for m in _manifests(central)] == [600]


def test_a_stop_between_batches_abandons_the_window_before_its_manifest(
    dc: InfluxClient, central: InfluxClient, central_influxd: InfluxServer
) -> None:
    plan = make_plan(min_group_events=1)
    base = base_time()
    write_events(dc, random_events(random.Random(9), base, 2, 600))
    stop = threading.Event()

    def stop_after_first(n: int, request: httpx.Request) -> None:
        if n == 1:
            stop.set()  # SIGTERM arrives while the first batch is in flight

    with shipper_for(central_influxd, transport=Forwarding(stop_after_first), batch_points=5) as s:
        result = run_range(
            plan, base, base + 2 * SECOND, source=dc, sink=s, clock=FakeClock(base), stop=stop
        )
    assert result.stopped and result.shipped == 0
    assert len(result.windows) == 1  # the second window was never started
    assert _manifests(central) == []


@pytest.mark.parametrize("chunk_size", [1, 7, 10_000])
def test_chunking_does_not_change_the_result(
    dc: InfluxClient, central_influxd: InfluxServer, chunk_size: int
) -> None:
    from federation.agent import read_window
    from federation.core.windows import Window

    plan = make_plan()
    base = base_time()
    write_events(dc, random_events(random.Random(11), base, 1, 50))
    data = read_window(dc, plan, Window(base, SECOND), chunk_size=chunk_size)
    reference = read_window(dc, plan, Window(base, SECOND), chunk_size=100_000)
    assert data.events == 50
    assert np.array_equal(data.values, reference.values)
    assert np.array_equal(data.codes, reference.codes)
    assert data.keys == reference.keys


def test_what_is_shipped_is_byte_for_byte_the_plain_computation(
    dc: InfluxClient, central: InfluxClient, central_influxd: InfluxServer
) -> None:
    """Summaries made while earlier batches are shipped: the same lines as `window_points` of
    the raw events, in the same order, and the manifest alone and last."""
    plan = make_plan(min_group_events=1)
    base = base_time()
    events = random_events(random.Random(21), base, 1, 800)
    write_events(dc, events)
    recorder = Forwarding()
    with shipper_for(central_influxd, transport=recorder, batch_points=3) as shipper:
        result = run_range(
            plan, base, base + SECOND, source=dc, sink=shipper, clock=FakeClock(base)
        )
    assert result.ok
    expected = window_points(
        plan,
        base,
        np.array([e.latency for e in events], dtype=np.float64),
        [[e.direction for e in events], [e.mailer for e in events], [e.customer for e in events]],
        run=result.windows[0].run,
    )
    assert len(recorder.bodies) > 3
    assert recorder.bodies[-1] == serialize(expected[-1:])
    # Two batches are sent at once, so they may arrive in either order: put them back in the
    # order they were made (each batch's lines in order, the batches together all of them).
    plain = serialize(expected)
    made = sorted(recorder.bodies[:-1], key=plain.index)
    assert b"".join(made) + recorder.bodies[-1] == plain


def test_a_summary_that_cannot_be_made_ships_no_manifest(
    dc: InfluxClient,
    central: InfluxClient,
    central_influxd: InfluxServer,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    plan = make_plan(min_group_events=1)
    base = base_time()
    write_events(dc, random_events(random.Random(9), base, 2, 600))

    def refuse(sketches: object) -> list[str]:
        raise ValueError("a histogram this writer cannot take")

    monkeypatch.setattr(aggregate, "encode_many", refuse)
    with shipper_for(central_influxd) as shipper:
        result = run_range(
            plan, base, base + 2 * SECOND, source=dc, sink=shipper, clock=FakeClock(base)
        )
    assert not result.ok and result.error and "cannot take" in result.error
    assert [w.shipped for w in result.windows] == [False]  # the run ended at the first window
    assert _manifests(central) == []


class CountingReads(InfluxClient):
    """The DC's InfluxDB, telling when the second window's read starts."""

    def __init__(self, url: str) -> None:
        super().__init__(url)
        self.reads = 0
        self.second_read = threading.Event()

    def iter_series(self, q: str, **kwargs: Any) -> Iterator[Series]:
        self.reads += 1
        if self.reads == 2:
            self.second_read.set()
        return super().iter_series(q, **kwargs)


@dataclass
class HoldingSink:
    """Holds the first window's shipping until the next window's read has started; fails it
    (a gateway gone) when `fail_first`."""

    source: CountingReads
    fail_first: bool = False
    events: list[str] = field(default_factory=list)
    overlapped: bool = False

    def ship_window(
        self, plan: ShippedPlan, points: Iterable[Point], *, stop: threading.Event | None = None
    ) -> bool:
        made = list(points)
        label = f"{(made[-1].time_ns - base_time()) // SECOND}"
        self.events.append(f"summaries {label}")
        if not self.events[:-1]:
            self.overlapped = self.source.second_read.wait(30)
            if self.fail_first:
                raise ShipmentError("http://gateway.test/write", "gateway went away")
        self.events.append(f"manifest {label}")
        return True


def run_three_windows(
    dc: InfluxClient, dc_influxd: InfluxServer, *, fail_first: bool
) -> tuple[RangeResult, HoldingSink, int]:
    """Three windows of raw data run into a `HoldingSink`: the result, the sink, the reads."""
    base = base_time()
    write_events(dc, random_events(random.Random(4), base, 3, 900))
    with CountingReads(dc_influxd.url) as source:
        sink = HoldingSink(source, fail_first=fail_first)
        result = run_range(
            make_plan(), base, base + 3 * SECOND, source=source, sink=sink, clock=FakeClock(base)
        )
    return result, sink, source.reads


def test_the_next_window_is_read_while_one_is_shipped_and_windows_ship_in_order(
    dc: InfluxClient, dc_influxd: InfluxServer
) -> None:
    result, sink, _ = run_three_windows(dc, dc_influxd, fail_first=False)
    assert result.ok and result.shipped == 3
    assert sink.overlapped
    assert sink.events == [f"{what} {i}" for i in range(3) for what in ("summaries", "manifest")]


def test_a_window_read_while_the_one_before_failed_to_ship_is_not_shipped(
    dc: InfluxClient, dc_influxd: InfluxServer
) -> None:
    result, sink, reads = run_three_windows(dc, dc_influxd, fail_first=True)
    assert sink.overlapped and reads == 2
    assert not result.ok and result.error and "gateway went away" in result.error
    assert [w.shipped for w in result.windows] == [False]  # the first window, unshipped
    assert sink.events == ["summaries 0"]
