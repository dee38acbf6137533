"""Fixtures for the agent: a DC influxd with raw data, a central influxd, second-long plans."""

from __future__ import annotations

import random
import shutil
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, replace

import pytest

from federation.core.lineprotocol import serialize
from federation.core.plan import AggregationPlan
from federation.core.points import Point
from federation.devstack.localstack import InfluxServer, LocalStack
from federation.devstack.processes import free_port
from federation.influx import InfluxClient

SECOND = 10**9
HOUR = 3600 * SECOND
DAY = 24 * HOUR

PERSONAL_VALUES = (
    "alice@example.com",
    "bob.smith@mail.example.org",
    "192.0.2.17",
    "2001:db8::42",
    "mx1.example.net",
)


def make_plan(**changes: object) -> AggregationPlan:
    """A delivery-latency plan for DC `dc1` with one-second windows and a 3-window look-back."""
    plan = AggregationPlan(
        aggregation="delivery_latency",
        dc="dc1",
        region="eu",
        database="mail",
        retention_policy="raw",
        measurement="delivery",
        value_field="latency_ms",
        unit="ms",
        dimensions=("direction", "mailer", "customer"),
        dropped_dimensions=(),
        window_ns=SECOND,
        lookback_ns=3 * SECOND,
        grace_ns=SECOND,
        percentiles=(50.0, 90.0, 95.0, 99.0, 99.9),
        accuracy=0.01,
        min_group_events=3,
        central_database="federation",
        central_retention_policy="agg_400d",
        template="aggregation.tick.j2",
        personal_keys=frozenset({"sender", "recipient", "client_ip", "helo"}),
    )
    return replace(plan, **changes)  # type: ignore[arg-type]


def base_time() -> int:
    """An hour boundary one to two hours ago: recent enough for a 30-day retention."""
    now = time.time_ns()
    return now - now % HOUR - HOUR


@dataclass
class Event:
    time_ns: int
    latency: float
    direction: str | None = "in"
    mailer: str | None = "m1"
    customer: str | None = "c1"


def event_points(events: Sequence[Event]) -> list[Point]:
    """Raw delivery points, with personal data in fields as the policy declares it."""
    rng = random.Random(7)
    points = []
    for i, e in enumerate(events):
        tags = {
            k: v
            for k, v in (("direction", e.direction), ("mailer", e.mailer), ("customer", e.customer))
            if v is not None
        }
        tags["seq"] = str(i)  # keeps points at equal timestamps apart
        points.append(
            Point(
                "delivery",
                tags,
                {
                    "latency_ms": e.latency,
                    "sender": rng.choice(PERSONAL_VALUES[:2]),
                    "recipient": rng.choice(PERSONAL_VALUES[:2]),
                    "client_ip": rng.choice(PERSONAL_VALUES[2:4]),
                    "helo": PERSONAL_VALUES[4],
                },
                e.time_ns,
            )
        )
    return points


def write_events(client: InfluxClient, events: Sequence[Event]) -> None:
    points = event_points(events)
    for start in range(0, len(points), 5000):
        client.write(
            serialize(points[start : start + 5000]), database="mail", retention_policy="raw"
        )


def random_events(rng: random.Random, start_ns: int, windows: int, n: int) -> list[Event]:
    """`n` events spread over `windows` one-second windows from `start_ns`, in a few groups of
    very different sizes (some below k-anonymity), some lacking a dimension tag."""
    events = []
    for _ in range(n):
        t = start_ns + rng.randrange(windows * SECOND)
        r = rng.random()
        if r < 0.02:
            customer: str | None = None
        elif r < 0.04:
            customer = "rare"
        else:
            customer = f"c{rng.randrange(6)}"
        events.append(
            Event(
                t,
                round(rng.lognormvariate(3, 1.2), rng.choice([0, 1, 3])),
                rng.choice(["in", "out"]),
                rng.choice(["m1", "m2"]),
                customer,
            )
        )
    return events


def start_server(stack: LocalStack, request: pytest.FixtureRequest, role: str) -> InfluxServer:
    name = f"a-{role}-" + request.node.name.replace("[", "-").replace("]", "")[:50]
    server = InfluxServer(name, stack.root / name, free_port())
    server.start()

    def cleanup() -> None:
        server.stop()
        shutil.rmtree(server.root, ignore_errors=True)

    request.addfinalizer(cleanup)
    return server


@pytest.fixture
def dc_influxd(localstack: LocalStack, request: pytest.FixtureRequest) -> InfluxServer:
    return start_server(localstack, request, "dc")


@pytest.fixture
def central_influxd(localstack: LocalStack, request: pytest.FixtureRequest) -> InfluxServer:
    return start_server(localstack, request, "central")


@pytest.fixture
def dc(dc_influxd: InfluxServer) -> Iterator[InfluxClient]:
    """The DC's InfluxDB with database `mail` and its default raw RP `raw`."""
    with InfluxClient(dc_influxd.url) as client:
        client.execute('CREATE DATABASE "mail"')
        client.execute(
            'CREATE RETENTION POLICY "raw" ON "mail" DURATION 30d '
            "REPLICATION 1 SHARD DURATION 1d DEFAULT"
        )
        yield client


@pytest.fixture
def central(central_influxd: InfluxServer) -> Iterator[InfluxClient]:
    """Central InfluxDB with database `federation` and RP `agg_400d`."""
    with InfluxClient(central_influxd.url) as client:
        client.execute('CREATE DATABASE "federation"')
        client.execute(
            'CREATE RETENTION POLICY "agg_400d" ON "federation" DURATION 400d '
            "REPLICATION 1 SHARD DURATION 7d"
        )
        yield client


def central_points(central: InfluxClient, measurement: str) -> list[dict[str, object]]:
    """Every point of `measurement` at central, as rows with tags, oldest first."""
    from federation.influx import rows

    q = f'SELECT * FROM "federation"."agg_400d"."{measurement}" GROUP BY *'
    return sorted(
        rows(central.query(q, database="federation")),
        key=lambda r: (r["time"], sorted((k, str(v)) for k, v in r.items())),
    )
