"""The Grafana dashboard: its shape, and no averaged percentiles anywhere."""

from __future__ import annotations

import json
import re
from pathlib import Path

from typer.testing import CliRunner

from federation.cli import app
from federation.reporting.grafana import dashboard

from .data import copy_config

_FUNCTION_OF_PERCENTILE = re.compile(r"\b[a-z_]+\(\s*\"?(p[0-9_]+|\$percentile)\b", re.I)


def test_dashboard_has_four_splits_reading_exact_fields_and_the_report_api(
    tmp_path: Path,
) -> None:
    config = copy_config(tmp_path / "config")
    board = dashboard(config, "delivery_latency", api_url="https://coord.example")
    assert board["uid"] == "federation-delivery_latency" and board["id"] is None
    rows = [p for p in board["panels"] if p["type"] == "row"]
    assert [r["title"] for r in rows][:4] == ["by direction", "by dc", "by mailer", "by customer"]
    graphs = [p for p in board["panels"] if p["type"] != "row" and "findings" not in p["title"]]
    assert len(graphs) == 8
    influx = [p for p in graphs if p["datasource"]["type"] == "influxdb"]
    api = [p for p in graphs if p["datasource"]["type"] == "yesoreyeram-infinity-datasource"]
    assert len(influx) == len(api) == 4
    for panel in influx:
        [target] = panel["targets"]
        q = target["query"]
        assert q.startswith(
            'SELECT "$percentile" FROM "federation"."agg_400d"."delivery_latency", '
        )
        assert '"federation"."agg_800d"."delivery_latency"' in q
        assert _FUNCTION_OF_PERCENTILE.search(q) is None  # never mean(p99) or the like
        assert "GROUP BY time" not in q
        assert 'GROUP BY "dc", "direction", "mailer", "customer"' in q
    for panel, split in zip(api, ("direction", "dc", "mailer", "customer"), strict=True):
        [target] = panel["targets"]
        assert target["url"].startswith(
            "https://coord.example/api/v1/reports/delivery_latency/percentiles?period=$period"
        )
        assert f"&by={split}&" in target["url"] and target["url"].endswith("&shape=rows")
    names = [v["name"] for v in board["templating"]["list"]]
    assert names == ["percentile", "period", "dc", "direction", "mailer", "customer"]
    percentile = board["templating"]["list"][0]
    assert percentile["query"] == "p50,p90,p95,p99,p99_9"
    ids = [p["id"] for p in board["panels"]]
    assert len(ids) == len(set(ids))
    json.dumps(board)  # serialisable as it is


def test_dashboard_has_a_findings_panel_per_detection_reading_counts_only(
    tmp_path: Path,
) -> None:
    config = copy_config(tmp_path / "config")
    board = dashboard(config, "delivery_latency", api_url="https://coord.example")
    rows = [p for p in board["panels"] if p["type"] == "row"]
    assert rows[-1]["title"].startswith("detections: findings per window")
    found = [p for p in board["panels"] if p["type"] != "row" and "findings" in p["title"]]
    assert [p["title"] for p in found] == [
        f"{name}: findings per window by dc" for name in sorted(config.detections)
    ]
    for panel, name in zip(found, sorted(config.detections), strict=True):
        [target] = panel["targets"]
        assert panel["datasource"]["type"] == "influxdb"
        assert target["query"] == (
            f'SELECT "findings" FROM "federation"."agg_400d"."{name}", '
            f'"federation"."agg_800d"."{name}" WHERE $timeFilter AND "dc" =~ /^$dc$/ '
            'GROUP BY "dc"'
        )
    positions = {(p["gridPos"]["x"], p["gridPos"]["y"]) for p in found}
    assert len(positions) == len(found)  # no two panels on top of each other


def test_grafana_dashboard_command_writes_the_file(tmp_path: Path) -> None:
    copy_config(tmp_path / "config")
    target = tmp_path / "dashboard.json"
    result = CliRunner().invoke(
        app,
        ["grafana", "dashboard", "--config", str(tmp_path / "config"), "--out", str(target)],
    )
    assert result.exit_code == 0, result.output
    assert "(16 panels)" in result.output  # 4 splits x 3, and the detections: 1 + 3
    board = json.loads(target.read_text())
    assert board["title"] == "federation: delivery_latency"
