"""The declarations federation is configured by, as frozen pydantic models.

- `Fleet` (fleet.yaml, owned by operators): regions, DCs and their endpoints, the central side.
- `Policy` (policies/<region>.yaml, owned by the compliance team): raw retention, personal-data
  keys, exportable dimensions, k-anonymity, central retention for aggregates.
- `Aggregation` (tickscripts/<name>.yaml, owned by platform engineers): what to compute.
- `Detection` (tickscripts/<name>.yaml with `kind: detection`): a local analysis keyed by a
  personal-data key, whose findings never leave the DC.

Credentials are never written in these files: only the names of environment variables that hold
them (`password_env: FEDERATION_DUB1_PASSWORD`).
"""

from __future__ import annotations

import re
from typing import Annotated, Any, Literal

from pydantic import AfterValidator, BaseModel, BeforeValidator, ConfigDict, Field, model_validator

from federation.core.durations import DAY_NS, HOUR_NS, NS_PER_UNIT, format_duration, parse_duration

CHECK_INTERVAL_NS = 30 * NS_PER_UNIT["m"]
"""InfluxDB's default retention check interval, part of a raw point's worst-case lifetime."""

_ENV_NAME = re.compile(r"^[A-Z_][A-Z0-9_]*$")
_IDENT = re.compile(r"^[a-z][a-z0-9_]*$")
_DC_NAME = re.compile(r"^[a-z][a-z0-9-]*$")
_SECRET_KEYS = ("password", "token", "secret", "api_key", "apikey", "key")


def _duration(value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, str | int):
        raise ValueError("expected a duration such as 1h, 90m or 400d")
    if isinstance(value, int):
        if value == 0:
            return 0
        raise ValueError("write a duration with its unit, such as 1h, 90m or 400d")
    return parse_duration(value)


Duration = Annotated[int, BeforeValidator(_duration)]
"""A duration written `<integer><unit>` in YAML, held as nanoseconds."""


def _env_name(value: str) -> str:
    if not _ENV_NAME.match(value):
        raise ValueError(
            "must name an environment variable (e.g. FEDERATION_DUB1_PASSWORD); "
            "this looks like a secret written inline, which is never allowed in config"
        )
    return value


EnvName = Annotated[str, AfterValidator(_env_name)]


def _identifier(value: str) -> str:
    if not _IDENT.match(value):
        raise ValueError("must start with a lower-case letter and hold only a-z, 0-9 and _")
    return value


Identifier = Annotated[str, AfterValidator(_identifier)]


class Model(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    @model_validator(mode="before")
    @classmethod
    def _no_inline_secrets(cls, data: Any) -> Any:
        # A secret written as a value is worse than an unknown key: say exactly what to do.
        if isinstance(data, dict):
            for key in data:
                if isinstance(key, str) and key.lower() in _SECRET_KEYS:
                    raise ValueError(
                        f"{key!r}: secrets are never written in config; "
                        f"use {key}_env with the name of an environment variable"
                    )
        return data


class Credentials(Model):
    """Where to find credentials: names of environment variables, never values."""

    username_env: EnvName | None = None
    password_env: EnvName | None = None


class InfluxEndpoint(Credentials):
    url: str = Field(pattern=r"^https?://")


class KapacitorEndpoint(Credentials):
    url: str = Field(pattern=r"^https?://")


class DataCenter(Model):
    region: str
    influxdb: InfluxEndpoint
    kapacitor: KapacitorEndpoint | None = None
    raw_database: str = "mail"
    agent_token_env: EnvName


class Region(Model):
    description: str = ""


class Central(Model):
    influxdb: InfluxEndpoint
    database: str = "federation"
    coordinator_url: str = Field(pattern=r"^https?://")
    # Further coordinator replicas over the same ledger: agents and operator commands try
    # coordinator_url first, then these, failing over with back-off.
    coordinator_replicas: tuple[Annotated[str, Field(pattern=r"^https?://")], ...] = ()
    ledger_url: str = "sqlite:///federation-ledger.sqlite"
    reader_token_env: EnvName
    # Optional: without it the coordinator's operator endpoints (reload, rollouts) are disabled.
    operator_token_env: EnvName | None = None
    reporting_timezones: tuple[str, ...] = ("UTC",)
    gateway_cluster: str = Field(default="federation_gateway", pattern=r"^[A-Za-z0-9._-]+$")

    @property
    def coordinator_urls(self) -> tuple[str, ...]:
        """Every coordinator replica's URL, `coordinator_url` first."""
        return tuple(dict.fromkeys((self.coordinator_url, *self.coordinator_replicas)))

    @model_validator(mode="after")
    def _zones_exist(self) -> Central:
        from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

        for zone in self.reporting_timezones:
            try:
                ZoneInfo(zone)
            except (ZoneInfoNotFoundError, ValueError):
                raise ValueError(f"unknown time zone {zone!r} in reporting_timezones") from None
        return self


class Fleet(Model):
    """fleet.yaml: the regions, the DCs and the central side of one federation."""

    name: str = "federation"
    regions: dict[Identifier, Region]
    dcs: dict[str, DataCenter]
    central: Central

    @model_validator(mode="after")
    def _dc_names(self) -> Fleet:
        for name in self.dcs:
            if not _DC_NAME.match(name):
                raise ValueError(f"DC name {name!r} must be lower-case letters, digits and -")
        return self


class RawMeasurement(Model):
    """One raw measurement of a region: which keys are personal, which may be exported."""

    personal_tags: tuple[str, ...] = ()
    personal_fields: tuple[str, ...] = ()
    exportable_dimensions: tuple[str, ...] = ()

    @property
    def personal_keys(self) -> frozenset[str]:
        return frozenset(self.personal_tags) | frozenset(self.personal_fields)


_NAMED_DURATION = re.compile(r"(?:^|_)([0-9]+(?:ns|u|ms|s|m|h|d|w))(?=_|$)")
"""A duration stated in an RP name, such as the `30d` of `raw_30d`."""


class RawRetention(Model):
    retention_policy: str = Field(pattern=r"^[A-Za-z0-9_]+$")
    """Best without a duration (`raw`): a retention change then alters the RP in place, with
    its data, and the name never disagrees with `SHOW RETENTION POLICIES`."""
    max_retention: Duration
    retention: Duration
    shard_duration: Duration

    @model_validator(mode="after")
    def _name_tells_the_truth(self) -> RawRetention:
        for match in _NAMED_DURATION.finditer(self.retention_policy):
            if parse_duration(match.group(1)) != self.retention:
                declared = format_duration(self.retention) if self.retention else "infinite"
                raise ValueError(
                    f"retention_policy {self.retention_policy} states {match.group(1)} but the "
                    f"retention is {declared}: the name would mislead whoever reads it; name "
                    "the raw RP without a duration (e.g. raw), so that its retention changes "
                    "in place"
                )
        return self

    @model_validator(mode="after")
    def _within_law(self) -> RawRetention:
        if self.max_retention and (self.retention == 0 or self.retention > self.max_retention):
            declared = format_duration(self.retention) if self.retention else "infinite"
            raise ValueError(
                f"retention {declared} is longer than the region's maximum "
                f"{format_duration(self.max_retention)}"
            )
        if self.retention and self.shard_duration >= self.retention:
            raise ValueError("shard_duration must be shorter than retention")
        # InfluxDB 1.x drops whole shard groups once all of a group is past the retention, so a
        # point can outlive the declared retention by one shard duration (plus the retention
        # check interval, 30m by default, which the audit adds to its evidence).
        budget = self.max_retention - CHECK_INTERVAL_NS - self.shard_duration
        if self.max_retention and self.retention > budget:
            raise ValueError(
                f"a raw point can live up to retention + shard duration + InfluxDB's retention "
                f"check interval ({format_duration(self.retention)} + "
                f"{format_duration(self.shard_duration)} + 30m), beyond the region's maximum "
                f"{format_duration(self.max_retention)}: declare a retention of at most "
                f"{format_duration(_floor_readable(budget))}"
            )
        return self


def _floor_readable(ns: int) -> int:
    """Round a duration down to whole days (whole hours below a day), for advice in messages."""
    unit = DAY_NS if ns >= DAY_NS else HOUR_NS
    return max(ns, 0) // unit * unit


class CentralRetention(Model):
    retention: Duration
    shard_duration: Duration = 7 * DAY_NS

    @property
    def retention_policy(self) -> str:
        """Central keeps one RP per distinct duration, e.g. `agg_400d`."""
        return "agg_" + format_duration(self.retention) if self.retention else "agg_inf"


class Policy(Model):
    """policies/<region>.yaml: what the law of one region allows."""

    region: Identifier
    jurisdiction: str
    raw: RawRetention
    measurements: dict[str, RawMeasurement]
    min_group_events: int = Field(ge=1)
    central: CentralRetention


class Source(Model):
    measurement: str
    field: str
    unit: str = "ms"
    database: str | None = None


def _percentile(value: float) -> float:
    if not 0 < value < 100:
        raise ValueError(f"percentile {value} must lie strictly between 0 and 100")
    return float(value)


def check_window_rules(window: int, lookback: int) -> None:
    """The window divides a day; the look-back is a whole multiple of it (ValueError if not)."""
    if window <= 0 or DAY_NS % window != 0:
        raise ValueError(f"window {format_duration(window)} must divide 24h")
    if lookback < window or lookback % window != 0:
        raise ValueError(
            f"lookback {format_duration(lookback)} must be a whole multiple of the "
            f"window {format_duration(window)}"
        )


class Aggregation(Model):
    """tickscripts/<name>.yaml: one aggregation, declared once for every DC."""

    kind: Literal["aggregation"] = "aggregation"
    name: Identifier
    description: str = ""
    source: Source
    dimensions: tuple[str, ...]
    window: Duration
    lookback: Duration
    grace: Duration | None = None
    percentiles: tuple[Annotated[float, AfterValidator(_percentile)], ...]
    accuracy: float = Field(gt=0, lt=0.5)
    min_group_events: int | None = Field(default=None, ge=1)
    template: str = "aggregation.tick.j2"

    @model_validator(mode="after")
    def _window_rules(self) -> Aggregation:
        check_window_rules(self.window, self.lookback)
        if len(set(self.percentiles)) != len(self.percentiles):
            raise ValueError("percentiles repeat a value")
        if len(set(self.dimensions)) != len(self.dimensions):
            raise ValueError("dimensions repeat a name")
        return self

    @property
    def grace_ns(self) -> int:
        """Grace after the look-back before a window counts as missing (default one window)."""
        return self.window if self.grace is None else self.grace

    @property
    def lookback_windows(self) -> int:
        return self.lookback // self.window


class DetectionSource(Model):
    measurement: str
    database: str | None = None


class Threshold(Model):
    """A key is a finding when its count reaches both the floor and `factor` × the median."""

    at_least: int = Field(ge=2)
    """The absolute floor: a count below it is never a finding, however quiet the window."""
    factor_over_median: float = Field(ge=1.0, le=1_000_000.0)
    """How far above the window's median key a count must be (1.0: the floor alone decides)."""


class Detection(Model):
    """tickscripts/<name>.yaml with `kind: detection`: counts per personal-data key and window.

    Per window, each distinct value of the key `per` gets a count — of its events, or of the distinct
    values of `distinct` — and is a finding when that count reaches the threshold. Findings
    (personal data) stay in the DC; central learns how many keys were evaluated and how many
    were findings.
    """

    kind: Literal["detection"]
    name: Identifier
    description: str = ""
    source: DetectionSource
    per: str
    """The personal-data key findings are about (`sender`, `client_ip`)."""
    distinct: str | None = None
    """Count distinct values of this key per key; absent: count events."""
    threshold: Threshold
    window: Duration
    lookback: Duration
    grace: Duration | None = None
    webhook_url_env: EnvName | None = None
    """The environment variable holding an in-region webhook's URL, if findings are posted."""
    template: str = "detection.tick.j2"

    @model_validator(mode="after")
    def _rules(self) -> Detection:
        check_window_rules(self.window, self.lookback)
        if self.distinct == self.per:
            raise ValueError(f"distinct: counts distinct values of {self.per!r} per itself")
        return self

    @property
    def grace_ns(self) -> int:
        """Grace after the look-back before a window counts as missing (default one window)."""
        return self.window if self.grace is None else self.grace
