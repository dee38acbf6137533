"""A compliance audit: evidence that every DC and central do what the policies declare.

Per DC: the declared raw retention against the RP InfluxDB holds (duration, shard duration,
default), the oldest raw point of every measurement in every RP against the worst-case lifetime
of a raw point, and the erasure records kept in the DC. InfluxDB 1.x drops whole shard groups,
once a shard group's *end* is older than the retention, on a periodic check; so a point can live
up to retention + shard duration + the check interval.

Central: every tag key and field key of every measurement against every region's personal-data
keys; a bounded sample of every tag's values and of every string field's most recent values
against e-mail and IP (v4 and v6) patterns. A finding names the measurement, the key and the
pattern, never the value, and carries the statement that removes what it found where InfluxQL
has one.

The report carries the time of the audit and the sha256 of each policy file, so it can be tied
to the policies in force.
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

from federation.clock import Clock, SystemClock, format_rfc3339
from federation.config import FederationConfig
from federation.durations import format_duration
from federation.errors import FederationError
from federation.influx import InfluxClient, RetentionPolicyInfo, quote_ident
from federation.policy.erase import ErasureRecord, erasure_records
from federation.policy.retention import (
    CENTRAL,
    DEFAULT_TIMEOUT_S,
    RetentionSpec,
    connect,
    desired_central_retention,
    for_each_target,
)

DEFAULT_CHECK_INTERVAL_NS = 30 * 60 * 10**9
"""InfluxDB 1.x's default `[retention] check-interval`."""
DEFAULT_TAG_VALUE_SAMPLE = 1_000
DEFAULT_FIELD_VALUE_SAMPLE = 100

# --- personal-data patterns --------------------------------------------------------------------

_EMAIL = re.compile(r"[A-Za-z0-9._%+'-]+@[A-Za-z0-9-]+(?:\.[A-Za-z0-9-]+)*\.[A-Za-z]{2,}")
_IPV4_CANDIDATE = re.compile(r"(?<![0-9.])(?:[0-9]{1,3}\.){3}[0-9]{1,3}(?![0-9.])")
_IPV6_CANDIDATE = re.compile(
    r"(?<![0-9A-Za-z:.])[0-9A-Fa-f:.]*:[0-9A-Fa-f:.]*:[0-9A-Fa-f:.]*(?:%[0-9A-Za-z]+)?(?![0-9A-Za-z])"
)

# InfluxQL regular expressions (Go RE2) for DROP SERIES, matching what the patterns match.
_DROP_REGEX = {
    "e-mail": r"[A-Za-z0-9._%+'-]+@[A-Za-z0-9-]+(\.[A-Za-z0-9-]+)*\.[A-Za-z]{2,}",
    "ipv4": r"(^|[^0-9.])([0-9]{1,3}\.){3}[0-9]{1,3}($|[^0-9.])",
    "ipv6": r"[0-9A-Fa-f]*:[0-9A-Fa-f]*:[0-9A-Fa-f:.]*",
}


def _is_ipv4(text: str) -> bool:
    try:
        ipaddress.IPv4Address(text)
    except ValueError:
        return False
    return True


def _is_ipv6(text: str) -> bool:
    address = text.split("%", 1)[0]
    for candidate in (address, address.rstrip(".")):
        if candidate in ("::", ""):
            continue
        try:
            ipaddress.IPv6Address(candidate)
        except ValueError:
            continue
        return True
    return False


def personal_patterns(value: str) -> list[str]:
    """The names of the personal-data patterns `value` contains: `e-mail`, `ipv4`, `ipv6`."""
    found = []
    if _EMAIL.search(value):
        found.append("e-mail")
    if any(_is_ipv4(m.group()) for m in _IPV4_CANDIDATE.finditer(value)):
        found.append("ipv4")
    if any(_is_ipv6(m.group()) for m in _IPV6_CANDIDATE.finditer(value)):
        found.append("ipv6")
    return found


# --- report ------------------------------------------------------------------------------------


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
    """Declared retention + shard duration + check interval; None for an infinite retention."""
    max_retention_ns: int | None = None

    def as_dict(self) -> dict[str, Any]:
        def text(ns: int | None) -> str | None:
            return None if ns is None else _text(ns)

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
            "age": _text(max(self.age_ns // 10**9, 1) * 10**9),
            "limit": None if self.limit_ns is None else _text(self.limit_ns),
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
            "check_interval": _text(self.check_interval_ns),
            "dcs": [d.as_dict() for d in self.dcs],
            "central": self.central.as_dict(),
            "violations": [v.as_dict() for v in self.violations],
            "warnings": list(self.warnings),
        }


# --- DCs ---------------------------------------------------------------------------------------


def _retention_evidence(
    target: str,
    database: str,
    spec: RetentionSpec,
    actual: Sequence[RetentionPolicyInfo],
    check_interval_ns: int,
    max_retention_ns: int | None,
    report: Callable[[Violation], None],
) -> RetentionEvidence:
    current = next((rp for rp in actual if rp.name == spec.name), None)
    worst = (
        None
        if spec.duration_ns == 0
        else spec.duration_ns + spec.effective_shard_duration_ns + check_interval_ns
    )
    evidence = RetentionEvidence(
        target,
        database,
        spec.name,
        spec.duration_ns,
        spec.effective_shard_duration_ns,
        None if current is None else current.duration_ns,
        None if current is None else current.shard_duration_ns,
        spec.default,
        current is not None and current.default,
        worst,
        max_retention_ns,
    )
    subject = f"database {quote_ident(database)} RP {quote_ident(spec.name)}"
    if current is None:
        report(Violation(target, "retention", subject, "declared RP does not exist"))
        return evidence
    if current.duration_ns != spec.duration_ns:
        report(
            Violation(
                target,
                "retention",
                subject,
                f"duration is {_text(current.duration_ns)}, declared {_text(spec.duration_ns)}",
            )
        )
    if current.shard_duration_ns != spec.effective_shard_duration_ns:
        report(
            Violation(
                target,
                "retention",
                subject,
                f"shard duration is {_text(current.shard_duration_ns)}, declared "
                f"{_text(spec.effective_shard_duration_ns)}",
            )
        )
    if spec.default and not current.default:
        default = next((rp.name for rp in actual if rp.default), "none")
        report(
            Violation(
                target,
                "default-rp",
                subject,
                f"is not the default RP (the default is {default}): raw points written "
                "without an RP go elsewhere",
            )
        )
    return evidence


def _text(ns: int) -> str:
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


def _oldest(client: InfluxClient, database: str, rp: str, measurement: str) -> int | None:
    source = ".".join(quote_ident(p) for p in (database, rp, measurement))
    for series in client.query(f"SELECT * FROM {source} ORDER BY time ASC LIMIT 1"):
        for row in series.values:
            return int(row[series.columns.index("time")])
    return None


def _audit_dc(
    config: FederationConfig,
    name: str,
    now_ns: int,
    check_interval_ns: int,
    timeout: float,
    report: Callable[[Violation], None],
    warn: Callable[[str], None],
) -> DcAudit:
    datacenter = config.dc(name)
    raw = config.policy_for(name).raw
    database = datacenter.raw_database
    base = DcAudit(name, datacenter.region, datacenter.influxdb.url, database)
    try:
        with connect(datacenter.influxdb, timeout=timeout) as client:
            erasures = tuple(erasure_records(client))
            if database not in client.databases():
                report(Violation(name, "retention", f"database {quote_ident(database)}", "missing"))
                return replace(base, erasures=erasures)
            actual = client.retention_policies(database)
            spec = RetentionSpec(raw.retention_policy, raw.retention, raw.shard_duration, True)
            evidence = _retention_evidence(
                name, database, spec, actual, check_interval_ns, raw.max_retention or None, report
            )
            worst = evidence.worst_case_lifetime_ns
            if worst is not None and raw.max_retention and worst > raw.max_retention:
                # InfluxDB drops whole shard groups, so this is how long a point really lives.
                report(
                    Violation(
                        name,
                        "lifetime",
                        f"retention policy {quote_ident(raw.retention_policy)}",
                        f"a raw point can live up to {_text(worst)} (retention + shard duration "
                        f"+ check interval), beyond the region's maximum "
                        f"{format_duration(raw.max_retention)}",
                    )
                )
            others = tuple(rp.name for rp in actual if rp.name != raw.retention_policy)
            oldest: list[OldestPoint] = []
            measurements = client.measurements(database)
            for rp in actual:
                for measurement in measurements:
                    first = _oldest(client, database, rp.name, measurement)
                    if first is None:
                        continue
                    point = OldestPoint(rp.name, measurement, first, now_ns - first, worst)
                    oldest.append(point)
                    if not point.within:
                        report(
                            Violation(
                                name,
                                "raw-age",
                                f"RP {quote_ident(rp.name)} measurement {quote_ident(measurement)}",
                                f"oldest point is {format_rfc3339(first)}, older than the "
                                f"worst-case lifetime {_text(worst or 0)} of a raw point",
                            )
                        )
    except FederationError as exc:
        report(Violation(name, "unreachable", datacenter.influxdb.url, str(exc)))
        return replace(base, error=str(exc))
    return DcAudit(
        name,
        datacenter.region,
        datacenter.influxdb.url,
        database,
        evidence,
        others,
        tuple(oldest),
        erasures,
    )


# --- central -----------------------------------------------------------------------------------


def _personal_keys(config: FederationConfig) -> dict[str, list[str]]:
    """Every key any region declares personal, with the regions that do."""
    keys: dict[str, set[str]] = {}
    for region, policy in config.policies.items():
        for measurement in policy.measurements.values():
            for key in measurement.personal_keys:
                keys.setdefault(key, set()).add(region)
    return {key: sorted(regions) for key, regions in keys.items()}


def _values(series_list: Sequence[Any], column: int) -> list[Any]:
    return [row[column] for series in series_list for row in series.values]


def _audit_central(
    config: FederationConfig,
    check_interval_ns: int,
    tag_sample: int,
    field_sample: int,
    timeout: float,
    report: Callable[[Violation], None],
) -> CentralAudit:
    central = config.fleet.central
    database = central.database
    base = CentralAudit(central.influxdb.url, database)
    personal = _personal_keys(config)
    desired = desired_central_retention(config)
    tag_count = field_count = 0
    try:
        with connect(central.influxdb, timeout=timeout) as client:
            if database not in client.databases():
                report(
                    Violation(CENTRAL, "retention", f"database {quote_ident(database)}", "missing")
                )
                return base
            actual = client.retention_policies(database)
            evidence = tuple(
                _retention_evidence(
                    CENTRAL, database, spec, actual, check_interval_ns, None, report
                )
                for spec in desired.policies
            )
            measurements = tuple(client.measurements(database))
            for measurement in measurements:
                m = quote_ident(measurement)
                tag_keys = client.tag_keys(database, measurement)
                for key in tag_keys:
                    if key in personal:
                        _report_personal_tag(
                            client,
                            database,
                            measurement,
                            key,
                            personal[key],
                            [rp.name for rp in actual],
                            report,
                        )
                    # Without a WHERE, InfluxDB 1.x also lists values of dropped series.
                    k = quote_ident(key)
                    q = f"SHOW TAG VALUES FROM {m} WITH KEY = {k} WHERE {k} != '' LIMIT {tag_sample}"
                    values = _values(client.query(q, database=database), 1)
                    tag_count += len(values)
                    _report_values(CENTRAL, measurement, "tag", key, values, report, drop=True)
                for rp in actual:
                    source = f"{quote_ident(rp.name)}.{m}"
                    q = f"SHOW FIELD KEYS FROM {source}"
                    fields = {
                        row[0]: row[1]
                        for series in client.query(q, database=database)
                        for row in series.values
                    }
                    for key, kind in sorted(fields.items()):
                        if key in personal:
                            report(
                                Violation(
                                    CENTRAL,
                                    "personal-key",
                                    f"measurement {m} field key {quote_ident(key)}",
                                    f"declared personal data in {', '.join(personal[key])}; "
                                    "InfluxDB 1.x cannot drop one field",
                                    f"DROP MEASUREMENT {m}",
                                )
                            )
                        if kind != "string":
                            continue
                        q = (
                            f"SELECT {quote_ident(key)} FROM {source} "
                            f"ORDER BY time DESC LIMIT {field_sample}"
                        )
                        sampled = [
                            v
                            for v in _values(client.query(q, database=database), 1)
                            if isinstance(v, str)
                        ]
                        field_count += len(sampled)
                        _report_values(CENTRAL, measurement, "field", key, sampled, report)
    except FederationError as exc:
        report(Violation(CENTRAL, "unreachable", central.influxdb.url, str(exc)))
        return CentralAudit(central.influxdb.url, database, error=str(exc))
    return CentralAudit(
        central.influxdb.url, database, evidence, measurements, tag_count, field_count
    )


def _report_personal_tag(
    client: InfluxClient,
    database: str,
    measurement: str,
    key: str,
    regions: Sequence[str],
    rps: Sequence[str],
    report: Callable[[Violation], None],
) -> None:
    m, k = quote_ident(measurement), quote_ident(key)
    where = f"WHERE {k} != ''"
    # SHOW SERIES reads one RP (the default unless named); tag keys and DROP SERIES span them all.
    count = [
        c
        for rp in rps
        for c in _values(
            client.query(
                f"SHOW SERIES EXACT CARDINALITY FROM {quote_ident(rp)}.{m} {where}",
                database=database,
            ),
            0,
        )
    ]
    dcs = _values(
        client.query(f'SHOW TAG VALUES FROM {m} WITH KEY = "dc" {where}', database=database), 1
    )
    total = sum(int(c) for c in count)
    if total == 0:
        return  # only a dropped series' leftover in the index, which SHOW TAG KEYS still lists
    held = f"{total} central series hold it"
    if dcs:
        held += f" (from {', '.join(sorted(str(dc) for dc in dcs))})"
    report(
        Violation(
            CENTRAL,
            "personal-key",
            f"measurement {m} tag key {k}",
            f"declared personal data in {', '.join(regions)}; {held}",
            f"DROP SERIES FROM {m} {where}",
        )
    )


def _report_values(
    target: str,
    measurement: str,
    kind: str,
    key: str,
    values: Sequence[Any],
    report: Callable[[Violation], None],
    *,
    drop: bool = False,
) -> None:
    counts: dict[str, int] = {}
    for value in values:
        for pattern in personal_patterns(str(value)):
            counts[pattern] = counts.get(pattern, 0) + 1
    m, k = quote_ident(measurement), quote_ident(key)
    for pattern, count in sorted(counts.items()):
        remedy = f"DROP SERIES FROM {m} WHERE {k} =~ /{_DROP_REGEX[pattern]}/" if drop else None
        report(
            Violation(
                target,
                "personal-value",
                f"measurement {m} {kind} {k}",
                f"{count} of {len(values)} sampled values match the {pattern} pattern",
                remedy,
            )
        )


# --- entry point -------------------------------------------------------------------------------


def audit(
    config: FederationConfig,
    *,
    check_interval_ns: int = DEFAULT_CHECK_INTERVAL_NS,
    tag_value_sample: int = DEFAULT_TAG_VALUE_SAMPLE,
    field_value_sample: int = DEFAULT_FIELD_VALUE_SAMPLE,
    clock: Clock | None = None,
    timeout: float = DEFAULT_TIMEOUT_S,
) -> AuditReport:
    """Audit every DC and central against the loaded policies; read-only.

    Every DC is audited even when some are unreachable (each such DC is a violation naming its
    URL). The report lists every violation found, in the order DCs (sorted), central; none of
    them quotes a personal-data value. `check_interval_ns` is the InfluxDB retention check
    interval used in the worst-case lifetime of a raw point; the sample sizes bound how many
    tag values per key and recent string values per field are read at central. Raises
    ConfigError only for a policy set that cannot be planned (see `desired_central_retention`).
    """
    now_ns = (clock or SystemClock()).now_ns()
    names = sorted(config.fleet.dcs)

    def one(name: str) -> tuple[DcAudit, list[Violation], list[str]]:
        found: list[Violation] = []
        warnings: list[str] = []
        result = _audit_dc(
            config, name, now_ns, check_interval_ns, timeout, found.append, warnings.append
        )
        return result, found, warnings

    dc_results = for_each_target(names, one)
    violations = [v for _, found, _ in dc_results for v in found]
    warnings = [w for _, _, found in dc_results for w in found]
    central = _audit_central(
        config, check_interval_ns, tag_value_sample, field_value_sample, timeout, violations.append
    )
    return AuditReport(
        now_ns,
        dict(config.policy_hashes),
        check_interval_ns,
        tuple(result for result, _, _ in dc_results),
        central,
        tuple(violations),
        tuple(warnings),
    )
