"""`federation validate`: load a config directory and resolve every aggregation and detection
for every DC."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from federation.config import FederationConfig, load_config
from federation.config.resolve import resolve_all, resolve_detections
from federation.core.detection_plan import DetectionPlan
from federation.core.durations import format_duration
from federation.core.plan import AggregationPlan
from federation.errors import ConfigProblems
from federation.ingest.schema import schema_problems


@dataclass(frozen=True)
class ValidationResult:
    config: FederationConfig
    plans: list[AggregationPlan]
    detections: list[DetectionPlan]


def validate_config(root: Path | str) -> ValidationResult:
    """Load and cross-check the config under `root`, resolving every plan and checking every
    ingest schema in `policies/schemas/` against the region policies (`schema_problems`).

    Raises ConfigProblems with every problem found; returns only when all checks pass.
    """
    config = load_config(root)
    problems = schema_problems(config)
    try:
        plans = resolve_all(config)
    except ConfigProblems as exc:
        problems = [*exc.problems, *problems]
    if problems:
        raise ConfigProblems(problems)
    return ValidationResult(config, plans, resolve_detections(config))


def summarize(result: ValidationResult) -> str:
    """A short human summary: regions, DCs, and each aggregation as resolved per DC."""
    config = result.config
    fleet = config.fleet
    lines = [f"federation {fleet.name}: config OK"]
    lines.append(f"regions ({len(fleet.regions)}):")
    for region, policy in sorted(config.policies.items()):
        dcs = sorted(name for name, dc in fleet.dcs.items() if dc.region == region)
        lines.append(
            f"  {region:<6} {policy.jurisdiction}; raw {format_duration(policy.raw.retention)} "
            f"(max {format_duration(policy.raw.max_retention)}), k >= {policy.min_group_events}, "
            f"central {policy.central.retention_policy}; DCs: {', '.join(dcs) or '-'}"
        )
    lines.append(f"DCs ({len(fleet.dcs)}):")
    for name, dc in sorted(fleet.dcs.items()):
        mode = "kapacitor" if dc.kapacitor else "embedded executor"
        lines.append(f"  {name:<6} region {dc.region:<4} {dc.influxdb.url}  [{mode}]")
    lines.append(f"aggregations ({len(config.aggregations)}), resolved per DC:")
    for plan in result.plans:
        dropped = (
            f" (dropped here: {', '.join(plan.dropped_dimensions)})"
            if plan.dropped_dimensions
            else ""
        )
        lines.append(
            f"  {plan.aggregation:<20} {plan.dc:<6} version {plan.version}  "
            f"window {format_duration(plan.window_ns)} x{plan.lookback_windows} look-back  "
            f"by {', '.join(plan.dimensions) or '(none)'}{dropped}  k >= {plan.min_group_events}"
        )
    if result.detections:
        lines.append(
            f"detections ({len(config.detections)}), local to each DC (findings never leave it):"
        )
    for det in result.detections:
        counted = f"distinct {det.distinct}" if det.distinct else "events"
        lines.append(
            f"  {det.detection:<22} {det.dc:<6} version {det.version}  "
            f"window {format_duration(det.window_ns)} x{det.lookback_windows} look-back  "
            f"{counted} per {det.key} >= {det.at_least} and >= {det.factor:g}x the median"
        )
    return "\n".join(lines)
