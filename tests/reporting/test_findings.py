"""`federation report findings`: the detections' counts at central per period, by DC or
detection — the library function and its thin command."""

from __future__ import annotations

import csv
import io
from pathlib import Path

import pytest
from typer.testing import CliRunner

from federation.cli import app
from federation.config import FederationConfig
from federation.config.resolve import resolve_detection
from federation.core.clock import parse_rfc3339
from federation.core.detect import detect_window, shipped_points
from federation.core.durations import HOUR_NS
from federation.core.lineprotocol import serialize
from federation.devstack.localstack import InfluxServer
from federation.errors import InvalidInput
from federation.influx import InfluxClient
from federation.reporting.findings import DetectionCounts, findings_report

from .data import copy_config, prepare_central

DAY = parse_rfc3339("2026-11-02T00:00:00Z")
HIJACKED = "hijacked@example.org"


def ship_detection(
    influx: InfluxClient, config: FederationConfig, detection: str, dc: str, start: int,
    senders: list[str],
) -> None:  # fmt: skip
    """One window's count point (and manifest) where the gateway stores it: each sender sends
    to one recipient, except `hijacked@…`, which mails 600."""
    plan = resolve_detection(config, detection, dc)
    ordinary = [s for s in senders if s != HIJACKED]
    victims = [f"v{i}@example.com" for i in range(600)] if HIJACKED in senders else []
    keys = [*ordinary, *[HIJACKED] * len(victims)]
    values = [*["rcpt@example.com"] * len(ordinary), *victims]
    points = shipped_points(plan, detect_window(plan, start, keys, values), run=1)
    influx.write(
        serialize(points), database="federation", retention_policy=plan.central_retention_policy
    )


@pytest.fixture
def central(influx: InfluxClient, tmp_path: Path) -> tuple[FederationConfig, InfluxClient]:
    config = copy_config(tmp_path / "config")
    prepare_central(influx, config)
    ordinary = [f"user{i}@example.org" for i in range(20)]
    for h in range(24):
        start = DAY + h * HOUR_NS
        dub1 = [*ordinary, HIJACKED] if h == 14 else ordinary
        ship_detection(influx, config, "recipients_per_sender", "dub1", start, dub1)
        if h < 12:
            ship_detection(influx, config, "recipients_per_sender", "tor1", start, ordinary)
    # The next day: one window of dub1 only.
    ship_detection(influx, config, "recipients_per_sender", "dub1", DAY + 24 * HOUR_NS, ordinary)
    return config, influx


def test_findings_per_day_by_dc_count_windows_keys_and_findings(
    central: tuple[FederationConfig, InfluxClient],
) -> None:
    config, influx = central
    report = findings_report(
        config, influx, period="day", from_date="2026-11-02", to_date="2026-11-03",
        dcs=["dub1", "tor1"],
    )  # fmt: skip
    rows = {(r.period, r.group): r.counts for r in report.rows}
    assert rows == {
        ("2026-11-02", "dub1"): DetectionCounts(24, 24 * 20 + 600, 24 * 20 + 1, 1),
        ("2026-11-02", "tor1"): DetectionCounts(12, 12 * 20, 12 * 20, 0),
        ("2026-11-03", "dub1"): DetectionCounts(1, 20, 20, 0),
        ("2026-11-03", "tor1"): DetectionCounts(),  # nothing received: zero windows
    }
    by_detection = findings_report(
        config, influx, period="month", from_date="2026-11-02", to_date="2026-11-02",
        by="detection",
    )  # fmt: skip
    counts = {r.group: r.counts for r in by_detection.rows}
    assert counts["recipients_per_sender"] == DetectionCounts(37, 37 * 20 + 600, 37 * 20 + 1, 1)
    assert counts["senders_per_client_ip"] == DetectionCounts()
    with pytest.raises(InvalidInput, match="--by 'customer'"):
        findings_report(config, influx, period="day", from_date="2026-11-02",
                        to_date="2026-11-02", by="customer")  # fmt: skip


def test_report_findings_command(
    central: tuple[FederationConfig, InfluxClient], influxd: InfluxServer, tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:  # fmt: skip
    monkeypatch.setenv("FEDERATION_CENTRAL_INFLUX_USER", "reader")
    monkeypatch.setenv("FEDERATION_CENTRAL_INFLUX_PASSWORD", "unused")
    args = ["--config", str(tmp_path / "config"), "--central-url", influxd.url]
    result = CliRunner().invoke(
        app,
        ["report", "findings", "--from", "2026-11-02", "--by", "dc", "--dcs", "dub1,tor1",
         "--format", "csv", *args],
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    assert list(csv.DictReader(io.StringIO(result.output))) == [
        {"period": "2026-11-02", "dc": "dub1", "windows": "24", "events": "1080",
         "keys": "481", "findings": "1"},
        {"period": "2026-11-02", "dc": "tor1", "windows": "12", "events": "240",
         "keys": "240", "findings": "0"},
    ]  # fmt: skip
    refused = CliRunner().invoke(app, ["report", "findings", "--from", "2026-11-02",
                                       "--by", "sender", *args])  # fmt: skip
    assert isinstance(refused.exception, InvalidInput)  # the entry point exits 2 on it
    assert "--by 'sender'" in str(refused.exception)
