"""Scenarios 11 and 12: the coordinator's clock runs ahead of the DCs', and the coordinator dies
while an agent runs a backfill.

Each starts the scenario federation, injects its fault, watches for what must never happen
while the federation recovers, and ends with every invariant (`checks.check_invariants`).
"""

from __future__ import annotations

import json
import os
import threading
import time
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path

import httpx
import pytest
from sqlalchemy import select

from federation.coordinator.ledger import BackfillRow, WindowRow
from federation.coordinator.planner import DONE, RUNNING
from federation.core.clock import Clock, SkewedClock, SystemClock, format_rfc3339

from .checks import Outcome, check_invariants
from .harness import (
    COORDINATOR_SETTINGS,
    DCS,
    EMPTY_WINDOWS,
    MINUTE,
    READER_ENV,
    SECOND,
    Feeder,
    LiveRun,
    ScenarioFederation,
    aligned_now,
    sleep_until,
    wait_done,
    wait_for,
)

pytestmark = pytest.mark.slow


class EarlyShipments:
    """Watches the ledger for a window recorded with a run (a manifest accepted) before it
    ended by `clock` (the DCs' clock), from a thread, until stopped."""

    def __init__(self, fed: ScenarioFederation, clock: Clock) -> None:
        self.fed = fed
        self.clock = clock
        self.found: list[str] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="early-shipments", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> list[str]:
        self._stop.set()
        self._thread.join(10)
        return self.found

    def _run(self) -> None:
        while not self._stop.wait(0.1):
            ledger = self.fed.ledger
            if ledger is None:
                continue
            now = self.clock.now_ns()
            with ledger.session() as session:
                rows = session.execute(
                    select(WindowRow.dc, WindowRow.aggregation, WindowRow.start_ns).where(
                        WindowRow.run.is_not(None),
                        WindowRow.start_ns + self.fed.window_ns > now,
                    )
                ).all()
            self.found.extend(
                f"{dc}/{agg} {format_rfc3339(start)} (seen at {format_rfc3339(now)})"
                for dc, agg, start in rows
            )


def test_11_coordinator_clock_thirty_windows_ahead(
    tmp_path: Path, record: Callable[[Outcome], None]
) -> None:
    real = SystemClock()
    ahead = SkewedClock(real, 30 * SECOND)
    fed = ScenarioFederation(tmp_path, clock=ahead)
    try:
        w = fed.window_ns
        now = aligned_now(real, w)
        start, end = now - 4 * w, now + 8 * w
        fed.start(track_from_ns=start)
        feeder = Feeder(fed.add_traffic(start, end).values(), real)
        feeder.start()
        early = EarlyShipments(fed, real)
        early.start()
        for dc in DCS:
            fed.start_agent(dc, clock=real)
        sleep_until(real, end)
        feeder.stop()
        until = end + EMPTY_WINDOWS * w
        wait_done(fed, start, until, 60)
        # The coordinator asked for every window up to its own now minus the deadline: the
        # agents computed none before it had ended by their clock, and the gateway took none.
        assert early.stop() == [], early.found[:5]

        status = json.loads(fed.cli("status", "--format", "json").stdout)
        skews = {c["dc"]: c for c in status["clocks"]}
        assert set(skews) == set(DCS)
        for dc in DCS:
            assert skews[dc]["large"] and -31 * SECOND < skews[dc]["skew_ns"] < -29 * SECOND
        assert "clock: dub1's agent is 30s behind the coordinator" in fed.cli("status").stdout
        url = fed.config.fleet.central.coordinator_url
        metrics = httpx.get(
            f"{url}/metrics", headers={"Authorization": f"Bearer {os.environ[READER_ENV]}"}
        ).text
        assert 'federation_agent_clock_skew_large{dc="lon1"} 1' in metrics

        fed.freeze()
        record(check_invariants(fed, start, until))
    finally:
        fed.close()


def test_12_coordinator_killed_while_an_agent_runs_a_backfill(
    tmp_path: Path, record: Callable[[Outcome], None]
) -> None:
    # Leases outlast the scenario: a request the agent does not report stays `running`.
    planner = replace(COORDINATOR_SETTINGS.planner, lease_ns=10 * MINUTE)
    fed = ScenarioFederation(tmp_path, settings=replace(COORDINATOR_SETTINGS, planner=planner))
    try:
        # Twenty windows of history: beyond the look-back of the agents' catch-up, they are
        # the planner's to request, one backfill per DC and aggregation.
        run = LiveRun.begin(fed, history_windows=20)
        seen_in_status: list[str] = []

        def dub1_running() -> list[int]:
            assert fed.ledger is not None
            with fed.ledger.session() as session:
                return list(
                    session.scalars(
                        select(BackfillRow.id).where(
                            BackfillRow.dc == "dub1", BackfillRow.state == RUNNING
                        )
                    )
                )

        gateway = fed.gateway
        assert gateway is not None
        stopper = threading.Thread(target=gateway.stop, name="kill-coordinator")

        def kill_coordinator() -> None:
            seen_in_status.append(fed.cli("status", "--format", "json").stdout)
            fed.stop_jobs()
            stopper.start()
            time.sleep(0.5)

        fed.hold.arm("dub1", kill_coordinator, when=lambda: bool(dub1_running()))
        for dc in DCS:
            fed.start_agent(dc)
        assert fed.hold.fired.wait(40), "dub1 shipped nothing while it ran a backfill"
        stopper.join(15)
        fed.stop_coordinator()
        time.sleep(3 * fed.window_ns / SECOND)
        fed.start_coordinator()

        # `federation status` showed dub1's running backfills, with the age of their lease.
        status = json.loads(seen_in_status[0])
        running = [b for b in status["backfills"] if b["dc"] == "dub1"]
        assert running, "a dub1 backfill was running when the coordinator died"
        for backfill in running:
            assert 0 <= status["now_ns"] - backfill["leased_ns"] < MINUTE
        leased = [backfill["id"] for backfill in running]

        def reported() -> bool:
            assert fed.ledger is not None
            with fed.ledger.session() as session:
                states = session.scalars(
                    select(BackfillRow.state).where(BackfillRow.id.in_(leased))
                ).all()
            return all(state == DONE for state in states)

        # Long before their 10-minute leases run out (generous under load): the agent kept
        # every result and every leased request.
        wait_for(reported, 60, f"dub1's backfills {leased} to be reported done")
        run.finish(timeout_s=60)
        record(check_invariants(fed, run.start_ns, run.until_ns))
    finally:
        fed.close()
