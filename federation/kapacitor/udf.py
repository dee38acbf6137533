"""The aggregation UDF: `federation kapacitor-udf`, a Kapacitor process UDF.

Kapacitor starts this process for each task node that calls `@fedagg()` and talks to it over
stdin/stdout: `Request` messages in, `Response` messages out, each a protobuf preceded by its
length as a varint (`federation/kapacitor/udf.proto`). The UDF wants batches and provides single points:

- Info: the options the TICKscript may call, each with its exact value types.
- Init: the options, validated; a bad one is named in `InitResponse.error`.
- BeginBatch, Point…, EndBatch: one whole window of raw values. At EndBatch the window's start
  is `tmax - window` (tmax is the end of the queried range) and the UDF answers with the
  window's summary and manifest points, computed by `federation.core.aggregate.window_points`, the
  same code the embedded executor runs.
- Keepalive: answered at once, also while a window is being computed: one thread reads stdin
  (and answers keepalives), another computes and writes points, and a lock keeps responses
  whole on stdout.
- Snapshot/Restore: the UDF keeps no state between batches, so the snapshot is empty.

A stream that breaks the protocol (a truncated message, a request of no known kind, a point
outside a batch) gets an `ErrorResponse`, after which Kapacitor stops the task, and the process
exits non-zero. End of stdin is a normal shutdown. A batch that is not exactly one aligned
window is refused (logged, nothing shipped): shipping a cut window would overwrite a complete one.

Only counts and times are logged, never a tag or field value.

The framing of messages is `federation.kapacitor.udf_wire`; the kapacitor.conf sections that
run this process, `federation.kapacitor.conf`.
"""

from __future__ import annotations

import logging
import math
import queue
import sys
import threading
from array import array
from collections.abc import Mapping
from dataclasses import dataclass
from typing import BinaryIO, Final

import numpy as np
from google.protobuf.message import DecodeError

from federation.core.aggregate import window_points
from federation.core.clock import Clock, SystemClock, format_rfc3339
from federation.core.durations import format_duration
from federation.core.points import Point
from federation.errors import InvalidInput
from federation.kapacitor import _udf_pb2 as pb
from federation.kapacitor.udf_detection import (
    DETECTION_OPTION_TYPES,
    DETECTION_OPTIONAL,
    DetectionOptions,
    detection_options,
    detection_points,
    window_option,
)
from federation.kapacitor.udf_wire import (
    ByteSource,
    ProtocolError,
    frame,
    point_response,
    read_frame,
)

log = logging.getLogger(__name__)


_PENDING_WINDOWS: Final = 2
"""Completed batches that may wait for computation before the reader stops taking more."""


class UdfOptionError(InvalidInput):
    """The options of `@fedagg()` are wrong; the message names every bad option."""


# --- framing ----------------------------------------------------------------------------------


# --- options ----------------------------------------------------------------------------------

AGGREGATION_OPTION_TYPES: Final[dict[str, pb.ValueType]] = {
    "aggregation": pb.STRING,
    "dc": pb.STRING,
    "field": pb.STRING,
    "dimension": pb.STRING,
    "window": pb.DURATION,
    "accuracy": pb.DOUBLE,
    "percentile": pb.DOUBLE,
    "minGroupEvents": pb.INT,
    "version": pb.STRING,
}
"""Every option of `@fedagg()` aggregating, and the one value it takes."""

OPTION_TYPES: Final[dict[str, pb.ValueType]] = AGGREGATION_OPTION_TYPES | DETECTION_OPTION_TYPES
"""Every option the UDF declares (Kapacitor checks calls against it): an Init that names
`detection` is a detection's (`udf_detection`), any other an aggregation's."""

_REPEATABLE: Final = frozenset({"dimension", "percentile"})
_VALUE_FIELDS: Final[dict[int, str]] = {
    pb.BOOL: "boolValue",
    pb.INT: "intValue",
    pb.DOUBLE: "doubleValue",
    pb.STRING: "stringValue",
    pb.DURATION: "durationValue",
}
_TYPE_NAMES: Final[dict[int, str]] = {
    pb.BOOL: "BOOL",
    pb.INT: "INT",
    pb.DOUBLE: "DOUBLE",
    pb.STRING: "STRING",
    pb.DURATION: "DURATION",
}

OptionScalar = bool | int | float | str


@dataclass(frozen=True)
class UdfOptions:
    """The validated options of one `@fedagg()` node: an `OutputSpec` for `window_points`.

    `dimensions` and `percentiles` keep the order in which the TICKscript lists them.
    """

    aggregation: str
    dc: str
    field: str
    dimensions: tuple[str, ...]
    window_ns: int
    accuracy: float
    percentiles: tuple[float, ...]
    min_group_events: int
    version: str


def info_response() -> pb.Response:
    """The answer to an InfoRequest: wants BATCH, provides STREAM, and `OPTION_TYPES`."""
    response = pb.Response()
    info = response.info
    info.wants = pb.BATCH
    info.provides = pb.STREAM
    for name, value_type in OPTION_TYPES.items():
        info.options[name].valueTypes.append(value_type)
    return response


def _collect_options(
    request: pb.InitRequest,
    problems: list[str],
    types: Mapping[str, pb.ValueType],
    optional: frozenset[str],
) -> dict[str, list[OptionScalar]]:
    given: dict[str, list[OptionScalar]] = {}
    for option in request.options:
        expected = types.get(option.name)
        if expected is None:
            mode = "a detection" if types is DETECTION_OPTION_TYPES else "an aggregation"
            problems.append(f"{option.name}: unknown option for {mode}")
            continue
        if len(option.values) != 1:
            problems.append(f"{option.name}: takes one value, got {len(option.values)}")
            continue
        value = option.values[0]
        kind = value.WhichOneof("value")
        if kind != _VALUE_FIELDS[expected]:
            problems.append(
                f"{option.name}: takes a {_TYPE_NAMES[expected]} value, got {kind or 'none'}"
            )
            continue
        scalar: OptionScalar = getattr(value, kind)
        given.setdefault(option.name, []).append(scalar)
    for name, values in given.items():
        if name not in _REPEATABLE and len(values) > 1:
            problems.append(f"{name}: given {len(values)} times, takes one value")
    for name in types:
        if name not in optional and name not in given:
            problems.append(f"{name}: missing (call .{name}(…) on the UDF node)")
    return given


def _check_text(name: str, values: list[OptionScalar], problems: list[str]) -> str:
    text = str(values[0]) if values else ""
    if values and not text.strip():
        problems.append(f"{name}: must not be empty")
    return text


def parse_options(request: pb.InitRequest) -> UdfOptions | DetectionOptions:
    """Validate the options of an InitRequest; UdfOptionError naming every bad option.

    An Init that names `detection` is a detection's (see `detection_options` for what its
    options guarantee). For an aggregation, guarantees on success: every option but `dimension` and `percentile` was given exactly once
    with its declared type; aggregation, dc, field, version and each dimension are non-empty;
    dimensions are unique; the window is positive and divides 24h; 0 < accuracy < 0.5; at least
    one percentile, each unique and strictly between 0 and 100; minGroupEvents >= 1.
    """
    problems: list[str] = []
    if any(option.name == "detection" for option in request.options):
        given = _collect_options(request, problems, DETECTION_OPTION_TYPES, DETECTION_OPTIONAL)
        detection = detection_options(given, problems)
        if detection is None:
            raise UdfOptionError("; ".join(problems))
        return detection
    given = _collect_options(request, problems, AGGREGATION_OPTION_TYPES, _REPEATABLE)
    texts = {
        name: _check_text(name, given.get(name, []), problems)
        for name in ("aggregation", "dc", "field", "version")
    }
    dimensions = tuple(str(d) for d in given.get("dimension", []))
    seen: set[str] = set()
    for index, dimension in enumerate(dimensions):
        if not dimension.strip():
            problems.append(f"dimension: value {index + 1} is empty")
        elif dimension in seen:
            # A dimension name comes from the plan, never from raw data: safe to quote.
            problems.append(f"dimension: {dimension!r} is given twice")
        seen.add(dimension)
    window = window_option(given, problems)
    accuracy = float(given.get("accuracy", [0.01])[0])
    if not (math.isfinite(accuracy) and 0 < accuracy < 0.5):
        problems.append(f"accuracy: {accuracy} must lie strictly between 0 and 0.5")
    percentiles = tuple(float(p) for p in given.get("percentile", []))
    if not percentiles:
        problems.append("percentile: give at least one (.percentile(50.0))")
    for p in percentiles:
        if not (math.isfinite(p) and 0 < p < 100):
            problems.append(f"percentile: {p} must lie strictly between 0 and 100")
    if len(set(percentiles)) != len(percentiles):
        problems.append("percentile: a value is given twice")
    min_group_events = int(given.get("minGroupEvents", [1])[0])
    if min_group_events < 1:
        problems.append(f"minGroupEvents: {min_group_events} must be at least 1")
    if problems:
        raise UdfOptionError("; ".join(problems))
    return UdfOptions(
        aggregation=texts["aggregation"],
        dc=texts["dc"],
        field=texts["field"],
        dimensions=dimensions,
        window_ns=window,
        accuracy=accuracy,
        percentiles=percentiles,
        min_group_events=min_group_events,
        version=texts["version"],
    )


# --- points -----------------------------------------------------------------------------------


# --- batches ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class WindowJob:
    """One whole window of raw values, ready for `window_points` (or, for a detection, its
    key columns ready for `detection_points`; `values` is then empty)."""

    options: UdfOptions | DetectionOptions
    window_start_ns: int
    values: np.ndarray[tuple[int], np.dtype[np.float64]]
    columns: tuple[list[str | None], ...]


class _Batch:
    """The raw values of the batch being received, one column per dimension (for a
    detection: per key read, and no values)."""

    def __init__(self, options: UdfOptions | DetectionOptions, grouped: bool) -> None:
        self.options = options
        self.grouped = grouped
        self.values = array("d")
        if isinstance(options, DetectionOptions):
            self.field: str | None = None
            self.names = options.columns
        else:
            self.field, self.names = options.field, options.dimensions
        self.columns: tuple[list[str | None], ...] = tuple([] for _ in self.names)
        self.events = 0
        self.skipped = 0
        # The earliest and latest point times (no point yet: an empty range).
        self.min_time = sys.maxsize
        self.max_time = -sys.maxsize - 1

    def add(self, point: pb.Point) -> None:
        field = self.field
        if field is not None:
            value: float | None = point.fieldsDouble.get(field)
            if value is None:
                int_value = point.fieldsInt.get(field)
                value = None if int_value is None else float(int_value)
            if value is None or not math.isfinite(value):
                self.skipped += 1
                return
            self.values.append(value)
        self.events += 1
        tags = point.tags
        strings = point.fieldsString
        for name, column in zip(self.names, self.columns, strict=True):
            column.append(tags.get(name) or strings.get(name) or None)
        t = point.time
        if t < self.min_time:
            self.min_time = t
        if t > self.max_time:
            self.max_time = t

    def close(self, tmax: int) -> WindowJob | None:
        """The window this batch is, or None (logged) when it is not one whole aligned window."""
        options = self.options
        window = options.window_ns
        events = self.events
        if self.skipped:
            log.warning(
                "%s: skipped %d points of the batch ending %s whose field %r is missing or "
                "not a finite number",
                options.aggregation,
                self.skipped,
                format_rfc3339(tmax),
                self.field,
            )
        if self.grouped:
            log.error(
                "%s: refused a batch ending %s: it belongs to a group (the query has a GROUP "
                "BY), so it is not a whole window; nothing shipped",
                options.aggregation,
                format_rfc3339(tmax),
            )
            return None
        if tmax % window:
            log.error(
                "%s: refused a batch ending %s: not aligned to the %s window (is .align() "
                "missing?); nothing shipped",
                options.aggregation,
                format_rfc3339(tmax),
                format_duration(window),
            )
            return None
        start = tmax - window
        if events and (self.min_time < start or self.max_time >= tmax):
            log.error(
                "%s: refused the batch of window %s: it holds points outside the window "
                "(is .period() not the window?); nothing shipped",
                options.aggregation,
                format_rfc3339(start),
            )
            return None
        values = np.frombuffer(self.values, dtype=np.float64) if events else np.empty(0)
        log.info(
            "%s: window %s received, %d events", options.aggregation, format_rfc3339(start), events
        )
        return WindowJob(options, start, values, self.columns)


def compute_window(job: WindowJob, clock: Clock) -> list[Point]:
    """The points of one window: `window_points` (a detection's: `detection_points`) with
    the run id taken from `clock`."""
    if isinstance(job.options, DetectionOptions):
        return detection_points(job.options, job.window_start_ns, job.columns, run=clock.now_ns())
    return window_points(
        job.options, job.window_start_ns, job.values, list(job.columns), run=clock.now_ns()
    )


# --- the process ------------------------------------------------------------------------------


class _Output:
    """Responses on stdout: each written whole and flushed, under one lock."""

    def __init__(self, stream: BinaryIO) -> None:
        self._stream = stream
        self._lock = threading.Lock()
        self._closed = False

    @property
    def closed(self) -> bool:
        with self._lock:
            return self._closed

    def send(self, response: pb.Response) -> bool:
        """Write one response; False once output is closed (after an error or a broken pipe)."""
        data = frame(response)
        with self._lock:
            if self._closed:
                return False
            try:
                self._stream.write(data)
                self._stream.flush()
            except OSError:
                log.error("stdout is closed; Kapacitor is gone")
                self._closed = True
                return False
            return True

    def fail(self, message: str) -> None:
        """Write an ErrorResponse (Kapacitor then stops the process) and close the output."""
        response = pb.Response()
        response.error.error = message
        self.send(response)
        with self._lock:
            self._closed = True


@dataclass(frozen=True)
class _Stop:
    exit_code: int


class UdfProcess:
    """One UDF process: reads requests from `stdin`, writes responses to `stdout`.

    `run()` returns the exit code: 0 when stdin ends between messages, 1 after a protocol error
    or a failed computation (an ErrorResponse has then been written).
    """

    def __init__(self, stdin: ByteSource, stdout: BinaryIO, clock: Clock | None = None) -> None:
        self._stdin = stdin
        self._out = _Output(stdout)
        self._clock: Clock = clock or SystemClock()
        self._jobs: queue.Queue[WindowJob | _Stop] = queue.Queue(maxsize=_PENDING_WINDOWS)
        self._options: UdfOptions | DetectionOptions | None = None
        self._batch: _Batch | None = None

    def run(self) -> int:
        """Serve until stdin ends or the protocol breaks; the process's exit code."""
        reader = threading.Thread(target=self._read_loop, name="fedagg-reader", daemon=True)
        reader.start()
        while True:
            item = self._jobs.get()
            if isinstance(item, _Stop):
                return item.exit_code
            if self._out.closed:
                continue
            try:
                points = compute_window(item, self._clock)
                for point in points:
                    if not self._out.send(point_response(point)):
                        break
            except Exception as exc:
                log.exception("computing window %s failed", format_rfc3339(item.window_start_ns))
                self._out.fail(
                    f"fedagg: computing window {format_rfc3339(item.window_start_ns)} "
                    f"failed: {exc.__class__.__name__}"
                )
                return 1
            log.info(
                "%s: window %s shipped as %d points",
                item.options.aggregation,
                format_rfc3339(item.window_start_ns),
                len(points),
            )

    def _read_loop(self) -> None:
        try:
            code = self._serve_requests()
        except ProtocolError as exc:
            log.error("protocol error: %s", exc)
            self._out.fail(f"fedagg: {exc}")
            code = 1
        except Exception as exc:
            log.exception("reading requests failed")
            self._out.fail(f"fedagg: reading requests failed: {exc.__class__.__name__}")
            code = 1
        self._jobs.put(_Stop(code))

    def _serve_requests(self) -> int:
        request = pb.Request()
        while (data := read_frame(self._stdin)) is not None:
            try:
                request.ParseFromString(data)
            except DecodeError:
                raise ProtocolError(f"a message of {len(data)} bytes is not a Request") from None
            kind = request.WhichOneof("message")
            if kind == "point":
                if self._batch is None:
                    raise ProtocolError("a point arrived outside a batch")
                self._batch.add(request.point)
            elif kind == "keepalive":
                response = pb.Response()
                response.keepalive.time = request.keepalive.time
                self._out.send(response)
            elif kind == "begin":
                self._begin(request.begin)
            elif kind == "end":
                self._end(request.end)
            elif kind == "info":
                self._out.send(info_response())
            elif kind == "init":
                self._init(request.init)
            elif kind == "snapshot":
                response = pb.Response()
                response.snapshot.snapshot = b""
                self._out.send(response)
            elif kind == "restore":
                response = pb.Response()
                response.restore.success = True
                self._out.send(response)
            else:
                raise ProtocolError("a request of no known kind arrived")
        if self._batch is not None:
            log.warning(
                "stdin ended inside a batch; its %d points are dropped", len(self._batch.values)
            )
        return 0

    def _init(self, request: pb.InitRequest) -> None:
        response = pb.Response()
        try:
            self._options = parse_options(request)
        except UdfOptionError as exc:
            self._options = None
            log.error("init refused: %s", exc)
            response.init.success = False
            response.init.error = str(exc)
        else:
            response.init.success = True
            options = self._options
            shape = (
                f"detection ({options.mode})"
                if isinstance(options, DetectionOptions)
                else f"{len(options.dimensions)} dimensions"
            )
            log.info(
                "init: %s %s, dc %s, window %s, version %s",
                options.aggregation,
                shape,
                options.dc,
                format_duration(options.window_ns),
                options.version,
            )
        self._out.send(response)

    def _begin(self, begin: pb.BeginBatch) -> None:
        if self._options is None:
            raise ProtocolError("a batch arrived before a successful init")
        if self._batch is not None:
            raise ProtocolError("a batch began inside another batch")
        self._batch = _Batch(self._options, grouped=bool(begin.tags))

    def _end(self, end: pb.EndBatch) -> None:
        if self._batch is None:
            raise ProtocolError("a batch ended that had not begun")
        batch, self._batch = self._batch, None
        job = batch.close(end.tmax)
        if job is not None:
            self._jobs.put(job)


def serve(stdin: ByteSource, stdout: BinaryIO, *, clock: Clock | None = None) -> int:
    """Speak the UDF protocol on the given streams until stdin ends; the exit code.

    0 when stdin ends between messages; 1 after a protocol error or a failed computation, in
    which case the last response written is an ErrorResponse.
    """
    return UdfProcess(stdin, stdout, clock).run()


def serve_stdio(clock: Clock | None = None) -> int:
    """`serve` on this process's binary stdin and stdout; the exit code.

    While it runs, `sys.stdout` points at stderr, so that a stray print cannot corrupt the
    message stream Kapacitor reads.
    """
    stdin = sys.stdin.buffer
    stdout = sys.stdout.buffer
    saved = sys.stdout
    sys.stdout = sys.stderr
    try:
        return serve(stdin, stdout, clock=clock)
    finally:
        sys.stdout = saved
