"""The gateway write client: batches, manifest last, retries, refusals, splitting."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
import yaml

from federation.agent import ShipmentError, ShipmentRefused, Shipper
from federation.agent.daemon import build_shipper
from federation.config import load_config
from federation.core.lineprotocol import serialize
from federation.core.plan import MANIFEST_MEASUREMENT
from federation.core.points import Point
from federation.core.retry import RetryPolicy
from federation.devstack.localstack import InfluxServer
from federation.influx import InfluxClient

from .conftest import SECOND, base_time, central_points, make_plan
from .helpers import Forwarding


def window_of_points(groups: int, start: int) -> list[Point]:
    plan = make_plan()
    points = [
        Point(plan.aggregation, {"dc": "dc1", "customer": f"c{i}"}, {"count": 5, "sum": 1.5}, start)
        for i in range(groups)
    ]
    points.append(
        Point(
            MANIFEST_MEASUREMENT,
            {"dc": "dc1", "aggregation": plan.aggregation},
            {
                "events": 5 * groups,
                "groups": groups,
                "suppressed_events": 0,
                "run": 1,
                "version": plan.version,
            },
            start,
        )
    )
    return points


def test_batches_go_out_with_the_manifest_alone_and_last(
    central: InfluxClient, central_influxd: InfluxServer
) -> None:
    recorder = Forwarding()
    start = base_time()
    with Shipper(central_influxd.url, dc="dc1", token="t", batch_points=4, transport=recorder) as s:
        assert s.ship_window(make_plan(), window_of_points(10, start))
    lines = [body.decode().splitlines() for body in recorder.bodies]
    # Two batches are in flight at once: the third may arrive before the second.
    assert sorted(len(batch) for batch in lines[:-1]) == [2, 4, 4] and len(lines[-1]) == 1
    assert lines[-1][0].startswith(MANIFEST_MEASUREMENT)
    assert not any(line.startswith(MANIFEST_MEASUREMENT) for batch in lines[:-1] for line in batch)
    assert len(central_points(central, "delivery_latency")) == 10
    assert s.stats.points == 11 and s.stats.requests == 4


def test_503_is_retried_with_exponential_backoff(
    central: InfluxClient, central_influxd: InfluxServer
) -> None:
    def unavailable_twice(n: int, request: httpx.Request) -> httpx.Response | None:
        return httpx.Response(503, json={"error": "central busy"}) if n <= 2 else None

    sleeps: list[float] = []
    recorder = Forwarding(unavailable_twice)
    retry = RetryPolicy(attempts=5, initial_s=0.5, multiplier=2.0, max_s=30)
    with Shipper(
        central_influxd.url,
        dc="dc1",
        token="t",
        retry=retry,
        sleep=sleeps.append,
        transport=recorder,
    ) as shipper:
        assert shipper.ship_window(make_plan(), window_of_points(3, base_time()))
    assert sleeps == [0.5, 1.0]
    assert recorder.statuses == [503, 503, 204, 204]
    assert len(central_points(central, MANIFEST_MEASUREMENT)) == 1
    assert shipper.stats.retries == 2


def test_retries_are_bounded() -> None:
    sleeps: list[float] = []
    transport = httpx.MockTransport(lambda request: httpx.Response(502, text="bad gateway"))
    retry = RetryPolicy(attempts=4, initial_s=1, multiplier=3, max_s=5)
    with (
        Shipper(
            "http://gateway.test",
            dc="dc1",
            token="t",
            retry=retry,
            sleep=sleeps.append,
            transport=transport,
        ) as shipper,
        pytest.raises(ShipmentError) as caught,
    ):
        shipper.ship_window(make_plan(), window_of_points(2, base_time()))
    assert sleeps == [1, 3, 5]
    assert caught.value.status == 502
    assert "gave up after 4 attempts" in str(caught.value)
    assert not isinstance(caught.value, ShipmentRefused)


@pytest.mark.parametrize("status", [400, 403])
def test_a_refusal_is_not_retried_and_names_the_rule(status: int) -> None:
    requests: list[httpx.Request] = []
    refusal = {
        "error": "tag value looks like personal data",
        "rule": "pii_tag_value",
        "measurement": "delivery_latency",
        "key": "customer",
    }

    def refuse(request: httpx.Request) -> httpx.Response:
        requests.append(request)
        return httpx.Response(status, json=refusal)

    with (
        Shipper(
            "http://gateway.test",
            dc="dc1",
            token="t",
            sleep=lambda _s: pytest.fail("retried"),
            transport=httpx.MockTransport(refuse),
        ) as shipper,
        pytest.raises(ShipmentRefused) as caught,
    ):
        shipper.ship_window(make_plan(), window_of_points(2, base_time()))
    assert len(requests) == 1  # and the manifest was never sent
    error = caught.value
    assert (error.status, error.rule, error.measurement, error.key) == (
        status,
        "pii_tag_value",
        "delivery_latency",
        "customer",
    )
    assert "gateway http://gateway.test/write" in str(error)


def test_bad_credentials_are_not_retried() -> None:
    seen: list[httpx.Request] = []

    def unauthorized(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        return httpx.Response(401, json={"error": "authorization failed"})

    with (
        Shipper(
            "http://gateway.test",
            dc="dc1",
            token="s3cret",
            transport=httpx.MockTransport(unauthorized),
        ) as shipper,
        pytest.raises(ShipmentError) as caught,
    ):
        shipper.ship_window(make_plan(), window_of_points(1, base_time()))
    assert len(seen) == 1 and caught.value.status == 401
    assert "s3cret" not in str(caught.value)
    # HTTP basic auth: user = the DC, password = its agent token.
    assert seen[0].headers["authorization"].startswith("Basic ")
    params = dict(seen[0].url.params)
    assert params == {"db": "federation", "rp": "agg_400d", "precision": "ns"}


def test_a_batch_too_big_is_split(central: InfluxClient, central_influxd: InfluxServer) -> None:
    def too_big(n: int, request: httpx.Request) -> httpx.Response | None:
        if len(request.content.splitlines()) > 3:
            return httpx.Response(413, json={"error": "request entity too large"})
        return None

    recorder = Forwarding(too_big)
    with Shipper(central_influxd.url, dc="dc1", token="t", transport=recorder) as shipper:
        assert shipper.ship_window(make_plan(), window_of_points(12, base_time()))
    assert len(central_points(central, "delivery_latency")) == 12
    assert shipper.stats.splits == 3  # 12 -> 6 + 6 -> 3 + 3 + 3 + 3
    assert recorder.bodies[-1].startswith(MANIFEST_MEASUREMENT.encode())


def test_the_coordinators_gateway_target_overrides_the_plans(
    central_influxd: InfluxServer,
) -> None:
    seen: list[httpx.Request] = []

    def accept(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        return httpx.Response(204)

    with Shipper(
        "http://gateway.test",
        dc="dc1",
        token="t",
        database="fed2",
        retention_policy="agg_800d",
        transport=httpx.MockTransport(accept),
    ) as shipper:
        shipper.ship_window(make_plan(), window_of_points(1, SECOND))
    assert {r.url.params["db"] for r in seen} == {"fed2"}
    assert {r.url.params["rp"] for r in seen} == {"agg_800d"}


def made_while_shipped(groups: int, start: int, made: list[Point]) -> Iterator[Point]:
    """`window_of_points`, each point made only when the shipper takes it (as `WindowPoints`
    makes a window's summaries); `made` holds those made so far."""
    for point in window_of_points(groups, start):
        made.append(point)
        yield point


def test_summaries_are_shipped_while_the_rest_are_made_the_manifest_after_all() -> None:
    made: list[Point] = []
    made_when_posted: list[int] = []
    bodies: list[bytes] = []

    def accept(request: httpx.Request) -> httpx.Response:
        made_when_posted.append(len(made))
        bodies.append(request.content)
        return httpx.Response(204)

    with Shipper(
        "http://gateway.test",
        dc="dc1",
        token="t",
        batch_points=2,
        transport=httpx.MockTransport(accept),
    ) as shipper:
        assert shipper.ship_window(make_plan(), made_while_shipped(40, base_time(), made))
    # The first batch was sent long before the last summary was made...
    assert made_when_posted[0] < 20
    # ...and the manifest alone, last, once every summary was made and accepted.
    assert len(bodies) == 21 and made_when_posted[-1] == 41
    assert bodies[-1].startswith(MANIFEST_MEASUREMENT.encode()) and bodies[-1].count(b"\n") == 1
    assert not any(MANIFEST_MEASUREMENT.encode() in body for body in bodies[:-1])
    # Two batches are sent at once and may arrive in either order: each is whole, in order.
    plain = serialize(window_of_points(40, base_time()))
    assert b"".join(sorted(bodies, key=plain.index)) == plain


def test_a_summary_that_cannot_be_made_ships_no_manifest() -> None:
    bodies: list[bytes] = []

    def accept(request: httpx.Request) -> httpx.Response:
        bodies.append(request.content)
        return httpx.Response(204)

    def failing() -> Iterator[Point]:
        yield from window_of_points(10, base_time())[:6]
        raise ValueError("a value the computation cannot take")

    with (
        Shipper(
            "http://gateway.test",
            dc="dc1",
            token="t",
            batch_points=2,
            transport=httpx.MockTransport(accept),
        ) as shipper,
        pytest.raises(ValueError, match="cannot take"),
    ):
        shipper.ship_window(make_plan(), failing())
    assert not any(MANIFEST_MEASUREMENT.encode() in body for body in bodies)
    assert not [t for t in threading.enumerate() if t.name.startswith("ship ")]


@pytest.mark.parametrize("connections", [1, 2])
@pytest.mark.parametrize("made", ["before", "while shipped"])
def test_a_refused_batch_ends_the_window_before_its_manifest(made: str, connections: int) -> None:
    """Batches are serialized ahead and `connections` are sent at once, but none is sent once
    a refusal came back, and the manifest only once every batch was accepted."""
    bodies: list[bytes] = []
    refused = threading.Event()
    sent_after_the_refusal: list[bytes] = []

    def refuse_the_second(request: httpx.Request) -> httpx.Response:
        if refused.is_set():
            sent_after_the_refusal.append(request.content)
        bodies.append(request.content)
        if len(bodies) == 2:
            refused.set()
            return httpx.Response(400, json={"error": "refused", "rule": "schema"})
        return httpx.Response(204)

    with (
        Shipper(
            "http://gateway.test",
            dc="dc1",
            token="t",
            batch_points=4,
            connections=connections,
            transport=httpx.MockTransport(refuse_the_second),
        ) as shipper,
        pytest.raises(ShipmentRefused),
    ):
        points = window_of_points(30, base_time())
        shipper.ship_window(make_plan(), points if made == "before" else iter(points))
    # With two at once, the third batch may have left while the second was being refused.
    assert 2 <= len(bodies) <= 1 + connections
    assert len(sent_after_the_refusal) <= connections - 1
    assert not any(MANIFEST_MEASUREMENT.encode() in body for body in bodies)
    assert not [t for t in threading.enumerate() if t.name.startswith("ship ")]


def test_summary_batches_are_sent_at_once_and_the_manifest_after_every_one() -> None:
    """Two summary batches in flight together (the gateway stores one while it receives the
    next); the manifest only once both were answered."""
    both_in_flight = threading.Barrier(2, timeout=10)
    lock = threading.Lock()
    answered: list[int] = []
    manifest_after: list[int] = []

    def accept(request: httpx.Request) -> httpx.Response:
        if request.content.startswith(MANIFEST_MEASUREMENT.encode()):
            manifest_after.append(len(answered))
            return httpx.Response(204)
        both_in_flight.wait()  # broken (an error) unless a second batch is sent meanwhile
        time.sleep(0.05)
        with lock:
            answered.append(request.content.count(b"\n"))
        return httpx.Response(204)

    with Shipper(
        "http://gateway.test",
        dc="dc1",
        token="t",
        batch_points=5,
        transport=httpx.MockTransport(accept),
    ) as shipper:
        assert shipper.connections == 2
        assert shipper.ship_window(make_plan(), window_of_points(10, base_time()))
    assert sorted(answered) == [5, 5]
    assert manifest_after == [2]


def test_a_windows_first_batch_is_small_and_each_next_twice_as_large() -> None:
    """The gateway starts on a window as soon as its first summaries are made; a large window
    still goes in few requests."""
    sizes: list[int] = []

    def accept(request: httpx.Request) -> httpx.Response:
        sizes.append(request.content.count(b"\n"))
        return httpx.Response(204)

    with Shipper(
        "http://gateway.test",
        dc="dc1",
        token="t",
        batch_points=5_000,
        connections=1,
        transport=httpx.MockTransport(accept),
    ) as shipper:
        assert shipper.ship_window(make_plan(), window_of_points(12_000, base_time()))
        assert sizes == [500, 1_000, 2_000, 4_000, 4_500, 1]
        sizes.clear()
        shipper.write_points(
            window_of_points(6_000, base_time()), database="federation", retention_policy="r"
        )
        assert sizes == [5_000, 1_001]  # points that are not a window: full batches


A, B = "http://replica-a", "http://replica-b"


def _kind(request: httpx.Request) -> str:
    manifest = request.content.startswith(MANIFEST_MEASUREMENT.encode())
    return f"{request.url.host} {'manifest' if manifest else 'summaries'}"


def test_writes_fail_over_to_the_next_replica_and_stay_there() -> None:
    """A replica that refuses connections or drains (503) is skipped without waiting; the
    replica that stored a batch takes the next ones, the manifest still alone and last."""
    seen: list[str] = []

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(_kind(request))
        if request.url.host == "replica-a":
            raise httpx.ConnectError("connection refused", request=request)
        if len(seen) == 2:
            return httpx.Response(503, json={"error": "draining"})
        return httpx.Response(204)

    sleeps: list[float] = []
    retry = RetryPolicy(attempts=3, initial_s=0.5)
    # One batch at a time, so the order of the tries is the test's.
    with Shipper([A, B], dc="dc1", token="t", batch_points=4, connections=1, retry=retry,
                 sleep=sleeps.append, transport=httpx.MockTransport(handler)) as shipper:  # fmt: skip
        assert shipper.ship_window(make_plan(), window_of_points(6, base_time()))
        assert shipper.url == B
        assert shipper.ship_window(make_plan(), window_of_points(1, base_time() + SECOND))
    assert seen == [
        "replica-a summaries", "replica-b summaries",  # refused, then draining: a round over both
        "replica-a summaries", "replica-b summaries",  # after the back-off: b stores it
        "replica-b summaries", "replica-b manifest",
        "replica-b summaries", "replica-b manifest",  # the next window goes to b first
    ]  # fmt: skip
    assert sleeps == [0.5]
    assert shipper.stats.retries == 3


def test_a_lost_answer_is_written_again_at_another_replica_before_the_manifest() -> None:
    """A write is idempotent (the same points again), so unlike an Agent API POST it is sent
    again after a lost answer; the manifest goes only once the summaries were stored."""
    seen: list[str] = []

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(_kind(request))
        if request.url.host == "replica-a" and len(seen) == 1:
            raise httpx.ReadTimeout("no answer", request=request)
        return httpx.Response(204)

    with Shipper([A, B], dc="dc1", token="t", sleep=lambda _s: pytest.fail("waited"),
                 transport=httpx.MockTransport(handler)) as shipper:  # fmt: skip
        assert shipper.ship_window(make_plan(), window_of_points(3, base_time()))
    assert seen == ["replica-a summaries", "replica-b summaries", "replica-b manifest"]


def test_every_replica_down_backs_off_between_rounds_then_fails() -> None:
    seen: list[str] = []

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(request.url.host)
        return httpx.Response(502 if request.url.host == "replica-a" else 503, text="down")

    sleeps: list[float] = []
    retry = RetryPolicy(attempts=3, initial_s=0.25, multiplier=2.0)
    with (
        Shipper(
            [A, B],
            dc="dc1",
            token="t",
            retry=retry,
            sleep=sleeps.append,
            transport=httpx.MockTransport(handler),
        ) as shipper,  # fmt: skip
        pytest.raises(ShipmentError) as caught,
    ):
        shipper.ship_window(make_plan(), window_of_points(2, base_time()))
    assert seen == ["replica-a", "replica-b"] * 3
    assert sleeps == [0.25, 0.5]
    assert "gave up after 3 rounds over 2 replicas" in str(caught.value)
    assert str(caught.value).startswith("gateway http://replica-b/write")


def test_a_refusal_at_one_replica_is_not_tried_at_another() -> None:
    seen: list[str] = []

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(request.url.host)
        return httpx.Response(400, json={"error": "refused", "rule": "schema", "key": "x"})

    with (
        Shipper([A, B], dc="dc1", token="t", transport=httpx.MockTransport(handler)) as shipper,
        pytest.raises(ShipmentRefused) as caught,
    ):
        shipper.ship_window(make_plan(), window_of_points(2, base_time()))
    assert seen == ["replica-a"] and caught.value.rule == "schema"


def test_build_shipper_writes_to_every_coordinator_replica_the_fleet_names(
    config_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    fleet = config_dir / "fleet.yaml"
    data = yaml.safe_load(fleet.read_text())
    first = data["central"]["coordinator_url"]
    data["central"]["coordinator_replicas"] = ["http://central-2:8086"]
    fleet.write_text(yaml.safe_dump(data, sort_keys=False))
    config = load_config(config_dir)
    dc = sorted(config.fleet.dcs)[0]
    monkeypatch.setenv(config.dc(dc).agent_token_env, "t")
    with build_shipper(config, dc) as shipper:
        assert shipper.replicas.urls == (first.rstrip("/"), "http://central-2:8086")
    with build_shipper(config, dc, gateway_url="http://only:8086") as shipper:
        assert shipper.replicas.urls == ("http://only:8086",)


def test_threads_sharing_a_shipper_each_go_round_every_replica() -> None:
    """Two windows shipped at once both fail at the first replica: each still tries the second
    before backing off (a failure moves the shared starting point past the replica that
    failed, never back onto it)."""
    seen: list[str] = []
    both_at_a = threading.Barrier(2)

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(request.url.host)
        if request.url.host == "replica-a":
            both_at_a.wait(5)
            raise httpx.ConnectError("connection refused", request=request)
        return httpx.Response(204)

    sleeps: list[float] = []
    with Shipper([A, B], dc="dc1", token="t", sleep=sleeps.append,
                 transport=httpx.MockTransport(handler)) as shipper:  # fmt: skip
        threads = [
            threading.Thread(
                target=shipper.write_points,
                args=(window_of_points(1, base_time() + i * SECOND)[:1],),
                kwargs={"database": "federation", "retention_policy": "agg_400d"},
            )
            for i in range(2)
        ]
        for t in threads:
            t.start()
        for t in threads:
            t.join(10)
    assert sorted(seen) == ["replica-a", "replica-a", "replica-b", "replica-b"]
    assert sleeps == [] and shipper.url == B
