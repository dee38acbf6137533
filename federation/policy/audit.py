"""A compliance audit: evidence that every DC and central do what the policies declare.

Per DC: the declared raw retention against the RP InfluxDB holds (duration, shard duration,
default), the oldest raw point of every measurement in every RP against the worst-case lifetime
of a raw point, personal-data keys in any RP but the declared raw one (the kept detection
findings' `key` counts as one), and the erasure records kept in the DC. InfluxDB 1.x drops whole shard groups, once a shard group's *end* is older than
the retention, on a periodic check; so a point can live up to retention + the span of its shard
group + the check interval, and that lifetime is taken from the RP and the shard groups InfluxDB
holds (`federation.policy.lifetime`), never from the declaration.

Central: every tag key and field key of every measurement against every region's personal-data
keys; a bounded sample of every tag's values and of every string field's most recent values
against the one personal-data detector (`federation.core.pii`: e-mail, IPv4 and IPv6
addresses). A finding names the measurement, the key and the pattern, never the value, and
carries the statement that removes what it found where InfluxQL has one.

The report carries the time of the audit and the sha256 of each policy file, so it can be tied
to the policies in force.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import replace
from typing import Any

from federation.config import FederationConfig
from federation.core.clock import Clock, SystemClock, format_rfc3339
from federation.core.detection_plan import FINDINGS_MEASUREMENT, FINDINGS_PERSONAL_FIELDS
from federation.core.durations import format_duration
from federation.core.influxql import quote_ident
from federation.core.pii import EMAIL, IPV4, IPV6, RE2, personal_data_kinds
from federation.errors import FederationError
from federation.influx import InfluxClient, RetentionPolicyInfo
from federation.policy.audit_report import (
    AuditReport,
    CentralAudit,
    DcAudit,
    OldestPoint,
    RetentionEvidence,
    Violation,
    duration_text,
)
from federation.policy.erase import erasure_records
from federation.policy.lifetime import Lifetime, lifetime, personal_keys_in, shard_groups
from federation.policy.raw_values import find_personal_tag_values
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

# The audit's names of the detector's kinds (`federation.core.pii`), as its findings say them.
PATTERN_NAMES = {EMAIL: "e-mail", IPV4: "ipv4", IPV6: "ipv6"}
_PATTERN_KINDS = {name: kind for kind, name in PATTERN_NAMES.items()}


def personal_patterns(value: str) -> list[str]:
    """The personal-data patterns `value` holds, by the one detector: `e-mail`, `ipv4`, `ipv6`."""
    return [PATTERN_NAMES[kind] for kind in personal_data_kinds(value)]


# --- DCs ---------------------------------------------------------------------------------------


def _retention_evidence(
    target: str,
    database: str,
    spec: RetentionSpec,
    actual: Sequence[RetentionPolicyInfo],
    lifetimes: dict[str, Lifetime],
    max_retention_ns: int | None,
    report: Callable[[Violation], None],
) -> RetentionEvidence:
    current = next((rp for rp in actual if rp.name == spec.name), None)
    held = lifetimes.get(spec.name)
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
        None if held is None else held.worst_case_ns,
        max_retention_ns,
        None if held is None or not held.longest_group_ns else held.longest_group_ns,
        None if held is None else held.latest_expiry_ns,
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
                f"duration is {duration_text(current.duration_ns)}, declared {duration_text(spec.duration_ns)}",
            )
        )
    if current.shard_duration_ns != spec.effective_shard_duration_ns:
        report(
            Violation(
                target,
                "retention",
                subject,
                f"shard duration is {duration_text(current.shard_duration_ns)}, declared "
                f"{duration_text(spec.effective_shard_duration_ns)}",
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


def _check_lifetime(
    target: str,
    rp: str,
    held: Lifetime | None,
    max_retention_ns: int,
    report: Callable[[Violation], None],
) -> None:
    """A violation when a point of the raw RP can outlive the region's maximum, judged from the
    RP's actual duration and the shard groups InfluxDB holds."""
    if held is None or not max_retention_ns:
        return
    worst = held.worst_case_ns
    if worst is not None and worst <= max_retention_ns:
        return
    if worst is None:
        message = "the retention is infinite: raw points never expire"
    else:
        group = max(held.shard_duration_ns, held.longest_group_ns)
        message = (
            f"a raw point can live up to {duration_text(worst)} (retention {duration_text(held.duration_ns)} + "
            f"shard group {duration_text(group)} + check interval {duration_text(held.check_interval_ns)})"
        )
        if held.longest_group_ns > held.shard_duration_ns:
            message += (
                f"; an existing {duration_text(held.longest_group_ns)} shard group outlives the current "
                f"shard duration {duration_text(held.shard_duration_ns)}"
            )
    report(
        Violation(
            target,
            "lifetime",
            f"retention policy {quote_ident(rp)}",
            f"{message}, beyond the region's maximum {format_duration(max_retention_ns)}",
        )
    )


def _region_personal_keys(config: FederationConfig, dc: str) -> frozenset[str]:
    measurements = config.policy_for(dc).measurements.values()
    return frozenset().union(*(m.personal_keys for m in measurements))


def _check_personal_outside_raw(
    client: InfluxClient,
    target: str,
    database: str,
    rp: RetentionPolicyInfo,
    measurement: str,
    raw_rp: str,
    personal: frozenset[str],
    report: Callable[[Violation], None],
) -> None:
    """A violation for each personal-data key that points of a non-raw RP carry: only the
    declared raw RP has the retention the law requires, so its age does not matter."""
    source = f"RP {quote_ident(rp.name)} measurement {quote_ident(measurement)}"
    for kind, key in personal_keys_in(client, database, rp.name, measurement, personal):
        report(
            Violation(
                target,
                "personal-rp",
                f"{source} {kind} key {quote_ident(key)}",
                f"personal data outside the raw RP {quote_ident(raw_rp)} (retention "
                f"{duration_text(rp.duration_ns)})",
                f"DROP RETENTION POLICY {quote_ident(rp.name)} ON {quote_ident(database)}",
            )
        )


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
            groups = shard_groups(client, database)
            held = {
                rp.name: lifetime(rp, groups.get(rp.name, ()), check_interval_ns) for rp in actual
            }
            spec = RetentionSpec(raw.retention_policy, raw.retention, raw.shard_duration, True)
            evidence = _retention_evidence(
                name, database, spec, actual, held, raw.max_retention or None, report
            )
            # A raw point may be as old as the declaration allows in the groups that exist.
            declared = Lifetime(spec.name, raw.retention, spec.effective_shard_duration_ns, 0, None,
                                check_interval_ns)  # fmt: skip
            existing = held.get(spec.name)
            if existing is not None:
                declared = replace(declared, longest_group_ns=existing.longest_group_ns)
            worst = declared.worst_case_ns
            _check_lifetime(
                name,
                raw.retention_policy,
                held.get(raw.retention_policy),
                raw.max_retention,
                report,
            )
            others = tuple(rp.name for rp in actual if rp.name != raw.retention_policy)
            oldest: list[OldestPoint] = []
            measurements = client.measurements(database)
            personal = _region_personal_keys(config, name)
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
                                f"worst-case lifetime {duration_text(worst or 0)} of a raw point",
                            )
                        )
                    if rp.name != raw.retention_policy:
                        # Kept detection findings hold personal data in their own fields.
                        keys = personal
                        if measurement == FINDINGS_MEASUREMENT:
                            keys = personal | frozenset(FINDINGS_PERSONAL_FIELDS)
                        _check_personal_outside_raw(
                            client,
                            name,
                            database,
                            rp,
                            measurement,
                            raw.retention_policy,
                            keys,
                            report,
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


def _report_personal_tag_values(
    config: FederationConfig, name: str, timeout: float, report: Callable[[Violation], None]
) -> None:
    """Report the raw series of DC `name` whose tag holds a value that looks like personal
    data (`raw_values`): the value never, a redacted series key and how to fix it."""
    datacenter = config.dc(name)
    database = datacenter.raw_database
    try:
        with connect(datacenter.influxdb, timeout=timeout) as client:
            declared = {
                measurement: policy.personal_keys
                for measurement, policy in config.policy_for(name).measurements.items()
            }
            found = (
                find_personal_tag_values(client, database, declared)
                if database in client.databases()
                else []
            )
    except FederationError as exc:
        report(Violation(name, "unreachable", datacenter.influxdb.url, str(exc)))
        return
    for f in found:
        report(
            Violation(
                name,
                "raw-personal-tag-value",
                f"measurement {quote_ident(f.measurement)} tag {quote_ident(f.key)}",
                f"{f.series} raw series ({f.values} distinct value(s)) hold a tag value that "
                f"looks like an {f.kind}, e.g. {'; '.join(f.examples)}; the executors withhold "
                "their events from every shipment",
                remedy=f"list the values in the DC with {f.listing}, then erase each with "
                f"`federation erase --dc {name} --subject - --delete-points`",
            )
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
            groups = shard_groups(client, database)
            held = {
                rp.name: lifetime(rp, groups.get(rp.name, ()), check_interval_ns) for rp in actual
            }
            evidence = tuple(
                _retention_evidence(CENTRAL, database, spec, actual, held, None, report)
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
        regex = RE2[_PATTERN_KINDS[pattern]]
        remedy = f"DROP SERIES FROM {m} WHERE {k} =~ /{regex}/" if drop else None
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
        if result.error is None:
            _report_personal_tag_values(config, name, timeout, found.append)
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
