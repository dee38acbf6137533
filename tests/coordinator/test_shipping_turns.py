"""One DC's batches pass the gateway one at a time across coordinator replicas over a
PostgreSQL ledger (an advisory lock per DC), while different DCs ship side by side; a replica
that dies holding a DC's turn gives it back with its connection."""

from __future__ import annotations

import asyncio
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator

import httpx
import pytest
from sqlalchemy import create_engine, text
from starlette.testclient import TestClient

from federation.config import FederationConfig
from federation.coordinator.api import build_app
from federation.coordinator.gateway.ordering import NAMESPACE, dc_lock_key
from federation.coordinator.ledger import Ledger
from federation.coordinator.service import Coordinator, CoordinatorSettings, Tokens
from federation.core.clock import FakeClock

from .helpers import HOUR, READER, body, central_params, plan_of, token, window_batch
from .test_gateway import basic

pytestmark = pytest.mark.parametrize(
    "ledger_backend", [pytest.param("postgresql", marks=pytest.mark.postgres)]
)


class SlowCentral(httpx.AsyncBaseTransport):
    """Central InfluxDB that takes `delay_s` per write and counts the writes in flight per DC
    (every replica's gateway forwards to it)."""

    def __init__(self, delay_s: float = 0.5) -> None:
        self.delay_s = delay_s
        self._lock = threading.Lock()
        self.in_flight: Counter[str] = Counter()
        self.most: Counter[str] = Counter()
        self.most_overall = 0

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        content = await request.aread()
        dc = content.split(b"dc=", 1)[1].split(b",", 1)[0].split(b" ", 1)[0].decode()
        with self._lock:
            self.in_flight[dc] += 1
            self.most[dc] = max(self.most[dc], self.in_flight[dc])
            self.most_overall = max(self.most_overall, sum(self.in_flight.values()))
        try:
            await asyncio.sleep(self.delay_s)
        finally:
            with self._lock:
                self.in_flight[dc] -= 1
        return httpx.Response(204)


def _replica(
    config: FederationConfig, ledger: Ledger, clock: FakeClock, name: str, wait_s: float
) -> Coordinator:
    tokens = Tokens({dc: token(dc) for dc in config.fleet.dcs}, READER)
    settings = CoordinatorSettings(verify_settle_ns=0, central_timeout_s=wait_s)
    coordinator = Coordinator(config, ledger, tokens, clock=clock, settings=settings,
                              replica=name, url=f"http://{name}")  # fmt: skip
    coordinator.sync()
    return coordinator


@pytest.fixture
def central() -> SlowCentral:
    return SlowCentral()


@pytest.fixture
def replicas(
    config: FederationConfig, ledger: Ledger, clock: FakeClock, central: SlowCentral
) -> Iterator[tuple[TestClient, TestClient]]:
    a = _replica(config, ledger, clock, "a", wait_s=1.0)
    b = _replica(config, ledger, clock, "b", wait_s=1.0)
    with (
        TestClient(build_app(a, central_transport=central)) as app_a,
        TestClient(build_app(b, central_transport=central)) as app_b,
    ):
        yield app_a, app_b


def _write(client: TestClient, config: FederationConfig, dc: str, start_ns: int) -> int:
    payload = body(window_batch(plan_of(config, dc), start_ns))
    answer = client.post(
        "/write", params=central_params(config, dc), content=payload,
        headers=basic(dc, token(dc)),
    )  # fmt: skip
    return answer.status_code


def _at_once(*calls: Callable[[], int]) -> list[int]:
    barrier = threading.Barrier(len(calls))
    results = [0] * len(calls)

    def run(i: int) -> None:
        barrier.wait()
        results[i] = calls[i]()

    threads = [threading.Thread(target=run, args=(i,)) for i in range(len(calls))]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    return results


def test_one_dcs_batches_at_two_replicas_pass_one_at_a_time_other_dcs_side_by_side(
    replicas: tuple[TestClient, TestClient],
    config: FederationConfig,
    central: SlowCentral,
    hour0: int,
) -> None:
    app_a, app_b = replicas
    answers = _at_once(
        lambda: _write(app_a, config, "dub1", hour0 - 2 * HOUR),
        lambda: _write(app_b, config, "dub1", hour0 - HOUR),
    )
    assert answers == [204, 204]
    assert central.most["dub1"] == 1, "two replicas forwarded dub1's batches at the same time"
    assert central.most_overall == 1

    answers = _at_once(
        lambda: _write(app_a, config, "dub1", hour0 - 3 * HOUR),
        lambda: _write(app_b, config, "lon1", hour0 - HOUR),
    )
    assert answers == [204, 204]
    assert central.most_overall == 2, "dub1's turn held lon1's batch up"


def test_a_turn_held_elsewhere_is_a_503_and_comes_back_when_its_holder_dies(
    replicas: tuple[TestClient, TestClient], config: FederationConfig, ledger: Ledger, hour0: int
) -> None:
    app_a, _ = replicas
    # Another replica in the middle of dub1's batch: its session holds the lock.
    other = create_engine(ledger.url)
    holder = other.connect()
    holder.execute(
        text("SELECT pg_advisory_xact_lock(:n, :k)"), {"n": NAMESPACE, "k": dc_lock_key("dub1")}
    )
    try:
        started = time.monotonic()
        refused = app_a.post(
            "/write", params=central_params(config, "dub1"), headers=basic("dub1", token("dub1")),
            content=body(window_batch(plan_of(config, "dub1"), hour0 - HOUR)),
        )  # fmt: skip
        assert refused.status_code == 503, refused.text
        assert refused.json()["rule"] == "ordering"
        assert time.monotonic() - started >= 0.9  # it waited its 1 s first
        # lon1 is not held up by dub1's turn.
        assert _write(app_a, config, "lon1", hour0 - HOUR) == 204
    finally:
        holder.invalidate()  # the connection closes, as a killed replica's does
        other.dispose()
    assert _write(app_a, config, "dub1", hour0 - HOUR) == 204
