"""The embedded executor for detections: read a window, keep its findings here, ship its counts.

For one DetectionPlan and a list of whole windows, each window is read with exactly one query,
`plan.query_between(window.start, window.end)` (the query a Kapacitor branch runs), counted with
`DetectionCounter` chunk by chunk (the code the UDF's detection mode runs), and then, in this
order: the findings are written to the DC's own InfluxDB (raw database, raw retention policy —
they are personal data and live no longer than the raw events), posted to the in-region webhook
if the plan names one, and only then are the counts shipped to the gateway, manifest last. So a
window the ledger holds as shipped always has its findings kept in the DC.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from collections.abc import Callable, Sequence

import httpx

from federation.agent.executor import (
    DEFAULT_CHUNK_SIZE,
    READ_AHEAD_CHUNKS,
    RangeResult,
    RunIds,
    WindowResult,
    WindowSink,
)
from federation.agent.overlap import read_ahead
from federation.agent.shipper import ShipmentRefused
from federation.core.clock import format_rfc3339
from federation.core.detect import DetectionCounter, finding_points, shipped_points
from federation.core.detect import WindowResult as Detected
from federation.core.detection_plan import DetectionPlan
from federation.core.lineprotocol import serialize
from federation.core.windows import Window
from federation.errors import FederationError
from federation.influx import InfluxClient

log = logging.getLogger(__name__)

WEBHOOK_TIMEOUT_S = 10.0


def read_detection_window(
    source: InfluxClient,
    plan: DetectionPlan,
    window: Window,
    *,
    chunk_size: int = DEFAULT_CHUNK_SIZE,
) -> Detected:
    """Read one whole window with the plan's query, counting chunk by chunk as they arrive.

    Raises InfluxError when the local InfluxDB fails.
    """
    if window.size_ns != plan.window_ns:
        raise ValueError(f"window {window} is not a {plan.detection} window")
    query = plan.query_between(window.start_ns, window.end_ns)
    counter = DetectionCounter(plan)
    chunks = source.iter_series(query, database=plan.database, chunk_size=chunk_size)
    for series in read_ahead(chunks, READ_AHEAD_CHUNKS, name=f"read {plan.detection}"):
        if not series.values:
            continue
        index = {name: i for i, name in enumerate(series.columns)}
        transposed = list(zip(*series.values, strict=True))
        empty: list[str | None] = [None] * len(series.values)
        keys = transposed[index[plan.key]] if plan.key in index else empty
        if plan.distinct is None:
            counter.add(keys)
        else:
            at = index.get(plan.distinct)
            counter.add(keys, transposed[at] if at is not None else empty)
        del transposed
    return counter.finish(window.start_ns)


def keep_findings(source: InfluxClient, plan: DetectionPlan, detected: Detected, run: int) -> int:
    """Write a window's findings and its run point to the DC's own InfluxDB under the raw RP;
    return how many findings."""
    points = finding_points(plan, detected, run=run)
    source.write(serialize(points), database=plan.database, retention_policy=plan.retention_policy)
    return len(detected.findings)


def post_findings(
    plan: DetectionPlan, detected: Detected, *, transport: httpx.BaseTransport | None = None
) -> bool:
    """POST a window's findings as JSON to the webhook whose URL the plan's environment
    variable holds; False (and one log line without any value) when it fails or is unset.

    The webhook is in-region by configuration: its URL is the DC operator's, never central's.
    Findings are already kept in the DC, so a failed post loses nothing.
    """
    url = os.environ.get(plan.webhook_url_env or "") if plan.webhook_url_env else None
    if not url or not detected.findings:
        return False
    body = {
        "detection": plan.detection,
        "dc": plan.dc,
        "window_start": format_rfc3339(detected.window_start_ns),
        "threshold": detected.threshold,
        "findings": [{"key": f.key, "count": f.count} for f in detected.findings],
    }
    try:
        with httpx.Client(timeout=WEBHOOK_TIMEOUT_S, transport=transport) as client:
            client.post(url, json=body).raise_for_status()
    except httpx.HTTPError as exc:
        log.error("%s/%s: webhook post failed: %s", plan.dc, plan.detection, type(exc).__name__)
        return False
    return True


def run_detection_windows(
    plan: DetectionPlan,
    windows: Sequence[Window],
    *,
    source: InfluxClient,
    sink: WindowSink,
    run_ids: RunIds,
    stop: threading.Event | None = None,
    chunk_size: int = DEFAULT_CHUNK_SIZE,
    on_window: Callable[[WindowResult], None] | None = None,
) -> RangeResult:
    """Compute each window of `plan`, oldest first: keep its findings, post them, ship counts.

    The same contract as `executor.run_windows`: a gateway refusal of one window is recorded
    and the next is tried; any other failure ends the run with `error` set; `stop` ends it
    before the next window; `on_window` is called with each window's result as it is done.
    """
    ordered = sorted(set(windows))
    results: list[WindowResult] = []

    def finish(*, stopped: bool = False, error: str | None = None) -> RangeResult:
        return RangeResult(
            plan.detection, plan.version, tuple(results), stopped, error, len(ordered)
        )

    for window in ordered:
        if stop is not None and stop.is_set():
            return finish(stopped=True)
        started = time.perf_counter()
        try:
            detected = read_detection_window(source, plan, window, chunk_size=chunk_size)
            read_done = time.perf_counter()
            run = run_ids.next()
            keep_findings(source, plan, detected, run)
        except (FederationError, ValueError) as exc:
            log.error("%s window %s: computing failed: %s", plan.detection, window, exc)
            return finish(error=f"window {window.label}: {exc}")
        post_findings(plan, detected)
        points = shipped_points(plan, detected, run=run)
        computed = time.perf_counter()
        error: str | None = None
        try:
            shipped = sink.ship_window(plan, points, stop=stop)
        except FederationError as exc:
            shipped, error = False, str(exc)
            if not isinstance(exc, ShipmentRefused):
                return finish(error=f"window {window.label}: {error}")
        results.append(
            WindowResult(
                window,
                detected.events,
                len(points) - 1,
                0,
                len(points),
                run,
                shipped,
                read_done - started,
                computed - read_done,
                time.perf_counter() - computed,
                error,
            )
        )
        if on_window is not None:
            on_window(results[-1])
        if error is None and not shipped:
            return finish(stopped=True)
    if any(r.error is not None for r in results):
        return finish(error="window(s) refused by the gateway")
    return finish()
