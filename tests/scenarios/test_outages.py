"""Scenarios 1, 2, 3 and 6: central, the coordinator or an agent goes away, and comes back.

Each starts the scenario federation (dub1 in eu, lon1 in uk, central), feeds it deterministic
traffic, injects its fault, lets the federation recover on its own and checks every invariant
(`checks.check_invariants`).
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from federation.config.resolve import resolve_plan
from federation.coordinator.planner import recoverable_after
from federation.core.clock import SkewedClock, SystemClock

from .checks import Outcome, check_invariants
from .harness import (
    DCS,
    LOST,
    MINUTE,
    SECOND,
    LiveRun,
    ScenarioConfig,
    ScenarioFederation,
    aligned_now,
    ledger_states,
    sleep_until,
    wait_done,
    wait_for,
    window_row,
)

pytestmark = pytest.mark.slow


def test_1_central_influxdb_down_for_three_windows(
    federation: ScenarioFederation, record: Callable[[Outcome], None]
) -> None:
    run = LiveRun.begin(federation)
    agents = [federation.start_agent(dc) for dc in DCS]
    sleep_until(federation.clock, run.window_from_now(3))

    central = federation.stack.servers["central"]
    down_from = federation.clock.now_ns()
    central.stop()
    time.sleep(3 * federation.window_ns / SECOND)
    restarted = federation.clock.now_ns()  # an agent may ship before start() returns
    central.start()
    down_to = federation.clock.now_ns()
    run.finish()

    coordinator = federation.coordinator
    assert coordinator is not None
    _, batches, _ = coordinator.metrics.snapshot()
    assert batches.get("unavailable", 0) > 0, "the gateway answered 503 while central was down"
    assert sum(a.shipper.stats.retries for a in agents if a.shipper) > 0, "agents retried"
    # Windows that ended while central was down were shipped after it came back: re-shipped
    # by a later look-back run or backfilled.
    w = federation.window_ns
    for start in range(down_from - down_from % w, down_to - w, w):
        for dc in DCS:
            for name in federation.config.aggregations:
                row = window_row(federation, (dc, name, start))
                assert row is not None and row.shipped_ns is not None
                assert row.shipped_ns >= restarted
    record(check_invariants(federation, run.start_ns, run.until_ns))


def test_2_coordinator_killed_mid_shipment_and_restarted(
    federation: ScenarioFederation, record: Callable[[Outcome], None]
) -> None:
    run = LiveRun.begin(federation)
    agents = [federation.start_agent(dc) for dc in DCS]
    sleep_until(federation.clock, run.window_from_now(3))
    ledger_url = federation.config.fleet.central.ledger_url
    gateway = federation.gateway
    assert gateway is not None
    stopper = threading.Thread(target=gateway.stop, name="kill-coordinator")

    def kill_coordinator() -> None:
        # Central holds a batch of dub1's summaries; the answer, and so the manifest after
        # it, waits until the coordinator is going down.
        federation.stop_jobs()
        stopper.start()
        time.sleep(0.5)  # uvicorn has closed its socket and drains the held request

    federation.hold.arm("dub1", kill_coordinator)
    assert federation.hold.fired.wait(15), "dub1 shipped no summaries batch"
    stopper.join(15)
    assert not gateway.running
    federation.stop_coordinator()
    time.sleep(2 * federation.window_ns / SECOND)
    federation.start_coordinator()  # a new process: same ledger file, tracking kept
    assert federation.config.fleet.central.ledger_url == ledger_url
    run.finish()

    assert b"federation_manifest" not in federation.hold.body
    assert sum(a.shipper.stats.retries for a in agents if a.shipper) > 0, "agents retried"
    record(check_invariants(federation, run.start_ns, run.until_ns))


def test_3_agent_sigkilled_mid_window_and_restarted(
    federation: ScenarioFederation, record: Callable[[Outcome], None]
) -> None:
    run = LiveRun.begin(federation)
    first = federation.start_agent_process("dub1")
    federation.start_agent("lon1")
    wait_for(
        lambda: any(
            dc == "dub1" and state == "verified"
            for (dc, _, _), state in ledger_states(federation, run.start_ns, run.end_ns).items()
        ),
        20,
        "the dub1 agent process to ship",
    )
    federation.hold.arm("dub1", lambda: federation.kill_agent_process("dub1"))
    assert federation.hold.fired.wait(15), "dub1 shipped no summaries batch"
    assert first.returncode == -9, "the agent died of SIGKILL in the middle of a window"
    time.sleep(2 * federation.window_ns / SECOND)
    federation.start_agent_process("dub1")
    run.finish(timeout_s=45)

    record(check_invariants(federation, run.start_ns, run.until_ns))


def test_6_dc_offline_longer_than_its_raw_retention(
    tmp_path: Path, record: Callable[[Outcome], None]
) -> None:
    # InfluxDB keeps raw data at least an hour (and drops it by one-hour shards), so lon1's
    # region keeps 2h here: a window may be recomputed while its end is younger than 1h. The
    # windows are a minute long, and the clock everyone reads starts 66 minutes behind: the
    # raw data is written with past timestamps, lon1's agent goes offline, then the clock
    # catches up with real time and lon1's unshipped windows are past what may be recomputed.
    clock = SkewedClock(SystemClock(), 0)
    short = {"retention_policy": "raw_2h", "retention": "2h", "shard_duration": "1h",
             "max_retention": "4h"}  # fmt: skip
    fed = ScenarioFederation(tmp_path, ScenarioConfig(window_s=60, raw={"uk": short}), clock=clock)
    try:
        real = SystemClock().now_ns()
        start = real - real % MINUTE - 75 * MINUTE
        clock.offset_ns = start + 8 * MINUTE + 30 * SECOND - real
        fed.start(track_from_ns=start)
        for traffic in fed.add_traffic(start, real + 2 * MINUTE, per_second=2).values():
            traffic.write_until(real + 2 * MINUTE)
        for dc in DCS:
            fed.start_agent(dc)
        # Overdue windows are backfilled, the look-back is shipped; the window between waits.
        wait_done(fed, start, start + 4 * MINUTE, 30)
        wait_done(fed, start + 5 * MINUTE, start + 8 * MINUTE, 30)
        fed.stop_agent("lon1")

        clock.offset_ns = 0  # 66 minutes pass while lon1 is offline
        jumped = aligned_now(clock, MINUTE)
        wait_for(
            lambda: (
                sum(
                    1
                    for (dc, _, _), state in ledger_states(fed, start, jumped).items()
                    if dc == "lon1" and state == LOST
                )
                >= 2 * 7
            ),
            20,
            "lon1's windows past its raw retention to be declared unrecoverable",
        )
        fed.start_agent("lon1")
        until = jumped - 5 * MINUTE  # every window before it was overdue at the jump
        plan = resolve_plan(fed.config, "delivery_latency", "lon1")

        def lost() -> dict[str, tuple[int, int]]:
            # What lon1 may have lost: windows it never shipped whose end is, by now, older
            # than its raw retention minus one shard (a window at the edge may age out while
            # the agent catches up).
            cutoff = recoverable_after(plan, fed.config, clock.now_ns())
            assert cutoff is not None
            return {"lon1": (start + 4 * MINUTE, cutoff - MINUTE + 1)}

        wait_done(fed, start, until, 60, lost=lost)
        fed.freeze()

        outcome = check_invariants(fed, start, until, lost=lost())
        assert outcome.windows_lost >= 2 * 7, outcome
        states = ledger_states(fed, start, until)
        assert all(
            state in ("verified", "empty") for (dc, _, _), state in states.items() if dc == "dub1"
        ), "dub1 lost nothing"
        record(outcome)
    finally:
        fed.close()
