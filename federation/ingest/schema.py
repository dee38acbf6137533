"""Event schemas: how one JSON event maps to one line-protocol point.

A schema lives beside the policies, `policies/schemas/<measurement>.yaml`:

    measurement: delivery
    timestamp: {name: ts, format: epoch_ms}     # epoch_s|epoch_ms|epoch_us|epoch_ns|rfc3339
    tags:
      direction: {required: true}
    fields:
      latency_ms: {type: float, required: true}
      sender: {type: string}                   # personal data: always a field
    max_string_bytes: 65535

Keys of an event that the schema does not name are ignored, so an undeclared key (personal or
not) never reaches InfluxDB. The timestamp is always required: a point stamped with the time of
ingestion would differ between two runs over the same input.

A schema is checked against the region policy of the DC it is ingested into: every key the policy
declares personal must be a field, never a tag. Tags multiply series cardinality (on InfluxDB 1.6
a percentile query over ~500,000 series of a personal tag exhausted 24 GiB), and only field values
can be redacted in place when a subject asks for erasure.
"""

from __future__ import annotations

from enum import StrEnum
from pathlib import Path

from pydantic import Field, ValidationInfo, field_validator

from federation.config import FederationConfig, Policy
from federation.config.loader import line_for, parse_model_file
from federation.config.models import Model
from federation.config.yamlfile import KeyLines
from federation.core.lineprotocol import serialize
from federation.core.points import Point
from federation.errors import ConfigError, ConfigProblems, InvalidInput

SCHEMAS_DIR = Path("policies") / "schemas"
"""Where schemas live, relative to the config directory."""


class FieldType(StrEnum):
    """The four InfluxDB field types, by the JSON values each accepts."""

    float = "float"  # a JSON number (an integer is stored as a float)
    integer = "integer"  # a JSON integer within int64
    string = "string"  # a JSON string of at most `max_string_bytes` UTF-8 bytes
    boolean = "boolean"  # JSON true or false


class TimeFormat(StrEnum):
    """How an event writes its timestamp: a JSON number since the epoch, or an RFC 3339 string."""

    epoch_s = "epoch_s"
    epoch_ms = "epoch_ms"
    epoch_us = "epoch_us"
    epoch_ns = "epoch_ns"
    rfc3339 = "rfc3339"


class TagSpec(Model):
    """A key stored as a tag; its JSON value must be a non-empty string (or an integer)."""

    required: bool = False


class FieldSpec(Model):
    """A key stored as a field of one type."""

    type: FieldType
    required: bool = False


class TimestampSpec(Model):
    """The key holding the event's time, and its form."""

    name: str = Field(min_length=1)
    format: TimeFormat


def _representable(point: Point, name: str, what: str) -> None:
    """Refuse a name line protocol cannot carry, by the rules `serialize` applies."""
    try:
        serialize([point])
    except InvalidInput:
        raise ValueError(
            f"{what} {name!r} cannot be written in line protocol (empty, 'time', a line break, "
            "or a backslash InfluxDB cannot escape)"
        ) from None


class EventSchema(Model):
    """One measurement's mapping from JSON keys to tags, typed fields and the timestamp."""

    measurement: str = Field(min_length=1)
    timestamp: TimestampSpec
    tags: dict[str, TagSpec] = Field(default_factory=dict)
    fields: dict[str, FieldSpec]
    max_string_bytes: int = Field(default=65535, ge=1)

    @field_validator("measurement")
    @classmethod
    def _measurement(cls, value: str) -> str:
        _representable(Point(value, {}, {"f": 1}), value, "measurement")
        return value

    @field_validator("tags")
    @classmethod
    def _tags(cls, value: dict[str, TagSpec], info: ValidationInfo) -> dict[str, TagSpec]:
        for key in value:
            _representable(Point("m", {key: "v"}, {"f": 1}), key, "tag key")
        stamp = info.data.get("timestamp")
        if stamp is not None and stamp.name in value:
            raise ValueError(f"{stamp.name!r} is the timestamp key; it cannot also be a tag")
        return value

    @field_validator("fields")
    @classmethod
    def _fields(cls, value: dict[str, FieldSpec], info: ValidationInfo) -> dict[str, FieldSpec]:
        if not value:
            raise ValueError("declare at least one field: InfluxDB stores no point without one")
        for key in value:
            _representable(Point("m", {}, {key: 1}), key, "field key")
        both = sorted(set(info.data.get("tags", {})) & set(value))
        if both:
            raise ValueError(f"declared both as tag and as field: {', '.join(both)}")
        stamp = info.data.get("timestamp")
        if stamp is not None and stamp.name in value:
            raise ValueError(f"{stamp.name!r} is the timestamp key; it cannot also be a field")
        return value


def schema_path(config: FederationConfig, schema: Path | str | None) -> Path:
    """The schema file to use: a path as given, a bare measurement name, or the only schema.

    A bare name (`delivery`) means `policies/schemas/delivery.yaml` of the config directory;
    `None` means the one schema there, and is refused when there are none or several.
    """
    folder = config.root / SCHEMAS_DIR
    if schema is not None:
        text = str(schema)
        if "/" not in text and not text.endswith((".yaml", ".yml")):
            return folder / f"{text}.yaml"
        return Path(schema)
    found = sorted(folder.glob("*.yaml"))
    if len(found) != 1:
        names = ", ".join(p.stem for p in found) or "none"
        raise ConfigError(str(SCHEMAS_DIR), "", f"name the schema to use (found: {names})")
    return found[0]


def load_schema(config: FederationConfig, dc: str, schema: Path | str | None = None) -> EventSchema:
    """Load the schema `schema` (see `schema_path`) and check it against `dc`'s region policy.

    Raises `ConfigProblems` naming the file, key path and line of every problem: YAML syntax,
    unknown or missing keys, wrong types, a measurement the region's policy does not declare
    (its personal data would be unknown), and a personal-data key declared as a tag. Returns
    only a schema that is safe to ingest into `dc`.
    """
    path = schema_path(config, schema)
    try:
        display = str(path.relative_to(config.root))
    except ValueError:
        display = str(path)
    if not path.is_file():
        raise ConfigProblems([ConfigError(display, "", "not found")])
    problems: list[ConfigError] = []
    parsed, lines = parse_model_file(EventSchema, path, display, problems)
    if parsed is None:
        raise ConfigProblems(problems)
    in_schemas_dir = path.parent.resolve() == (config.root / SCHEMAS_DIR).resolve()
    if in_schemas_dir and parsed.measurement != path.stem:
        problems.append(
            ConfigError(
                display,
                "measurement",
                f"is {parsed.measurement!r} but the file is named for {path.stem!r}",
                lines.get("measurement"),
            )
        )
    region = config.dc(dc).region
    problems.extend(policy_problems(parsed, config.policy_for(dc), region, display, lines))
    if problems:
        raise ConfigProblems(problems)
    return parsed


def policy_problems(
    schema: EventSchema, policy: Policy, region: str, file: str, lines: KeyLines | None = None
) -> list[ConfigError]:
    """Every way `schema` breaks `policy`: an undeclared measurement, a personal key as a tag."""
    lines = lines or {}
    where = f"in region {region} (policies/{region}.yaml)"
    measurement = policy.measurements.get(schema.measurement)
    if measurement is None:
        return [
            ConfigError(
                file,
                "measurement",
                f"measurement {schema.measurement!r} is not declared {where}, "
                "so its personal data is unknown",
                lines.get("measurement"),
            )
        ]
    problems = []
    for key in schema.tags:
        if key in measurement.personal_keys:
            path = f"tags.{key}"
            problems.append(
                ConfigError(
                    file,
                    path,
                    f"{key!r} is personal data {where} and must be a field, not a tag "
                    "(tags multiply series cardinality and cannot be redacted in place)",
                    line_for(lines, path),
                )
            )
    return problems


def schema_problems(config: FederationConfig) -> list[ConfigError]:
    """Every problem of every schema under `policies/schemas/`, each reported once.

    Each schema is checked as `load_schema` checks it, against the policy of every region that
    has a DC (the schema may be ingested into any of them): YAML syntax, keys and types, its
    measurement against its file name and the region's policy, a personal key as a tag. What
    `federation validate` runs, so a schema `ingest` would refuse is caught before any DC."""
    folder = config.root / SCHEMAS_DIR
    one_dc_per_region: dict[str, str] = {}
    for name, datacenter in sorted(config.fleet.dcs.items()):
        one_dc_per_region.setdefault(datacenter.region, name)
    found: dict[str, ConfigError] = {}
    for path in sorted([*folder.glob("*.yaml"), *folder.glob("*.yml")]):
        for dc in one_dc_per_region.values():
            try:
                load_schema(config, dc, path)
            except ConfigProblems as exc:
                for problem in exc.problems:
                    found.setdefault(str(problem), problem)
    return list(found.values())
