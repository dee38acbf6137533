"""`federation prometheus rules`: alerting rules promtool accepts, over metrics /metrics has."""

from __future__ import annotations

import subprocess
from pathlib import Path

import yaml
from typer.testing import CliRunner

from federation.cli import app
from federation.coordinator import metrics


def test_the_rules_pass_promtool(promtool: str, tmp_path: Path) -> None:
    path = tmp_path / "rules.yml"
    result = CliRunner().invoke(app, ["prometheus", "rules", "--window-open", "90m",
                                      "--out", str(path)])  # fmt: skip
    assert result.exit_code == 0, result.output
    checked = subprocess.run(
        [promtool, "check", "rules", str(path)], capture_output=True, text=True, timeout=60
    )
    assert checked.returncode == 0, checked.stdout + checked.stderr
    assert "SUCCESS: 6 rules found" in checked.stdout
    rules = yaml.safe_load(path.read_text())["groups"][0]["rules"]
    by_name = {r["alert"]: r for r in rules}
    assert set(by_name) >= {
        "FederationWindowOpenTooLong",
        "FederationAgentNotSeen",
        "FederationGatewayRefusalsRising",
        "FederationRolloutStuck",
    }
    assert by_name["FederationWindowOpenTooLong"]["expr"] == (
        f"{metrics.OLDEST_OPEN_WINDOW_AGE} > 5400"
    )


def test_a_threshold_that_is_not_a_duration_is_one_line() -> None:
    result = CliRunner().invoke(app, ["prometheus", "rules", "--agent-silent", "-5m"])
    assert result.exception is not None
    assert str(result.exception).startswith("--agent-silent: '-5m' is not a duration")
