"""The Kapacitor mode checks what central holds against the DC's raw data (the emulator stands
in for Kapacitor, a served coordinator answers): `influxDBOut` drops the writes it cannot make,
and neither a replay nor the live task says so."""

from __future__ import annotations

import threading
from dataclasses import replace

from federation.agent import Shipper, compute_window
from federation.agent.central_check import WindowChecks, windows_past_lookback
from federation.agent.executor import RunIds
from federation.config import FederationConfig, load_config
from federation.config.resolve import resolve_detection, resolve_plan
from federation.coordinator.app import run_verification
from federation.coordinator.ledger import WindowRow
from federation.core.clock import FakeClock
from federation.core.plan import AggregationPlan
from federation.core.windows import Window, windows_between
from federation.devstack.kapacitor_emulator import KapacitorEmulator
from federation.devstack.localstack import InfluxServer
from federation.influx import InfluxClient, Series
from federation.kapacitor.client import KapacitorClient

from . import test_kapacitor_mode as mode_tests
from .conftest import HOUR, SECOND, Event, make_plan, write_events
from .federation_fixture import DC, Served

# The served federation of the Kapacitor mode's tests: fra1 on the served emulator.
hour0 = mode_tests.hour0
clock = mode_tests.clock
served_emulator = mode_tests.served_emulator
fed = mode_tests.fed
served = mode_tests.served
emulator = mode_tests.emulator
client = mode_tests.client


def test_a_replay_whose_writes_never_reached_central_is_not_done(
    served: Served,
    fed: tuple[FederationConfig, int],
    served_emulator: tuple[KapacitorEmulator, str],
    dc_influxd: InfluxServer,
    clock: FakeClock,
    hour0: int,
) -> None:
    """Kapacitor finishes a replay whose `influxDBOut` writes the gateway refused (or could not
    take): the windows are done only once central holds their raw events."""
    config, _ = fed
    emulator, url = served_emulator
    mode_tests.write_hours(dc_influxd.url, hour0, [0, 1])
    plan = resolve_plan(config, "delivery_latency", DC)
    clock.set(hour0 + 6 * HOUR)
    windows = windows_between(hour0, hour0 + 2 * HOUR, HOUR)
    with mode_tests.dc_ends(served, dc_influxd, url) as (source, shipper, client, coordinator):
        mode = mode_tests.new_mode(client, dc=DC, source=source, sink=shipper, clock=clock)
        mode.central, mode.central_wait_s = coordinator, 0.5
        # The replay finishes, and nothing reached central.
        emulator.on_replay = lambda *_: None
        result = mode.run_windows(plan, windows, threading.Event())
        assert not result.ok and result.shipped == 0
        assert result.error is not None
        assert result.error.startswith("2 window(s) not at central: window ")
        assert "central holds nothing (backfilling) of its 40 raw events" in result.error or (
            "central holds nothing (expected) of its 40 raw events" in result.error
        )
        # Once Kapacitor's writes get through, the same replay is done.
        mode_tests.kapacitor_stand_in(emulator, [plan], source, shipper, clock)
        result = mode.run_windows(plan, windows, threading.Event())
        assert result.ok and result.shipped == 2 and result.error is None
        mode.close()


def ship_then_late_events(
    served: Served,
    central: InfluxClient,
    source: InfluxClient,
    shipper: Shipper,
    clock: FakeClock,
    plan: AggregationPlan,
    dc_influxd: InfluxServer,
    hour0: int,
) -> None:
    """Hours 0 and 1 computed, shipped and verified (40 events each); then 7 late events of
    hour 0 land in the DC, and no look-back run ships them."""
    clock.set(hour0 + 2 * HOUR + 5 * SECOND)
    run_ids = RunIds(clock)
    for start in (hour0, hour0 + HOUR):
        window = Window(start, HOUR)
        shipper.ship_window(plan, compute_window(source, plan, window, run_ids=run_ids).points)
    run_verification(served.coordinator, central)
    mode_tests.write_hours(dc_influxd.url, hour0 + 30 * SECOND, [0], per_hour=7)


def test_a_window_central_holds_less_of_after_its_look_back_is_marked_for_a_rerun(
    served: Served,
    fed: tuple[FederationConfig, int],
    served_emulator: tuple[KapacitorEmulator, str],
    dc_influxd: InfluxServer,
    central: InfluxClient,
    clock: FakeClock,
    hour0: int,
) -> None:
    """The first run of hour 0 reached central and verified; late events landed, and the
    look-back runs that saw them were dropped. Once the look-back has passed, the mode sends
    the raw counts and the coordinator marks the window inconsistent, with both figures."""
    config, _ = fed
    _, url = served_emulator
    plan = resolve_plan(config, "delivery_latency", DC)
    mode_tests.write_hours(dc_influxd.url, hour0, [0, 1])
    with mode_tests.dc_ends(served, dc_influxd, url) as (source, shipper, client, coordinator):
        ship_then_late_events(served, central, source, shipper, clock, plan, dc_influxd, hour0)
        mode = mode_tests.new_mode(client, dc=DC, source=source, sink=shipper, clock=clock)
        mode.central = coordinator
        mode.apply([plan])
        # Not while a look-back run may still ship it (the last one runs at 03:00 and
        # flushes within a window).
        clock.set(hour0 + 4 * HOUR)
        assert hour0 not in {
            w.start_ns for w in windows_past_lookback(plan, clock.now_ns(), 2 * SECOND)
        }
        assert mode.check_windows(threading.Event()).marked == []
        clock.set(hour0 + 4 * HOUR + 5 * SECOND)
        marked = mode.check_windows(threading.Event()).marked
        assert [(h.start_ns, h.events, h.raw_events) for h in marked] == [(hour0, 40, 47)]
        assert mode.check_windows(threading.Event()).marked == [], "each window is checked once"
        mode.close()
    with served.coordinator.ledger.session() as session:
        rows = {
            (r.start_ns - hour0) // HOUR: (r.state, r.reason)
            for r in session.query(WindowRow).filter_by(dc=DC, aggregation=plan.aggregation)
        }
    assert rows[0][0] == "inconsistent"
    assert rows[0][1] is not None and rows[0][1].startswith(
        "the DC's raw data holds 47 events, central 40 (run "
    )
    assert rows[1] == ("verified", None)


def test_the_first_check_after_the_agent_starts_covers_the_windows_of_its_absence(
    served: Served,
    fed: tuple[FederationConfig, int],
    served_emulator: tuple[KapacitorEmulator, str],
    dc_influxd: InfluxServer,
    central: InfluxClient,
    clock: FakeClock,
    hour0: int,
) -> None:
    """Hour 0's look-back passed while no agent ran, and the agent starts a day later: far
    beyond the windows a check covers as time passes, so its first check reaches back to the
    DC's oldest raw event and finds the window central holds less of; later checks do not."""
    config, _ = fed
    _, url = served_emulator
    plan = resolve_plan(config, "delivery_latency", DC)
    mode_tests.write_hours(dc_influxd.url, hour0, [0, 1])
    with mode_tests.dc_ends(served, dc_influxd, url) as (source, shipper, client, coordinator):
        ship_then_late_events(served, central, source, shipper, clock, plan, dc_influxd, hour0)
        clock.set(hour0 + 30 * HOUR)
        assert hour0 < min(
            w.start_ns for w in windows_past_lookback(plan, clock.now_ns(), 2 * SECOND)
        ), "hour 0 is within what every check covers: this test would prove nothing"
        mode = mode_tests.new_mode(client, dc=DC, source=source, sink=shipper, clock=clock)
        mode.central = coordinator
        mode.apply([plan])
        marked = mode.check_windows(threading.Event()).marked
        assert [(h.start_ns, h.events, h.raw_events) for h in marked] == [(hour0, 40, 47)]
        clock.set(hour0 + 31 * HOUR)
        assert mode.check_windows(threading.Event()).marked == []
        mode.close()


class QueryLog(InfluxClient):
    """The DC's InfluxDB, keeping every query it is sent."""

    def __init__(self, url: str) -> None:
        super().__init__(url)
        self.queries: list[str] = []

    def query(self, q: str, *, database: str | None = None, epoch: str = "ns") -> list[Series]:
        self.queries.append(q)
        return super().query(q, database=database, epoch=epoch)

    def taken(self) -> list[str]:
        """The queries sent since the previous call."""
        taken, self.queries = self.queries, []
        return taken


def counting(queries: list[str]) -> list[str]:
    """What each counting query among `queries` selects (the plan's counted fields)."""
    return sorted(q.split(" FROM ")[0] for q in queries if "count(" in q)


def test_one_check_counts_each_plans_raw_data_once_for_both_checks(
    client: KapacitorClient, dc: InfluxClient, dc_influxd: InfluxServer
) -> None:
    """One pass confirms the empty windows of the look-back, sends central the counts of the
    windows past it and, the first time, of those back to the oldest raw event: all from one
    count of each plan's raw events."""
    aggregation = make_plan()  # one-second windows, a look-back of 3
    detection = resolve_detection(load_config(mode_tests.REPO), "senders_per_client_ip", "dub1")
    detection = replace(detection, dc="dc1", window_ns=SECOND, lookback_ns=2 * SECOND)
    t0 = mode_tests.recent_minute()
    write_events(dc, [Event(t0 + s * SECOND + i * 1000, 10.0) for s in (-20, 1, 3) for i in range(4)])  # fmt: skip
    sink, central = mode_tests.RecordingSink([]), mode_tests.RecordingCentral([])
    clock = FakeClock(t0 + 5 * SECOND + SECOND // 10, auto_advance=False)  # window 4 settled
    with QueryLog(dc_influxd.url) as source:
        mode = mode_tests.new_mode(client, dc="dc1", source=source, sink=sink, clock=clock)
        mode.central = central
        mode.apply([aggregation, detection])

        done = mode.check_windows(threading.Event())
        counted = counting(source.taken())
        assert len(counted) == 2 and counted[0] != counted[1], "one count of each plan"
        assert sorted((r.window.start_ns - t0) // SECOND for r in done.shipped) == [2, 4, 4]
        assert sorted(central.sent) == [
            (name, {t0 - 20 * SECOND: 4, t0 + SECOND: 4})
            for name in sorted([aggregation.aggregation, detection.detection])
        ], "the windows past the look-back, and (first check) back to the oldest raw event"

        central.sent.clear()
        clock.set(clock.now_ns() + SECOND)
        done = mode.check_windows(threading.Event())
        queries = source.taken()
        assert counting(queries) == counted and len(queries) == 2, "no reach back any more"
        assert [(r.window.start_ns - t0) // SECOND for r in done.shipped] == [5, 5]
        assert central.sent == [(detection.detection, {t0 + 3 * SECOND: 4})]

        assert mode.check_windows(threading.Event()) == WindowChecks()
        assert source.taken() == [], "each window is confirmed and checked once"
        mode.close()
