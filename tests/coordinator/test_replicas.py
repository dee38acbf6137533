"""Two coordinator replicas over one ledger: a reload or a rollout step taken through one is in
force on the other once it checks the ledger's config generation; shrink grants live in the
ledger; each replica's heartbeat says which generation it runs."""

from __future__ import annotations

import dataclasses
import shutil
import signal
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from rich.text import Text
from starlette.testclient import TestClient

from federation.cli._status_view import status_renderables
from federation.config import FederationConfig, load_config
from federation.coordinator.api import build_app
from federation.coordinator.app import ensure_central
from federation.coordinator.draining import DRAINING_MESSAGE, draining_server
from federation.coordinator.ledger import Ledger
from federation.coordinator.reload import follow_generation
from federation.coordinator.service import Coordinator, CoordinatorSettings, Tokens
from federation.coordinator.status import StatusReport, status_report
from federation.core.clock import FakeClock
from federation.influx import InfluxClient

from .helpers import HOUR, READER, body, central_params, plan_of, token, window_batch
from .test_operator_api import AGG, OP, OPERATOR, edit, served_version

DAY = 86_400 * 10**9


def _replica(config_dir: Path, ledger: Ledger, clock: FakeClock, name: str) -> Coordinator:
    config = load_config(config_dir)
    tokens = Tokens({dc: token(dc) for dc in config.fleet.dcs}, READER, OPERATOR)
    coordinator = Coordinator(
        config, ledger, tokens, clock=clock, settings=CoordinatorSettings(verify_settle_ns=0),
        replica=name, url=f"http://{name}",
    )  # fmt: skip
    coordinator.sync()
    coordinator.beat()
    return coordinator


@pytest.fixture
def pair(
    config: FederationConfig, config_dir: Path, ledger: Ledger, clock: FakeClock
) -> Iterator[tuple[tuple[TestClient, Coordinator], tuple[TestClient, Coordinator]]]:
    a = _replica(config_dir, ledger, clock, "a")
    b = _replica(config_dir, ledger, clock, "b")
    with TestClient(build_app(a)) as app_a, TestClient(build_app(b)) as app_b:
        yield (app_a, a), (app_b, b)


def retention(client: TestClient, dc: str) -> dict[str, object]:
    data = client.get(
        f"/api/v1/dcs/{dc}/desired", headers={"Authorization": f"Bearer {token(dc)}"}
    ).json()
    return dict(data["retention"])


def _replicas(report: StatusReport) -> dict[str, int | None]:
    return {r.name: r.generation for r in report.replicas}


def test_a_reload_through_one_replica_reaches_the_other(
    pair: tuple[tuple[TestClient, Coordinator], tuple[TestClient, Coordinator]],
    config_dir: Path,
    ledger: Ledger,
    clock: FakeClock,
) -> None:
    (app_a, a), (app_b, b) = pair
    assert a.generation == b.generation is not None
    start = a.generation
    edit(config_dir / "policies" / "eu.yaml", {"raw.retention": "20d"})

    reloaded = app_a.post("/api/v1/desired/reload", headers=OP, json={"allow_shrink": ["fra1"]})
    assert reloaded.status_code == 200, reloaded.text
    assert a.generation == start + 1
    assert retention(app_a, "fra1")["allow_shrink"] is True
    # B still runs what it loaded until it checks the ledger.
    assert retention(app_b, "fra1")["policies"][0]["duration_ns"] == 30 * DAY  # type: ignore[index]
    assert retention(app_b, "fra1")["allow_shrink"] is False

    assert follow_generation(b) is True
    assert b.generation == a.generation
    served = retention(app_b, "fra1")
    assert served["policies"][0]["duration_ns"] == 20 * DAY  # type: ignore[index]
    assert served["allow_shrink"] is True
    assert follow_generation(b) is False

    # The grant is in the ledger: a replica started now serves it too.
    c = _replica(config_dir, ledger, clock, "c")
    assert c.generation == a.generation and c.shrink_allowed("fra1")
    report = status_report(ledger, c.config, clock.now_ns())
    assert report.generation == a.generation
    assert _replicas(report) == {"a": a.generation, "b": b.generation, "c": c.generation}
    assert StatusReport.from_dict(report.to_dict()).replicas == report.replicas


def test_a_rollout_step_through_one_replica_reaches_the_other(
    pair: tuple[tuple[TestClient, Coordinator], tuple[TestClient, Coordinator]],
    config_dir: Path,
) -> None:
    (app_a, a), (app_b, b) = pair
    edit(config_dir / "tickscripts" / "delivery_latency.yaml", {"accuracy": 0.02})
    assert app_a.post("/api/v1/desired/reload", headers=OP).status_code == 200
    assert follow_generation(b) is True
    old_rules = b.checker()

    started = app_a.post("/api/v1/rollouts", headers=OP, json={"aggregations": [AGG],
                                                                "canary": "fra1"})  # fmt: skip
    assert started.status_code == 200, started.text
    new = started.json()["moved"][0]["to"]
    assert served_version(app_b, "fra1") == new
    # B's gateway rules (which versions it accepts) are rebuilt once it sees the generation.
    assert b.checker() is old_rules
    assert follow_generation(b) is True
    assert b.generation == a.generation and b.checker() is not old_rules


def test_a_replica_takes_a_new_versions_batch_before_its_next_look_at_the_ledger(
    pair: tuple[tuple[TestClient, Coordinator], tuple[TestClient, Coordinator]],
    config_dir: Path,
    clock: FakeClock,
    influx: InfluxClient,
) -> None:
    """A rollout taken through A: the canary's agent pulls the new version from A and ships
    it to B, which has not looked at the ledger since. B checks the generation in force before
    it refuses a batch, and takes it."""
    (app_a, a), (app_b, b) = pair
    edit(config_dir / "tickscripts" / "delivery_latency.yaml", {"accuracy": 0.02})
    assert app_a.post("/api/v1/desired/reload", headers=OP).status_code == 200
    started = app_a.post("/api/v1/rollouts", headers=OP, json={"aggregations": [AGG],
                                                                "canary": "fra1"})  # fmt: skip
    assert started.status_code == 200, started.text
    plan = plan_of(a.config, "fra1", AGG)
    assert plan.version == started.json()["moved"][0]["to"] and plan.accuracy == 0.02
    ensure_central(a.config, influx)
    before = b.generation
    start = clock.now_ns() - clock.now_ns() % HOUR - 2 * HOUR
    written = app_b.post(
        "/write",
        params=central_params(a.config, "fra1"),
        content=body(window_batch(plan, start)),
        headers={"Authorization": f"Bearer {token('fra1')}"},
    )
    assert written.status_code == 204, written.text
    assert b.generation == a.generation != before
    # A batch that no generation admits is still refused, and says why.
    foreign = window_batch(dataclasses.replace(plan, accuracy=0.05), start - HOUR)
    refused = app_b.post(
        "/write",
        params=central_params(a.config, "fra1"),
        content=body(foreign),
        headers={"Authorization": f"Bearer {token('fra1')}"},
    )
    assert refused.status_code == 400 and refused.json()["rule"] == "plan-version", refused.text


def test_a_replica_whose_config_directory_differs_keeps_running_and_says_why(
    config: FederationConfig, config_dir: Path, ledger: Ledger, clock: FakeClock, tmp_path: Path
) -> None:
    a = _replica(config_dir, ledger, clock, "a")
    elsewhere = tmp_path / "elsewhere"
    shutil.copytree(config_dir, elsewhere)
    b = _replica(elsewhere, ledger, clock, "b")
    assert b.generation == a.generation
    edit(config_dir / "policies" / "eu.yaml", {"raw.shard_duration": "12h"})
    with TestClient(build_app(a)) as app_a:
        assert app_a.post("/api/v1/desired/reload", headers=OP).status_code == 200

    assert follow_generation(b) is False
    assert b.generation == a.generation - 1  # type: ignore[operator]
    assert b.config.policy_for("fra1").raw.shard_duration == DAY
    report = status_report(ledger, a.config, clock.now_ns())
    (shown,) = [r for r in report.replicas if r.name == "b"]
    assert shown.problem is not None and "differs" in shown.problem


def test_status_lists_each_replica_and_flags_one_behind_or_silent(
    config: FederationConfig, config_dir: Path, ledger: Ledger, clock: FakeClock
) -> None:
    _replica(config_dir, ledger, clock, "a")
    clock.advance(60 * 10**9)
    b = _replica(config_dir, ledger, clock, "b")
    b.publish("rollout start")
    text = {
        str(line).split(":")[0].strip(): line
        for line in status_renderables(status_report(ledger, config, clock.now_ns()))
        if isinstance(line, Text)
    }
    assert str(text["coordinator replicas (newest config generation 2)"])
    assert str(text["a at http"]).endswith("generation 1, serving, not seen for 1m")
    assert text["a at http"].style == "bold red"
    assert str(text["b at http"]).endswith("generation 2, serving")
    assert text["b at http"].style == ""


def test_a_draining_replica_refuses_new_requests_with_503_and_says_so(
    coordinator: Coordinator, client: TestClient, ledger: Ledger
) -> None:
    assert client.get("/ping").status_code == 204
    server = draining_server(build_app(coordinator), coordinator, host="127.0.0.1", port=0)
    server.handle_exit(signal.SIGTERM, None)  # what uvicorn calls on SIGTERM
    # Draining at once; uvicorn stops listening only after the grace.
    assert coordinator.draining and not server.should_exit
    refused = client.get("/ping")
    assert refused.status_code == 503 and refused.json()["error"] == DRAINING_MESSAGE
    deadline = time.monotonic() + coordinator.settings.drain_grace_s + 5
    while not server.should_exit and time.monotonic() < deadline:
        time.sleep(0.05)
    assert server.should_exit
    follow_generation(coordinator)
    report = status_report(ledger, coordinator.config, coordinator.clock.now_ns())
    assert [r.state for r in report.replicas] == ["draining"]
