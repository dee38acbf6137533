"""`federation agent once` and `federation agent run` as an operator runs them."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from typer.testing import CliRunner

from federation.agent import EmbeddedMode, Shipper, WindowRunner
from federation.cli import app
from federation.config import FederationConfig
from federation.core.clock import SystemClock, format_rfc3339
from federation.devstack.localstack import InfluxServer
from federation.influx import InfluxClient

from .conftest import HOUR, SECOND, central_points, make_plan
from .federation_fixture import (
    DC,
    Served,
    export_agent_tokens,
    federation_config,
    serve_coordinator,
    token,
)
from .test_daemon import write_raw


@pytest.fixture
def hour0() -> int:
    now = time.time_ns()
    return now - now % HOUR - 24 * HOUR


@pytest.fixture
def fed(
    config_dir: Path, dc_influxd: InfluxServer, central_influxd: InfluxServer
) -> tuple[FederationConfig, int]:
    return federation_config(config_dir, dc_influxd.url, central_influxd.url)


@pytest.fixture
def served(
    fed: tuple[FederationConfig, int],
    central_influxd: InfluxServer,
    hour0: int,
    monkeypatch: pytest.MonkeyPatch,
) -> Iterator[Served]:
    config, port = fed
    export_agent_tokens(config, monkeypatch)
    yield from serve_coordinator(config, central_influxd.url, SystemClock(), port, hour0 - 3 * HOUR)


def test_agent_once_ships_a_range_through_the_gateway(
    served: Served, config_dir: Path, dc_influxd: InfluxServer, central: InfluxClient, hour0: int
) -> None:
    write_raw(dc_influxd.url, hour0, 2)
    args = ["agent", "once", "--config", str(config_dir), "--dc", DC,
            "--aggregation", "delivery_latency",
            "--from", format_rfc3339(hour0), "--to", format_rfc3339(hour0 + 2 * HOUR)]  # fmt: skip
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    print(result.output)
    assert result.output.count("yes") == 2
    manifests = central_points(central, "federation_manifest")
    assert [m["events"] for m in manifests] == [60, 60]
    # Twice: the same points, the manifests' run increases.
    before = central_points(central, "delivery_latency")
    assert CliRunner().invoke(app, args).exit_code == 0
    assert central_points(central, "delivery_latency") == before


def test_agent_once_runs_the_detections_too_keeping_their_findings_in_the_dc(
    served: Served, config_dir: Path, dc_influxd: InfluxServer, central: InfluxClient, hour0: int
) -> None:
    write_raw(dc_influxd.url, hour0, 1)
    args = ["agent", "once", "--config", str(config_dir), "--dc", DC, "--format", "csv",
            "--from", format_rfc3339(hour0), "--to", format_rfc3339(hour0 + HOUR)]  # fmt: skip
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    rows = [line.split(",") for line in result.output.splitlines()[1:]]
    assert [(r[0], r[2], r[6]) for r in rows] == [
        ("delivery_direction", "60", "yes"),
        ("delivery_latency", "60", "yes"),
        ("helos_per_sender", "60", "yes"),
        ("recipients_per_sender", "60", "yes"),
        ("senders_per_client_ip", "60", "yes"),
    ]
    counts = central_points(central, "recipients_per_sender")
    assert [(c["dc"], c["count"]) for c in counts] == [(DC, 60)]
    with InfluxClient(dc_influxd.url) as dc:
        runs = dc.query(
            'SELECT "keys" FROM "mail"."raw"."federation_detection_runs" GROUP BY "detection"',
            database="mail",
        )
    assert sorted(series.tags["detection"] for series in runs) == [
        "helos_per_sender", "recipients_per_sender", "senders_per_client_ip"
    ]  # fmt: skip
    one = CliRunner().invoke(app, [*args, "--aggregation", "senders_per_client_ip"])
    assert one.exit_code == 0 and one.output.count("senders_per_client_ip") == 1, one.output


def test_agent_once_refused_by_the_gateway_exits_1(
    served: Served,
    config_dir: Path,
    dc_influxd: InfluxServer,
    hour0: int,
    monkeypatch: pytest.MonkeyPatch,
    fed: tuple[FederationConfig, int],
) -> None:
    write_raw(dc_influxd.url, hour0, 1)
    monkeypatch.setenv(fed[0].dc(DC).agent_token_env, "wrong-token")
    result = CliRunner().invoke(app, [
        "agent", "once", "--config", str(config_dir), "--dc", DC, "--aggregation",
        "delivery_direction", "--from", format_rfc3339(hour0), "--to", format_rfc3339(hour0 + HOUR),
    ])  # fmt: skip
    assert result.exit_code == 1
    assert "HTTP 401" in result.output and "no" in result.output


def _agent_process(config_dir: Path, env: dict[str, str]) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-c", "from federation.cli import main; main()", "agent", "run",
         "--config", str(config_dir), "--dc", DC, "--mode", "embedded",
         "--poll-interval", "0.2"],
        env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip


def test_agent_run_stops_cleanly_on_sigterm(
    served: Served, config_dir: Path, dc_influxd: InfluxServer, central: InfluxClient, hour0: int
) -> None:
    now = time.time_ns()
    write_raw(dc_influxd.url, now - now % HOUR - 3 * HOUR, 3, per_hour=30)
    process = _agent_process(config_dir, dict(os.environ))
    try:
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            manifests = central_points(central, "federation_manifest")
            if len({m["aggregation"] for m in manifests}) == 2:
                break
            time.sleep(0.1)
        assert process.poll() is None, process.communicate()
        process.send_signal(signal.SIGTERM)
        _, stderr = process.communicate(timeout=20)
    finally:
        if process.poll() is None:
            process.kill()
    assert process.returncode == 0, stderr
    assert f"agent {DC} stopped" in stderr
    counts = {
        (m["aggregation"], m["events"]) for m in central_points(central, "federation_manifest")
    }
    assert ("delivery_latency", 30) in counts


def test_agent_run_without_a_coordinator_is_one_line_and_exit_1(
    fed: tuple[FederationConfig, int], config_dir: Path, dc_influxd: InfluxServer
) -> None:
    config, _ = fed
    env = dict(os.environ, **{config.dc(DC).agent_token_env: token(DC)})
    process = _agent_process(config_dir, env)
    _, stderr = process.communicate(timeout=30)
    assert process.returncode == 1
    lines = stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"error: DC {DC}: coordinator is not reachable")


def test_the_scheduler_runs_the_lookback_at_every_window_boundary(
    dc_influxd: InfluxServer, central: InfluxClient, central_influxd: InfluxServer
) -> None:
    from .conftest import Event, write_events

    plan = make_plan()  # one-second windows, a look-back of three
    with InfluxClient(dc_influxd.url) as dc:
        dc.execute('CREATE DATABASE "mail"')
        dc.execute('CREATE RETENTION POLICY "raw" ON "mail" DURATION 30d REPLICATION 1 '
                   "SHARD DURATION 1d DEFAULT")  # fmt: skip
        now = time.time_ns()
        write_events(dc, [Event(now - now % SECOND + k * SECOND + 1000 * i, 1.0 + i)
                          for k in range(0, 3) for i in range(4)])  # fmt: skip
        stop = threading.Event()
        with Shipper(central_influxd.url, dc="dc1", token="t") as shipper:
            mode = EmbeddedMode(WindowRunner(dc, shipper, SystemClock()), stop=stop)
            mode.apply([plan])
            time.sleep(4.5)
            mode.close()
    manifests = central_points(central, "federation_manifest")
    starts = sorted({int(m["time"]) for m in manifests})  # type: ignore[call-overload]
    assert len(starts) >= 5  # ~4 runs x 3 look-back windows, overlapping
    assert starts == list(range(starts[0], starts[-1] + SECOND, SECOND))
    assert {m["events"] for m in manifests} <= {0, 4}
    assert sum(1 for m in manifests if m["events"] == 4) == 3


@pytest.mark.parametrize(
    ("command", "option", "value"),
    [
        (["agent", "run", "--dc", DC], "--poll-interval", "0"),
        (["agent", "run", "--dc", DC], "--poll-interval", "-1"),
        (["agent", "run", "--dc", DC], "--poll-interval", "nan"),
        (["agent", "run", "--dc", DC], "--reconcile-interval", "0.5"),
        (["agent", "run", "--dc", DC], "--reconcile-interval", "1e9"),
        (["policy", "plan"], "--timeout", "0"),
        (["policy", "apply"], "--wait-timeout", "-5"),
        (["rollout", "apply"], "--window-timeout", "inf"),
        (["ingest", "--dc", DC], "--give-up-after", "0"),
    ],
)
def test_interval_options_out_of_bounds_are_refused_in_one_line(
    tmp_path: Path, command: list[str], option: str, value: str
) -> None:
    # Refused before the config is even read: nothing starts, nothing polls.
    result = subprocess.run(
        [sys.executable, "-m", "federation.cli", *command, "--config", str(tmp_path), option,
         value],
        capture_output=True, text=True, timeout=60, stdin=subprocess.DEVNULL,
    )  # fmt: skip
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"error: {option}: "), result.stderr
    assert "out of bounds" in lines[0]


def test_agent_once_computes_no_window_that_has_not_ended_by_its_clock(
    served: Served, fed: tuple[FederationConfig, int], dc_influxd: InfluxServer,
    central: InfluxClient, hour0: int,
) -> None:  # fmt: skip
    from federation.agent import run_once
    from federation.core.clock import FakeClock

    config, _ = fed
    write_raw(dc_influxd.url, hour0, 2)
    # By the agent's clock the second hour is still running (the coordinator's says it ended).
    clock = FakeClock(hour0 + HOUR + 5 * SECOND)
    (result,) = run_once(
        config, DC, hour0, hour0 + 2 * HOUR, aggregation="delivery_latency", clock=clock
    )
    assert [w.window.start_ns for w in result.windows] == [hour0]
    assert [m["events"] for m in central_points(central, "federation_manifest")] == [60]
