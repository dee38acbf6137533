"""What an audit reports: its findings (`Violation`) and the evidence it gathered per DC and
central, each as plain JSON-ready data. Gathering is `federation.policy.audit`'s job."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from federation.core.clock import format_rfc3339
from federation.core.durations import format_duration
from federation.policy.erase import ErasureRecord


@dataclass(frozen=True)
class Violation:
    """One finding that makes the audit fail; never quotes a personal-data value."""

    target: str
    check: str
    subject: str
    message: str
    remedy: str | None = None

    def line(self) -> str:
        """The finding on one line, with its remedy statement when there is one."""
        text = f"VIOLATION {self.target}: {self.check}: {self.subject}: {self.message}"
        return text + (f" -- fix: {self.remedy}" if self.remedy else "")

    def as_dict(self) -> dict[str, Any]:
        return {
            "target": self.target,
            "check": self.check,
            "subject": self.subject,
            "message": self.message,
            "remedy": self.remedy,
        }


@dataclass(frozen=True)
class RetentionEvidence:
    """A declared RP beside the one InfluxDB holds (`actual_*` None: no such RP)."""

    target: str
    database: str
    retention_policy: str
    declared_ns: int
    declared_shard_ns: int
    actual_ns: int | None
    actual_shard_ns: int | None
    must_be_default: bool
    is_default: bool
    worst_case_lifetime_ns: int | None
    """The actual retention + the longest shard group a point may be in (existing ones from
    `SHOW SHARD GROUPS`, or the actual shard duration) + check interval; None for an infinite
    retention or a missing RP."""
    max_retention_ns: int | None = None
    longest_shard_group_ns: int | None = None
    """The span of the longest shard group that exists in the RP (None: none exists)."""
    latest_expiry_ns: int | None = None
    """When the last existing shard group expires (None: none exists, or infinite)."""

    def as_dict(self) -> dict[str, Any]:
        def text(ns: int | None) -> str | None:
            return None if ns is None else duration_text(ns)

        return {
            "target": self.target,
            "database": self.database,
            "retention_policy": self.retention_policy,
            "declared": text(self.declared_ns),
            "actual": text(self.actual_ns),
            "declared_shard": text(self.declared_shard_ns),
            "actual_shard": text(self.actual_shard_ns),
            "must_be_default": self.must_be_default,
            "is_default": self.is_default,
            "worst_case_lifetime": text(self.worst_case_lifetime_ns),
            "max_retention": text(self.max_retention_ns),
            "longest_shard_group": text(self.longest_shard_group_ns),
            "latest_expiry": None
            if self.latest_expiry_ns is None
            else format_rfc3339(self.latest_expiry_ns),
        }


@dataclass(frozen=True)
class OldestPoint:
    """The oldest raw point of one measurement in one RP, against the lifetime allowed."""

    retention_policy: str
    measurement: str
    oldest_ns: int
    age_ns: int
    limit_ns: int | None

    @property
    def within(self) -> bool:
        return self.limit_ns is None or self.age_ns <= self.limit_ns

    def as_dict(self) -> dict[str, Any]:
        return {
            "retention_policy": self.retention_policy,
            "measurement": self.measurement,
            "oldest": format_rfc3339(self.oldest_ns),
            "age": duration_text(max(self.age_ns // 10**9, 1) * 10**9),
            "limit": None if self.limit_ns is None else duration_text(self.limit_ns),
            "within": self.within,
        }


@dataclass(frozen=True)
class DcAudit:
    """The evidence gathered on one DC (`error` set when it could not be reached)."""

    dc: str
    region: str
    url: str
    database: str
    retention: RetentionEvidence | None = None
    other_policies: tuple[str, ...] = ()
    oldest: tuple[OldestPoint, ...] = ()
    erasures: tuple[ErasureRecord, ...] = ()
    error: str | None = None

    def as_dict(self) -> dict[str, Any]:
        return {
            "dc": self.dc,
            "region": self.region,
            "url": self.url,
            "database": self.database,
            "error": self.error,
            "retention": None if self.retention is None else self.retention.as_dict(),
            "other_retention_policies": list(self.other_policies),
            "oldest_points": [p.as_dict() for p in self.oldest],
            "erasures": [e.as_dict() for e in self.erasures],
        }


@dataclass(frozen=True)
class CentralAudit:
    """What the central check looked at."""

    url: str
    database: str
    retention: tuple[RetentionEvidence, ...] = ()
    measurements: tuple[str, ...] = ()
    tag_values_sampled: int = 0
    field_values_sampled: int = 0
    error: str | None = None

    def as_dict(self) -> dict[str, Any]:
        return {
            "url": self.url,
            "database": self.database,
            "error": self.error,
            "retention": [r.as_dict() for r in self.retention],
            "measurements": list(self.measurements),
            "tag_values_sampled": self.tag_values_sampled,
            "field_values_sampled": self.field_values_sampled,
        }


@dataclass(frozen=True)
class AuditReport:
    """The whole audit: when, against which policy files, what was found."""

    time_ns: int
    policy_hashes: dict[str, str]
    check_interval_ns: int
    dcs: tuple[DcAudit, ...]
    central: CentralAudit
    violations: tuple[Violation, ...]
    warnings: tuple[str, ...] = field(default=())

    @property
    def ok(self) -> bool:
        """True when no violation was found (warnings do not fail an audit)."""
        return not self.violations

    def as_dict(self) -> dict[str, Any]:
        """JSON-ready evidence, including the audit time and each policy file's sha256."""
        return {
            "time": format_rfc3339(self.time_ns),
            "ok": self.ok,
            "policies": {
                region: {"file": f"policies/{region}.yaml", "sha256": digest}
                for region, digest in sorted(self.policy_hashes.items())
            },
            "check_interval": duration_text(self.check_interval_ns),
            "dcs": [d.as_dict() for d in self.dcs],
            "central": self.central.as_dict(),
            "violations": [v.as_dict() for v in self.violations],
            "warnings": list(self.warnings),
        }


def duration_text(ns: int) -> str:
    """A duration as people read it: `infinite`, `30d`, `31d30m`, `15d1h30m`."""
    if ns == 0:
        return "infinite"
    if ns % 10**9:
        return format_duration(ns)
    seconds = ns // 10**9
    parts = []
    for unit, size in (("d", 86_400), ("h", 3_600), ("m", 60), ("s", 1)):
        count, seconds = divmod(seconds, size)
        if count:
            parts.append(f"{count}{unit}")
    return "".join(parts)
