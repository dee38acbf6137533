"""Right to erasure: redact one data subject's values from a DC's raw data, in place, with proof.

InfluxDB 1.x cannot delete by field value, but a point written again with the same measurement,
tags and timestamp keeps its other fields and takes the new values of the fields written. So
the raw points whose personal-data fields hold the subject — and the DC's kept detection
findings whose `key` holds it — are found per retention policy and measurement (`SELECT <personal fields> ... WHERE "f" = '<subject>' OR ... GROUP BY *`, which
hands back every tag), and only the matching fields are written again as `REDACTED`. Every
other field and every other point stays as it was. A personal-data *tag* cannot be rewritten
(a different tag value is a different series), so points whose personal tag holds the subject
are deleted.

Afterwards the same queries run again and must find nothing. An audit record (time, DC, a
salted hash of the subject, the number of points redacted) is written to the DC's own InfluxDB
(database `federation_audit`, measurement `erasure`), so it stays in the region; `policy audit`
reports it.

The subject never appears in a log line, an error message or a record: only its salted hash
(HMAC-SHA256 keyed by a salt read from an environment variable) does.
"""

from __future__ import annotations

import hashlib
import hmac
import logging
import os
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

from federation.clock import Clock, SystemClock, format_rfc3339
from federation.config import FederationConfig, RawMeasurement
from federation.detection_plan import FINDINGS_MEASUREMENT, FINDINGS_PERSONAL_FIELDS
from federation.errors import FederationError, InfluxError, InvalidInput
from federation.influx import InfluxClient, quote_ident, quote_string
from federation.lineprotocol import serialize
from federation.points import FieldValue, Point
from federation.policy.retention import DEFAULT_TIMEOUT_S, connect

log = logging.getLogger(__name__)

AUDIT_DATABASE = "federation_audit"
ERASURE_MEASUREMENT = "erasure"
REDACTED = "redacted"
"""The value a redacted personal-data field holds afterwards."""
DEFAULT_SALT_ENV = "FEDERATION_ERASURE_SALT"
HASH_SCHEME = "hmac-sha256"
_BATCH = 5_000


class ErasureError(FederationError):
    """An erasure on a DC could not be completed or proven; never carries the subject."""

    def __init__(self, dc: str, message: str) -> None:
        self.dc = dc
        super().__init__(f"erase on {dc}: {message}")


def salt_from_env(name: str = DEFAULT_SALT_ENV) -> bytes:
    """The salt held by environment variable `name`; InvalidInput when unset or empty."""
    value = os.environ.get(name, "")
    if not value:
        raise InvalidInput(
            f"environment variable {name} is not set: it must hold the secret salt that "
            "erasure records hash the subject with"
        )
    return value.encode("utf-8")


def subject_hash(subject: str, salt: bytes) -> str:
    """The salted hash of a subject recorded instead of the subject (hex HMAC-SHA256)."""
    return hmac.new(salt, subject.encode("utf-8"), hashlib.sha256).hexdigest()


@dataclass(frozen=True)
class FieldRedaction:
    """How many points of one field held the subject (and, unless a dry run, were redacted)."""

    retention_policy: str
    measurement: str
    key: str
    points: int
    kind: str = "field"
    """`field` (value rewritten) or `tag` (points deleted)."""


@dataclass(frozen=True)
class ErasureResult:
    """The outcome of one erasure: counts per key, the proof, the record written.

    `points` counts distinct points rewritten, `deleted_points` points removed because a
    personal-data tag held the subject. `verified` is True when the re-query found nothing.
    """

    dc: str
    database: str
    subject_hash: str
    time_ns: int
    dry_run: bool
    redactions: tuple[FieldRedaction, ...]
    points: int
    deleted_points: int
    verified: bool
    recorded: bool

    def as_dict(self) -> dict[str, Any]:
        return {
            "dc": self.dc,
            "database": self.database,
            "subject_hash": self.subject_hash,
            "time": format_rfc3339(self.time_ns),
            "dry_run": self.dry_run,
            "points": self.points,
            "deleted_points": self.deleted_points,
            "verified": self.verified,
            "recorded": self.recorded,
            "redactions": [
                {
                    "retention_policy": r.retention_policy,
                    "measurement": r.measurement,
                    "key": r.key,
                    "kind": r.kind,
                    "points": r.points,
                }
                for r in self.redactions
            ],
        }


@dataclass(frozen=True)
class ErasureRecord:
    """One audit record read back from a DC's `federation_audit` database."""

    time_ns: int
    dc: str
    subject_hash: str
    points: int
    deleted_points: int
    verified: bool

    def as_dict(self) -> dict[str, Any]:
        return {
            "time": format_rfc3339(self.time_ns),
            "dc": self.dc,
            "subject_hash": self.subject_hash,
            "points": self.points,
            "deleted_points": self.deleted_points,
            "verified": self.verified,
        }


@contextmanager
def _hiding(dc: str, subject: str) -> Iterator[None]:
    # InfluxDB quotes the failing statement in its errors, and the statement holds the subject.
    try:
        yield
    except InfluxError as exc:
        message = str(exc)
        for form in {subject, quote_string(subject)[1:-1]}:
            message = message.replace(form, "<subject>")
        raise ErasureError(dc, message) from None


def _string_fields(client: InfluxClient, database: str, rp: str, measurement: str) -> set[str]:
    q = f"SHOW FIELD KEYS FROM {quote_ident(rp)}.{quote_ident(measurement)}"
    return {
        row[0]
        for series in client.query(q, database=database)
        for row in series.values
        if row[1] == "string"
    }


def _source(database: str, rp: str, measurement: str) -> str:
    return ".".join(quote_ident(part) for part in (database, rp, measurement))


def _matches(
    client: InfluxClient,
    database: str,
    rp: str,
    measurement: str,
    fields: Sequence[str],
    subject: str,
) -> list[Point]:
    """Every point whose `fields` hold the subject, as the redacting point to write back."""
    literal = quote_string(subject)
    columns = ", ".join(f"{quote_ident(f)}::field" for f in fields)
    where = " OR ".join(f"{quote_ident(f)} = {literal}" for f in fields)
    q = f"SELECT {columns} FROM {_source(database, rp, measurement)} WHERE {where} GROUP BY *"
    points: list[Point] = []
    for series in client.iter_series(q, database=database):
        tags = {key: value for key, value in series.tags.items() if value}
        for row in series.values:
            values = dict(zip(series.columns, row, strict=False))
            redacted: dict[str, FieldValue] = {
                f: REDACTED for f in fields if values.get(f) == subject
            }
            if redacted:
                points.append(Point(measurement, tags, redacted, int(values["time"])))
    return points


def _count_tagged(
    client: InfluxClient, database: str, rp: str, measurement: str, tag: str, subject: str
) -> int:
    q = (
        f"SELECT * FROM {_source(database, rp, measurement)} "
        f"WHERE {quote_ident(tag)} = {quote_string(subject)}"
    )
    return sum(len(series.values) for series in client.iter_series(q, database=database))


def erase_subject(
    config: FederationConfig,
    dc: str,
    subject: str,
    *,
    salt_env: str = DEFAULT_SALT_ENV,
    dry_run: bool = False,
    clock: Clock | None = None,
    timeout: float = DEFAULT_TIMEOUT_S,
) -> ErasureResult:
    """Redact every personal-data value equal to `subject` in DC `dc`'s raw database.

    Guarantees, unless it raises: every point of every retention policy whose personal-data
    string field (per the region's policy) equals `subject` now holds `REDACTED` in that field
    and keeps every other field; points whose personal-data tag equals it are deleted; a
    re-query found no match left; an audit record was written to the DC's `federation_audit`
    database. With `dry_run` it only counts, and writes nothing.

    Raises InvalidInput for an empty subject or an unset salt variable (unless `dry_run`: its
    result's `subject_hash` is then empty), ConfigError for an
    unknown DC, ErasureError when the DC fails or matches remain (after recording the failed
    proof). No error or log line carries the subject.
    """
    if not subject:
        raise InvalidInput("the subject to erase is empty")
    # A dry run records nothing, so it needs no salt; with one set it shows the hash too.
    salt = salt_from_env(salt_env) if not dry_run or os.environ.get(salt_env) else None
    hashed = "" if salt is None else subject_hash(subject, salt)
    datacenter = config.dc(dc)
    policy = config.policy_for(dc)
    database = datacenter.raw_database
    now_ns = (clock or SystemClock()).now_ns()
    redactions: list[FieldRedaction] = []
    points = deleted = 0
    verified = True
    try:
        client = connect(datacenter.influxdb, timeout=timeout)
    except InfluxError as exc:
        raise ErasureError(dc, str(exc)) from None
    with client, _hiding(dc, subject):
        present = database in client.databases()
        rps = [rp.name for rp in client.retention_policies(database)] if present else []
        measurements = set(client.measurements(database)) if present else set()
        for name, declared in sorted(_with_findings(policy.measurements).items()):
            if name not in measurements:
                continue
            tag_keys = set(client.tag_keys(database, name))
            tags = [t for t in declared.personal_tags if t in tag_keys]
            for rp in rps:
                strings = _string_fields(client, database, rp, name)
                fields = [f for f in declared.personal_fields if f in strings]
                if fields:
                    found = _matches(client, database, rp, name, fields, subject)
                    for key in fields:
                        count = sum(1 for p in found if key in p.fields)
                        if count:
                            redactions.append(FieldRedaction(rp, name, key, count))
                    points += len(found)
                    if not dry_run:
                        for start in range(0, len(found), _BATCH):
                            body = serialize(found[start : start + _BATCH])
                            client.write(body, database=database, retention_policy=rp)
                        if _matches(client, database, rp, name, fields, subject):
                            verified = False
                for tag in tags:
                    count = _count_tagged(client, database, rp, name, tag, subject)
                    if count:
                        redactions.append(FieldRedaction(rp, name, tag, count, kind="tag"))
                        deleted += count
            if not dry_run:
                for tag in tags:
                    client.execute(
                        f"DELETE FROM {quote_ident(name)} "
                        f"WHERE {quote_ident(tag)} = {quote_string(subject)}",
                        database=database,
                    )
                    if any(_count_tagged(client, database, rp, name, tag, subject) for rp in rps):
                        verified = False
        recorded = False
        if not dry_run:
            _record(client, dc, hashed, now_ns, points, deleted, verified, salt_env)
            recorded = True
    log.info(
        "erasure on %s (subject %s): %d points redacted, %d deleted%s",
        dc,
        hashed[:16],
        points,
        deleted,
        " (dry run)" if dry_run else "",
    )
    if not verified:
        raise ErasureError(
            dc,
            f"matches remain after redaction (subject hash {hashed}); the failed attempt "
            f"was recorded in {AUDIT_DATABASE}.{ERASURE_MEASUREMENT}",
        )
    return ErasureResult(
        dc,
        database,
        hashed,
        now_ns,
        dry_run,
        tuple(redactions),
        points,
        deleted,
        verified,
        recorded,
    )


def _with_findings(measurements: Mapping[str, RawMeasurement]) -> dict[str, RawMeasurement]:
    """The region's raw measurements and the DC's kept findings, whose `key` field holds the
    personal-data value a detection found (a subject's findings are erased with the rest)."""
    findings = RawMeasurement(personal_fields=FINDINGS_PERSONAL_FIELDS)
    return {**measurements, FINDINGS_MEASUREMENT: findings}


def _record(
    client: InfluxClient,
    dc: str,
    hashed: str,
    time_ns: int,
    points: int,
    deleted: int,
    verified: bool,
    salt_env: str,
) -> None:
    client.create_database(AUDIT_DATABASE)
    record = Point(
        ERASURE_MEASUREMENT,
        {"dc": dc},
        {
            "subject_hash": hashed,
            "hash": HASH_SCHEME,
            "salt_env": salt_env,
            "points": points,
            "deleted_points": deleted,
            "verified": verified,
        },
        time_ns,
    )
    client.write(serialize([record]), database=AUDIT_DATABASE)


def erasure_records(client: InfluxClient) -> list[ErasureRecord]:
    """Every erasure record kept on this InfluxDB, oldest first (none when never used)."""
    if AUDIT_DATABASE not in client.databases():
        return []
    q = f"SELECT * FROM {quote_ident(ERASURE_MEASUREMENT)}"
    records = []
    for series in client.query(q, database=AUDIT_DATABASE):
        for row in series.values:
            values = dict(zip(series.columns, row, strict=False))
            records.append(
                ErasureRecord(
                    time_ns=int(values["time"]),
                    dc=str(values.get("dc") or ""),
                    subject_hash=str(values.get("subject_hash") or ""),
                    points=int(values.get("points") or 0),
                    deleted_points=int(values.get("deleted_points") or 0),
                    verified=bool(values.get("verified")),
                )
            )
    return records
