"""Rollout across DCs' Kapacitors: canary first, stop at the first failure, rollback, drift.

The tests taking `kapacitor_fleet` run against the emulator and against real kapacitords."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml
from kapacitor_fixture import KapacitorFactory, KapacitorUnderTest

from federation.config import FederationConfig, load_config
from federation.config.resolve import resolve_all, resolve_detection
from federation.coordinator.convergence import dc_overview
from federation.coordinator.desired import record_report, sync_desired
from federation.coordinator.ledger import open_ledger
from federation.devstack.kapacitor_emulator import KapacitorEmulator
from federation.errors import CoordinatorError, FederationError, InvalidInput
from federation.kapacitor.client import KapacitorClient
from federation.kapacitor.deploy import deployed_tasks, script_version
from federation.kapacitor.rollout import (
    ClientFactory,
    RolloutRefused,
    RolloutState,
    rollout_apply,
    rollout_plan,
    rollout_rollback,
    rollout_status,
)

DETECTIONS = ("helos_per_sender", "recipients_per_sender", "senders_per_client_ip")


@pytest.fixture
def fleet(config_dir: Path) -> FederationConfig:
    """The example federation with Kapacitor in dub1, fra1 and lon1, its aggregations only
    (a detection's task starts a UDF process per branch too: a test adds one when it needs it)."""
    path = config_dir / "fleet.yaml"
    data = yaml.safe_load(path.read_text())
    data["dcs"]["fra1"]["kapacitor"] = {"url": "http://kapacitor.fra1.mail.internal:9092"}
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    for name in DETECTIONS:
        (config_dir / f"tickscripts/{name}.yaml").unlink()
    return load_config(config_dir)


def add_detection(config_dir: Path, **changes: str) -> FederationConfig:
    """recipients_per_sender added to the config (one branch), with `old: new` text edits."""
    text = (REPO / "tickscripts/recipients_per_sender.yaml").read_text()
    text = text.replace("lookback: 2h", "lookback: 1h")
    for old, new in changes.items():
        assert old in text
        text = text.replace(old, new)
    (config_dir / "tickscripts/recipients_per_sender.yaml").write_text(text)
    return load_config(config_dir)


REPO = Path(__file__).resolve().parent.parent


@pytest.fixture
def emulators() -> dict[str, KapacitorEmulator]:
    return {dc: KapacitorEmulator() for dc in ("dub1", "fra1", "lon1")}


@pytest.fixture
def kapacitor_fleet(kapacitors: KapacitorFactory) -> dict[str, KapacitorUnderTest]:
    """The Kapacitors of dub1, fra1 and lon1: emulated, then real kapacitords."""
    return {dc: kapacitors.new(dc) for dc in ("dub1", "fra1", "lon1")}


def factory(emulators: dict[str, KapacitorEmulator]):  # type: ignore[no-untyped-def]
    return lambda dc: KapacitorClient(
        f"http://kapacitor.{dc}:9092", transport=emulators[dc].transport()
    )


def clients_of(kapacitor_fleet: dict[str, KapacitorUnderTest]) -> ClientFactory:
    return lambda dc: kapacitor_fleet[dc].client()


def bump_accuracy(config_dir: Path) -> FederationConfig:
    path = config_dir / "tickscripts/delivery_latency.yaml"
    path.write_text(path.read_text().replace("accuracy: 0.01", "accuracy: 0.02"))
    return load_config(config_dir)


def versions(clients: ClientFactory, dc: str) -> set[str | None]:
    with clients(dc) as client:
        return {
            script_version(t.script)
            for t in deployed_tasks(client, dc).values()
            if "latency" in t.id
        }


def test_plan_shows_diffs_and_changes_nothing(
    fleet: FederationConfig, emulators: dict[str, KapacitorEmulator]
) -> None:
    plans = rollout_plan(fleet, clients=factory(emulators))
    assert [p.dc for p in plans] == ["dub1", "fra1", "lon1"]
    assert all(c.action == "create" for p in plans for c in p.pending)
    assert "+batch" in plans[0].pending[0].diff()
    assert all(not e.tasks for e in emulators.values())


def test_canary_first_then_the_rest(
    fleet: FederationConfig, kapacitor_fleet: dict[str, KapacitorUnderTest], tmp_path: Path
) -> None:
    order: list[str] = []
    result = rollout_apply(
        fleet,
        state=RolloutState(tmp_path / "state.json"),
        canary="lon1",
        clients=clients_of(kapacitor_fleet),
        gate=order.append,
    )
    assert result.ok and result.done == ["lon1", "dub1", "fra1"] == order
    again = rollout_apply(
        fleet, state=RolloutState(tmp_path / "state.json"), clients=clients_of(kapacitor_fleet)
    )
    assert again.done == [] and again.unchanged == ["dub1", "fra1", "lon1"]


def test_failure_mid_wave_stops_it_and_every_dc_runs_one_whole_version(
    fleet: FederationConfig,
    config_dir: Path,
    kapacitor_fleet: dict[str, KapacitorUnderTest],
    tmp_path: Path,
) -> None:
    clients = clients_of(kapacitor_fleet)
    state = RolloutState(tmp_path / "state.json")
    assert rollout_apply(fleet, state=state, clients=clients).ok
    old = versions(clients, "dub1")
    new_config = bump_accuracy(config_dir)
    kapacitor_fleet["fra1"].break_udf()
    result = rollout_apply(new_config, state=state, canary="dub1", clients=clients)
    assert not result.ok and result.failed == "fra1" and result.done == ["dub1"]
    assert result.not_reached == ["lon1"]
    assert "failed to initialize processes the UDF refuses" in (result.error or "")
    assert versions(clients, "dub1") != old  # the canary went ahead
    kapacitor_fleet["fra1"].repair_udf()
    assert versions(clients, "fra1") == old == versions(clients, "lon1")
    for dc in ("dub1", "fra1", "lon1"):
        assert len(versions(clients, dc)) == 1


def test_health_gate_failure_restores_the_canary(
    fleet: FederationConfig,
    config_dir: Path,
    emulators: dict[str, KapacitorEmulator],
    tmp_path: Path,
) -> None:
    state = RolloutState(tmp_path / "state.json")
    rollout_apply(fleet, state=state, clients=factory(emulators))
    old = versions(factory(emulators), "dub1")

    def gate(dc: str) -> None:
        raise FederationError("next window not verified within 2 windows")

    result = rollout_apply(
        bump_accuracy(config_dir), state=state, canary="dub1", clients=factory(emulators), gate=gate
    )
    assert result.failed == "dub1" and result.done == [] and "not verified" in (result.error or "")
    assert versions(factory(emulators), "dub1") == old


def test_rollback_restores_the_previous_version(
    fleet: FederationConfig,
    config_dir: Path,
    kapacitor_fleet: dict[str, KapacitorUnderTest],
    tmp_path: Path,
) -> None:
    clients = clients_of(kapacitor_fleet)
    state = RolloutState(tmp_path / "state.json")
    rollout_apply(fleet, state=state, clients=clients)
    old = versions(clients, "lon1")
    new_config = bump_accuracy(config_dir)
    assert rollout_apply(new_config, state=state, clients=clients).ok
    assert versions(clients, "lon1") != old
    outcome = rollout_rollback(new_config, state=state, clients=clients)
    assert all(v.startswith("restored") for v in outcome.values()), outcome
    assert versions(clients, "lon1") == old
    with clients("lon1") as client:
        restored = client.get_task("fed-delivery_latency-lon1")
    assert restored is not None
    assert kapacitor_fleet["lon1"].running_script(restored.id) == restored.script


def test_status_reports_versions_and_drift(
    fleet: FederationConfig, kapacitor_fleet: dict[str, KapacitorUnderTest], tmp_path: Path
) -> None:
    clients = clients_of(kapacitor_fleet)
    rollout_apply(fleet, state=RolloutState(tmp_path / "s.json"), clients=clients)
    with clients("dub1") as client:
        task = client.get_task("fed-delivery_latency-dub1")
        assert task is not None
        client.update_task(
            task.id, script=task.script.replace(".minGroupEvents(5)", ".minGroupEvents(1)")
        )
    rows = {(r.dc, r.task_id): r for r in rollout_status(fleet, clients=clients)}
    assert rows[("dub1", "fed-delivery_latency-dub1")].state == "drift"
    assert rows[("lon1", "fed-delivery_latency-lon1")].state == "current"
    assert rows[("lon1", "fed-delivery_latency-lon1")].healthy is True


def test_rollout_commands_over_http(config_dir: Path, tmp_path: Path) -> None:
    from typer.testing import CliRunner

    from federation.cli import app

    emulator = KapacitorEmulator()
    with emulator.serve() as url:
        path = config_dir / "fleet.yaml"
        data = yaml.safe_load(path.read_text())
        data["dcs"]["dub1"]["kapacitor"] = {"url": url}
        del data["dcs"]["lon1"]["kapacitor"]
        path.write_text(yaml.safe_dump(data, sort_keys=False))
        runner = CliRunner()
        state = str(tmp_path / "state.json")
        planned = runner.invoke(app, ["rollout", "plan", "-c", str(config_dir)])
        assert planned.exit_code == 0, planned.output
        assert "dub1: create fed-delivery_latency-dub1" in planned.output
        applied = runner.invoke(app, ["rollout", "apply", "-c", str(config_dir), "--state", state])
        assert applied.exit_code == 0 and "dub1: deployed and healthy" in applied.output
        status = runner.invoke(app, ["rollout", "status", "-c", str(config_dir), "--format", "csv"])
        assert "dub1,fed-delivery_latency-dub1," in status.output and ",current," in status.output
        emulator.fail_enable("fed-delivery_latency-dub1")
        bump_accuracy(config_dir)
        failed = runner.invoke(app, ["rollout", "apply", "-c", str(config_dir), "--state", state])
        assert failed.exit_code == 1
        assert "rollout stopped at dub1" in str(failed.exception)


def test_direct_rollout_says_what_happened_in_every_dc(
    fleet: FederationConfig, kapacitor_fleet: dict[str, KapacitorUnderTest], tmp_path: Path
) -> None:
    def unreachable(dcs: object) -> list[dict[str, object]]:
        raise CoordinatorError("http://coordinator/api/v1/dcs", "connection refused")

    result = rollout_apply(
        fleet, state=RolloutState(tmp_path / "state.json"), clients=clients_of(kapacitor_fleet),
        coordinator=unreachable,
    )  # fmt: skip
    fates = dict(result.fates())
    assert set(fates) == set(fleet.fleet.dcs)
    assert fates["dub1"] == "deployed and healthy"
    assert fates["tor1"].startswith("skipped: no Kapacitor here; its agent runs the embedded")
    assert any("could not be asked" in note for note in result.notes)

    with pytest.raises(InvalidInput) as refused:
        rollout_apply(
            fleet, state=RolloutState(tmp_path / "state.json"), canary="tor1",
            clients=clients_of(kapacitor_fleet), coordinator=unreachable,
        )  # fmt: skip
    message = str(refused.value)
    assert "canary tor1 has no Kapacitor" in message and "dub1, fra1, lon1" in message


def test_direct_rollout_that_agents_would_revert_is_refused(
    fleet: FederationConfig, kapacitor_fleet: dict[str, KapacitorUnderTest], tmp_path: Path
) -> None:
    """The coordinator still desires the old versions and dub1's agent reports to it: a direct
    deploy would be put back at the agent's next reconcile, so nothing is deployed."""
    ledger = open_ledger(f"sqlite:///{tmp_path / 'ledger.sqlite'}")
    sync_desired(ledger, fleet, 10**18)
    old = {p.aggregation: p.version for p in resolve_all(fleet, "dub1")}
    report = {
        "mode": "kapacitor",
        "plans": [{"aggregation": a, "version": v, "healthy": True} for a, v in old.items()],
    }
    record_report(ledger, fleet, "dub1", report, 10**18)
    view = lambda dcs: dc_overview(ledger, fleet, 10**18, dcs)["dcs"]  # noqa: E731
    new = bump_accuracy(fleet.root)
    with pytest.raises(RolloutRefused) as refused:
        rollout_apply(
            new, state=RolloutState(tmp_path / "state.json"), clients=clients_of(kapacitor_fleet),
            coordinator=view,
        )  # fmt: skip
    message = str(refused.value)
    assert "dub1: its agent" in message and "pulls desired state from the coordinator" in message
    assert f"delivery_latency {old['delivery_latency']}" in message
    assert "Nothing was deployed" in message and "central.operator_token_env" in message
    assert all(versions(clients_of(kapacitor_fleet), dc) == set() for dc in kapacitor_fleet)
    # Where the coordinator desires what the config declares, the rollout goes ahead.
    result = rollout_apply(
        fleet, state=RolloutState(tmp_path / "state.json"), clients=clients_of(kapacitor_fleet),
        coordinator=view,
    )  # fmt: skip
    assert result.ok and "dub1" in result.done and not result.notes
    ledger.close()


def test_a_detection_is_added_canary_first_changed_and_rolled_back(
    fleet: FederationConfig,
    config_dir: Path,
    kapacitor_fleet: dict[str, KapacitorUnderTest],
    tmp_path: Path,
) -> None:
    clients = clients_of(kapacitor_fleet)
    state = RolloutState(tmp_path / "state.json")
    assert rollout_apply(fleet, state=state, clients=clients).ok

    def running(dc: str) -> str | None:
        script = kapacitor_fleet[dc].running_script(f"fed-recipients_per_sender-{dc}")
        return None if script is None else script_version(script)

    added = add_detection(config_dir)
    version = resolve_detection(added, "recipients_per_sender", "dub1").version
    planned = {p.dc: [(c.task_id, c.action) for c in p.pending] for p in rollout_plan(added, clients=clients)}  # fmt: skip
    assert planned == {
        dc: [(f"fed-recipients_per_sender-{dc}", "create")] for dc in kapacitor_fleet
    }
    order: list[str] = []

    def gate(dc: str) -> None:
        order.append(dc)
        # The canary runs the detection before any other DC has it.
        assert {d for d in kapacitor_fleet if running(d) == version} == set(order)

    result = rollout_apply(added, state=state, canary="fra1", clients=clients, gate=gate)
    assert result.ok and result.done == ["fra1", "dub1", "lon1"] == order, result.error
    rows = {(r.dc, r.task_id): r for r in rollout_status(added, clients=clients)}
    for dc in kapacitor_fleet:
        row = rows[(dc, f"fed-recipients_per_sender-{dc}")]
        assert (row.state, row.running_version, row.healthy) == ("current", version, True), row

    changed = add_detection(config_dir, **{"at_least: 500": "at_least: 400"})
    new_version = resolve_detection(changed, "recipients_per_sender", "dub1").version
    assert new_version != version
    assert rollout_apply(changed, state=state, canary="lon1", clients=clients).ok
    assert {running(dc) for dc in kapacitor_fleet} == {new_version}
    with clients("lon1") as client:
        task = client.get_task("fed-recipients_per_sender-lon1", script_format="raw")
    assert task is not None and ".atLeast(400)" in task.script

    outcome = rollout_rollback(changed, state=state, clients=clients)
    assert all(v.startswith("restored") for v in outcome.values()), outcome
    assert {running(dc) for dc in kapacitor_fleet} == {version}
