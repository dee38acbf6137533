"""DetectionPlan: one detection resolved for one DC against its region's policy.

The detection counterpart of `plan.AggregationPlan`: the TICKscript, the embedded executor, the
Kapacitor UDF's detection mode and the gateway's checks all derive from it, so the two
executors cannot drift apart. A plan says what is read (the key and the counted key, both
personal data, read only inside the DC), where findings go (the DC's own InfluxDB, under the raw
retention policy) and the only thing that leaves: one count point per window, tag `dc` alone.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from federation.core.influxql import quote_ident
from federation.core.plan import (
    AggregationPlan,
    FieldType,
    MeasurementSchema,
    content_version,
    manifest_schema,
    plan_from_dict,
    plan_to_dict,
    raw_source,
)
from federation.errors import InvalidInput

DETECTION_KIND = "detection"
"""The `kind` a detection plan's data carries; an aggregation plan's carries none."""
FINDINGS_MEASUREMENT = "federation_findings"
"""Where a DC keeps its findings, in its own raw database under the raw retention policy."""
FINDINGS_PERSONAL_FIELDS = ("key",)
"""The fields of a kept finding that hold personal data: erasure and the audit treat them as the
region's own personal-data keys."""
DETECTION_RUNS_MEASUREMENT = "federation_detection_runs"
"""Beside the findings: each window's newest computation (run, keys, findings), so a re-run
that finds nothing still says that an earlier run's findings no longer hold."""

ROUTE_TAG = "federation_to"
"""In Kapacitor, the tag the UDF (detection `split` mode) puts on every point it emits, and
the script routes on and deletes before each output: `ROUTE_LOCAL` on the findings and run
points (the DC's own InfluxDB), `ROUTE_CENTRAL` on the counts and manifest (the gateway)."""
ROUTE_LOCAL = "local"
ROUTE_CENTRAL = "central"

_COUNT_FIELDS: dict[str, FieldType] = {"count": "integer", "keys": "integer", "findings": "integer"}
_FINDING_FIELDS: dict[str, FieldType] = {
    "key": "string",
    "count": "integer",
    "threshold": "float",
    "run": "integer",
}


@dataclass(frozen=True)
class DetectionPlan:
    """What one DC computes for one detection, what it keeps, and exactly what it may ship."""

    detection: str
    dc: str
    region: str
    database: str
    retention_policy: str
    measurement: str
    key: str
    key_is_tag: bool
    distinct: str | None
    distinct_is_tag: bool
    at_least: int
    factor: float
    window_ns: int
    lookback_ns: int
    grace_ns: int
    central_database: str
    central_retention_policy: str
    template: str
    webhook_url_env: str | None

    @property
    def aggregation(self) -> str:
        """The name the manifest, the ledger and central's measurement know the detection by."""
        return self.detection

    @property
    def lookback_windows(self) -> int:
        """k: each run recomputes k trailing windows (offsets 0 … k-1 windows)."""
        return self.lookback_ns // self.window_ns

    @property
    def task_id(self) -> str:
        """The Kapacitor task id, `fed-<detection>-<dc>`."""
        return f"fed-{self.detection}-{self.dc}"

    @property
    def columns(self) -> tuple[str, ...]:
        """The keys read: the key, then the counted key if counting distinct values."""
        return (self.key,) if self.distinct is None else (self.key, self.distinct)

    @property
    def counted_fields(self) -> tuple[str, ...]:
        """The keys read that are fields: what InfluxQL can count the window's events by."""
        typed = [(self.key, self.key_is_tag), (self.distinct, self.distinct_is_tag)]
        return tuple(name for name, is_tag in typed if name is not None and not is_tag)

    @property
    def query(self) -> str:
        """The InfluxQL that reads one window, without its time condition: the key (and the
        counted key) only, typed so that InfluxDB returns them whether tag or field, and no
        GROUP BY — one window is one batch. It runs inside the DC and nowhere else."""
        typed = [(self.key, self.key_is_tag)]
        if self.distinct is not None:
            typed.append((self.distinct, self.distinct_is_tag))
        columns = [f"{quote_ident(c)}::{'tag' if tag else 'field'}" for c, tag in typed]
        source = raw_source(self.database, self.retention_policy, self.measurement)
        return f"SELECT {', '.join(columns)} FROM {source}"

    def query_between(self, start_ns: int, stop_ns: int) -> str:
        """The plan's query with the same time condition Kapacitor appends to a batch run."""
        return f"{self.query} WHERE time >= {start_ns} AND time < {stop_ns}"

    @property
    def count_schema(self) -> MeasurementSchema:
        """The one point per window central receives: events, keys evaluated, findings."""
        return MeasurementSchema(self.detection, ("dc",), dict(_COUNT_FIELDS))

    @property
    def manifest_schema(self) -> MeasurementSchema:
        return manifest_schema()

    @property
    def findings_schema(self) -> MeasurementSchema:
        """A finding as the DC keeps it: personal data in fields, the detection as a tag, and a
        `key_id` tag (a hash of the key) so that re-running a window rewrites its findings."""
        return MeasurementSchema(
            FINDINGS_MEASUREMENT, ("detection", "key_id"), dict(_FINDING_FIELDS)
        )

    @property
    def version(self) -> str:
        """A content hash of everything that affects what a window yields (see
        `AggregationPlan.version`): source, keys, threshold and window."""
        identity = {
            "detection": self.detection,
            "measurement": self.measurement,
            "key": self.key,
            "distinct": self.distinct,
            "at_least": self.at_least,
            "factor": repr(self.factor),
            "window_ns": self.window_ns,
            "schema": "detection-v1",
        }
        return content_version(identity)


def detection_plan_to_dict(plan: DetectionPlan) -> dict[str, Any]:
    """The plan as plain JSON-able data (what a coordinator serves to agents), with its version
    and `kind: detection`, which tells it from an aggregation's in the ledger and on the wire."""
    data = {f.name: getattr(plan, f.name) for f in dataclasses.fields(plan)}
    data["version"] = plan.version
    data["kind"] = DETECTION_KIND
    return data


def detection_plan_from_dict(data: Mapping[str, Any]) -> DetectionPlan:
    """Rebuild a served plan; InvalidInput if it is malformed or its version does not match."""
    names = {f.name for f in dataclasses.fields(DetectionPlan)}
    try:
        plan = DetectionPlan(**{name: data[name] for name in names})
    except (KeyError, TypeError) as exc:
        raise InvalidInput(f"malformed detection plan: {exc.__class__.__name__}: {exc}") from None
    if "version" in data and data["version"] != plan.version:
        raise InvalidInput(
            f"plan {plan.task_id}: version {data['version']} does not match its content "
            f"({plan.version})"
        )
    return plan


TrackedPlan = AggregationPlan | DetectionPlan
"""Any plan whose windows the coordinator tracks, plans and backfills, and an agent runs on its
schedule: an aggregation or a detection. Both ship a manifest per window, so the ledger, the
planner and the agent treat them alike; only computing a window differs."""


def tracked_plan_to_dict(plan: TrackedPlan) -> dict[str, Any]:
    """A plan of either kind as data (see `plan_to_dict`, `detection_plan_to_dict`)."""
    if isinstance(plan, DetectionPlan):
        return detection_plan_to_dict(plan)
    return plan_to_dict(plan)


def tracked_plan_from_dict(data: Mapping[str, Any]) -> TrackedPlan:
    """Rebuild a plan of either kind, told apart by `kind`; InvalidInput as its kind's own."""
    if data.get("kind") == DETECTION_KIND:
        return detection_plan_from_dict(data)
    return plan_from_dict(data)
