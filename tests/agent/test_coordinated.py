"""`policy` and `rollout` through the coordinator, end to end: a real coordinator served by
uvicorn, two DCs (fra1 in eu, tor1 in na), each with its own influxd and an embedded agent
thread that re-pulls its desired state every 0.2 s, and the CLI as an operator runs it."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import yaml
from typer.testing import CliRunner

from federation.agent import Agent, AgentSettings, build_agent
from federation.cli import app
from federation.clients.operator import OperatorClient
from federation.config import FederationConfig, load_config
from federation.config.resolve import resolve_plan
from federation.core.clock import FakeClock
from federation.devstack.localstack import InfluxServer, LocalStack
from federation.devstack.processes import free_port
from federation.errors import InvalidInput
from federation.influx import InfluxClient

from .conftest import HOUR, SECOND, start_server
from .federation_fixture import READER, Served, export_agent_tokens, serve_coordinator

OPERATOR = "operator-secret"
OPERATOR_ENV = "FEDERATION_OPERATOR_TOKEN"
DCS = ("fra1", "tor1")
AGG = "delivery_latency"
DAY = 24 * HOUR

runner = CliRunner()


def edit(path: Path, change: dict[str, object]) -> None:
    data = yaml.safe_load(path.read_text())
    for dotted, value in change.items():
        *parents, last = dotted.split(".")
        node = data
        for key in parents:
            node = node[key]
        node[last] = value
    path.write_text(yaml.safe_dump(data, sort_keys=False))


@dataclass
class Fleet:
    root: Path
    config: FederationConfig
    servers: dict[str, InfluxServer]
    served: Served
    agents: dict[str, tuple[Agent, threading.Event, threading.Thread]]
    clock: FakeClock

    def start_agent(self, dc: str) -> None:
        settings = AgentSettings(
            poll_interval_s=0.05, reconcile_interval_s=0.2, mode="embedded", max_jitter_s=0
        )
        agent, stop = build_agent(self.config, dc, clock=self.clock, settings=settings)
        thread = threading.Thread(target=agent.run, args=(stop,), daemon=True)
        thread.start()
        self.agents[dc] = (agent, stop, thread)

    def stop_agent(self, dc: str) -> None:
        agent, stop, thread = self.agents.pop(dc)
        stop.set()
        thread.join(15)
        agent.close()

    def operator(self) -> OperatorClient:
        return OperatorClient(self.served.url, OPERATOR)

    def cli(self, *args: str) -> tuple[int, str]:
        result = runner.invoke(app, [*args, "-c", str(self.root)])
        return result.exit_code, result.output + (str(result.exception or ""))

    def raw_rp(self, dc: str) -> tuple[int, int]:
        with InfluxClient(self.servers[dc].url) as client:
            (rp,) = [r for r in client.retention_policies("mail") if r.default]
            return rp.duration_ns, rp.shard_duration_ns


def wait_until(check: Callable[[], bool], timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.05)


@pytest.fixture
def fleet(
    localstack: LocalStack,
    request: pytest.FixtureRequest,
    config_dir: Path,
    central_influxd: InfluxServer,
    monkeypatch: pytest.MonkeyPatch,
) -> Iterator[Fleet]:
    servers = {dc: start_server(localstack, request, dc) for dc in DCS}
    port = free_port()
    path = config_dir / "fleet.yaml"
    data = yaml.safe_load(path.read_text())
    data["dcs"] = {dc: {**data["dcs"][dc], "influxdb": {"url": servers[dc].url}} for dc in DCS}
    data["central"].update(
        influxdb={"url": central_influxd.url},
        coordinator_url=f"http://127.0.0.1:{port}",
        ledger_url=f"sqlite:///{config_dir / 'ledger.sqlite'}",
        operator_token_env=OPERATOR_ENV,
    )
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    config = load_config(config_dir)
    export_agent_tokens(config, monkeypatch)
    monkeypatch.setenv(config.fleet.central.reader_token_env, READER)
    monkeypatch.setenv(OPERATOR_ENV, OPERATOR)
    now = time.time_ns()
    hour0 = now - now % HOUR - DAY
    clock = FakeClock(hour0 + 5 * SECOND, auto_advance=False)
    # The generator yields once; finishing the loop stops the coordinator.
    for served in serve_coordinator(
        config, central_influxd.url, clock, port, hour0 - 3 * HOUR, operator=OPERATOR
    ):
        fleet = Fleet(config_dir, config, servers, served, {}, clock)
        # `indirect` parametrization names the DCs that get an agent (default: all).
        for dc in getattr(request, "param", DCS):
            fleet.start_agent(dc)
        try:
            yield fleet
        finally:
            for dc in list(fleet.agents):
                fleet.stop_agent(dc)


def retention_states(fleet: Fleet) -> dict[str, str]:
    with fleet.operator() as client:
        return {d["dc"]: d["retention"]["state"] for d in client.dcs()}


def running(fleet: Fleet) -> dict[str, tuple[str | None, str]]:
    """Per DC: the version of AGG its agent reports running, and the one it is served."""
    with fleet.operator() as client:
        return {
            d["dc"]: (a["running_version"], a["desired_version"])
            for d in client.dcs()
            for a in d["aggregations"]
            if a["aggregation"] == AGG
        }


def test_policy_apply_reloads_and_waits_until_the_agents_converged(fleet: Fleet) -> None:
    wait_until(lambda: set(retention_states(fleet).values()) == {"converged"})
    assert fleet.raw_rp("fra1") == (30 * DAY, DAY)

    edit(fleet.root / "policies" / "eu.yaml", {"raw.shard_duration": "12h"})
    code, output = fleet.cli("policy", "plan")
    assert code == 0, output
    assert "fra1: retention raw: shard duration 1d -> 12h" in output
    assert fleet.raw_rp("fra1") == (30 * DAY, DAY), "plan changes nothing"

    code, output = fleet.cli("policy", "apply", "--wait-timeout", "30")
    assert code == 0, output
    assert "fra1: retention raw: shard duration 1d -> 12h" in output
    assert "fra1: converged" in output and "tor1: converged" in output
    assert "apply: 2 of 2 DC(s) converged" in output
    assert fleet.raw_rp("fra1") == (30 * DAY, 12 * HOUR)
    assert fleet.raw_rp("tor1") == (90 * DAY, DAY)

    # A config that does not validate: every problem, exit 2, nothing changed anywhere.
    edit(fleet.root / "policies" / "eu.yaml", {"raw.retention": "40d"})
    code, output = fleet.cli("policy", "apply", "--wait-timeout", "5")
    assert code != 0 and "policies/eu.yaml:3: raw: retention 40d is longer" in output
    with fleet.operator() as client, pytest.raises(InvalidInput) as refused:
        client.reload()
    assert "nothing changed" in str(refused.value) and "retention 40d is longer" in str(
        refused.value
    )
    assert fleet.served.coordinator.config.policy_for("fra1").raw.retention == 30 * DAY
    time.sleep(0.5)
    assert fleet.raw_rp("fra1") == (30 * DAY, 12 * HOUR)

    # A shrink is never applied through the coordinator: the agent reports drift, exit 1.
    edit(fleet.root / "policies" / "eu.yaml", {"raw.retention": "25d"})
    code, output = fleet.cli("policy", "apply", "--dc", "fra1", "--wait-timeout", "30")
    assert code == 1, output
    assert "fra1: drift: SHRINK retention 30d -> 25d" in output
    assert fleet.raw_rp("fra1") == (30 * DAY, 12 * HOUR)


def test_policy_apply_times_out_when_an_agent_is_away(fleet: Fleet) -> None:
    wait_until(lambda: set(retention_states(fleet).values()) == {"converged"})
    fleet.stop_agent("tor1")
    edit(fleet.root / "policies" / "na.yaml", {"raw.shard_duration": "12h"})
    code, output = fleet.cli("policy", "apply", "--wait-timeout", "1")
    assert code == 1, output
    assert "tor1: pending" in output and "not converged after 1s: tor1" in output


def test_rollout_canary_advance_rollback_through_the_coordinator(fleet: Fleet) -> None:
    old = {dc: resolve_plan(fleet.config, AGG, dc).version for dc in DCS}
    wait_until(lambda: running(fleet) == {dc: (old[dc], old[dc]) for dc in DCS})
    edit(fleet.root / "tickscripts" / "delivery_latency.yaml", {"accuracy": 0.02})
    new = {dc: resolve_plan(load_config(fleet.root), AGG, dc).version for dc in DCS}

    code, output = fleet.cli("rollout", "plan")
    assert code == 0, output
    assert f"fra1: plan {AGG}: changed {old['fra1']} -> {new['fra1']}" in output
    assert "accuracy: 0.01 -> 0.02" in output

    # Step by step: the canary runs the new version while tor1 still runs the old one.
    with fleet.operator() as client:
        client.reload()
        step = client.start_rollout(aggregations=[AGG], canary="fra1")
        assert step["canary"] == "fra1" and step["waiting"] == ["tor1"]
        wait_until(lambda: running(fleet)["fra1"] == (new["fra1"], new["fra1"]))
        time.sleep(0.5)
        assert running(fleet)["tor1"] == (old["tor1"], old["tor1"])
        assert fleet.agents["tor1"][0].plans[AGG].version == old["tor1"]
        assert fleet.agents["fra1"][0].plans[AGG].version == new["fra1"]
        client.advance_rollout(aggregations=[AGG])
        wait_until(lambda: running(fleet) == {dc: (new[dc], new[dc]) for dc in DCS})
        client.rollback_rollout()
        wait_until(lambda: running(fleet) == {dc: (old[dc], old[dc]) for dc in DCS})

    # The whole wave from the CLI: canary, its agent reports, then everyone else.
    code, output = fleet.cli("rollout", "apply", "--canary", "tor1", "--wait-timeout", "30")
    assert code == 0, output
    lines = output.splitlines()
    canary_at = next(i for i, line in enumerate(lines) if line.startswith("canary tor1"))
    advance_at = next(i for i, line in enumerate(lines) if line.startswith("advance"))
    assert any(f"tor1: done: {AGG} {new['tor1']} running and healthy" in line
               for line in lines[canary_at:advance_at])  # fmt: skip
    assert "rollout complete" in output
    assert running(fleet) == {dc: (new[dc], new[dc]) for dc in DCS}

    code, output = fleet.cli("rollout", "status", "--format", "csv")
    assert code == 0 and f"fra1,{AGG},{new['fra1']},{new['fra1']},{new['fra1']}," in output

    code, output = fleet.cli("rollout", "rollback", "--wait-timeout", "30")
    assert code == 0, output
    assert "rollback complete" in output
    assert running(fleet) == {dc: (old[dc], old[dc]) for dc in DCS}


def test_a_canary_that_does_not_converge_is_rolled_back(fleet: Fleet) -> None:
    old = {dc: resolve_plan(fleet.config, AGG, dc).version for dc in DCS}
    wait_until(lambda: running(fleet) == {dc: (old[dc], old[dc]) for dc in DCS})
    fleet.stop_agent("fra1")
    edit(fleet.root / "tickscripts" / "delivery_latency.yaml", {"accuracy": 0.02})
    code, output = fleet.cli("rollout", "apply", "--canary", "fra1", "--wait-timeout", "1")
    assert code == 1, output
    assert "rollout stopped at canary fra1" in output and "canary rolled back" in output
    assert running(fleet) == {dc: (old[dc], old[dc]) for dc in DCS}


@pytest.mark.parametrize("fleet", [("fra1",)], indirect=True)
def test_a_rollout_reaching_a_dc_without_an_agent_says_none_ever_reported(fleet: Fleet) -> None:
    old = resolve_plan(fleet.config, AGG, "fra1").version
    wait_until(lambda: running(fleet)["fra1"] == (old, old))
    edit(fleet.root / "tickscripts" / "delivery_latency.yaml", {"accuracy": 0.02})
    code, output = fleet.cli("rollout", "apply", "--canary", "fra1", "--wait-timeout", "2")
    assert code == 1, output
    assert "canary fra1:" in output and "held back until the canary is done: tor1" in output
    assert "waiting for the canary" not in output
    assert "tor1: timed out: no agent has ever reported for tor1" in output


NEW = "delivery_size"


def add_aggregation(root: Path) -> None:
    (root / "tickscripts" / f"{NEW}.yaml").write_text(
        f"name: {NEW}\n"
        "source: {measurement: delivery, field: latency_ms, unit: ms}\n"
        "dimensions: [mailer]\nwindow: 1h\nlookback: 2h\npercentiles: [50, 99]\n"
        "accuracy: 0.01\n"
    )


def runs(fleet: Fleet, aggregation: str) -> dict[str, bool]:
    """Per DC: whether its agent runs `aggregation` now."""
    return {dc: aggregation in fleet.agents[dc][0].plans for dc in DCS}


def test_an_added_and_a_removed_aggregation_go_canary_first_and_roll_back(fleet: Fleet) -> None:
    old = {dc: resolve_plan(fleet.config, AGG, dc).version for dc in DCS}
    wait_until(lambda: running(fleet) == {dc: (old[dc], old[dc]) for dc in DCS})
    add_aggregation(fleet.root)
    added = {dc: resolve_plan(load_config(fleet.root), NEW, dc).version for dc in DCS}
    version = added["fra1"]

    code, output = fleet.cli("rollout", "plan")
    assert code == 0, output
    assert f"fra1: plan {NEW}: added - -> {version}" in output
    # A reload alone deploys nothing: the addition waits for a rollout.
    with fleet.operator() as client:
        client.reload()
        time.sleep(0.6)
        assert runs(fleet, NEW) == {"fra1": False, "tor1": False}
        step = client.start_rollout(canary="fra1")
        assert step["moved"] == [
            {"dc": "fra1", "aggregation": NEW, "from": None, "to": version, "change": "added"}
        ]
        wait_until(lambda: runs(fleet, NEW) == {"fra1": True, "tor1": False})
        time.sleep(0.5)
        assert runs(fleet, NEW)["tor1"] is False
        # Undoing an add removes it again.
        undone = client.rollback_rollout()
        assert undone["moved"] == [
            {"dc": "fra1", "aggregation": NEW, "from": version, "to": None, "change": "removed"}
        ]
        wait_until(lambda: runs(fleet, NEW) == {"fra1": False, "tor1": False})

    code, output = fleet.cli("rollout", "apply", "--canary", "tor1", "--wait-timeout", "30")
    assert code == 0, output
    assert f"canary tor1: 1 version change(s)\n  tor1: {NEW} added {added['tor1']}" in output
    assert f"advance: 1 version change(s)\n  fra1: {NEW} added {version}" in output
    assert "rollout complete: every DC runs the config's versions" in output
    assert runs(fleet, NEW) == {"fra1": True, "tor1": True}
    code, output = fleet.cli("rollout", "rollback", "--wait-timeout", "30")
    assert code == 0, output
    assert f"fra1: {NEW} removed (ran {version})" in output
    assert "rollback complete: fra1, tor1 run(s) what they ran before rollout #" in output
    assert runs(fleet, NEW) == {"fra1": False, "tor1": False}
    code, output = fleet.cli("rollout", "rollback", "--wait-timeout", "30")
    assert code == 0 and "nothing to roll back: rollout #" in output, output
    assert "is already rolled back" in output
    code, output = fleet.cli("rollout", "apply", "--wait-timeout", "30")
    assert code == 0, output
    assert runs(fleet, NEW) == {"fra1": True, "tor1": True}

    # Removing it: canary first, then the rest; the agents stop it, the ledger says so.
    (fleet.root / "tickscripts" / f"{NEW}.yaml").unlink()
    code, output = fleet.cli("rollout", "apply", "--canary", "fra1", "--wait-timeout", "30")
    assert code == 0, output
    assert f"canary fra1: 1 version change(s)\n  fra1: {NEW} removed (ran {version})" in output
    assert f"fra1: done: {NEW} no longer runs" in output
    assert runs(fleet, NEW) == {"fra1": False, "tor1": False}
    with fleet.operator() as client:
        rows = [a for d in client.dcs() for a in d["aggregations"] if a["aggregation"] == NEW]
    assert rows == [], "a removed aggregation no longer listed once nothing of it runs"
    # Undoing the removal restores the version the previous state declared.
    code, output = fleet.cli("rollout", "rollback", "--wait-timeout", "30")
    assert code == 0, output
    assert f"fra1: {NEW} added {version}" in output
    assert runs(fleet, NEW) == {"fra1": True, "tor1": True}
    assert fleet.agents["fra1"][0].plans[NEW].version == version


def test_a_change_rolled_back_twice_never_deploys_a_version_nobody_declares(
    fleet: Fleet,
) -> None:
    old = {dc: resolve_plan(fleet.config, AGG, dc).version for dc in DCS}
    wait_until(lambda: running(fleet) == {dc: (old[dc], old[dc]) for dc in DCS})
    path = fleet.root / "tickscripts" / "delivery_latency.yaml"
    original = path.read_text()
    edit(path, {"accuracy": 0.02})
    code, output = fleet.cli("rollout", "apply", "--dc", "fra1", "--wait-timeout", "30")
    assert code == 0, output
    assert "rollout complete in fra1; still pending in tor1" in output
    assert "every DC" not in output
    code, output = fleet.cli("rollout", "rollback", "--wait-timeout", "30")
    assert code == 0, output
    path.write_text(original)
    code, output = fleet.cli("rollout", "apply", "--wait-timeout", "30")
    assert code == 0 and "nothing to roll out" in output, output
    code, output = fleet.cli("rollout", "rollback", "--wait-timeout", "30")
    assert code == 0 and "nothing to roll back" in output, output
    time.sleep(0.5)
    assert running(fleet) == {dc: (old[dc], old[dc]) for dc in DCS}


def test_an_interrupted_rollout_shows_in_status_and_resumes(fleet: Fleet) -> None:
    old = {dc: resolve_plan(fleet.config, AGG, dc).version for dc in DCS}
    wait_until(lambda: running(fleet) == {dc: (old[dc], old[dc]) for dc in DCS})
    edit(fleet.root / "tickscripts" / "delivery_latency.yaml", {"accuracy": 0.02})
    new = {dc: resolve_plan(load_config(fleet.root), AGG, dc).version for dc in DCS}
    with fleet.operator() as client:
        # What a client killed after the canary step leaves behind.
        client.reload()
        client.start_rollout(canary="fra1")
    code, output = fleet.cli("rollout", "status")
    assert code == 0, output
    assert "INTERRUPTED at its canary fra1" in output
    assert "`federation rollout apply` resumes it" in output
    assert "`federation rollout rollback` undoes it" in output
    code, output = fleet.cli("rollout", "apply", "--canary", "fra1", "--wait-timeout", "30")
    assert code == 0, output
    assert "resuming rollout #1, left at its canary fra1: 1 version change(s)" in output
    assert f"advance: 1 version change(s)\n  tor1: {AGG} {old['tor1']} -> {new['tor1']}" in output
    assert running(fleet) == {dc: (new[dc], new[dc]) for dc in DCS}
