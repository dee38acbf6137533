"""Proof that no personal data reached central: every key and every value, checked.

Unlike the audit's sampling, this reads everything in the central database: every measurement
of every retention policy, its tag keys and field keys, every tag value, and every string field
value. Each is compared with the personal-data keys of every region, with a set of known
personal values (what a test or the demo generated), and with the e-mail and IP patterns. A
finding names where it is, never the value.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field

from federation.core.influxql import quote_ident
from federation.core.pii import personal_data_kinds
from federation.core.sketch import Sketch
from federation.errors import SketchDecodeError
from federation.influx import InfluxClient


@dataclass
class ScanResult:
    """What a full scan read and found."""

    measurements: int = 0
    keys_checked: int = 0
    values_checked: int = 0
    findings: list[str] = field(default_factory=list)

    @property
    def clean(self) -> bool:
        return not self.findings


def value_finding(where: str, value: str, generated: frozenset[str]) -> str | None:
    """What the scan says of one value at `where`: one of the `generated` personal values, or
    personal data by the one detector (`federation.core.pii`); None when it is clean."""
    if value in generated:
        return f"{where}: a generated personal value"
    if kinds := personal_data_kinds(value):
        return f"{where}: a value matching {', '.join(kinds)}"
    return None


def scan_central(
    client: InfluxClient,
    database: str,
    *,
    personal_keys: Iterable[str],
    personal_values: Iterable[str] = (),
) -> ScanResult:
    """Read the whole of `database` and report every personal-data key or value in it."""
    keys = frozenset(personal_keys)
    values = frozenset(personal_values)
    result = ScanResult()

    def check_value(where: str, value: object) -> None:
        if not isinstance(value, str):
            return
        result.values_checked += 1
        finding = value_finding(where, value, values)
        if finding is not None:
            result.findings.append(finding)

    policies = [rp.name for rp in client.retention_policies(database)]
    for rp in policies:
        for measurement in _names(
            client, f"SHOW MEASUREMENTS ON {quote_ident(database)}", database
        ):
            source = f"{quote_ident(rp)}.{quote_ident(measurement)}"
            tag_keys = _names(client, f"SHOW TAG KEYS FROM {source}", database)
            field_types = {
                row[0]: row[1]
                for s in client.query(f"SHOW FIELD KEYS FROM {source}", database=database)
                for row in s.values
            }
            if not tag_keys and not field_types:
                continue
            result.measurements += 1
            where = f"{rp}.{measurement}"
            check_value(f"{where} measurement name", measurement)
            for key in [*tag_keys, *field_types]:
                result.keys_checked += 1
                if key in keys:
                    result.findings.append(f"{where}: key {key!r} is personal data")
                check_value(f"{where} key {key!r}", key)
            for key in tag_keys:
                q = f"SHOW TAG VALUES FROM {source} WITH KEY = {quote_ident(key)}"
                for series in client.iter_series(q, database=database):
                    for row in series.values:
                        check_value(f"{where} tag {key!r}", row[-1])
            strings = [k for k, kind in field_types.items() if kind == "string" and k != "sketch"]
            if strings:
                columns = ", ".join(quote_ident(k) for k in strings)
                for series in client.iter_series(
                    f"SELECT {columns} FROM {source}", database=database
                ):
                    for row in series.values:
                        for name, value in zip(series.columns[1:], row[1:], strict=False):
                            check_value(f"{where} field {name!r}", value)
            if "sketch" in field_types:
                # A sketch that decodes is bucket indexes and counts: numbers, nothing else.
                q = f'SELECT "sketch" FROM {source}'
                for series in client.iter_series(q, database=database):
                    for row in series.values:
                        result.values_checked += 1
                        try:
                            Sketch.decode(str(row[1]))
                        except SketchDecodeError:
                            result.findings.append(f"{where} field 'sketch': does not decode")
    return result


def _names(client: InfluxClient, q: str, database: str) -> list[str]:
    return [row[0] for s in client.query(q, database=database) for row in s.values]
