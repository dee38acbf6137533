"""Scenario 13: DC dub1 on a real kapacitord 1.5.7, on its own schedule on live data.

dub1's agent runs in Kapacitor mode against a real kapacitord (`FEDERATION_KAPACITORD`; see
`kapacitor_fixture`): it deploys the rendered TICKscripts, Kapacitor runs them on its own
schedule (two-second windows, a look-back of three), the `federation kapacitor-udf` processes
compute the windows and `influxDBOut` ships them to the gateway. lon1 runs the embedded executor
beside it. Every scenario ends with the invariants of `checks.check_invariants`: every window
verified or empty, central equal field for field and sketch for sketch to a recomputation from
the DC's raw data with the embedded executor's code, no personal data at central.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from federation.agent.daemon import Agent
from federation.agent.executor import RangeResult
from federation.core.plan import AggregationPlan
from federation.core.windows import Window
from federation.kapacitor.client import KapacitorClient

from .checks import Outcome, check_invariants
from .harness import (
    DCS,
    LiveRun,
    ScenarioConfig,
    ScenarioFederation,
    ledger_states,
    sleep_until,
    wait_for,
)

pytestmark = [pytest.mark.slow, pytest.mark.kapacitor]

SPEC = ScenarioConfig(window_s=2, kapacitor_dcs=("dub1",))
LOOKBACK = 3
"""The scenario aggregations' look-back, in windows (`harness.LOOKBACK_WINDOWS`)."""


@pytest.fixture
def kfed(tmp_path: Path, kapacitord_binary: str) -> Iterator[ScenarioFederation]:
    """The scenario federation with dub1 on a real kapacitord (not started yet)."""
    fed = ScenarioFederation(tmp_path, SPEC, kapacitord=kapacitord_binary)
    try:
        yield fed
    finally:
        fed.close()


@dataclass
class ReplaySpy:
    """Records every window the agent's Kapacitor mode computed itself (by replay), with its
    raw event count: Kapacitor's own schedule must ship every window that has events."""

    runs: list[tuple[str, Window, int]] = field(default_factory=list)
    started: dict[tuple[str, int], float] = field(default_factory=dict)
    """When a replay covering (aggregation, window start) first began (monotonic)."""
    calls: int = 0
    lock: threading.Lock = field(default_factory=threading.Lock)

    def attach(self, agent: Agent) -> None:
        mode = agent.mode
        original = mode.run_windows

        def run_windows(
            plan: AggregationPlan, windows: Sequence[Window], stop: threading.Event
        ) -> RangeResult:
            began = time.monotonic()
            result = original(plan, windows, stop)
            with self.lock:
                for w in result.windows:
                    self.started.setdefault((plan.aggregation, w.window.start_ns), began)
                self.runs.extend((plan.aggregation, w.window, w.events) for w in result.windows)
                self.calls += 1
            return result

        mode.run_windows = run_windows  # type: ignore[method-assign]

    def caught_up_to(self, calls: int, timeout_s: float = 60) -> int:
        """Wait for the agent's first `calls` runs (its catch-up at start, one per plan) and
        return the end of the last window they computed."""
        wait_for(lambda: self.calls >= calls, timeout_s, "the agent's catch-up")
        with self.lock:
            return max(run[1].end_ns for run in self.runs)

    def with_events(self, since_ns: int) -> list[tuple[str, Window, int]]:
        with self.lock:
            return [run for run in self.runs if run[1].start_ns >= since_ns and run[2] > 0]


@dataclass
class VerifiedWatch:
    """Polls the ledger and keeps when each of a DC's windows was first seen verified."""

    fed: ScenarioFederation
    dc: str
    seen: dict[tuple[str, int], float] = field(default_factory=dict)
    stop: threading.Event = field(default_factory=threading.Event)

    def __post_init__(self) -> None:
        self.thread = threading.Thread(target=self._run, name="verified-watch", daemon=True)
        self.thread.start()

    def _run(self) -> None:
        while not self.stop.wait(0.2):
            states = ledger_states(self.fed, 0, 2**62)
            now = time.monotonic()
            for (dc, aggregation, start), state in states.items():
                if dc == self.dc and state == "verified":
                    self.seen.setdefault((aggregation, start), now)

    def close(self) -> None:
        self.stop.set()
        self.thread.join(5)


def test_13_kapacitor_schedule_ships_every_window_of_live_data(
    kfed: ScenarioFederation, record: Callable[[Outcome], None]
) -> None:
    w = kfed.window_ns
    # A quarter of dub1's events of some windows (counted from now) arrive late, while their
    # windows are still inside the look-back.
    held = (6, 9, 12)
    run = LiveRun.begin(kfed, history_windows=3, traffic_windows=15, hold={"dub1": held})
    spy = ReplaySpy()
    spy.attach(kfed.start_agent("dub1"))
    kfed.start_agent("lon1")
    watch = VerifiedWatch(kfed, "dub1")
    # The agent deploys the tasks, then catches up on what ended before (by replay); every
    # window after that is Kapacitor's own schedule to ship.
    scheduled_from = spy.caught_up_to(len(kfed.config.aggregations))
    late_after_start = 0
    for k in held:
        held_from = run.began_ns + k * w
        due = held_from + w + w // 4  # just after the window's first run
        if kfed.clock.now_ns() > due or held_from < scheduled_from:
            continue  # the agent started late: these events never arrive (nor count)
        sleep_until(kfed.clock, due)
        assert kfed.traffic["dub1"].write_held(held_from, held_from + w) > 0
        # Written before the last look-back branch reads the window again.
        assert kfed.clock.now_ns() < held_from + LOOKBACK * w, "the late events came too late"
        late_after_start += 1
    assert late_after_start, "the agent started too late for any of the late events"
    run.finish(timeout_s=60)
    watch.close()

    # Every window with events was verified before any replay covered it (the planner widens
    # a backfill of the empty windows after the traffic by the look-back, so the last windows
    # of traffic are replayed once more, after Kapacitor shipped them).
    late = [
        (aggregation, window.label)
        for aggregation, window, _events in spy.with_events(scheduled_from)
        if watch.seen.get((aggregation, window.start_ns), float("inf"))
        > spy.started[(aggregation, window.start_ns)]
    ]
    assert late == [], f"windows with events that only a replay shipped: {late}"
    outcome = check_invariants(kfed, run.start_ns, run.until_ns)
    assert outcome.states["verified"] >= 10 * len(DCS) * len(kfed.config.aggregations)
    record(outcome)


def test_14_kapacitord_sigkilled_and_restarted_on_its_data(
    kfed: ScenarioFederation, record: Callable[[Outcome], None]
) -> None:
    w = kfed.window_ns
    run = LiveRun.begin(kfed, history_windows=3, traffic_windows=30)
    spy = ReplaySpy()
    spy.attach(kfed.start_agent("dub1"))
    kfed.start_agent("lon1")
    spy.caught_up_to(len(kfed.config.aggregations))
    server = kfed.kapacitors["dub1"]
    down_from = kfed.clock.now_ns()
    assert down_from + (LOOKBACK + 4) * w < run.end_ns, "the catch-up outlasted the traffic"
    server.kill()
    # Longer than the look-back: some windows are computed by no scheduled run at all.
    sleep_until(kfed.clock, down_from + (LOOKBACK + 2) * w)
    server.start()  # same port, same data directory: the tasks come back from its store
    down_to = kfed.clock.now_ns()
    with KapacitorClient(server.url) as client:
        live = {t.id: t for t in client.list_tasks() if not t.id.endswith("-replay")}
    assert sorted(live) == sorted(f"fed-{name}-dub1" for name in kfed.config.aggregations)
    assert all(t.executing for t in live.values())
    run.end_traffic(LOOKBACK + 2)  # a few scheduled runs after the restart
    # kapacitord answers only once every task's UDF processes have started, and the missed
    # windows are then replayed one replay at a time (seconds each on a loaded machine).
    run.finish(timeout_s=90)
    missed = [r for r in spy.with_events(down_from) if r[1].end_ns <= down_to]
    assert missed, "no window missed while kapacitord was down was replayed"
    record(check_invariants(kfed, run.start_ns, run.until_ns))
