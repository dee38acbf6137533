"""`federation report …`: thin commands that print the library's reports."""

from __future__ import annotations

import csv
import io
import json
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from federation.cli import app
from federation.config.resolve import resolve_plan
from federation.core.clock import parse_rfc3339
from federation.core.durations import HOUR_NS
from federation.core.windows import align
from federation.devstack.localstack import InfluxServer
from federation.influx import InfluxClient

from .data import Raw, copy_config, prepare_central, ship_window, write_points

AGG = "delivery_latency"


@pytest.fixture
def env(
    influxd: InfluxServer, influx: InfluxClient, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> list[str]:
    config = copy_config(tmp_path / "config")
    prepare_central(influx, config)
    rng = np.random.default_rng(1)
    now = align(time.time_ns(), HOUR_NS)
    day = parse_rfc3339("2026-11-02T00:00:00Z")
    for dc in ("dub1", "tor1"):
        plan = resolve_plan(config, AGG, dc)
        points = []
        for start in [
            *range(day, day + 24 * HOUR_NS, HOUR_NS),
            *range(now - 30 * HOUR_NS, now, HOUR_NS),
        ]:
            points += ship_window(plan, start, rng, Raw(), scale={"cyan": 5.0})
        write_points(influx, plan, points)
    monkeypatch.setenv("FEDERATION_CENTRAL_INFLUX_USER", "reader")
    monkeypatch.setenv("FEDERATION_CENTRAL_INFLUX_PASSWORD", "unused")
    return ["--config", str(tmp_path / "config"), "--central-url", influxd.url, "--no-ledger"]


def _run(args: list[str]) -> str:
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    return result.output


def test_report_percentiles_in_every_format(
    env: list[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("COLUMNS", "250")
    base = ["report", "percentiles", "-a", AGG, "--period", "day", "--from", "2026-11-02"]
    table = _run([*base, "--by", "dc", "--percentiles", "50,99", *env])
    assert "2026-11-02" in table and "dub1" in table and "tor1" in table and "±1.00%" in table
    rows = list(csv.DictReader(io.StringIO(_run([*base, "--by", "dc", "-f", "csv", *env]))))
    assert [r["dc"] for r in rows] == ["dub1", "tor1"]
    assert set(rows[0]) >= {"period", "version", "events", "p50", "p99_9", "error", "suppressed"}
    data = json.loads(_run([*base, "--by", "customer", "-f", "json", *env]))
    assert data["report"] == "percentiles" and data["periods"][0]["windows_per_dc"] == 24
    assert {r["customer"] for r in data["rows"]} == {"acme", "blue", "cyan"}


def test_report_sla_and_worst(env: list[str]) -> None:
    sla = json.loads(
        _run(
            [
                "report",
                "sla",
                "-a",
                AGG,
                "--threshold",
                "1s",
                "--period",
                "day",
                "--from",
                "2026-11-02",
                "-f",
                "json",
                *env,
            ]
        )
    )
    assert sla["threshold"] == 1000.0 and sla["unit"] == "ms"
    [row] = sla["rows"]
    assert 0.5 < row["share_low"] <= row["share_high"] <= 1.0
    worst = _run(["report", "worst", "-a", AGG, "--top", "1", "-f", "csv", *env])
    [top] = list(csv.DictReader(io.StringIO(worst)))
    assert top["rank"] == "1" and top["customer"] == "cyan"


def test_bad_input_is_one_line_and_exit_2(env: list[str]) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "federation.cli", "report", "percentiles", "-a", AGG,
         "--from", "2026-13-01", *env],
        capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip
    assert result.returncode == 2
    assert (
        result.stderr.strip() == "error: '2026-13-01' is not a valid date: month must be in 1..12"
    )


def test_a_usage_error_prints_the_usage_and_exits_2_without_a_traceback() -> None:
    for args in (["report", "percentiles"], ["policy"], ["no-such-command"]):
        result = subprocess.run(
            [sys.executable, "-m", "federation.cli", *args],
            capture_output=True, text=True, timeout=60, check=False,
        )  # fmt: skip
        assert result.returncode == 2, (args, result.stderr)
        assert "Traceback" not in result.stderr
        assert "Usage:" in result.stderr + result.stdout
