"""A retention change is one path whatever the flags, and drift is visible everywhere: a real
coordinator, two DCs (fra1 in eu, tor1 in na) with their own influxd and an agent each that
re-pulls its desired state every 0.2 s, and the CLI as an operator runs it."""

from __future__ import annotations

import shutil
import time
from pathlib import Path

import httpx
from typer.testing import CliRunner

from federation.cli import app

from .federation_fixture import READER
from .test_coordinated import (
    DAY,
    Fleet,
    edit,
    fleet,
    retention_states,
    wait_until,
)

runner = CliRunner()
FIXTURES = (fleet,)  # the coordinated fleet, used here by name


def converged(fleet: Fleet) -> None:
    wait_until(lambda: set(retention_states(fleet).values()) == {"converged"})


def served_retention(fleet: Fleet, dc: str) -> tuple[str, int]:
    """The retention state and desired duration `GET /api/v1/dcs` shows for `dc`."""
    with fleet.operator() as client:
        (entry,) = client.dcs([dc])
    return entry["retention"]["state"], entry["retention"]["desired"][0]["duration_ns"]


def several_reconciles() -> None:
    time.sleep(1.2)  # the agents reconcile every 0.2 s


def test_direct_shrink_changes_the_coordinator_too_and_stays(fleet: Fleet) -> None:
    converged(fleet)
    edit(fleet.root / "policies" / "eu.yaml", {"raw.retention": "25d"})
    code, output = fleet.cli("policy", "apply", "--direct", "--dc", "fra1", "--allow-shrink")
    assert code == 0, output
    assert f"coordinator {fleet.served.url}: reloaded" in output
    # The coordinator granted the shrink first, so its agent may have applied it already.
    assert "SHRINK retention 30d -> 25d" in output or "up to date, nothing changed" in output
    assert fleet.raw_rp("fra1") == (25 * DAY, DAY)

    several_reconciles()
    assert fleet.raw_rp("fra1") == (25 * DAY, DAY), "no agent put the old retention back"
    wait_until(lambda: served_retention(fleet, "fra1") == ("converged", 25 * DAY))
    assert fleet.raw_rp("tor1") == (90 * DAY, DAY)


def test_direct_apply_is_refused_when_the_coordinator_holds_another_config(
    fleet: Fleet, tmp_path: Path
) -> None:
    converged(fleet)
    elsewhere = tmp_path / "operator-checkout"
    shutil.copytree(fleet.root, elsewhere)
    edit(elsewhere / "policies" / "eu.yaml", {"raw.retention": "25d"})
    result = runner.invoke(
        app, ["policy", "apply", "-c", str(elsewhere), "--direct", "--allow-shrink"]
    )
    output = result.output + str(result.exception or "")
    assert result.exit_code == 1, output
    assert f"the coordinator at {fleet.served.url} holds another retention config" in output
    assert "fra1: the coordinator desires raw 30d (shards 1d), this config raw 25d" in output
    assert "Nothing was changed" in output
    several_reconciles()
    assert fleet.raw_rp("fra1") == (30 * DAY, DAY)
    assert served_retention(fleet, "fra1") == ("converged", 30 * DAY)


def test_allow_shrink_through_the_coordinator_grants_the_agent_the_shrink(fleet: Fleet) -> None:
    converged(fleet)
    edit(fleet.root / "policies" / "eu.yaml", {"raw.retention": "25d"})
    code, output = fleet.cli(
        "policy", "apply", "--dc", "fra1", "--allow-shrink", "--wait-timeout", "30"
    )
    assert code == 0, output
    assert "fra1: retention raw: SHRINK retention 30d -> 25d" in output
    assert "(DESTRUCTIVE, allowed)" in output and "fra1: converged" in output
    assert fleet.raw_rp("fra1") == (25 * DAY, DAY)
    several_reconciles()
    assert fleet.raw_rp("fra1") == (25 * DAY, DAY)


def test_retention_drift_shows_in_plan_status_metrics_and_the_page(fleet: Fleet) -> None:
    converged(fleet)
    edit(fleet.root / "policies" / "eu.yaml", {"raw.retention": "20d"})
    code, output = fleet.cli("policy", "apply", "--wait-timeout", "30")
    assert code == 1 and "fra1: drift: SHRINK retention 30d -> 20d" in output, output
    assert fleet.raw_rp("fra1") == (30 * DAY, DAY)

    # The config no longer changes, but the shrink is still to do.
    code, output = fleet.cli("policy", "plan")
    assert code == 0, output
    assert "nothing changes" not in output
    assert "fra1: retention raw: drift: SHRINK retention 30d -> 20d" in output
    assert "apply with --allow-shrink" in output

    code, output = fleet.cli("status", "--via", "api")
    assert code == 0, output
    assert "retention drift on fra1: SHRINK retention 30d -> 20d" in output
    assert "tor1" not in [line.split(": ")[0].split()[-1] for line in output.splitlines()
                          if line.startswith("retention")]  # fmt: skip

    code, output = fleet.cli("rollout", "status")
    assert code == 0 and "retention drift on fra1: SHRINK retention 30d -> 20d" in output, output

    headers = {"Authorization": f"Bearer {READER}"}
    metrics = httpx.get(fleet.served.url + "/metrics", headers=headers).text
    assert 'federation_retention_drift{dc="fra1"} 1' in metrics
    assert 'federation_retention_drift{dc="tor1"} 0' in metrics
    page = httpx.get(fleet.served.url + "/", headers=headers).text
    assert "<h2>retention drift</h2>" in page and "SHRINK retention 30d -&gt; 20d" in page

    # Granted, the shrink is applied and every trace of drift goes away.
    code, output = fleet.cli("policy", "apply", "--allow-shrink", "--wait-timeout", "30")
    assert code == 0, output
    assert fleet.raw_rp("fra1") == (20 * DAY, DAY)
    metrics = httpx.get(fleet.served.url + "/metrics", headers=headers).text
    assert 'federation_retention_drift{dc="fra1"} 0' in metrics
    code, output = fleet.cli("policy", "plan")
    assert "policy plan (coordinator, dry run): nothing changes" in output, output
