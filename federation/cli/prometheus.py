"""`federation prometheus rules`: alerting rules over the coordinator's `/metrics`."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from federation.cli._common import add_group, duration_option, write_or_print


def rules(
    window_open: Annotated[
        str, typer.Option(help="Alert when a window stays not verified or empty this long.")
    ] = "2h",
    agent_silent: Annotated[
        str, typer.Option(help="Alert when a DC's agent has not reported for this long.")
    ] = "10m",
    refusals_window: Annotated[
        str, typer.Option(help="Alert on any gateway refusal within this range.")
    ] = "15m",
    rollout_stuck: Annotated[
        str, typer.Option(help="Alert when a desired plan version is not running this long.")
    ] = "30m",
    out_file: Annotated[
        Path | None, typer.Option("--out", help="Write the rule file here (default: stdout).")
    ] = None,
) -> None:
    """Print Prometheus alerting rules (a rule file `promtool check rules` accepts)."""
    from federation.coordinator.alerts import AlertThresholds, alert_rules

    write_or_print(alert_rules(
        AlertThresholds(
            window_open=duration_option("--window-open", window_open),
            agent_silent=duration_option("--agent-silent", agent_silent),
            refusals_window=duration_option("--refusals-window", refusals_window),
            rollout_stuck=duration_option("--rollout-stuck", rollout_stuck),
        )
    ), out_file)  # fmt: skip


def register(app: typer.Typer) -> None:
    """Add the `prometheus` command group to `app`."""
    add_group(app, "prometheus", "Prometheus alerting for the coordinator.", {"rules": rules})
