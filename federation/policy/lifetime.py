"""What InfluxDB really holds, for the audit: each RP's shard groups and personal-data keys.

A point lives until InfluxDB's periodic retention check (every `check-interval`) finds its whole
shard group expired: a group expires at its end + the RP's duration. So the longest a point can
live is the RP's duration + the span of the longest shard group it may land in + the check
interval. Shard groups that exist keep the span they were created with: after a shard duration
change (1d -> 12h) the old 1-day groups still hold points for up to duration + 1d. The evidence
therefore comes from `SHOW SHARD GROUPS` and `SHOW RETENTION POLICIES`, never from the config.

Personal data may only live in the RP the region declares for raw data: any personal-data key in
another RP of the raw database (`autogen`, infinite by default) is found from `SHOW FIELD KEYS`
(per RP) and `SHOW SERIES EXACT CARDINALITY` (per RP, for tag keys, whose index spans every RP).
"""

from __future__ import annotations

from collections.abc import Collection, Sequence
from dataclasses import dataclass

from federation.core.clock import parse_rfc3339
from federation.core.influxql import quote_ident
from federation.influx import InfluxClient, RetentionPolicyInfo, rows


@dataclass(frozen=True)
class ShardGroup:
    """One shard group as `SHOW SHARD GROUPS` reports it (times in ns)."""

    retention_policy: str
    start_ns: int
    end_ns: int
    expiry_ns: int

    @property
    def span_ns(self) -> int:
        return self.end_ns - self.start_ns


def shard_groups(client: InfluxClient, database: str) -> dict[str, list[ShardGroup]]:
    """Per RP of `database`, the shard groups that exist now (InfluxError when unreachable)."""
    result: dict[str, list[ShardGroup]] = {}
    for row in rows(client.query("SHOW SHARD GROUPS")):
        if row["database"] != database:
            continue
        group = ShardGroup(
            str(row["retention_policy"]),
            parse_rfc3339(str(row["start_time"])),
            parse_rfc3339(str(row["end_time"])),
            parse_rfc3339(str(row["expiry_time"])),
        )
        result.setdefault(group.retention_policy, []).append(group)
    return result


@dataclass(frozen=True)
class Lifetime:
    """How long a point can live in one RP, from the RP and the shard groups InfluxDB holds.

    `longest_group_ns` is the span of the longest existing shard group (0: none exists);
    `latest_expiry_ns` the latest expiry among them (None: none exists, or infinite).
    """

    retention_policy: str
    duration_ns: int
    shard_duration_ns: int
    longest_group_ns: int
    latest_expiry_ns: int | None
    check_interval_ns: int

    @property
    def worst_case_ns(self) -> int | None:
        """Duration + the longest group a point may be in (existing or yet to be created) +
        the check interval; None for an infinite retention."""
        if self.duration_ns == 0:
            return None
        span = max(self.shard_duration_ns, self.longest_group_ns)
        return self.duration_ns + span + self.check_interval_ns


def lifetime(
    rp: RetentionPolicyInfo, groups: Sequence[ShardGroup], check_interval_ns: int
) -> Lifetime:
    """The lifetime evidence of `rp` given its existing shard `groups`."""
    longest = max((g.span_ns for g in groups), default=0)
    expiry = None if rp.duration_ns == 0 or not groups else max(g.expiry_ns for g in groups)
    return Lifetime(
        rp.name, rp.duration_ns, rp.shard_duration_ns, longest, expiry, check_interval_ns
    )


def personal_keys_in(
    client: InfluxClient,
    database: str,
    rp: str,
    measurement: str,
    personal: Collection[str],
) -> list[tuple[str, str]]:
    """The (kind, key) pairs of `personal` keys that points of `rp`.`measurement` carry: a field
    key the RP's shards hold, or a tag key with at least one series in the RP. Sorted."""
    source = f"{quote_ident(rp)}.{quote_ident(measurement)}"
    found: list[tuple[str, str]] = []
    fields = {
        row["fieldKey"]
        for row in rows(client.query(f"SHOW FIELD KEYS FROM {source}", database=database))
    }
    found += [("field", key) for key in sorted(fields & set(personal))]
    tags = set(client.tag_keys(database, measurement)) & set(personal) - fields
    for key in sorted(tags):
        q = f"SHOW SERIES EXACT CARDINALITY FROM {source} WHERE {quote_ident(key)} != ''"
        if any(int(row["count"]) for row in rows(client.query(q, database=database))):
            found.append(("tag", key))
    return found
