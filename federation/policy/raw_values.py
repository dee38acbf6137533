"""Raw series whose tag values look like personal data: found for the audit, named redacted.

Ingest refuses such a tag value, but a DC's raw database may hold one written by something
else. The executors keep such a group out of every shipment (its events counted as withheld in
the manifest), so central stays clean; this finds the series, so the operator can erase them.

A finding names the DC, database, measurement, tag key, the kind of value (`federation.core.pii`,
the gateway's detector), how many series hold one, and a few series keys with every
personal-looking value replaced by its kind (`delivery,customer=<e-mail address>,mailer=mx1`).
The value itself, or a hash of it, is never given: the audit report leaves the region and goes
to the compliance team, and an unsalted hash of an e-mail address is still personal data
(pseudonymous, and reversed by hashing candidate addresses). The operator lists the values
in-region with the statement the finding carries, then erases each subject.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

from federation.core.influxql import quote_ident, quote_string
from federation.core.lineprotocol import parse
from federation.core.pii import personal_data_kind
from federation.errors import FederationError
from federation.influx import InfluxClient

EXAMPLES = 5
"""Series keys shown per finding."""

# InfluxQL regular expressions (Go RE2) that list candidates of each kind in-region.
_LISTING_REGEX = {
    "e-mail address": r"@|%40",
    "IPv4 address": r"[0-9]+\.[0-9]+\.[0-9]+\.[0-9]+",
    "IPv6 address": r":.*:",
}


@dataclass
class PersonalTagValues:
    """The series of one measurement whose tag `key` holds values of one personal kind."""

    database: str
    measurement: str
    key: str
    kind: str
    values: int = 0
    series: int = 0
    examples: list[str] = field(default_factory=list)

    @property
    def listing(self) -> str:
        """The InfluxQL statement that lists the candidate values, to run inside the DC."""
        return (
            f"SHOW TAG VALUES ON {quote_ident(self.database)} FROM "
            f"{quote_ident(self.measurement)} WITH KEY = {quote_ident(self.key)} "
            f"WHERE {quote_ident(self.key)} =~ /{_LISTING_REGEX[self.kind]}/"
        )


def redacted_series_key(series_key: str) -> str:
    """A series key with every tag value that looks like personal data replaced by its kind."""
    try:
        (point,) = parse(f"{series_key} f=1 0")
    except (FederationError, ValueError):
        return "<a series key that does not parse>"
    parts = [point.measurement]
    for key, value in sorted(point.tags.items()):
        kind = personal_data_kind(value)
        parts.append(f"{key}=<{kind}>" if kind else f"{key}={value}")
    return ",".join(parts)


def find_personal_tag_values(
    client: InfluxClient, database: str, declared: Mapping[str, frozenset[str]]
) -> list[PersonalTagValues]:
    """Every (measurement, tag key, kind) of `database` with a tag value that looks like
    personal data, from the series index (series whose points were all deleted are gone).

    Keys `declared` personal for their measurement are left out: their values are personal by
    declaration, never exported, and a personal key kept as a tag is a finding of its own.
    """
    found: dict[tuple[str, str, str], PersonalTagValues] = {}
    for measurement in sorted(client.measurements(database)):
        source = quote_ident(measurement)
        skip = declared.get(measurement, frozenset())
        for key in sorted(set(client.tag_keys(database, measurement)) - skip):
            # A condition makes InfluxDB 1.x read the series index; a bare SHOW TAG VALUES may
            # still list the value of a series already dropped.
            q = (
                f"SHOW TAG VALUES FROM {source} WITH KEY = {quote_ident(key)} "
                f"WHERE {quote_ident(key)} =~ /./"
            )
            for series in client.iter_series(q, database=database):
                for row in series.values:
                    value = str(row[-1])
                    kind = personal_data_kind(value)
                    if kind is None:
                        continue
                    entry = found.setdefault(
                        (measurement, key, kind),
                        PersonalTagValues(database, measurement, key, kind),
                    )
                    entry.values += 1
                    _count_series(client, database, entry, value)
    return list(found.values())


def _count_series(
    client: InfluxClient, database: str, entry: PersonalTagValues, value: str
) -> None:
    q = (
        f"SHOW SERIES FROM {quote_ident(entry.measurement)} "
        f"WHERE {quote_ident(entry.key)} = {quote_string(value)}"
    )
    for series in client.iter_series(q, database=database):
        for row in series.values:
            entry.series += 1
            if len(entry.examples) < EXAMPLES:
                entry.examples.append(redacted_series_key(str(row[0])))
