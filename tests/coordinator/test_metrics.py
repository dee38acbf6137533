"""`/metrics` through prometheus_client: promtool accepts what a live coordinator serves, and it
has every family the alerting rules read."""

from __future__ import annotations

import re
import subprocess

import httpx
import yaml
from typer.testing import CliRunner

from federation.cli import app
from federation.coordinator.api import build_app
from federation.coordinator.backfills import request_backfill
from federation.coordinator.ledger import Ledger, WindowRow
from federation.coordinator.service import Coordinator
from federation.core.clock import FakeClock
from federation.devstack.asgi_server import ThreadedServer
from federation.devstack.processes import free_port

from .helpers import HOUR, READER, body, central_params, plan_of, token, window_batch


def _sample(text: str, name: str, **labels: str) -> float:
    for line in text.splitlines():
        if not line.startswith(name + "{") and not line.startswith(name + " "):
            continue
        found = dict(re.findall(r'(\w+)="([^"]*)"', line.split(" ")[0]))
        if found == labels:
            return float(line.rsplit(" ", 1)[1])
    raise AssertionError(f"no sample {name}{labels} in /metrics")


def test_a_live_metrics_page_passes_promtool_and_feeds_the_rules(
    coordinator: Coordinator, ledger: Ledger, clock: FakeClock, hour0: int, promtool: str
) -> None:
    clock.set(hour0 + 5 * HOUR)
    with ledger.session(write=True) as session:
        session.add(WindowRow(dc="tor1", aggregation="delivery_direction", start_ns=hour0,
                              state="missing", updated_ns=hour0))  # fmt: skip
        session.add(WindowRow(dc="tor1", aggregation="recipients_per_sender", start_ns=hour0,
                              state="missing", updated_ns=hour0))  # fmt: skip
    request_backfill(ledger, coordinator.config, "tor1", "delivery_direction", hour0,
                     hour0 + 2 * HOUR, clock.now_ns())  # fmt: skip
    server = ThreadedServer(lambda: build_app(coordinator), free_port())
    server.start()
    try:
        plan = plan_of(coordinator.config, "dub1")
        params = central_params(coordinator.config, "dub1")
        agent = {"Authorization": f"Bearer {token('dub1')}"}
        with httpx.Client(base_url=server.url, timeout=30) as client:
            good = client.post("/write", params=params, headers=agent,
                               content=body(window_batch(plan, hour0 + HOUR)))  # fmt: skip
            assert good.status_code == 204, good.text
            refused = client.post("/write", params=params, headers={"Authorization": "Bearer no"},
                                  content=body(window_batch(plan, hour0 + 2 * HOUR)))  # fmt: skip
            assert refused.status_code == 401
            text = client.get("/metrics", headers={"Authorization": f"Bearer {READER}"}).text
    finally:
        server.stop()
    checked = subprocess.run(
        [promtool, "check", "metrics"], input=text, capture_output=True, text=True, timeout=60
    )
    assert checked.returncode == 0, checked.stdout + checked.stderr
    window = "delivery_direction"
    # The backfill request took tor1's missing window; missing is still served, as 0.
    tor1 = {"dc": "tor1", "aggregation": window}
    assert _sample(text, "federation_windows", **tor1, state="backfilling") == 1
    assert _sample(text, "federation_windows", **tor1, state="missing") == 0
    assert _sample(text, "federation_windows", dc="dub1", aggregation=window, state="shipped") == 1
    # tor1's open window ended 4h before now; dub1's shipped one 3h before.
    assert _sample(text, "federation_window_oldest_open_age_seconds", dc="tor1",
                   aggregation=window) == 4 * 3600  # fmt: skip
    assert _sample(text, "federation_window_oldest_open_age_seconds", dc="dub1",
                   aggregation=window) == 3 * 3600  # fmt: skip
    assert _sample(text, "federation_window_oldest_open_age_seconds", dc="lon1",
                   aggregation=window) == 0  # fmt: skip
    # A detection's windows alike: its missing one, and a `missing` of 0 where there is none.
    detection = "recipients_per_sender"
    assert _sample(text, "federation_windows", dc="tor1", aggregation=detection,
                   state="missing") == 1  # fmt: skip
    assert _sample(text, "federation_windows", dc="lon1", aggregation=detection,
                   state="missing") == 0  # fmt: skip
    assert _sample(text, "federation_window_oldest_open_age_seconds", dc="tor1",
                   aggregation=detection) == 4 * 3600  # fmt: skip
    assert _sample(text, "federation_window_oldest_open_age_seconds", dc="lon1",
                   aggregation=detection) == 0  # fmt: skip
    assert _sample(text, "federation_backfill_queue", dc="tor1") == 1
    assert _sample(text, "federation_backfill_queue", dc="dub1") == 0
    assert _sample(text, "federation_gateway_refusals_total", rule="auth") == 1
    assert _sample(text, "federation_gateway_request_duration_seconds_count") == 2
    assert _sample(text, "federation_gateway_request_duration_seconds_bucket", le="+Inf") == 2
    # Every metric an alerting rule reads is served.
    rules = yaml.safe_load(CliRunner().invoke(app, ["prometheus", "rules"]).output)
    served = set(re.findall(r"^# TYPE (\w+) ", text, re.MULTILINE))
    for rule in rules["groups"][0]["rules"]:
        names = set(re.findall(r"federation_\w+", rule["expr"]))
        assert names <= served, (rule["alert"], names - served)
