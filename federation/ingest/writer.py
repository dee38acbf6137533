"""Writing batches to InfluxDB: retries with backoff, splitting of refused batches, dead letters.

A batch counts as written only when InfluxDB answered 204 for its bytes. A failure that may pass
(no answer, 5xx, 429) is retried with the same bytes after an exponentially growing pause:
re-writing identical points is an idempotent upsert, so a batch InfluxDB stored before the
answer was lost is not doubled. A batch InfluxDB refuses as bad input (400: a field type
conflict, a point beyond the retention policy, a line it cannot parse; 413: too large) is split
in halves, down to single lines, and each refused line is dead-lettered with InfluxDB's reason.
Anything else (no database, no retention policy, no permission) stops the ingest.
"""

from __future__ import annotations

import base64
import json
import logging
import os
import threading
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

from federation.core.retry import RetryPolicy
from federation.errors import FederationError, InfluxError
from federation.influx import InfluxClient
from federation.ingest.encode import Reason

log = logging.getLogger(__name__)


class IngestError(FederationError):
    """Ingest cannot go on: the DC's InfluxDB refuses it, or stayed away for too long."""


class IngestAborted(IngestError):
    """Ingest stopped part-way; `summary` says what was written before it stopped.

    Batches are written in input order, so every line before the first unwritten batch is
    stored; ingesting the same input again from the start is safe (it writes the same points).
    """

    def __init__(self, message: str, summary: IngestSummary) -> None:
        super().__init__(message)
        self.summary = summary


class IngestInterrupted(IngestAborted):
    """Ingest was interrupted (SIGINT, or SIGTERM where the CLI turns it into one); `summary`
    says what was written before. Exit code 130, as a shell reports an interrupted command."""

    exit_code = 130


INGEST_RETRY = RetryPolicy(initial_s=0.1, max_s=10.0)
"""Ingest's pauses between attempts to write one batch: 0.1 s, doubling up to 10 s; it gives
up only after `give_up_after_s` seconds of failing in a row, if that is set."""


@dataclass(frozen=True)
class IngestSummary:
    """What one ingest did. Every line read is exactly one of: written, dead-lettered, blank."""

    lines_read: int
    points_written: int
    dead_lettered: dict[str, int]
    blank_lines: int
    retries: int
    splits: int
    batches: int
    seconds: float
    dead_letter_file: str | None

    @property
    def dead_lettered_total(self) -> int:
        return sum(self.dead_lettered.values())

    @property
    def complete(self) -> bool:
        """True when every line read is accounted for as written, dead-lettered or blank."""
        return self.lines_read == self.points_written + self.dead_lettered_total + self.blank_lines

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready form (reasons sorted by name)."""
        return {
            "lines_read": self.lines_read,
            "points_written": self.points_written,
            "dead_lettered": self.dead_lettered_total,
            "dead_lettered_by_reason": dict(sorted(self.dead_lettered.items())),
            "blank_lines": self.blank_lines,
            "retries": self.retries,
            "splits": self.splits,
            "batches": self.batches,
            "seconds": round(self.seconds, 3),
            "events_per_second": round(self.lines_read / self.seconds) if self.seconds else None,
            "dead_letter_file": self.dead_letter_file,
            "dead_letter_access": DEAD_LETTER_ACCESS if self.dead_letter_file else None,
        }


DEAD_LETTER_MODE = 0o600
DEAD_LETTER_ACCESS = "owner only (0600)"
"""How the summary describes who may read the dead-letter file."""


class DeadLetter:
    """A JSON-lines file of refused input lines: source, line number, reason, key, detail, raw.

    The file holds the raw lines, personal data included, so it stays in the DC like the raw
    database, readable by its owner only (0600, also when it existed with wider permissions),
    and `federation erase --dead-letter` purges a subject from it; nothing else (summary, logs)
    ever quotes a line. It is opened for appending on the first refused line only, so a clean
    run leaves no file. Safe to use from several threads.
    """

    def __init__(self, path: Path) -> None:
        self.path = path
        self._file: IO[str] | None = None
        self._lock = threading.Lock()
        self.counts: Counter[str] = Counter()

    def add(
        self,
        source: str,
        line: int,
        reason: Reason,
        raw: str | bytes,
        *,
        key: str | None = None,
        detail: str | None = None,
    ) -> None:
        """Append one record and flush it, so that a crash loses no dead letter."""
        record: dict[str, Any] = {"source": source, "line": line, "reason": reason.value}
        if key is not None:
            record["key"] = key
        if detail is not None:
            record["detail"] = detail
        if isinstance(raw, bytes):
            try:
                record["raw"] = raw.decode("utf-8")
            except UnicodeDecodeError:
                record["raw_base64"] = base64.b64encode(raw).decode("ascii")
        else:
            record["raw"] = raw
        text = json.dumps(record, ensure_ascii=False) + "\n"
        with self._lock:
            if self._file is None:
                self.path.parent.mkdir(parents=True, exist_ok=True)
                fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, DEAD_LETTER_MODE)
                os.fchmod(fd, DEAD_LETTER_MODE)
                self._file = open(fd, "a", encoding="utf-8", errors="surrogateescape")  # noqa: SIM115
            self._file.write(text)
            self._file.flush()
            self.counts[reason.value] += 1
        log.info("dead-lettered %s line %d: %s", source, line, reason.value)

    def snapshot(self) -> dict[str, int]:
        with self._lock:
            return dict(self.counts)

    @property
    def used(self) -> bool:
        return self._file is not None

    def close(self) -> None:
        with self._lock:
            if self._file is not None:
                self._file.close()


def _holds(record: object, subject: str) -> bool:
    """Whether a dead-letter record's raw line holds `subject` (as text, or once JSON-decoded,
    so an escaped form such as `\\u0040` is found too)."""
    if not isinstance(record, dict):
        return False
    raw = record.get("raw")
    if isinstance(raw, str):
        if subject in raw:
            return True
        try:
            decoded = json.loads(raw)
        except (ValueError, RecursionError):
            return False
        return subject in json.dumps(decoded, ensure_ascii=False)
    encoded = record.get("raw_base64")
    if isinstance(encoded, str):
        try:
            return subject.encode("utf-8") in base64.b64decode(encoded)
        except ValueError:
            return False
    return False


def purge_dead_letters(path: Path, subject: str, *, dry_run: bool = False) -> int:
    """Erase `subject` from a dead-letter file; return how many records held it.

    Each such record keeps its source, line number and reason, but its raw line is replaced by
    `"raw_erased": true`; a line of the file that is not a record and holds the subject is
    dropped. The file is rewritten whole (owner only) and swapped in atomically, so run it when
    no ingest appends to that file. Raises OSError when the file cannot be read or replaced.
    """
    kept: list[str] = []
    found = 0
    with path.open(encoding="utf-8", errors="surrogateescape") as source:
        for line in source:
            try:
                record = json.loads(line)
            except ValueError:
                if subject in line:
                    found += 1
                    continue
                kept.append(line)
                continue
            if _holds(record, subject):
                found += 1
                record.pop("raw", None)
                record.pop("raw_base64", None)
                record["raw_erased"] = True
                line = json.dumps(record, ensure_ascii=False) + "\n"
            kept.append(line)
    if found and not dry_run:
        temporary = path.with_name(f".{path.name}.erasing")
        fd = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, DEAD_LETTER_MODE)
        with open(fd, "w", encoding="utf-8", errors="surrogateescape") as target:
            target.writelines(kept)
            target.flush()
            os.fsync(target.fileno())
        os.replace(temporary, path)
    return found


@dataclass
class Batch:
    """Encoded lines with, for each, its input line number and original text."""

    source: str
    lines: list[bytes] = field(default_factory=list)
    numbers: list[int] = field(default_factory=list)
    raws: list[str | bytes] = field(default_factory=list)


class _Stopped(Exception):
    """The ingest is being torn down while a batch waited for a retry."""


_FATAL_MARKERS = ("database not found", "retention policy not found")
_POINT_MARKERS = ("partial write", "unable to parse", "field type conflict", "beyond retention")


def _refused_points(exc: InfluxError) -> bool:
    """True when InfluxDB refused some points of the body as bad input (split and retry)."""
    message = exc.message.lower()
    if any(marker in message for marker in _FATAL_MARKERS):
        return False
    return exc.status == 413 or (
        exc.status == 400 and any(marker in message for marker in _POINT_MARKERS)
    )


def _transient(exc: InfluxError) -> bool:
    if exc.status is None:
        return True
    if any(marker in exc.message.lower() for marker in _FATAL_MARKERS):
        return False
    return exc.status >= 500 or exc.status in (408, 429)


def _reason_for(message: str) -> Reason:
    lowered = message.lower()
    if "field type conflict" in lowered:
        return Reason.field_type_conflict
    if "beyond retention" in lowered:
        return Reason.beyond_retention
    return Reason.influx_rejected


class BatchWriter:
    """Writes batches to one database and retention policy, in the order given."""

    def __init__(
        self,
        client: InfluxClient,
        database: str,
        retention_policy: str,
        *,
        retry: RetryPolicy,
        dead_letter: DeadLetter,
        stop: threading.Event,
        on_change: Callable[[], None] = lambda: None,
    ) -> None:
        self.client = client
        self.database = database
        self.retention_policy = retention_policy
        self.retry = retry
        self.dead_letter = dead_letter
        self.stop = stop
        self.on_change = on_change
        self.written = 0
        self.retries = 0
        self.splits = 0
        self.batches = 0

    def write(self, batch: Batch) -> None:
        """Write every line of `batch` or dead-letter it; raise only when ingest cannot go on."""
        stack = [(0, len(batch.lines))]
        while stack:
            low, high = stack.pop()
            refusal = self._post(b"".join(batch.lines[low:high]))
            if refusal is None:
                self.written += high - low
                self.batches += 1
            elif high - low == 1:
                self.dead_letter.add(
                    batch.source,
                    batch.numbers[low],
                    _reason_for(refusal.message),
                    batch.raws[low],
                    detail=refusal.message,
                )
            else:
                self.splits += 1
                middle = (low + high) // 2
                stack.append((middle, high))
                stack.append((low, middle))
            self.on_change()

    def _post(self, body: bytes) -> InfluxError | None:
        """None once InfluxDB answered 204; InfluxDB's refusal of bad points; else raise."""
        delay = self.retry.initial_s
        failing_since: float | None = None
        while True:
            if self.stop.is_set():
                raise _Stopped
            try:
                self.client.write(
                    body,
                    database=self.database,
                    retention_policy=self.retention_policy,
                    precision="ns",
                )
                return None
            except InfluxError as exc:
                if _refused_points(exc):
                    return exc
                if not _transient(exc):
                    raise
                now = time.monotonic()
                failing_since = now if failing_since is None else failing_since
                limit = self.retry.give_up_after_s
                if limit is not None and now - failing_since >= limit:
                    raise IngestError(
                        f"InfluxDB {self.client.url} kept failing for {now - failing_since:.0f}s "
                        f"({_status(exc)}); giving up"
                    ) from None
                self.retries += 1
                log.warning(
                    "write to InfluxDB %s failed (%s); retry %d in %.1fs",
                    self.client.url,
                    _status(exc),
                    self.retries,
                    delay,
                )
                self.on_change()
                if self.stop.wait(delay):
                    raise _Stopped from None
                delay = min(delay * self.retry.multiplier, self.retry.max_s)


def _status(exc: InfluxError) -> str:
    # Transport failures and 5xx answers carry no event data; 4xx bodies may, so never log them.
    return exc.message[:200] if exc.status is None else f"HTTP {exc.status}"
