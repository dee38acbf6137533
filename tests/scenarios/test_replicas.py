"""Scenarios 19, 20 and 21: two coordinator replicas over one PostgreSQL ledger, and central
InfluxDB behind a lossy network.

19. A replica SIGKILLed in the middle of a shipment and of a rollout: agents and the operator's
    `federation rollout apply` fail over to the other replica, the rollout completes there.
20. Central InfluxDB behind a proxy that delays every request and drops a share of them, before
    or after central got them: nothing is lost.
21. A replica sent SIGTERM drains: what it has in flight is answered, what comes after is
    refused, agents go on at the other replica.
"""

from __future__ import annotations

import dataclasses
import signal
import subprocess
import sys
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from pathlib import Path

import httpx
import pytest
from postgres_fixture import PostgresDatabases

from federation.config import load_config
from federation.coordinator.draining import DRAINING_MESSAGE

from .checks import Outcome, check_invariants
from .harness import (
    AGENT_SETTINGS,
    DCS,
    LiveRun,
    ScenarioFederation,
    sleep_until,
)
from .proxy import LossyProxy
from .replicas import Replicated

pytestmark = pytest.mark.slow

# Agents pull their desired state every second, so a rollout's canary converges in a window.
RECONCILING = dataclasses.replace(AGENT_SETTINGS, reconcile_interval_s=1.0)


@pytest.fixture
def ledger_url(postgres_databases: PostgresDatabases) -> Iterator[str]:
    name, url = postgres_databases.create()
    yield url
    postgres_databases.drop(name)


@pytest.fixture
def replicated(tmp_path: Path, ledger_url: str) -> Iterator[Replicated]:
    setup = Replicated(tmp_path, ledger_url, latency_s=0.02, central_latency_s=0.02)
    try:
        yield setup
    finally:
        setup.close()


def _start(setup: Replicated, traffic_windows: int) -> LiveRun:
    """Start the federation, the replica process and the agents; return three windows on."""
    run = LiveRun.begin(setup.fed, traffic_windows=traffic_windows)
    setup.replica.start()
    for dc in DCS:
        setup.fed.start_agent(dc, settings=RECONCILING)
    sleep_until(setup.fed.clock, run.window_from_now(3))
    return run


def test_19_replica_sigkilled_mid_shipment_and_mid_rollout(
    replicated: Replicated, record: Callable[[Outcome], None]
) -> None:
    fed = replicated.fed
    run = _start(replicated, traffic_windows=14)
    assert replicated.proxy.stats.requests > 0, "agents use the first replica fleet.yaml lists"

    before = fed.config
    path = fed.config_dir / "tickscripts" / "delivery_direction.yaml"
    path.write_text(path.read_text().replace("accuracy: 0.01", "accuracy: 0.02"))
    rollout = subprocess.Popen(
        [sys.executable, "-m", "federation.cli", "rollout", "apply", "--canary", "dub1",
         "--wait-timeout", "40", "--config", str(fed.config_dir)],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, cwd=fed.root,
    )  # fmt: skip
    try:
        # The canary step was taken through the first replica and answered; while the command
        # waits for the canary, the replica dies in the middle of an agent's write.
        replicated.when_answered("POST /api/v1/rollouts")
        assert [r.state for r in replicated.rollouts()] == ["canary"]
        replicated.when_writing()
        replicated.replica.signal(signal.SIGKILL)
        killed_at = time.monotonic()
        output, _ = rollout.communicate(timeout=60)
    finally:
        rollout.kill()
    assert rollout.returncode == 0, output
    assert "rollout complete: every DC runs the config's versions" in output, output
    shippers = [a.agent.shipper for a in fed.agents.values()]
    run.finish(timeout_s=40)

    # A write in flight at the kill got no answer from the killed replica; agents went on at
    # the other one. (Agents keep two writes in flight: one the replica answered just before
    # it died can reach the proxy just after `killed_at`, taken once the signal was sent.)
    cut = [e for e in replicated.proxy.exchanges if e.write and e.in_flight_at(killed_at)]
    assert any(e.status is None for e in cut), cut
    assert all(e.answered is None or e.answered < killed_at + 1.0 for e in cut), cut
    assert all(s is not None and s.url == replicated.own_url for s in shippers)
    (step,) = replicated.rollouts()
    assert step.state == "advanced" and step.canary == "dub1"
    moved = Counter((m["dc"], m["aggregation"]) for m in step.moves)
    assert moved == {("dub1", "delivery_direction"): 1, ("lon1", "delivery_direction"): 1}
    fed._config = load_config(fed.config_dir)
    outcome = check_invariants(fed, run.start_ns, run.until_ns, earlier=[before])
    assert outcome.states["verified"] > 0
    record(outcome)


def test_20_central_behind_a_lossy_proxy(tmp_path: Path, record: Callable[[Outcome], None]) -> None:
    proxies: list[LossyProxy] = []

    def via_proxy(url: str) -> str:
        proxy = LossyProxy(int(url.rsplit(":", 1)[1]), latency_s=0.03, drop_share=0.2, seed=20)
        proxies.append(proxy.start())
        return proxy.url

    fed = ScenarioFederation(tmp_path, central_via=via_proxy)
    try:
        run = LiveRun.begin(fed, traffic_windows=10)
        agents = [fed.start_agent(dc) for dc in DCS]
        (proxy,) = proxies
        sleep_until(fed.clock, run.end_ns)
        # The network heals for the last look-back before the checks, which read a federation
        # standing still: a write central stored whose answer was lost when the agents stopped
        # would be central's alone (a running agent sends it again).
        proxy.drop_share = 0.0
        sleep_until(fed.clock, run.end_ns + 3 * fed.window_ns)
        run.finish(timeout_s=45)
        assert proxy.stats.dropped_before > 0 and proxy.stats.dropped_after > 0, proxy.stats
        assert sum(a.shipper.stats.retries for a in agents if a.shipper) > 0
        assert fed.coordinator is not None
        _, batches, _ = fed.coordinator.metrics.snapshot()
        assert batches.get("unavailable", 0) > 0, "the gateway answered 503 for a lost write"
        record(check_invariants(fed, run.start_ns, run.until_ns))
    finally:
        fed.close()
        for proxy in proxies:
            proxy.stop()


def test_21_replica_drained_by_sigterm(
    replicated: Replicated, record: Callable[[Outcome], None]
) -> None:
    fed = replicated.fed
    run = _start(replicated, traffic_windows=10)

    sent: list[tuple[float, int | str]] = []
    stop = threading.Event()

    def hammer() -> None:
        # Requests on a kept-alive connection straight to the replica, back to back.
        with httpx.Client(base_url=replicated.replica.url, timeout=5) as client:
            while not stop.is_set():
                at = time.monotonic()
                try:
                    response = client.get("/ping")
                except httpx.HTTPError as exc:
                    sent.append((at, exc.__class__.__name__))
                    return
                if response.status_code == 503:
                    assert response.json()["error"] == DRAINING_MESSAGE
                sent.append((at, response.status_code))

    hammers = [threading.Thread(target=hammer, daemon=True) for _ in range(3)]
    for thread in hammers:
        thread.start()
    replicated.when_writing()
    replicated.replica.signal(signal.SIGTERM)
    termed_at = time.monotonic()
    assert replicated.replica.wait(30) == 0, "the replica drained and stopped cleanly"
    stop.set()
    for thread in hammers:
        thread.join(10)
    shippers = [a.agent.shipper for a in fed.agents.values()]
    run.finish(timeout_s=40)

    # What the replica had in flight it answered; nothing sent after the signal was served.
    in_flight = [e for e in replicated.proxy.exchanges if e.in_flight_at(termed_at)]
    assert any(e.write for e in in_flight), "a write was in flight at SIGTERM"
    assert all(e.status is not None for e in in_flight), in_flight
    after = Counter(answer for at, answer in sent if at > termed_at + 0.02)
    assert after[200] == after[204] == 0, after
    assert Counter(answer for _, answer in sent)[503] > 0, sent[-6:]
    assert all(s is not None and s.url == replicated.own_url for s in shippers)
    record(check_invariants(fed, run.start_ns, run.until_ns))
