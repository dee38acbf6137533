"""The agent daemon end to end: a DC influxd, the real coordinator (gateway + Agent API) and a
central influxd; hour windows driven by a FakeClock, so a day of behaviour takes seconds."""

from __future__ import annotations

import random
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlalchemy import select

from federation.agent import Agent, AgentSettings, build_agent, catch_up_windows
from federation.agent.coordinator_client import DesiredRetentionState
from federation.config import FederationConfig
from federation.config.resolve import resolve_plan
from federation.coordinator.backfills import request_backfill
from federation.core.clock import FakeClock
from federation.core.windows import Window
from federation.devstack.localstack import InfluxServer
from federation.influx import InfluxClient
from federation.policy import RetentionSpec

from .conftest import DAY, HOUR, SECOND, Event, central_points
from .federation_fixture import (
    DC,
    Served,
    export_agent_tokens,
    federation_config,
    serve_coordinator,
    token,
)

MINUTE = 60 * SECOND


@pytest.fixture
def hour0() -> int:
    """An hour boundary a day ago: every window of the test is in the past and within retention."""
    now = time.time_ns()
    return now - now % HOUR - DAY


@pytest.fixture
def clock(hour0: int) -> FakeClock:
    return FakeClock(hour0 + 5 * SECOND, auto_advance=False)


@pytest.fixture
def config(
    config_dir: Path, dc_influxd: InfluxServer, central_influxd: InfluxServer
) -> tuple[FederationConfig, int]:
    return federation_config(config_dir, dc_influxd.url, central_influxd.url)


@pytest.fixture
def served(
    config: tuple[FederationConfig, int],
    central_influxd: InfluxServer,
    clock: FakeClock,
    hour0: int,
    monkeypatch: pytest.MonkeyPatch,
) -> Iterator[Served]:
    fed, port = config
    export_agent_tokens(fed, monkeypatch)
    yield from serve_coordinator(fed, central_influxd.url, clock, port, hour0 - 3 * HOUR)


def write_raw(dc_url: str, start: int, hours: int, per_hour: int = 60) -> None:
    """Raw events for every hour from `start`: 2 directions x 2 mailers x 3 customers."""
    from .conftest import write_events

    rng = random.Random(start)
    events = [
        Event(
            start + h * HOUR + rng.randrange(HOUR),
            rng.lognormvariate(4, 1),
            rng.choice(["in", "out"]),
            rng.choice(["m1", "m2"]),
            rng.choice(["c1", "c2", "c3"]),
        )
        for h in range(hours)
        for _ in range(per_hour)
    ]
    with InfluxClient(dc_url) as client:
        client.execute('CREATE DATABASE "mail"')
        client.execute(
            'CREATE RETENTION POLICY "raw" ON "mail" DURATION 30d REPLICATION 1 '
            "SHARD DURATION 1d DEFAULT"
        )
        write_events(client, events)


def new_agent(fed: FederationConfig, clock: FakeClock) -> Agent:
    settings = AgentSettings(poll_interval_s=0.05, mode="embedded", max_jitter_s=0)
    agent, _ = build_agent(fed, DC, clock=clock, settings=settings)
    return agent


def manifest_hours(central: InfluxClient, aggregation: str, hour0: int) -> dict[int, object]:
    return {
        (int(m["time"]) - hour0) // HOUR: m["events"]  # type: ignore[call-overload]
        for m in central_points(central, "federation_manifest")
        if m["aggregation"] == aggregation
    }


def test_start_catch_up_after_six_hours_down_and_backfill(
    served: Served,
    config: tuple[FederationConfig, int],
    dc_influxd: InfluxServer,
    central: InfluxClient,
    clock: FakeClock,
    hour0: int,
) -> None:
    fed, _ = config
    with InfluxClient(dc_influxd.url) as dc:
        dc.execute('CREATE DATABASE "mail"')
        # The agent reconciles the region's raw RP (the default RP raw data is written to).
        agent = new_agent(fed, clock)
        agent.preflight()
        agent.reconcile()
        assert {rp.name for rp in dc.retention_policies("mail")} >= {"raw"}
    write_raw(dc_influxd.url, hour0 - 4 * HOUR, 12)

    # First start, nothing at central yet: the look-back of each aggregation.
    agent.catch_up(threading.Event())
    assert sorted(manifest_hours(central, "delivery_latency", hour0)) == [-3, -2, -1]
    assert sorted(manifest_hours(central, "delivery_direction", hour0)) == [-2, -1]
    agent.close()

    # Down for six hours; on restart every window since the last one central holds is computed,
    # and the look-back of that last one again: events that landed late in hour -1, inside its
    # look-back but while no agent ran, reach central.
    from .conftest import write_events

    with InfluxClient(dc_influxd.url) as dc:
        write_events(dc, [Event(hour0 - HOUR + i * MINUTE, 700.0) for i in range(5)])
    clock.set(hour0 + 6 * HOUR + 5 * SECOND)
    agent = new_agent(fed, clock)
    agent.preflight()
    agent.reconcile()
    results = agent.catch_up(threading.Event())
    assert all(r.ok for r in results)
    assert sorted(manifest_hours(central, "delivery_latency", hour0)) == list(range(-3, 6))
    assert sorted(manifest_hours(central, "delivery_direction", hour0)) == list(range(-2, 6))
    held = manifest_hours(central, "delivery_latency", hour0)
    assert held[-1] == 65
    assert {h: n for h, n in held.items() if h != -1} == {h: 60 for h in range(-3, 6) if h != -1}
    view = agent.coordinator.windows(DC, "delivery_latency")
    assert view.latest_shipped_ns == hour0 + 5 * HOUR
    assert {w.state for w in view.windows} <= {"shipped", "verified"}

    # Late data for hour 1, long past the look-back: a backfill request ships it.
    with InfluxClient(dc_influxd.url) as dc:
        write_events(dc, [Event(hour0 + HOUR + i * MINUTE, 5000.0) for i in range(7)])
    request_backfill(
        served.coordinator.ledger,
        fed,
        DC,
        "delivery_latency",
        hour0 + HOUR,
        hour0 + 2 * HOUR,
        clock.now_ns(),
    )
    clock.advance(MINUTE)
    assert agent.process_backfills(threading.Event()) == 1
    assert manifest_hours(central, "delivery_latency", hour0)[1] == 67
    assert agent.coordinator.backfills(DC) == []
    agent.close()


def test_run_loop_serves_until_stopped(
    served: Served,
    config: tuple[FederationConfig, int],
    dc_influxd: InfluxServer,
    central: InfluxClient,
    clock: FakeClock,
    hour0: int,
) -> None:
    fed, _ = config
    write_raw(dc_influxd.url, hour0 - 4 * HOUR, 4)
    agent = new_agent(fed, clock)
    stop = threading.Event()
    thread = threading.Thread(target=agent.run, args=(stop,))
    thread.start()
    try:
        for _ in range(200):
            if len(manifest_hours(central, "delivery_direction", hour0)) == 2:
                break
            threading.Event().wait(0.05)
        assert sorted(manifest_hours(central, "delivery_direction", hour0)) == [-2, -1]
    finally:
        stop.set()
        thread.join(10)
    assert not thread.is_alive()
    agent.close()


def test_preflight_names_what_does_not_answer(
    config: tuple[FederationConfig, int],
    dc_influxd: InfluxServer,
    clock: FakeClock,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from federation.errors import PreflightError

    fed, _ = config
    monkeypatch.setenv(fed.dc(DC).agent_token_env, token(DC))
    agent = new_agent(fed, clock)
    with pytest.raises(PreflightError, match=f"DC {DC}: coordinator is not reachable"):
        agent.run(threading.Event())
    agent.close()


def test_preflight_says_the_coordinator_refused_a_wrong_token(
    served: Served,
    config: tuple[FederationConfig, int],
    clock: FakeClock,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from federation.errors import PreflightError

    fed, _ = config
    monkeypatch.setenv(fed.dc(DC).agent_token_env, "not-the-token")
    agent = new_agent(fed, clock)
    with pytest.raises(PreflightError) as caught:
        agent.run(threading.Event())
    agent.close()
    message = str(caught.value)
    assert message.startswith(f"DC {DC}: coordinator refused this DC's agent token: ")
    assert "(HTTP 401): the token given was refused: a DC agent token is required" in message
    assert "not reachable" not in message


def test_catch_up_skips_windows_past_raw_retention() -> None:
    plan = resolve_plan(_example_config(), "delivery_latency", DC)
    retention = DesiredRetentionState("mail", (RetentionSpec("raw", 30 * DAY, DAY, default=True),))
    now = 100 * DAY + 5 * SECOND
    windows = catch_up_windows(plan, 60 * DAY, now, retention)
    # Raw data older than retention - one shard duration may already be gone.
    assert windows[0] == Window(71 * DAY, HOUR)
    assert windows[-1] == Window(100 * DAY - HOUR, HOUR)
    assert len(windows) == 29 * 24
    # Nothing at central yet: the look-back only.
    assert catch_up_windows(plan, None, now, retention) == [
        Window(100 * DAY - k * HOUR, HOUR) for k in (3, 2, 1)
    ]


def test_catch_up_runs_again_the_shipped_windows_within_the_look_back_of_the_last_one() -> None:
    """The agent stopped after shipping hour 0's first run: the look-back runs of hours -2..0
    (a look-back of 3 windows) did not all run, so events that landed late inside it are in
    the DC only. On restart, long after, the ones central holds run again with every hour
    since; one it never held is the coordinator's to ask for."""
    plan = resolve_plan(_example_config(), "delivery_latency", DC)
    assert plan.lookback_windows == 3
    now = 30 * HOUR + 5 * SECOND
    held = [-2 * HOUR, 0]
    assert catch_up_windows(plan, 0, now, None, held) == [
        Window(k * HOUR, HOUR) for k in (-2, *range(30))
    ]
    # Hour 28's look-back reaches one hour further back than the look-back of now.
    assert catch_up_windows(plan, 28 * HOUR, now, None, [26 * HOUR, 28 * HOUR]) == [
        Window(k * HOUR, HOUR) for k in (26, 27, 28, 29)
    ]


def _example_config() -> FederationConfig:
    from federation.config import load_config

    return load_config(Path(__file__).resolve().parents[2])


def test_a_coordinator_clock_hours_ahead_never_makes_the_agent_compute_a_running_window(
    config: tuple[FederationConfig, int],
    dc_influxd: InfluxServer,
    central_influxd: InfluxServer,
    central: InfluxClient,
    clock: FakeClock,
    hour0: int,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from federation.coordinator.ledger import BackfillRow
    from federation.core.clock import SkewedClock

    fed, port = config
    export_agent_tokens(fed, monkeypatch)
    ahead = SkewedClock(clock, 5 * HOUR)
    served = serve_coordinator(fed, central_influxd.url, ahead, port, hour0 - 3 * HOUR)
    coordinator = next(served).coordinator
    try:
        write_raw(dc_influxd.url, hour0 - 3 * HOUR, 5)
        agent = new_agent(fed, clock)
        agent.preflight()
        agent.plans = {p.aggregation: p for p in agent.coordinator.desired(DC).plans}
        # By the coordinator's clock the last 8 hours have ended; by the agent's, only the
        # three before hour0 (hour0 itself is 5 seconds old).
        (request,) = request_backfill(
            coordinator.ledger, fed, DC, "delivery_latency", hour0 - 3 * HOUR,
            hour0 + 4 * HOUR, ahead.now_ns(),
        )  # fmt: skip
        assert agent.process_backfills(threading.Event()) == 1
        assert sorted(manifest_hours(central, "delivery_latency", hour0)) == [-3, -2, -1]
        with coordinator.ledger.session() as session:
            row = session.get(BackfillRow, request.id)
            assert row is not None and row.state == "failed"
            assert row.error is not None and "4 window(s) not computed: not ended by" in row.error
        agent.close()
    finally:
        served.close()


def test_detections_run_on_the_agents_schedule_and_their_windows_are_tracked(
    served: Served,
    config: tuple[FederationConfig, int],
    dc_influxd: InfluxServer,
    central: InfluxClient,
    clock: FakeClock,
    hour0: int,
) -> None:
    from federation.agent.findings import list_findings
    from federation.coordinator.ledger import WindowRow
    from federation.coordinator.planner import PlannerSettings, plan_backfills
    from federation.coordinator.tracking import verify_shipped
    from federation.core.lineprotocol import serialize
    from federation.core.points import Point

    fed, _ = config
    detection = "recipients_per_sender"  # 1h windows, 2h look-back, at least 500 recipients
    write_raw(dc_influxd.url, hour0 - 4 * HOUR, 5)
    fields = {"latency_ms": 1.0, "sender": "hijacked@example.org"}
    hijacked = [
        Point(
            "delivery",
            {"mailer": "m1", "seq": f"h{r}"},
            {**fields, "recipient": f"victim{r}@example.com"},
            hour0 - HOUR + r * SECOND,
        )
        for r in range(600)
    ]
    with InfluxClient(dc_influxd.url) as dc:
        dc.write(serialize(hijacked), database="mail", retention_policy="raw")
    agent = new_agent(fed, clock)
    agent.preflight()
    agent.reconcile()
    assert detection in agent.plans

    # At start, the detection's look-back is computed like an aggregation's: the findings
    # stay in the DC, central gets the counts.
    assert all(r.ok for r in agent.catch_up(threading.Event()))
    assert sorted(manifest_hours(central, detection, hour0)) == [-2, -1]
    counts = {
        (int(p["time"]) - hour0) // HOUR: p["findings"]  # type: ignore[call-overload]
        for p in central_points(central, detection)
    }
    assert counts == {-2: 0, -1: 1}
    found = [f for f in list_findings(fed, DC) if f.detection == detection]
    assert [(f.key, f.count, f.window_start_ns) for f in found] == [
        ("hijacked@example.org", 600, hour0 - HOUR)
    ]

    ledger = served.coordinator.ledger

    def states() -> dict[int, str]:
        with ledger.session() as session:
            rows = session.execute(
                select(WindowRow.start_ns, WindowRow.state).where(
                    WindowRow.dc == DC, WindowRow.aggregation == detection
                )
            ).all()
        return {(start - hour0) // HOUR: state for start, state in rows}

    verify_shipped(ledger, fed, central, clock.now_ns())
    assert states() == {-2: "verified", -1: "verified"}

    # Window -3 (tracked since the coordinator started) was never shipped: past its deadline
    # (end + 2h look-back + 1h grace) it is missing, and the agent runs the backfill.
    clock.set(hour0 + 2 * HOUR + 5 * SECOND)
    plan_backfills(ledger, fed, clock.now_ns(), PlannerSettings(max_outstanding=100))
    assert states()[-3] == "backfilling"
    assert agent.process_backfills(threading.Event()) >= 1
    verify_shipped(ledger, fed, central, clock.now_ns())
    assert states()[-3] == "verified"
    agent.close()
