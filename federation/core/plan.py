"""AggregationPlan: one aggregation resolved for one DC against its region's policy.

Everything downstream — the TICKscript, the embedded executor, the Kapacitor UDF, the gateway's
checks and the reports — is derived from the plan, so no two paths can drift apart.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Literal, Protocol

from federation.core.influxql import quote_ident
from federation.core.stats import percentile_field
from federation.errors import InvalidInput

FieldType = Literal["integer", "float", "string", "boolean"]

MANIFEST_MEASUREMENT = "federation_manifest"
NONE_VALUE = "_none"
"""The dimension value of a raw point that lacks the dimension's tag."""

_MANIFEST_FIELDS: dict[str, FieldType] = {
    "events": "integer",
    "groups": "integer",
    "suppressed_events": "integer",
    "personal_value_events": "integer",
    "version": "string",
    "run": "integer",
}


@dataclass(frozen=True)
class MeasurementSchema:
    """The typed schema of one output measurement: the only keys the gateway lets through."""

    measurement: str
    tags: tuple[str, ...]
    fields: dict[str, FieldType]


class ShippedPlan(Protocol):
    """What shipping a window needs of its plan, aggregation or detection alike."""

    @property
    def aggregation(self) -> str: ...
    @property
    def central_database(self) -> str: ...
    @property
    def central_retention_policy(self) -> str: ...


def manifest_schema() -> MeasurementSchema:
    """The manifest every plan ships per window, aggregation or detection alike."""
    return MeasurementSchema(MANIFEST_MEASUREMENT, ("aggregation", "dc"), dict(_MANIFEST_FIELDS))


def raw_source(database: str, retention_policy: str, measurement: str) -> str:
    """The fully qualified `"db"."rp"."m"` a plan's query reads (Kapacitor requires it)."""
    return ".".join(quote_ident(p) for p in (database, retention_policy, measurement))


def content_version(identity: Mapping[str, object]) -> str:
    """A plan version: the first 12 hex digits of the SHA-256 of its canonical identity."""
    canonical = json.dumps(identity, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(canonical.encode()).hexdigest()[:12]


@dataclass(frozen=True)
class AggregationPlan:
    """What one DC computes for one aggregation, and exactly what it may ship."""

    aggregation: str
    dc: str
    region: str
    database: str
    retention_policy: str
    measurement: str
    value_field: str
    unit: str
    dimensions: tuple[str, ...]
    dropped_dimensions: tuple[str, ...]
    window_ns: int
    lookback_ns: int
    grace_ns: int
    percentiles: tuple[float, ...]
    accuracy: float
    min_group_events: int
    central_database: str
    central_retention_policy: str
    template: str
    personal_keys: frozenset[str]

    @property
    def lookback_windows(self) -> int:
        """k: each run recomputes k trailing windows (offsets 0 … k-1 windows)."""
        return self.lookback_ns // self.window_ns

    @property
    def task_id(self) -> str:
        """The Kapacitor task id, `fed-<aggregation>-<dc>`."""
        return f"fed-{self.aggregation}-{self.dc}"

    @property
    def percentile_fields(self) -> tuple[str, ...]:
        return tuple(percentile_field(p) for p in self.percentiles)

    @property
    def query(self) -> str:
        """The InfluxQL that reads one window of raw data, without its time condition.

        Only the value field and the exported dimensions (as tag columns) are selected: never a
        personal-data key, and no GROUP BY, so that one window arrives as one batch.
        """
        columns = [quote_ident(self.value_field)]
        columns += [f"{quote_ident(d)}::tag" for d in self.dimensions]
        source = raw_source(self.database, self.retention_policy, self.measurement)
        return f"SELECT {', '.join(columns)} FROM {source}"

    def query_between(self, start_ns: int, stop_ns: int) -> str:
        """The plan's query with the same time condition Kapacitor appends to a batch run."""
        return f"{self.query} WHERE time >= {start_ns} AND time < {stop_ns}"

    @property
    def summary_schema(self) -> MeasurementSchema:
        fields: dict[str, FieldType] = {
            "count": "integer",
            "sum": "float",
            "min": "float",
            "max": "float",
        }
        fields.update({name: "float" for name in self.percentile_fields})
        fields["sketch"] = "string"
        return MeasurementSchema(self.aggregation, ("dc", *self.dimensions), fields)

    @property
    def manifest_schema(self) -> MeasurementSchema:
        return manifest_schema()

    @property
    def version(self) -> str:
        """A content hash of everything that affects the output points.

        Formatting of the YAML, the DC's name, the raw retention policy and the look-back do not
        change what a window's points hold, so they do not change the version; dimensions,
        accuracy, percentiles, k-anonymity and the source do.
        """
        identity = {
            "aggregation": self.aggregation,
            "measurement": self.measurement,
            "field": self.value_field,
            "unit": self.unit,
            "dimensions": list(self.dimensions),
            "window_ns": self.window_ns,
            "percentiles": [repr(p) for p in self.percentiles],
            "accuracy": repr(self.accuracy),
            "min_group_events": self.min_group_events,
            "schema": "v1",
        }
        return content_version(identity)


def plan_to_dict(plan: AggregationPlan) -> dict[str, Any]:
    """The plan as plain JSON-able data (what a coordinator serves to agents), with its version."""
    data = {f.name: getattr(plan, f.name) for f in dataclasses.fields(plan)}
    for key in ("dimensions", "dropped_dimensions", "percentiles"):
        data[key] = list(data[key])
    data["personal_keys"] = sorted(plan.personal_keys)
    data["version"] = plan.version
    return data


def plan_from_dict(data: Mapping[str, Any]) -> AggregationPlan:
    """Rebuild a plan served by a coordinator; InvalidInput if it is malformed or its version
    does not match its content (a plan is never trusted by its label alone)."""
    names = {f.name for f in dataclasses.fields(AggregationPlan)}
    try:
        values = {name: data[name] for name in names}
        for key in ("dimensions", "dropped_dimensions", "percentiles"):
            values[key] = tuple(values[key])
        values["percentiles"] = tuple(float(p) for p in values["percentiles"])
        values["personal_keys"] = frozenset(values["personal_keys"])
        plan = AggregationPlan(**values)
    except (KeyError, TypeError, ValueError) as exc:
        raise InvalidInput(f"malformed plan: {exc.__class__.__name__}: {exc}") from None
    if "version" in data and data["version"] != plan.version:
        raise InvalidInput(
            f"plan {plan.task_id}: version {data['version']} does not match its content ({plan.version})"
        )
    return plan
