"""Prometheus alerting rules over the coordinator's `/metrics`.

`alert_rules` writes one rule group that `promtool check rules` accepts: a window left open
(not verified or empty) too long, an agent not seen, gateway refusals rising, a rollout that
does not converge, an agent's clock off, and retention drift. The metric names come from
`federation.coordinator.metrics`, where the families are written, so the two cannot drift.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import yaml

from federation.coordinator.metrics import (
    AGENT_CLOCK_SKEW_LARGE,
    AGENT_LAST_SEEN,
    GATEWAY_REFUSALS,
    OLDEST_OPEN_WINDOW_AGE,
    RETENTION_DRIFT,
    ROLLOUT_PENDING,
)
from federation.core.durations import SECOND_NS, format_duration
from federation.errors import InvalidInput

__all__ = ["AlertThresholds", "alert_rules"]


@dataclass(frozen=True)
class AlertThresholds:
    """How long each condition may last before it alerts, in nanoseconds (whole seconds)."""

    window_open: int = 2 * 3600 * SECOND_NS
    agent_silent: int = 10 * 60 * SECOND_NS
    refusals_window: int = 15 * 60 * SECOND_NS
    rollout_stuck: int = 30 * 60 * SECOND_NS

    def check(self) -> None:
        """InvalidInput naming the option of a threshold that is not a positive whole second."""
        for option, value in (
            ("--window-open", self.window_open),
            ("--agent-silent", self.agent_silent),
            ("--refusals-window", self.refusals_window),
            ("--rollout-stuck", self.rollout_stuck),
        ):
            if value <= 0 or value % SECOND_NS:
                raise InvalidInput(f"{option}: must be a positive whole number of seconds")


def _rule(
    name: str, expr: str, for_: str, severity: str, summary: str, description: str
) -> dict[str, Any]:
    return {
        "alert": name,
        "expr": expr,
        "for": for_,
        "labels": {"severity": severity},
        "annotations": {"summary": summary, "description": description},
    }


def alert_rules(thresholds: AlertThresholds | None = None) -> str:
    """The alerting rules as a Prometheus rule file (YAML), one group `federation`."""
    t = thresholds or AlertThresholds()
    t.check()
    window_open = format_duration(t.window_open)
    silent = format_duration(t.agent_silent)
    refusals = format_duration(t.refusals_window)
    stuck = format_duration(t.rollout_stuck)
    rules = [
        _rule(
            "FederationWindowOpenTooLong",
            f"{OLDEST_OPEN_WINDOW_AGE} > {t.window_open // SECOND_NS}",
            "5m",
            "warning",
            "{{ $labels.dc }}: a {{ $labels.aggregation }} window open for over " + window_open,
            "The oldest window of {{ $labels.aggregation }} in {{ $labels.dc }} that is not "
            "verified or empty ended {{ $value | humanizeDuration }} ago: see `federation "
            "status --dc {{ $labels.dc }}` for its state and reason.",
        ),
        _rule(
            "FederationAgentNotSeen",
            f"time() - {AGENT_LAST_SEEN} > {t.agent_silent // SECOND_NS}",
            "1m",
            "critical",
            "{{ $labels.dc }}: no agent report for over " + silent,
            "The agent of {{ $labels.dc }} last reported {{ $value | humanizeDuration }} ago; "
            "its windows are not computed or shipped meanwhile.",
        ),
        _rule(
            "FederationGatewayRefusalsRising",
            f"sum by (rule) (increase({GATEWAY_REFUSALS}[{refusals}])) > 0",
            "1m",
            "warning",
            "The gateway refused batches ({{ $labels.rule }}) in the last " + refusals,
            "{{ $value }} batches refused by rule {{ $labels.rule }}: the coordinator's log "
            "names the DC, measurement and key (never the value).",
        ),
        _rule(
            "FederationRolloutStuck",
            f"{ROLLOUT_PENDING} > 0",
            stuck,
            "warning",
            "{{ $labels.dc }}: a desired plan version not running for " + stuck,
            "{{ $value }} aggregation(s) of {{ $labels.dc }} do not run the version desired "
            "for them: see `federation rollout status`.",
        ),
        _rule(
            "FederationAgentClockOff",
            f"{AGENT_CLOCK_SKEW_LARGE} == 1",
            "10m",
            "warning",
            "{{ $labels.dc }}: the agent's clock is off the coordinator's",
            "Windows are computed only once they have ended by both clocks.",
        ),
        _rule(
            "FederationRetentionDrift",
            f"{RETENTION_DRIFT} == 1",
            "15m",
            "critical",
            "{{ $labels.dc }}: raw retention is not what the policy declares",
            "See `federation policy audit --dc {{ $labels.dc }}`.",
        ),
    ]
    document = {"groups": [{"name": "federation", "rules": rules}]}
    return yaml.safe_dump(document, sort_keys=False, allow_unicode=True, width=10_000)
