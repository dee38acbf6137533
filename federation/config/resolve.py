"""Resolve the configuration into plans: each aggregation and detection, for each DC, against
its region's policy.

The plans themselves (`federation.core.plan`, `federation.core.detection_plan`) know nothing of
the configuration; this is the one place that reads the one to build the other.
"""

from __future__ import annotations

from federation.config.loader import FederationConfig
from federation.config.models import Aggregation, Detection, Policy, RawMeasurement
from federation.core.detection_plan import DetectionPlan, TrackedPlan
from federation.core.plan import AggregationPlan
from federation.errors import ConfigError


def _source_measurement(policy: Policy, file: str, measurement: str) -> RawMeasurement:
    """What the region's policy declares of the measurement a plan reads; ConfigError (at
    `source.measurement` of `file`) when it declares nothing of it."""
    declared = policy.measurements.get(measurement)
    if declared is None:
        raise ConfigError(
            file,
            "source.measurement",
            f"{measurement!r} is not declared in policies/{policy.region}.yaml",
        )
    return declared


def resolve_plan(
    config: FederationConfig, aggregation: str | Aggregation, dc: str
) -> AggregationPlan:
    """Resolve one aggregation for one DC; ConfigError if its region's policy forbids it.

    Dimensions the region does not list as exportable are dropped from that DC's plan (and
    named in `dropped_dimensions`); a dimension that is personal data is refused outright.
    """
    agg = config.aggregations[aggregation] if isinstance(aggregation, str) else aggregation
    dc_config = config.dc(dc)
    policy = config.policy_for(dc)
    file = f"tickscripts/{agg.name}.yaml"
    measurement = _source_measurement(policy, file, agg.source.measurement)
    personal = measurement.personal_keys
    if agg.source.field in personal:
        raise ConfigError(file, "source.field", f"is personal data in region {policy.region}")
    for index, dimension in enumerate(agg.dimensions):
        if dimension in personal:
            raise ConfigError(
                file,
                f"dimensions.{index}",
                f"{dimension!r} is personal data in region {policy.region}",
            )
    exported = tuple(d for d in agg.dimensions if d in measurement.exportable_dimensions)
    dropped = tuple(d for d in agg.dimensions if d not in measurement.exportable_dimensions)
    return AggregationPlan(
        aggregation=agg.name,
        dc=dc,
        region=policy.region,
        database=agg.source.database or dc_config.raw_database,
        retention_policy=policy.raw.retention_policy,
        measurement=agg.source.measurement,
        value_field=agg.source.field,
        unit=agg.source.unit,
        dimensions=exported,
        dropped_dimensions=dropped,
        window_ns=agg.window,
        lookback_ns=agg.lookback,
        grace_ns=agg.grace_ns,
        percentiles=agg.percentiles,
        accuracy=agg.accuracy,
        min_group_events=max(policy.min_group_events, agg.min_group_events or 0),
        central_database=config.fleet.central.database,
        central_retention_policy=policy.central.retention_policy,
        template=agg.template,
        personal_keys=personal,
    )


def resolve_all(config: FederationConfig, dc: str | None = None) -> list[AggregationPlan]:
    """Every aggregation resolved for every DC (or one DC), in a stable order."""
    dcs = [dc] if dc is not None else sorted(config.fleet.dcs)
    return [resolve_plan(config, name, d) for d in dcs for name in sorted(config.aggregations)]


def resolve_detection(
    config: FederationConfig, detection: str | Detection, dc: str
) -> DetectionPlan:
    """Resolve one detection for one DC; ConfigError if its region's policy does not make the
    key personal data (the loader checks this for every region; this holds it per plan)."""
    det = config.detections[detection] if isinstance(detection, str) else detection
    dc_config = config.dc(dc)
    policy = config.policy_for(dc)
    file = f"tickscripts/{det.name}.yaml"
    measurement = _source_measurement(policy, file, det.source.measurement)
    if det.per not in measurement.personal_keys:
        raise ConfigError(file, "per", f"is not personal data in region {policy.region}")
    return DetectionPlan(
        detection=det.name,
        dc=dc,
        region=policy.region,
        database=det.source.database or dc_config.raw_database,
        retention_policy=policy.raw.retention_policy,
        measurement=det.source.measurement,
        key=det.per,
        key_is_tag=det.per in measurement.personal_tags,
        distinct=det.distinct,
        distinct_is_tag=det.distinct is not None and det.distinct in measurement.personal_tags,
        at_least=det.threshold.at_least,
        factor=det.threshold.factor_over_median,
        window_ns=det.window,
        lookback_ns=det.lookback,
        grace_ns=det.grace_ns,
        central_database=config.fleet.central.database,
        central_retention_policy=policy.central.retention_policy,
        template=det.template,
        webhook_url_env=det.webhook_url_env,
    )


def resolve_detections(config: FederationConfig, dc: str | None = None) -> list[DetectionPlan]:
    """Every detection resolved for every DC (or one DC), in a stable order."""
    dcs = [dc] if dc is not None else sorted(config.fleet.dcs)
    return [resolve_detection(config, name, d) for d in dcs for name in sorted(config.detections)]


def resolve_tracked(config: FederationConfig, dc: str | None = None) -> list[TrackedPlan]:
    """Every aggregation, then every detection, resolved for every DC (or one DC)."""
    plans: list[TrackedPlan] = [*resolve_all(config, dc)]
    plans.extend(resolve_detections(config, dc))
    return plans
