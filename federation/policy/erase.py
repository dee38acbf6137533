"""Right to erasure: remove one data subject's values from a DC's raw data, with proof.

The subject is looked for in every string field and every tag of every measurement of every
retention policy of the DC's raw database — the DC's kept detection findings included — not
only in the keys the region's policy declares personal: an address written into an ordinary
dimension tag or text field is the subject's data all the same.

InfluxDB 1.x cannot delete by field value, but a point written again with the same measurement,
tags and timestamp keeps its other fields and takes the new values of the fields written. So
the points whose string fields hold the subject are found (`SELECT <string fields> ... WHERE
"f" = '<subject>' OR ... GROUP BY *`, which hands back every tag), and only the matching fields
are written again as `REDACTED`. A tag cannot be rewritten (a different tag value is a different
series), so the series whose tag holds the subject are dropped with their points (`DROP SERIES`,
which also takes the value out of the series index): always for a tag the policy declares
personal, and for any other tag (a customer dimension, say) only when asked (`delete_points`);
otherwise the erasure refuses before changing anything and says where the subject is.

Ingest's dead-letter files hold raw input lines, personal data included (owner-only files);
the files named are purged of the subject too (`purge_dead_letters`).

Afterwards the whole survey runs again and must find nothing. An audit record (time, DC, a
salted hash of the subject, the number of points redacted and deleted) is written to the DC's
own InfluxDB (database `federation_audit`, measurement `erasure`), so it stays in the region;
`policy audit` reports it.

The subject never appears in a log line, an error message or a record: only its salted hash
(HMAC-SHA256 keyed by a salt read from an environment variable) does.
"""

from __future__ import annotations

import hashlib
import hmac
import logging
import os
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from federation.config import FederationConfig, RawMeasurement
from federation.core.clock import Clock, SystemClock, format_rfc3339
from federation.core.influxql import quote_ident, quote_string
from federation.core.lineprotocol import serialize
from federation.core.points import FieldValue, Point
from federation.errors import FederationError, InfluxError, InvalidInput
from federation.influx import InfluxClient
from federation.ingest.writer import purge_dead_letters
from federation.policy.retention import DEFAULT_TIMEOUT_S, connect

log = logging.getLogger(__name__)

AUDIT_DATABASE = "federation_audit"
ERASURE_MEASUREMENT = "erasure"
REDACTED = "redacted"
"""The value a redacted personal-data field holds afterwards."""
DEFAULT_SALT_ENV = "FEDERATION_ERASURE_SALT"
HASH_SCHEME = "hmac-sha256"
_BATCH = 5_000
SERIES_ONLY = "*"
"""The retention policy named for a tag value left in the series index with no point."""


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
class DeadLetterPurge:
    """How many records of one ingest dead-letter file held the subject (and were purged)."""

    path: str
    records: int


@dataclass(frozen=True)
class ErasureResult:
    """The outcome of one erasure: counts per key, the proof, the record written.

    `points` counts distinct points rewritten, `deleted_points` points removed because a tag
    held the subject. `verified` is True when the re-survey found nothing. `blocked` (dry run
    only) lists the tags that would need `delete_points`.
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
    dead_letters: tuple[DeadLetterPurge, ...] = ()
    blocked: tuple[str, ...] = ()

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
            "dead_letters": [{"path": d.path, "records": d.records} for d in self.dead_letters],
            "blocked": list(self.blocked),
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


@dataclass(frozen=True)
class _Found:
    """Where the subject is in a raw database: points to rewrite, tags holding it."""

    rewrites: dict[tuple[str, str], list[Point]]
    """Per (rp, measurement): the redacting point of each point whose string field holds it."""
    tagged: list[FieldRedaction]
    """Per (rp, measurement, tag key) holding it: the number of points."""

    @property
    def empty(self) -> bool:
        return not self.tagged and not any(self.rewrites.values())


def _survey(client: InfluxClient, database: str, subject: str) -> _Found:
    """Every string field and every tag of every measurement of every RP holding `subject`.

    Not only the keys the policy declares personal: an address written into an ordinary tag
    (a customer dimension) or field (a status text) is the subject's data all the same.
    """
    found = _Found({}, [])
    if database not in client.databases():
        return found
    rps = [rp.name for rp in client.retention_policies(database)]
    for name in sorted(client.measurements(database)):
        for rp in rps:
            strings = sorted(_string_fields(client, database, rp, name))
            if strings:
                found.rewrites[(rp, name)] = _matches(client, database, rp, name, strings, subject)
        for tag in sorted(client.tag_keys(database, name)):
            # The series index holds tag values even where no point is left (a series whose
            # shards retention dropped): it is asked first, and the series are dropped whole.
            q = (
                f"SHOW SERIES FROM {quote_ident(name)} "
                f"WHERE {quote_ident(tag)} = {quote_string(subject)} LIMIT 1"
            )
            if not any(s.values for s in client.query(q, database=database)):
                continue
            counts = {rp: _count_tagged(client, database, rp, name, tag, subject) for rp in rps}
            held = [FieldRedaction(rp, name, tag, n, kind="tag") for rp, n in counts.items() if n]
            found.tagged.extend(held or [FieldRedaction(SERIES_ONLY, name, tag, 0, kind="tag")])
    return found


class ErasureBlocked(ErasureError):
    """The subject is in tags the erasure may not remove without `delete_points`; nothing was
    changed. `where` lists them ("rp.measurement tag key: n point(s)")."""

    def __init__(self, dc: str, where: Sequence[str]) -> None:
        self.where = tuple(where)
        super().__init__(
            dc,
            "the subject is the value of a tag, which InfluxDB 1.x cannot rewrite in place: "
            + "; ".join(self.where)
            + ". Nothing was changed; to delete those points, run it again with "
            "--delete-points",
        )


def erase_subject(
    config: FederationConfig,
    dc: str,
    subject: str,
    *,
    salt_env: str = DEFAULT_SALT_ENV,
    dry_run: bool = False,
    delete_points: bool = False,
    dead_letters: Sequence[Path] = (),
    clock: Clock | None = None,
    timeout: float = DEFAULT_TIMEOUT_S,
) -> ErasureResult:
    """Erase every value equal to `subject` from DC `dc`'s raw database (and dead letters).

    Every string field and every tag of every measurement of every retention policy is looked
    at, not only the keys the region's policy declares personal. Guarantees, unless it raises:
    every matching string field now holds `REDACTED` and its point keeps every other field;
    points whose tag equals `subject` are deleted — a tag the policy declares personal always,
    any other tag only with `delete_points`; each file of `dead_letters` (ingest's) holds the
    subject no more (`purge_dead_letters`); a re-survey found the subject nowhere; an audit
    record was written to the DC's `federation_audit` database. With `dry_run` it only counts.

    Raises InvalidInput for an empty subject or an unset salt variable (unless `dry_run`: its
    result's `subject_hash` is then empty), ConfigError for an unknown DC, ErasureBlocked
    (before changing anything) when an undeclared tag holds the subject and `delete_points` is
    False, ErasureError when the DC fails or matches remain (after recording the failed proof).
    No error or log line carries the subject.
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
    try:
        client = connect(datacenter.influxdb, timeout=timeout)
    except InfluxError as exc:
        raise ErasureError(dc, str(exc)) from None
    with client, _hiding(dc, subject):
        found = _survey(client, database, subject)
        for (rp, name), rewrites in sorted(found.rewrites.items()):
            keys = sorted({key for p in rewrites for key in p.fields})
            for key in keys:
                count = sum(1 for p in rewrites if key in p.fields)
                redactions.append(FieldRedaction(rp, name, key, count))
        redactions.extend(found.tagged)
        blocked = [
            f"{t.retention_policy}.{t.measurement} tag {t.key}: {t.points} point(s)"
            for t in found.tagged
            if not delete_points
            and t.key not in _declared_tags(policy.measurements.get(t.measurement))
        ]
        if blocked and not dry_run:
            raise ErasureBlocked(dc, blocked)
        letters = [(Path(path), _purge(dc, Path(path), subject, dry_run)) for path in dead_letters]
        points = sum(len(rewrites) for rewrites in found.rewrites.values())
        deleted = sum(t.points for t in found.tagged)
        verified = True
        recorded = False
        if not dry_run:
            for (rp, _), rewrites in sorted(found.rewrites.items()):
                for start in range(0, len(rewrites), _BATCH):
                    body = serialize(rewrites[start : start + _BATCH])
                    client.write(body, database=database, retention_policy=rp)
            for name, tag in sorted({(t.measurement, t.key) for t in found.tagged}):
                client.execute(
                    f"DROP SERIES FROM {quote_ident(name)} "
                    f"WHERE {quote_ident(tag)} = {quote_string(subject)}",
                    database=database,
                )
            verified = _survey(client, database, subject).empty and not any(
                _purge(dc, path, subject, True) for path, _ in letters
            )
            _record(client, dc, hashed, now_ns, points, deleted, verified, salt_env)
            recorded = True
    log.info(
        "erasure on %s (subject %s): %d points redacted, %d deleted, %d dead letters%s",
        dc,
        hashed[:16],
        points,
        deleted,
        sum(n for _, n in letters),
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
        dead_letters=tuple(DeadLetterPurge(str(path), n) for path, n in letters),
        blocked=tuple(blocked),
    )


def _declared_tags(measurement: RawMeasurement | None) -> frozenset[str]:
    return frozenset(measurement.personal_tags) if measurement is not None else frozenset()


def _purge(dc: str, path: Path, subject: str, dry_run: bool) -> int:
    try:
        return purge_dead_letters(path, subject, dry_run=dry_run)
    except OSError as exc:
        raise ErasureError(dc, f"dead-letter file {path}: {exc.strerror}") from None


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
