"""The embedded executor: read whole windows of raw data, compute their points, ship them.

For one plan and a list of whole windows, each window is read with exactly one query,
`plan.query_between(window.start, window.end)` (the query a Kapacitor branch runs), computed with
`window_points` (the code the Kapacitor UDF runs), and handed to a `WindowSink` (the gateway
`Shipper`). The stages overlap where the data allows (`federation.agent.overlap`):

- chunks are grouped while InfluxDB sends the next ones;
- the read is ordered by time, as Kapacitor's is, so no group is final before the window's last
  row: nothing is shipped before the read ends. Then only the work spanning every value is
  done at once (one sort, the histogram buckets, the manifest's counts); each group's numbers
  and point are made a slice of groups at a time, serialized ahead of the batches the gateway
  is storing (two at once, the first small), so the gateway's work overlaps the executor's;
- the manifest goes last, alone, once every summary batch was accepted;
- a window is shipped, in a shipping thread, while the next one is read (a look-back run, a
  catch-up or a backfill holds several), so shipping costs a run of windows little more than
  its last window's shipping.

Memory is bounded by the window being read and the one being shipped: the raw values become
one float64 array and one int64 group code per row, the JSON chunks they came from are dropped
as they are grouped, a window's values (sorted by group) are kept until it is shipped, and its
summary points exist a few batches at a time.

Re-running a window writes the same points again (same measurement, tags and timestamp, same
fields), except the manifest's `run`, which increases with every computation of a window, so
central always tells which computation it holds.
"""

from __future__ import annotations

import logging
import math
import threading
import time
from collections.abc import Callable, Iterable, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from typing import Protocol

import numpy as np
import numpy.typing as npt

from federation.agent.overlap import read_ahead
from federation.agent.shipper import ShipmentRefused
from federation.core.aggregate import RowGrouper, WindowPoints, lazy_window_points
from federation.core.clock import Clock
from federation.core.detection_plan import DetectionPlan, TrackedPlan
from federation.core.influxql import quote_ident
from federation.core.plan import AggregationPlan, ShippedPlan, raw_source
from federation.core.points import Point
from federation.core.windows import Window, windows_between
from federation.errors import FederationError
from federation.influx import InfluxClient

log = logging.getLogger(__name__)

DEFAULT_CHUNK_SIZE = 10_000
"""Rows per chunk InfluxDB streams."""
READ_AHEAD_CHUNKS = 2
"""Chunks read ahead of the one being converted: at most this many more are held at once."""


class WindowSink(Protocol):
    """Where a computed window goes: the gateway `Shipper` in production, anything in tests."""

    def ship_window(
        self,
        plan: ShippedPlan,
        points: Iterable[Point],
        *,
        stop: threading.Event | None = None,
    ) -> bool:
        """Ship one window's points, the manifest (the last point) last of all, and only once
        every other point was accepted. `points` may be made as they are iterated.

        Returns True once every point was accepted, False when `stop` was set before the
        manifest went out (the window then stays unshipped). Raises FederationError when the
        gateway refuses or cannot be reached.
        """
        ...


class RunIds:
    """Run ids from a clock: `clock.now_ns()` at computation, strictly increasing.

    Two computations at the same clock reading (a FakeClock that did not move) still get
    increasing ids, so a later computation of a window always carries the larger `run`.
    """

    def __init__(self, clock: Clock) -> None:
        self._clock = clock
        self._last = -1
        self._lock = threading.Lock()

    def next(self) -> int:
        """A run id larger than every one this object returned before."""
        with self._lock:
            self._last = max(self._clock.now_ns(), self._last + 1)
            return self._last


@dataclass
class WindowData:
    """One window of raw data, grouped: row `i` has value `values[i]` and is in the group whose
    exported dimension values (plan order) are `keys[codes[i]]`."""

    values: npt.NDArray[np.float64]
    codes: npt.NDArray[np.int64]
    keys: list[tuple[str, ...]]

    @property
    def events(self) -> int:
        return int(self.values.shape[0])


def read_window(
    source: InfluxClient,
    plan: AggregationPlan,
    window: Window,
    *,
    chunk_size: int = DEFAULT_CHUNK_SIZE,
) -> WindowData:
    """Read one whole window of `plan`'s raw data with the plan's query, chunk by chunk, and
    group its rows as they arrive (the same groups as `group_rows` of the whole window).

    Only the value field and the exported dimensions are read. A dimension tag a point lacks
    arrives as None (the `_none` group). Rows without a value are skipped. Raises InfluxError
    when the local InfluxDB fails.
    """
    if window.size_ns != plan.window_ns:
        raise ValueError(f"window {window} is not a {plan.aggregation} window")
    query = plan.query_between(window.start_ns, window.end_ns)
    value_parts: list[npt.NDArray[np.float64]] = []
    grouper = RowGrouper(len(plan.dimensions))
    # The next chunks arrive (InfluxDB encodes, the worker decodes) while this one is grouped,
    # so grouping costs the window nothing but the last chunk's share.
    chunks = source.iter_series(query, database=plan.database, chunk_size=chunk_size)
    for series in read_ahead(chunks, READ_AHEAD_CHUNKS, name=f"read {plan.aggregation}"):
        if not series.values:
            continue
        index = {name: i for i, name in enumerate(series.columns)}
        value_at = index.get(plan.value_field, 1)
        transposed = list(zip(*series.values, strict=True))
        values = np.array(transposed[value_at], dtype=np.float64)
        keep: npt.NDArray[np.bool_] | None = None
        if np.isnan(values).any():  # a null value arrives as None, which numpy makes NaN
            keep = ~np.isnan(values)
            values = values[keep]
        value_parts.append(values)
        columns: list[Sequence[str | None]] = []
        for name in plan.dimensions:
            at = index.get(name)
            column: Sequence[str | None] = (
                transposed[at] if at is not None else [None] * len(transposed[0])
            )
            if keep is not None:
                column = [v for v, k in zip(column, keep.tolist(), strict=True) if k]
            columns.append(column)
        grouper.add(columns, len(values))
        del transposed, columns
    values_all = np.concatenate(value_parts) if value_parts else np.empty(0, dtype=np.float64)
    return WindowData(values_all, *grouper.finish())


@dataclass(frozen=True)
class ComputedWindow:
    """One window's points, ready to ship (their numbers computed, the summary points made as
    they are iterated), and how long reading and computing took."""

    window: Window
    points: WindowPoints
    run: int
    read_s: float
    compute_s: float

    @property
    def manifest(self) -> Point:
        return self.points.manifest

    @property
    def events(self) -> int:
        return int(self.manifest.fields["events"])

    @property
    def groups(self) -> int:
        return int(self.manifest.fields["groups"])

    @property
    def suppressed_events(self) -> int:
        return int(self.manifest.fields["suppressed_events"])


def compute_window(
    source: InfluxClient,
    plan: AggregationPlan,
    window: Window,
    *,
    run_ids: RunIds,
    chunk_size: int = DEFAULT_CHUNK_SIZE,
) -> ComputedWindow:
    """Read and compute one window: summaries sorted by tags, then the manifest, last.

    The window's values are checked, sorted by group and bucketed here, and the manifest's
    numbers computed; each group's numbers and point are made as `points` is iterated (by the
    shipper, while the gateway stores the batches before). The run id is taken once the raw
    data is read, so it is later than every event the computation saw.
    """
    started = time.perf_counter()
    data = read_window(source, plan, window, chunk_size=chunk_size)
    read_done = time.perf_counter()
    run = run_ids.next()
    points = lazy_window_points(plan, window.start_ns, data.values, data.codes, data.keys, run=run)
    del data
    computed = time.perf_counter()
    return ComputedWindow(window, points, run, read_done - started, computed - read_done)


@dataclass(frozen=True)
class WindowResult:
    """What happened to one window of a run."""

    window: Window
    events: int
    groups: int
    suppressed_events: int
    points: int
    run: int
    shipped: bool
    read_s: float = 0.0
    compute_s: float = 0.0
    ship_s: float = 0.0
    error: str | None = None


@dataclass(frozen=True)
class RangeResult:
    """The windows of one run (scheduled, catch-up, backfill or `agent once`), oldest first.

    `stopped` is True when a stop request ended the run early; `error` names the failure that
    ended it early. Windows after the one that ended the run are not listed.
    """

    aggregation: str
    version: str
    windows: tuple[WindowResult, ...] = ()
    stopped: bool = False
    error: str | None = None
    requested: int = 0

    @property
    def shipped(self) -> int:
        """How many windows were shipped completely (manifest accepted)."""
        return sum(1 for w in self.windows if w.shipped)

    @property
    def ok(self) -> bool:
        """Every requested window was shipped."""
        return self.error is None and not self.stopped and self.shipped == self.requested

    def summary(self) -> str:
        """One line for logs and reports; never holds a data value."""
        text = f"{self.aggregation}: {self.shipped}/{self.requested} windows shipped"
        if self.stopped:
            text += ", stopped"
        if self.error:
            text += f", error: {self.error}"
        return text


@dataclass(frozen=True)
class _Shipping:
    """A computed window whose shipping runs in the shipping thread."""

    computed: ComputedWindow
    outcome: Future[tuple[bool, float]]


def _ship(
    sink: WindowSink, plan: AggregationPlan, computed: ComputedWindow, stop: threading.Event | None
) -> tuple[bool, float]:
    began = time.perf_counter()
    shipped = sink.ship_window(plan, computed.points, stop=stop)
    return shipped, time.perf_counter() - began


def run_windows(
    plan: AggregationPlan,
    windows: Sequence[Window],
    *,
    source: InfluxClient,
    sink: WindowSink,
    run_ids: RunIds,
    stop: threading.Event | None = None,
    chunk_size: int = DEFAULT_CHUNK_SIZE,
    on_window: Callable[[WindowResult], None] | None = None,
) -> RangeResult:
    """Compute and ship each window of `plan`, oldest first.

    A window's numbers are computed completely before any of its points is shipped (the read
    is ordered by time: no group is final before its last row); its summary points are then
    made while they are shipped, in a shipping thread, while the next window is read. Windows
    are shipped one at a time, in order, each manifest last. A window counts as shipped only
    when the sink accepted all of its points, manifest last. A gateway refusal of one window
    (InvalidInput-like refusal) is recorded and the next window is tried; any other failure
    (local InfluxDB, gateway unreachable after retries) ends the run with `error` set, and a
    window read meanwhile is dropped unshipped. When `stop` is set the run ends before the
    next window, or abandons the current one before its manifest: half a window is never
    recorded as shipped.
    """
    ordered = sorted(set(windows))
    results: list[WindowResult] = []

    def finish(*, stopped: bool = False, error: str | None = None) -> RangeResult:
        return RangeResult(
            plan.aggregation, plan.version, tuple(results), stopped, error, len(ordered)
        )

    def settle(shipping: _Shipping | None) -> RangeResult | None:
        """Wait for a window's shipping and record it; the run's result when it ends the run."""
        if shipping is None:
            return None
        computed = shipping.computed
        error: str | None = None
        fatal = False
        ship_s = 0.0
        try:
            shipped, ship_s = shipping.outcome.result()
        except (FederationError, ValueError) as exc:
            # ValueError: a summary point its making refused (it is made while shipping).
            shipped = False
            error = str(exc)
            fatal = not isinstance(exc, ShipmentRefused)
        result = WindowResult(
            computed.window,
            computed.events,
            computed.groups,
            computed.suppressed_events,
            len(computed.points),
            computed.run,
            shipped,
            computed.read_s,
            computed.compute_s,
            ship_s,
            error,
        )
        results.append(result)
        if on_window is not None:
            on_window(result)
        window = computed.window
        if error is not None:
            log.error("%s window %s: not shipped: %s", plan.aggregation, window, error)
            return finish(error=f"window {window.label}: {error}") if fatal else None
        if not shipped:
            log.info("%s window %s: abandoned before its manifest", plan.aggregation, window)
            return finish(stopped=True)
        log.debug(
            "%s window %s: %d events, %d groups shipped (run %d)",
            plan.aggregation,
            window,
            computed.events,
            computed.groups,
            computed.run,
        )
        return None

    in_flight: _Shipping | None = None
    with ThreadPoolExecutor(1, thread_name_prefix=f"ship {plan.aggregation}") as shipper:
        for window in ordered:
            if stop is not None and stop.is_set():
                return settle(in_flight) or finish(stopped=True)
            try:
                # Read while the window before is being shipped.
                computed = compute_window(
                    source, plan, window, run_ids=run_ids, chunk_size=chunk_size
                )
            except (FederationError, ValueError) as exc:
                # ValueError: values numpy or window_points cannot take (a non-numeric field).
                log.error("%s window %s: computing failed: %s", plan.aggregation, window, exc)
                return settle(in_flight) or finish(error=f"window {window.label}: {exc}")
            ended = settle(in_flight)
            in_flight = None
            if ended is not None:
                return ended
            if stop is not None and stop.is_set():
                log.info("%s window %s: stopped before shipping", plan.aggregation, window)
                return finish(stopped=True)
            in_flight = _Shipping(computed, shipper.submit(_ship, sink, plan, computed, stop))
        ended = settle(in_flight)
    if ended is not None:
        return ended
    refused = [r for r in results if r.error is not None]
    if refused:
        return finish(error=f"{len(refused)} window(s) refused by the gateway")
    return finish()


def run_range(
    plan: AggregationPlan,
    start_ns: int,
    end_ns: int,
    *,
    source: InfluxClient,
    sink: WindowSink,
    clock: Clock,
    run_ids: RunIds | None = None,
    stop: threading.Event | None = None,
    chunk_size: int = DEFAULT_CHUNK_SIZE,
    on_window: Callable[[WindowResult], None] | None = None,
) -> RangeResult:
    """Compute and ship every whole window of `plan` inside `[start_ns, end_ns)`.

    Partial windows at either edge are left out (a window is never computed from a range that
    cuts it). Run ids are `clock.now_ns()` at each computation (pass the same `run_ids` to
    several calls to keep them strictly increasing under a clock that does not move). Running
    the same range twice leaves central holding the same points, with only the manifests'
    `run` increased.
    """
    windows = windows_between(start_ns, end_ns, plan.window_ns)
    return run_windows(
        plan,
        windows,
        source=source,
        sink=sink,
        run_ids=run_ids or RunIds(clock),
        stop=stop,
        chunk_size=chunk_size,
        on_window=on_window,
    )


def events_per_second(result: RangeResult) -> float:
    """Raw events read and computed per second of read + compute time (nan when none)."""
    seconds = sum(w.read_s + w.compute_s for w in result.windows)
    events = sum(w.events for w in result.windows)
    return events / seconds if seconds > 0 else math.nan


def _counted_fields(plan: TrackedPlan) -> tuple[str, ...]:
    """The fields whose points are a plan's raw events (`count_raw_events`)."""
    return plan.counted_fields if isinstance(plan, DetectionPlan) else (plan.value_field,)


def oldest_raw_event_ns(source: InfluxClient, plan: TrackedPlan) -> int | None:
    """When the oldest raw event `count_raw_events` counts for `plan` happened (None: none).

    One `first()` per field: with several selectors InfluxQL answers time 0."""
    times = []
    for field in _counted_fields(plan):
        query = (
            f"SELECT first({quote_ident(field)}) "
            f"FROM {raw_source(plan.database, plan.retention_policy, plan.measurement)}"
        )
        for series in source.query(query, database=plan.database):
            times += [int(row[0]) for row in series.values]
    return min(times, default=None)


def count_raw_events(
    source: InfluxClient, plan: TrackedPlan, start_ns: int, end_ns: int
) -> dict[int, int]:
    """Raw events per window start in [start, end), from one query (absent means 0).

    An aggregation's are the points holding its value field. A detection's are the points its
    query returns, those holding its key or its counted key: InfluxQL counts each field apart,
    so this is the larger of the two counts — exact where every point holding one holds the
    other (or the key is all there is), else a lower bound. Either way a window counted 0
    returns nothing, and central, holding a complete computation, never holds fewer.
    """
    fields = _counted_fields(plan)
    if not fields:  # InfluxDB returns no row for a SELECT of tags alone
        return {}
    counted = ", ".join(f"count({quote_ident(f)}) AS {quote_ident(f'n{i}')}" for i, f in enumerate(fields))  # fmt: skip
    query = (
        f"SELECT {counted} "
        f"FROM {raw_source(plan.database, plan.retention_policy, plan.measurement)} "
        f"WHERE time >= {start_ns} AND time < {end_ns} "
        f"GROUP BY time({plan.window_ns}ns) fill(none)"
    )
    counts: dict[int, int] = {}
    for series in source.query(query, database=plan.database):
        at = [series.columns.index(f"n{i}") for i in range(len(fields))]
        for row in series.values:
            most = max(int(row[i] or 0) for i in at)
            counts[int(row[0])] = counts.get(int(row[0]), 0) + most
    return counts
