"""Scenarios 16 and 17: the gateway down while a real kapacitord's `influxDBOut` writes (see
`test_kapacitor` for the federation: dub1 on kapacitord 1.5.7, two-second windows, a look-back
of three). Kapacitor drops a write that fails and never retries it.

16. The gateway refuses Kapacitor's writes (503) from just after the first, partial,
    scheduled run of a window with late events got through until the window's last look-back
    run has been refused: central holds that window complete-looking (its manifest
    agrees with its summaries) with fewer events than the raw data, and no neighbouring window
    goes missing (their last runs get through), so no backfill covers it by chance. Only the
    agent, counting the raw events once the look-back has passed, can tell: the ledger must
    show the window `inconsistent` with both figures, and the planner have it replayed.
17. The gateway down for six windows: every write of those windows is dropped, the ledger
    shows them `missing`, and the planner has them replayed.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import pytest
from sqlalchemy import select

from federation.agent.central_check import WindowChecks
from federation.agent.coordinator_client import HeldCount
from federation.agent.daemon import Agent
from federation.agent.kapacitor_mode import KapacitorMode
from federation.coordinator.ledger import BackfillRow, WindowRow
from federation.kapacitor.client import KapacitorClient, TaskHealth

from .checks import Outcome, check_invariants
from .harness import (
    SECOND,
    LiveRun,
    ScenarioFederation,
    ledger_states,
    sleep_until,
    wait_for,
    window_row,
)
from .test_kapacitor import LOOKBACK
from .test_kapacitor import kfed as kapacitor_federation

kfed = kapacitor_federation
"""Scenario 13's federation: dub1 on a real kapacitord (not started yet)."""

pytestmark = [pytest.mark.slow, pytest.mark.kapacitor]


@dataclass
class RowWatch:
    """Polls the ledger rows of one DC and keeps every (state, events, reason) each went
    through."""

    fed: ScenarioFederation
    dc: str
    seen: dict[tuple[str, int], list[tuple[str, int | None, str | None]]] = field(
        default_factory=dict
    )
    stop: threading.Event = field(default_factory=threading.Event)

    def __post_init__(self) -> None:
        self.thread = threading.Thread(target=self._run, name="row-watch", daemon=True)
        self.thread.start()

    def _run(self) -> None:
        while not self.stop.wait(0.1):
            ledger = self.fed.ledger
            if ledger is None:  # the coordinator is down
                continue
            try:
                with ledger.session() as session:
                    rows = session.execute(
                        select(
                            WindowRow.aggregation,
                            WindowRow.start_ns,
                            WindowRow.state,
                            WindowRow.events,
                            WindowRow.reason,
                        ).where(WindowRow.dc == self.dc)
                    ).all()
            except Exception:  # closed under our feet by a stopping coordinator
                continue
            for aggregation, start, state, events, reason in rows:
                history = self.seen.setdefault((aggregation, start), [])
                if not history or history[-1] != (state, events, reason):
                    history.append((state, events, reason))

    def states(self, aggregation: str, start: int) -> list[str]:
        return [state for state, _, _ in self.seen.get((aggregation, start), [])]

    def close(self) -> None:
        self.stop.set()
        self.thread.join(5)


@dataclass
class CheckSpy:
    """Records every window the agent's check of central marked short, with its ledger row
    (state, reason) read right after the coordinator answered."""

    fed: ScenarioFederation
    marked: list[tuple[HeldCount, str, str]] = field(default_factory=list)

    def attach(self, agent: Agent) -> None:
        mode = agent.mode
        assert isinstance(mode, KapacitorMode)
        original = mode.check_windows

        def check_windows(stop: threading.Event) -> WindowChecks:
            done = original(stop)
            for plan_held in done.marked:
                key = ("dub1", plan_held.aggregation, plan_held.start_ns)
                row = window_row(self.fed, key)
                state, reason = ("?", "") if row is None else (row.state, row.reason or "")
                self.marked.append((plan_held, state, reason))
            return done

        mode.check_windows = check_windows  # type: ignore[method-assign]


def schedule_ships(
    fed: ScenarioFederation, client: KapacitorClient, tasks: list[str], since_ns: int
) -> int:
    """Wait until the agent deployed `tasks` and Kapacitor's schedule shipped a window of dub1
    that ended after they started (their UDF processes take a while to start on a loaded
    machine); return the clock then."""
    wait_for(
        lambda: sorted(t.id for t in client.list_tasks() if t.executing) == sorted(tasks),
        40,
        "the agent to deploy the tasks",
    )
    started = fed.clock.now_ns()
    wait_for(
        lambda: any(
            state in ("shipped", "verified") and start + fed.window_ns > started
            for (dc, _, start), state in ledger_states(fed, since_ns, 2**62).items()
            if dc == "dub1"
        ),
        40,
        "Kapacitor's schedule to ship",
    )
    return fed.clock.now_ns()


def backfilled_after(fed: ScenarioFederation, aggregation: str, start: int, after_ns: int) -> bool:
    """Whether the planner requested a backfill of dub1 covering the window at `start` after
    `after_ns` (nothing but the agent's replay of it ships a window once its look-back has
    passed; the request may still be running, replay after replay, when the window verified)."""
    assert fed.ledger is not None
    with fed.ledger.session() as session:
        return bool(
            session.scalars(
                select(BackfillRow.id).where(
                    BackfillRow.dc == "dub1",
                    BackfillRow.aggregation == aggregation,
                    BackfillRow.start_ns <= start,
                    BackfillRow.end_ns > start,
                    BackfillRow.created_ns >= after_ns,
                )
            ).first()
        )


def last_out_node(health: TaskHealth) -> str:
    """The `influxDBOut` node of the task's last look-back branch (Kapacitor numbers nodes in
    the order the script creates them)."""
    outs = [name for name in health.nodes if name.startswith("influxdb_out")]
    return max(outs, key=lambda name: int(name.removeprefix("influxdb_out")))


def test_16_a_partial_run_whose_look_back_runs_were_dropped_is_rerun(
    kfed: ScenarioFederation, record: Callable[[Outcome], None]
) -> None:
    w = kfed.window_ns
    # A quarter of the events of every other window is held back (and those of windows that
    # are not picked never arrive, nor count).
    held = range(4, 22, 2)
    run = LiveRun.begin(kfed, history_windows=3, traffic_windows=26, hold={"dub1": held})
    checks = CheckSpy(kfed)
    checks.attach(kfed.start_agent("dub1"))
    kfed.start_agent("lon1")
    client = KapacitorClient(kfed.kapacitors["dub1"].url)
    tasks = [f"fed-{a}-dub1" for a in kfed.config.aggregations]
    shipping = schedule_ships(kfed, client, tasks, run.began_ns)
    # The first window with late events that Kapacitor's schedule computes from its start.
    start = next((s for k in held if (s := run.began_ns + k * w) > shipping), None)
    assert start is not None, "Kapacitor's schedule started too late for the scenario"
    keys = [("dub1", aggregation, start) for aggregation in kfed.config.aggregations]
    watch = RowWatch(kfed, "dub1")
    lasts = {t: last_out_node(client.task_health(t)) for t in tasks}

    def last_branch_write_errors() -> dict[str, int]:
        return {t: client.task_health(t).nodes[lasts[t]].write_errors for t in tasks}

    # Its first run (three quarters of its events) reaches central ...
    while not all((row := window_row(kfed, key)) is not None and row.events for key in keys):
        assert kfed.clock.now_ns() < start + 6 * w, "the window's first run never reached central"
        time.sleep(0.02)
    first = {key: int(window_row(kfed, key).events or 0) for key in keys}  # type: ignore[union-attr]
    # ... then the rest arrives, inside the look-back, and the gateway refuses Kapacitor's
    # writes before the next run's flush, ...
    before = last_branch_write_errors()
    kfed.refusing.add("dub1")
    assert kfed.traffic["dub1"].write_held(start, start + w) > 0
    # ... until the last branch's write of the window is refused too (its second refused
    # write: the one before was the previous window's). The next windows' last runs get
    # through, so no backfill covers the window by chance.
    wait_for(
        lambda: all(n >= before[t] + 2 for t, n in last_branch_write_errors().items()),
        6 * w / SECOND,
        "the window's last look-back run to be refused",
    )
    kfed.refusing.clear()
    client.close()
    run.end_traffic(LOOKBACK + 2)  # past the look-back of the refused window, and a little more
    run.finish(timeout_s=90)
    watch.close()

    # Central held a partial run of some window (which one depends on when each task's
    # influxDBOut flushed: each has its own timer): the agent's check found it, the ledger
    # said so with both figures, and the planner had the window replayed.
    assert checks.marked, f"no window found short (window {start}, first runs {first})"
    for held_, state, reason in checks.marked:
        assert held_.events is not None and held_.raw_events > held_.events
        assert state in ("inconsistent", "backfilling"), (held_, state, reason)
        if state == "inconsistent":
            assert reason == (
                f"the DC's raw data holds {held_.raw_events} events, central {held_.events} "
                f"(run {reason.split('(run ')[1].split(')')[0]}): a later run of the window did "
                "not reach central"
            )
        row = window_row(kfed, ("dub1", held_.aggregation, held_.start_ns))
        assert row is not None and row.state == "verified" and row.events == held_.raw_events
        # Re-run by a backfill the planner requested once the window was found short (after
        # its look-back had passed).
        after = held_.start_ns + (LOOKBACK + 1) * kfed.window_ns
        assert backfilled_after(kfed, held_.aggregation, held_.start_ns, after), held_
    record(check_invariants(kfed, run.start_ns, run.until_ns))


def test_17_gateway_down_for_several_windows_while_influxdbout_writes(
    kfed: ScenarioFederation, record: Callable[[Outcome], None]
) -> None:
    w = kfed.window_ns
    run = LiveRun.begin(kfed, history_windows=3, traffic_windows=24)
    kfed.start_agent("dub1")
    kfed.start_agent("lon1")
    # Once Kapacitor runs the tasks (the agent may still be catching up: its replays' writes
    # are then dropped too, and those replays fail).
    with KapacitorClient(kfed.kapacitors["dub1"].url) as client:
        tasks = [f"fed-{a}-dub1" for a in kfed.config.aggregations]
        schedule_ships(kfed, client, tasks, run.began_ns)
    watch = RowWatch(kfed, "dub1")
    assert kfed.clock.now_ns() + (LOOKBACK + 6) * w < run.end_ns, "the tasks started too late"
    kfed.stop_coordinator()
    down_from = kfed.clock.now_ns()
    with KapacitorClient(kfed.kapacitors["dub1"].url) as client:
        tasks = [f"fed-{a}-dub1" for a in kfed.config.aggregations]
        wait_for(
            lambda: sum(client.task_health(t).write_errors for t in tasks) > 0,
            8 * w / SECOND,
            "influxDBOut to fail a write",
        )
    sleep_until(kfed.clock, down_from + 6 * w)
    down_to = kfed.clock.now_ns()
    kfed.start_coordinator()
    run.end_traffic(LOOKBACK + 2)  # a few scheduled runs with the gateway back
    run.finish(timeout_s=90)
    watch.close()

    # Every run of these windows was dropped (the last one is flushed at most a window after
    # its tick, plus the UDF's work): they went missing, and were replayed.
    assert_missed_were_replayed(kfed, watch, down_from, down_to)
    record(check_invariants(kfed, run.start_ns, run.until_ns))


def assert_missed_were_replayed(
    fed: ScenarioFederation, watch: RowWatch, down_from: int, down_to: int
) -> None:
    """Every window of dub1 that started after `down_from` and whose last look-back run (a
    window of margin) came before `down_to` went missing, was replayed and ended verified."""
    w = fed.window_ns
    lost = [
        (a, s)
        for a in fed.config.aggregations
        for s in range(down_from - down_from % w + w, down_to - (LOOKBACK + 2) * w + 1, w)
    ]
    assert lost, "the outage was shorter than the look-back"
    for a, s in lost:
        states = watch.states(a, s)
        # The planner may request a window in the pass that finds it missing.
        assert {"missing", "backfilling"} & set(states), (a, s, watch.seen.get((a, s)))
        assert states[-1] == "verified", (a, s, watch.seen.get((a, s)))
        assert backfilled_after(fed, a, s, down_from), (a, s)
