"""Retention plan, apply and reconcile against real influxd servers."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from typer.testing import CliRunner

from federation.cli import app
from federation.config import load_config
from federation.core.durations import DAY_NS, HOUR_NS
from federation.devstack.localstack import LocalStack
from federation.errors import ConfigError, InvalidInput
from federation.influx import RetentionPolicyInfo
from federation.policy import (
    CENTRAL,
    ChangeKind,
    DesiredRetention,
    RetentionSpec,
    apply_retention,
    desired_central_retention,
    desired_retention,
    diff_retention,
    plan_retention,
    reconcile_retention,
)

from . import Federation, start_federation

runner = CliRunner()


@pytest.fixture
def fed(localstack: LocalStack, request: pytest.FixtureRequest, config_dir: Path) -> Federation:
    return start_federation(localstack, request, config_dir)


def _rp(fed: Federation, target: str, database: str, name: str) -> RetentionPolicyInfo:
    with fed.client(target) as client:
        return next(rp for rp in client.retention_policies(database) if rp.name == name)


# --- pure planning -----------------------------------------------------------------------------


def test_desired_state_is_plain_data_that_round_trips(config_dir: Path) -> None:
    config = load_config(config_dir)
    desired = desired_retention(config, "dub1")
    assert desired.database == "mail"
    assert desired.policies == (RetentionSpec("raw", 30 * DAY_NS, DAY_NS, default=True),)
    assert DesiredRetention.from_dict(desired.as_dict()) == desired
    central = desired_central_retention(config)
    assert central.target == CENTRAL and central.database == "federation"
    assert [(s.name, s.default) for s in central.policies] == [
        ("agg_400d", False),
        ("agg_800d", False),
    ]
    with pytest.raises(InvalidInput):
        DesiredRetention.from_dict({"target": "dub1"})


def test_central_rp_with_two_shard_durations_is_a_config_error(config_dir: Path) -> None:
    path = config_dir / "policies" / "uk.yaml"
    policy = yaml.safe_load(path.read_text())
    policy["central"]["shard_duration"] = "1d"
    path.write_text(yaml.safe_dump(policy))
    with pytest.raises(ConfigError) as info:
        desired_central_retention(load_config(config_dir))
    assert "policies/uk.yaml" in str(info.value) and "agg_400d" in str(info.value)


def test_diff_marks_shrinks_as_destructive_and_grows_as_safe() -> None:
    spec = RetentionSpec("raw", 30 * DAY_NS, DAY_NS, default=True)
    infinite = [RetentionPolicyInfo("raw", 0, DAY_NS, 1, True)]
    (change,) = diff_retention("mail", infinite, [spec])
    assert change.destructive and change.kind is ChangeKind.ALTER
    assert change.safe_statement is None, "nothing but the shrink differs"
    shorter = [RetentionPolicyInfo("raw", 10 * DAY_NS, 2 * DAY_NS, 1, False)]
    (change,) = diff_retention("mail", shorter, [spec])
    assert not change.destructive and change.drift
    assert change.statement == (
        'ALTER RETENTION POLICY "raw" ON "mail" DURATION 30d SHARD DURATION 1d DEFAULT'
    )
    to_infinite = diff_retention("mail", shorter, [RetentionSpec("raw", 0, 2 * DAY_NS)])
    assert [c.destructive for c in to_infinite] == [False]


def test_shard_duration_below_an_hour_compares_as_influxdb_stores_it() -> None:
    spec = RetentionSpec("raw", DAY_NS, 60 * 10**9)
    actual = [RetentionPolicyInfo("raw", DAY_NS, HOUR_NS, 1, False)]
    assert diff_retention("mail", actual, [spec]) == []


# --- against servers ---------------------------------------------------------------------------


def test_plan_on_empty_servers_lists_creates_and_changes_nothing(fed: Federation) -> None:
    outcomes = {o.target: o for o in plan_retention(fed.config)}
    assert list(outcomes) == ["dub1", "lon1", CENTRAL]
    dub1 = outcomes["dub1"].result
    assert dub1 is not None
    assert [c.statement for c in dub1.planned] == [
        'CREATE DATABASE "mail"',
        'CREATE RETENTION POLICY "raw" ON "mail" DURATION 30d REPLICATION 1 '
        "SHARD DURATION 1d DEFAULT",
    ]
    central = outcomes[CENTRAL].result
    assert central is not None
    assert [c.retention_policy for c in central.planned] == [None, "agg_400d", "agg_800d"]
    assert all(not c.destructive for o in outcomes.values() for c in o.result.planned)  # type: ignore[union-attr]
    for name in ("dub1", "lon1", "central"):
        with fed.client(name) as client:
            assert client.databases() == [], "plan changes nothing"


def test_apply_creates_and_second_apply_is_a_no_op(fed: Federation) -> None:
    first = apply_retention(fed.config)
    assert all(o.ok and o.result is not None and o.result.changed for o in first)
    raw = _rp(fed, "lon1", "mail", "raw")
    assert (raw.duration_ns, raw.shard_duration_ns, raw.default) == (14 * DAY_NS, DAY_NS, True)
    agg = _rp(fed, "central", "federation", "agg_800d")
    assert (agg.duration_ns, agg.shard_duration_ns, agg.default) == (
        800 * DAY_NS,
        7 * DAY_NS,
        False,
    )

    second = apply_retention(fed.config)
    assert all(o.ok and o.result is not None for o in second)
    assert [o.result.planned for o in second if o.result] == [(), (), ()]
    assert not any(o.result.changed for o in second if o.result)


def test_out_of_band_alter_is_detected_as_drift_and_repaired(fed: Federation) -> None:
    apply_retention(fed.config)
    desired = desired_retention(fed.config, "dub1")
    with fed.client("dub1") as client:
        client.execute('ALTER RETENTION POLICY "raw" ON "mail" SHARD DURATION 2h')
        client.execute(
            'CREATE RETENTION POLICY "other" ON "mail" DURATION 1d REPLICATION 1 DEFAULT'
        )
        result = reconcile_retention(client, desired.database, desired.policies)
        assert [c.retention_policy for c in result.drift] == ["raw"]
        assert result.drift[0].effects == ("shard duration 2h -> 1d", "make default")
        assert result.changed and result.converged
        again = reconcile_retention(client, desired.database, desired.policies)
        assert again.planned == () and not again.changed
    raw = _rp(fed, "dub1", "mail", "raw")
    assert (raw.shard_duration_ns, raw.default) == (DAY_NS, True)


def test_shrink_is_refused_without_the_flag_and_applied_with_it(fed: Federation) -> None:
    apply_retention(fed.config)
    with fed.client("dub1") as client:
        client.execute('ALTER RETENTION POLICY "raw" ON "mail" DURATION 60d SHARD DURATION 2d')
    (planned,) = plan_retention(fed.config, "dub1")
    assert planned.result is not None
    (change,) = planned.result.planned
    assert change.destructive and "DELETES data" in change.effect

    (refused,) = apply_retention(fed.config, "dub1")
    assert refused.result is not None and not refused.ok
    assert refused.result.refused == (change,)
    assert refused.result.applied == (
        'ALTER RETENTION POLICY "raw" ON "mail" SHARD DURATION 1d',
    ), "the non-destructive part is still repaired"
    raw = _rp(fed, "dub1", "mail", "raw")
    assert (raw.duration_ns, raw.shard_duration_ns) == (60 * DAY_NS, DAY_NS)

    (allowed,) = apply_retention(fed.config, "dub1", allow_shrink=True)
    assert allowed.ok and allowed.result is not None and allowed.result.changed
    assert _rp(fed, "dub1", "mail", "raw").duration_ns == 30 * DAY_NS


def test_unreachable_dc_is_reported_with_its_url_and_the_others_converge(
    localstack: LocalStack, request: pytest.FixtureRequest, config_dir: Path
) -> None:
    fed = start_federation(localstack, request, config_dir, dcs=("dub1",), unreachable=("tor1",))
    tor1_url = fed.config.dc("tor1").influxdb.url
    outcomes = {o.target: o for o in apply_retention(fed.config, timeout=2.0)}
    assert outcomes["tor1"].error is not None and tor1_url in outcomes["tor1"].error
    assert outcomes["dub1"].ok and outcomes[CENTRAL].ok
    assert _rp(fed, "dub1", "mail", "raw").default

    result = runner.invoke(app, ["policy", "apply", "-c", str(fed.root), "--timeout", "2"])
    assert result.exit_code == 1
    assert tor1_url in result.output and "failed: tor1" in result.output

    # The installed entry point, not only the Typer app, exits non-zero.
    proc = subprocess.run(
        [sys.executable, "-m", "federation.cli", "policy", "plan", "-c", str(fed.root)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == 1, proc.stdout + proc.stderr
    assert "error: plan: unreachable: tor1" in proc.stderr


# --- CLI ---------------------------------------------------------------------------------------


def test_cli_plan_apply_and_exit_codes(fed: Federation) -> None:
    root = str(fed.root)
    plan = runner.invoke(app, ["policy", "plan", "-c", root])
    assert plan.exit_code == 0, plan.output
    assert '+ CREATE RETENTION POLICY "agg_400d" ON "federation"' in plan.output
    assert "plan: 7 change(s) on 3 of 3 target(s)" in plan.output

    applied = runner.invoke(app, ["policy", "apply", "-c", root, "--direct"])
    assert applied.exit_code == 0, applied.output
    assert "apply: 3 of 3 target(s) converged" in applied.output

    again = runner.invoke(app, ["policy", "apply", "-c", root])
    assert again.exit_code == 0
    assert "apply: nothing changed; all 3 target(s) already match the policies" in again.output

    with fed.client("lon1") as client:
        client.execute('ALTER RETENTION POLICY "raw" ON "mail" DURATION 20d')
    plan = runner.invoke(app, ["policy", "plan", "-c", root, "--dc", "lon1", "-f", "json"])
    assert plan.exit_code == 0 and '"destructive": true' in plan.output

    refused = runner.invoke(app, ["policy", "apply", "-c", root, "--dc", "lon1"])
    assert refused.exit_code == 1
    assert "shrink refused on lon1 (rerun with --allow-shrink)" in refused.output

    allowed = runner.invoke(app, ["policy", "apply", "-c", root, "--dc", "lon1", "--allow-shrink"])
    assert allowed.exit_code == 0, allowed.output
    assert _rp(fed, "lon1", "mail", "raw").duration_ns == 14 * DAY_NS
