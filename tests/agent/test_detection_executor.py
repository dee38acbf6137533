"""The embedded executor's detection path: findings stay in the DC, only counts are shipped."""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, HTTPServer

import pytest

from federation.agent import RunIds, Shipper
from federation.agent.detection_executor import run_detection_windows
from federation.core.clock import FakeClock
from federation.core.detection_plan import DetectionPlan
from federation.core.lineprotocol import serialize
from federation.core.points import Point
from federation.core.windows import Window
from federation.devstack.localstack import InfluxServer
from federation.influx import InfluxClient

from .conftest import SECOND, base_time, central_points

PLAN = DetectionPlan(
    detection="recipients_per_sender",
    dc="dc1",
    region="eu",
    database="mail",
    retention_policy="raw",
    measurement="delivery",
    key="sender",
    key_is_tag=False,
    distinct="recipient",
    distinct_is_tag=False,
    at_least=5,
    factor=3.0,
    window_ns=SECOND,
    lookback_ns=2 * SECOND,
    grace_ns=SECOND,
    central_database="federation",
    central_retention_policy="agg_400d",
    template="detection.tick.j2",
    webhook_url_env="FEDERATION_TEST_WEBHOOK",
)


def write_traffic(dc: InfluxClient, base: int) -> None:
    """Window 0: ten ordinary senders (two recipients each) and one mailing 40 recipients;
    window 1: ordinary senders only."""
    points = []
    for window in range(2):
        for s in range(10):
            for r in range(2):
                t = base + window * SECOND + s * 1000 + r
                fields = {"latency_ms": 1.0, "sender": f"user{s}@example.org",
                          "recipient": f"rcpt{r}@example.com"}  # fmt: skip
                points.append(Point("delivery", {"mailer": "m1"}, fields, t))
    for r in range(40):
        fields = {"latency_ms": 1.0, "sender": "hijacked@example.org",
                  "recipient": f"victim{r}@example.com"}  # fmt: skip
        points.append(Point("delivery", {"mailer": "m1"}, fields, base + 500_000_000 + r))
    dc.write(serialize(points), database="mail", retention_policy="raw")


@pytest.fixture
def webhook() -> Iterator[list[dict[str, object]]]:
    received: list[dict[str, object]] = []

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            received.append(json.loads(self.rfile.read(int(self.headers["Content-Length"]))))
            self.send_response(204)
            self.end_headers()

        def log_message(self, *args: object) -> None:
            pass

    server = HTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("FEDERATION_TEST_WEBHOOK", f"http://127.0.0.1:{server.server_port}/hook")
        yield received
    server.shutdown()


def test_findings_are_kept_in_the_dc_and_only_counts_reach_central(
    dc: InfluxClient,
    central: InfluxClient,
    central_influxd: InfluxServer,
    webhook: list[dict[str, object]],
) -> None:
    base = base_time()
    write_traffic(dc, base)
    windows = [Window(base, SECOND), Window(base + SECOND, SECOND)]
    with Shipper(central_influxd.url, dc="dc1", token="secret") as shipper:
        result = run_detection_windows(
            PLAN, windows, source=dc, sink=shipper, run_ids=RunIds(FakeClock(base + 5 * SECOND))
        )
    assert result.ok and result.shipped == 2

    local = dc.query(
        'SELECT "detection", "key", "count", "threshold" FROM "mail"."raw"."federation_findings"',
        database="mail",
    )
    rows = [dict(zip(s.columns, v, strict=True)) for s in local for v in s.values]
    assert [(r["key"], r["count"], r["threshold"]) for r in rows] == [
        ("hijacked@example.org", 40, 6.0)  # median 2 x 3 > the floor 5
    ]
    assert webhook == [
        {
            "detection": "recipients_per_sender",
            "dc": "dc1",
            "window_start": webhook[0]["window_start"],
            "threshold": 6.0,
            "findings": [{"key": "hijacked@example.org", "count": 40}],
        }
    ]

    counts = central_points(central, "recipients_per_sender")
    assert [(p["count"], p["keys"], p["findings"]) for p in counts] == [(60, 11, 1), (20, 10, 0)]
    assert all(set(p) <= {"time", "dc", "count", "keys", "findings"} for p in counts)
    manifests = central_points(central, "federation_manifest")
    assert [(m["aggregation"], m["events"]) for m in manifests] == [
        ("recipients_per_sender", 60), ("recipients_per_sender", 20),
    ]  # fmt: skip
    everything = json.dumps(counts + manifests)
    assert "@" not in everything
