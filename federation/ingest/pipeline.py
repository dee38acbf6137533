"""The ingest pipeline: read JSON lines, encode, batch, hand batches to a writer thread.

    sources ──read──► encode (this thread) ──bounded queue──► BatchWriter (writer thread) ──► InfluxDB
                            │                                       │
                            └────────── dead-letter file ◄──────────┘

The queue holds at most `max_queued_batches` batches. When InfluxDB is slow or away, the writer
keeps retrying its batch, the queue fills, and reading stops until there is room again: memory
stays bounded by (queue + 2) batches, and upstream (a pipe from `nsq_tail | jq`) is held back
instead of buffered.
"""

from __future__ import annotations

import contextlib
import io
import json
import logging
import os
import queue
import select
import stat
import threading
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import BinaryIO, cast

from federation.config import FederationConfig
from federation.core.retry import RetryPolicy
from federation.errors import ConfigProblems, FederationError, InfluxError
from federation.influx import InfluxClient, credentials_from_env
from federation.ingest.encode import Encoder, Reason, Rejected
from federation.ingest.schema import EventSchema, load_schema, policy_problems
from federation.ingest.writer import (
    INGEST_RETRY,
    Batch,
    BatchWriter,
    DeadLetter,
    IngestAborted,
    IngestError,
    IngestInterrupted,
    IngestSummary,
    _Stopped,
    _transient,
)

log = logging.getLogger(__name__)

Source = Path | str | BinaryIO
"""A file path, or an open binary stream such as `sys.stdin.buffer`."""

_CHUNK = 1 << 20


def default_dead_letter(dc: str) -> Path:
    """Where refused lines go when no dead-letter file is named: `ingest-<dc>.dead.jsonl`."""
    return Path(f"ingest-{dc}.dead.jsonl")


class _ChunkReader:
    """Reads a stream in chunks; on a pipe or terminal it can wait with a timeout."""

    def __init__(self, stream: BinaryIO) -> None:
        read1 = getattr(stream, "read1", None)
        self._read: Callable[[int], bytes] = read1 if read1 is not None else stream.read
        self._fd: int | None = None
        with contextlib.suppress(OSError, ValueError, AttributeError, io.UnsupportedOperation):
            fd = stream.fileno()
            if not stat.S_ISREG(os.fstat(fd).st_mode):
                self._fd = fd

    def read(self, timeout: float | None) -> bytes | None:
        """Some bytes; b"" at the end of input; None when nothing arrived within `timeout`."""
        if timeout is not None and self._fd is not None:
            ready, _, _ = select.select([self._fd], [], [], max(timeout, 0.0))
            if not ready:
                return None
        return self._read(_CHUNK)


class _Pipeline:
    def __init__(
        self,
        encoder: Encoder,
        writer: BatchWriter,
        dead_letter: DeadLetter,
        *,
        batch_size: int,
        flush_interval: float,
        max_queued_batches: int,
        progress: Callable[[IngestSummary], None] | None,
    ) -> None:
        self.encoder = encoder
        self.writer = writer
        self.dead_letter = dead_letter
        self.batch_size = batch_size
        self.flush_interval = flush_interval
        self.progress = progress
        self.queue: queue.Queue[Batch | None] = queue.Queue(maxsize=max_queued_batches)
        self.failure: BaseException | None = None
        self.failed = threading.Event()
        self.started = time.monotonic()
        self.lines_read = 0
        self.blank_lines = 0
        self.batch = Batch("")
        self.deadline = 0.0
        writer.on_change = self.report

    def summary(self) -> IngestSummary:
        return IngestSummary(
            lines_read=self.lines_read,
            points_written=self.writer.written,
            dead_lettered=self.dead_letter.snapshot(),
            blank_lines=self.blank_lines,
            retries=self.writer.retries,
            splits=self.writer.splits,
            batches=self.writer.batches,
            seconds=time.monotonic() - self.started,
            dead_letter_file=str(self.dead_letter.path) if self.dead_letter.used else None,
        )

    def report(self) -> None:
        if self.progress is not None:
            self.progress(self.summary())

    # -- writer thread ------------------------------------------------------------------------

    def run_writer(self) -> None:
        try:
            while True:
                batch = self.queue.get()
                if batch is None:
                    return
                self.writer.write(batch)
        except _Stopped:
            return
        except BaseException as exc:  # handed to the reading thread, which raises it
            self.failure = exc
            self.failed.set()

    # -- reading thread -----------------------------------------------------------------------

    def submit(self, batch: Batch | None) -> None:
        while True:
            if self.failed.is_set():
                raise _WriterFailed
            try:
                self.queue.put(batch, timeout=0.2)
                return
            except queue.Full:
                continue

    def flush(self) -> None:
        if self.batch.lines:
            self.submit(self.batch)
            self.report()
        self.batch = Batch(self.batch.source)

    def read_source(self, name: str, stream: BinaryIO) -> None:
        self.flush()
        self.batch = Batch(name)
        reader = _ChunkReader(stream)
        buffer = bytearray()
        line_no = 0
        while True:
            timeout = self.deadline - time.monotonic() if self.batch.lines else None
            chunk = reader.read(timeout)
            if chunk is None:
                self.flush()
                continue
            if not chunk:
                if buffer:
                    line_no = self.lines(name, bytes(buffer), line_no)
                break
            last = chunk.rfind(b"\n")  # only the new bytes: a long line is not rescanned
            cut = len(buffer) + last
            buffer += chunk
            if last < 0:
                continue
            block = bytes(buffer[:cut])
            del buffer[: cut + 1]
            line_no = self.lines(name, block, line_no)
            if self.batch.lines and time.monotonic() >= self.deadline:
                self.flush()
        self.flush()

    def lines(self, name: str, block: bytes, line_no: int) -> int:
        """Encode every line of `block` (lines after `line_no`); return the last line number."""
        texts: list[str] | list[str | bytes]
        try:
            texts = block.decode("utf-8").split("\n")
        except UnicodeDecodeError:
            texts = [_utf8_or_bytes(piece) for piece in block.split(b"\n")]
        decode = _RAW_DECODE
        encode = self.encoder.encode
        batch = self.batch
        offset = self.lines_read - line_no  # lines read before this source's first line
        for raw in texts:
            line_no += 1
            try:
                # raw_decode skips json.loads' per-call checks; trailing text is checked here.
                event, end = decode(raw)  # type: ignore[arg-type]
                if end != len(raw) and raw[end:].strip():
                    raise ValueError("text after the JSON value")
            except (ValueError, RecursionError, TypeError):
                event = _loads_slowly(raw)
                if event is _NOT_JSON:
                    if not raw.strip():
                        self.blank_lines += 1
                    else:
                        self.dead_letter.add(name, line_no, Reason.not_json, raw)
                    continue
            try:
                line = encode(event)
            except Rejected as exc:
                self.dead_letter.add(name, line_no, exc.reason, raw, key=exc.key, detail=exc.detail)
                continue
            if not batch.lines:
                self.deadline = time.monotonic() + self.flush_interval
            batch.lines.append(line)
            batch.numbers.append(line_no)
            batch.raws.append(raw)
            if len(batch.lines) >= self.batch_size:
                self.lines_read = offset + line_no
                self.flush()
                batch = self.batch
        self.lines_read = offset + line_no
        return line_no


_RAW_DECODE = json.JSONDecoder().raw_decode


def _utf8_or_bytes(raw: bytes) -> str | bytes:
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError:
        return raw  # not UTF-8: dead-lettered as not_json, byte for byte


_NOT_JSON = object()


def _loads_slowly(raw: str | bytes) -> object:
    """The line's JSON value (leading blanks allowed), or `_NOT_JSON`."""
    if isinstance(raw, bytes):
        return _NOT_JSON
    try:
        return json.loads(raw)
    except (ValueError, RecursionError):
        return _NOT_JSON


class _WriterFailed(Exception):
    """The writer thread stopped with an error; the reading thread raises that error."""


def _open(source: Source) -> tuple[str, BinaryIO, bool]:
    if isinstance(source, str | Path):
        try:
            return str(source), Path(source).open("rb"), True
        except OSError as exc:
            raise IngestError(f"cannot read {source}: {exc.strerror}") from None
    name = getattr(source, "name", None)
    return (name if isinstance(name, str) else "<stream>"), source, False


def _check_ready(client: InfluxClient, database: str, rp: str, dc: str, retry: RetryPolicy) -> None:
    """Wait for InfluxDB to answer; refuse a database or retention policy that does not exist."""
    delay = retry.initial_s
    started = time.monotonic()
    while True:
        try:
            if database not in client.databases():
                raise IngestError(
                    f"DC {dc}: InfluxDB {client.url} has no database {database!r}; "
                    f"apply the region's policy first (federation policy apply --dc {dc})"
                )
            names = [info.name for info in client.retention_policies(database)]
            if rp not in names:
                raise IngestError(
                    f"DC {dc}: database {database!r} has no retention policy {rp!r}; "
                    f"apply the region's policy first (federation policy apply --dc {dc})"
                )
            return
        except InfluxError as exc:
            if not _transient(exc):
                raise
            waited = time.monotonic() - started
            if retry.give_up_after_s is not None and waited >= retry.give_up_after_s:
                raise
            log.warning("InfluxDB %s not ready (%s); retrying in %.1fs", client.url, exc, delay)
            time.sleep(delay)
            delay = min(delay * retry.multiplier, retry.max_s)


def ingest(
    config: FederationConfig,
    dc: str,
    source: Source | Sequence[Source],
    *,
    schema: EventSchema | Path | str | None = None,
    batch_size: int = 5000,
    flush_interval: float = 1.0,
    dead_letter: Path | str | None = None,
    client: InfluxClient | None = None,
    retry: RetryPolicy | None = None,
    max_queued_batches: int = 4,
    tie_window: int = 100_000,
    progress: Callable[[IngestSummary], None] | None = None,
) -> IngestSummary:
    """Ingest JSON lines from `source` (one or several, in order) into `dc`'s raw database.

    Each line is mapped to a point by the schema (`load_schema`: a path, a measurement name, or
    the only schema of the config; checked against the DC's region policy) and written, in
    batches of `batch_size` lines or after `flush_interval` seconds, to the DC's raw database
    under its region's raw retention policy. Guarantees:

    - every line read is either written (InfluxDB answered 204 for it), dead-lettered (to
      `dead_letter`, default `default_dead_letter(dc)`, with its line number, reason and the
      line itself) or blank, and the returned summary counts each;
    - the same input ingested twice writes the same points (see `TieBreaker`);
    - while InfluxDB is slow or away, reading waits for it (retrying with `retry`, default
      forever) and memory stays bounded by `max_queued_batches`;
    - the summary, progress reports and logs name reasons and line numbers, never a value.

    Raises `ConfigProblems` for a bad schema, `IngestError` when the database or retention
    policy is missing, and `IngestAborted` (with the summary so far) when InfluxDB refuses to go
    on (authentication, a database dropped mid-way) or `retry.give_up_after_s` runs out, and
    `IngestInterrupted` (an IngestAborted, with the summary so far) on KeyboardInterrupt.
    """
    if batch_size < 1 or max_queued_batches < 1 or flush_interval <= 0:
        raise ValueError("batch_size, max_queued_batches and flush_interval must be positive")
    if not isinstance(schema, EventSchema):
        schema = load_schema(config, dc, schema)
    else:
        problems = policy_problems(schema, config.policy_for(dc), config.dc(dc).region, "schema")
        if problems:
            raise ConfigProblems(problems)
    datacenter = config.dc(dc)
    database = datacenter.raw_database
    rp = config.policy_for(dc).raw.retention_policy
    retry = retry or INGEST_RETRY
    own_client = client is None
    if client is None:
        client = InfluxClient(
            datacenter.influxdb.url, auth=credentials_from_env(datacenter.influxdb)
        )
    sources = (
        [cast(Source, source)]
        if isinstance(source, str | Path) or hasattr(source, "read")
        else source
    )
    letters = DeadLetter(Path(dead_letter) if dead_letter is not None else default_dead_letter(dc))
    stop = threading.Event()
    try:
        _check_ready(client, database, rp, dc, retry)
        writer = BatchWriter(client, database, rp, retry=retry, dead_letter=letters, stop=stop)
        pipeline = _Pipeline(
            Encoder(schema, tie_window=tie_window),
            writer,
            letters,
            batch_size=batch_size,
            flush_interval=flush_interval,
            max_queued_batches=max_queued_batches,
            progress=progress,
        )
        thread = threading.Thread(target=pipeline.run_writer, name=f"ingest-{dc}", daemon=True)
        thread.start()
        try:
            for item in sources:
                name, stream, close = _open(item)
                try:
                    pipeline.read_source(name, stream)
                finally:
                    if close:
                        stream.close()
            pipeline.submit(None)
            thread.join()
        except _WriterFailed:
            thread.join()
        except KeyboardInterrupt:
            stop.set()
            thread.join(timeout=5.0)
            summary = pipeline.summary()
            raise IngestInterrupted(
                f"interrupted; stopped after {summary.points_written} points "
                "(ingesting the same input again is safe)",
                summary,
            ) from None
        except BaseException:
            stop.set()
            thread.join(timeout=5.0)
            raise
        if pipeline.failure is not None:
            summary = pipeline.summary()
            cause = pipeline.failure
            if not isinstance(cause, FederationError):
                raise cause
            raise IngestAborted(
                f"{cause}; stopped after {summary.points_written} points "
                "(ingesting the same input again is safe)",
                summary,
            ) from cause
        summary = pipeline.summary()
        pipeline.report()
        return summary
    finally:
        stop.set()
        letters.close()
        if own_client:
            client.close()
