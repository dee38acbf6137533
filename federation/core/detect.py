"""From one window of raw key values to a detection's findings and the counts that leave the DC.

The detection counterpart of `aggregate.py`: the single implementation both executors use (the
embedded executor and the Kapacitor UDF in detection mode), so for the same raw data they keep
the same findings and ship the same counts.

Per window, every distinct value of the key gets a count — of its events, or of the distinct
values of the counted key — and the threshold is `max(at_least, factor × median count)` over the
window's keys; a key whose count reaches it is a finding. Findings hold personal data and are
written only to the DC's own InfluxDB (`finding_points`); central gets `shipped_points`: one
point tagged `dc` alone (events, keys evaluated, findings) and the manifest.

Memory: one counter of keys, or one set of the window's distinct (key, value) pairs — never a
set per key — so 10^6 distinct keys cost one entry each (see `DetectionCounter`).
"""

from __future__ import annotations

import hashlib
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from operator import itemgetter
from typing import Protocol

import numpy as np

from federation.core.aggregate import manifest_point
from federation.core.detection_plan import DETECTION_RUNS_MEASUREMENT, FINDINGS_MEASUREMENT
from federation.core.points import Point

Column = Sequence[str | None]


class DetectionSpec(Protocol):
    """What computing a window's findings needs; a DetectionPlan is one, and the UDF builds
    one from its TICKscript options, so it needs no config."""

    @property
    def detection(self) -> str: ...
    @property
    def aggregation(self) -> str: ...
    @property
    def dc(self) -> str: ...
    @property
    def distinct(self) -> str | None: ...
    @property
    def at_least(self) -> int: ...
    @property
    def factor(self) -> float: ...
    @property
    def version(self) -> str: ...


@dataclass(frozen=True)
class Finding:
    """One key whose count reached the threshold in one window. Personal data: local only."""

    detection: str
    window_start_ns: int
    key: str
    count: int
    threshold: float


@dataclass(frozen=True)
class WindowResult:
    """A window's outcome: its events, the keys evaluated, and the findings (count first)."""

    window_start_ns: int
    events: int
    keys: int
    threshold: float
    findings: tuple[Finding, ...]


_ABSENT = (None, "")
"""A row whose key is None (the raw point lacks it) or empty holds no key, nor a value."""


class DetectionCounter:
    """Counts of one window fed chunk by chunk (the executor's read) or all at once (the UDF).

    Counting events is a `Counter` of the key column; counting distinct values keeps the
    distinct (key, value) pairs and counts them per key at the end. Both run in C over the
    rows, and hold each distinct key or pair once: memory grows with the distinct pairs of the
    window (exact counts need them), never with keys × values. `finish` gives the same result
    whatever the chunking and the order of the rows.
    """

    def __init__(self, spec: DetectionSpec) -> None:
        self._spec = spec
        self._events: Counter[str | None] = Counter()
        # A dict, not a set: iterating it follows insertion, hence memory order, which makes
        # counting its pairs per key several times faster at 10^6 pairs.
        self._pairs: dict[tuple[str | None, str | None], None] | None = (
            {} if spec.distinct is not None else None
        )
        self._valueless: set[tuple[str | None, str | None]] = set()
        self._rows = 0

    def add(self, keys: Column, values: Column | None = None) -> None:
        """The next rows: the key column, and the counted key's column when counting distinct
        values (None in a row: the raw point lacks that key)."""
        if (values is None) != (self._pairs is None):
            raise ValueError("a detection counting distinct values takes a values column")
        self._rows += len(keys)
        if self._pairs is None or values is None:
            self._events.update(keys)
            return
        if len(values) != len(keys):
            raise ValueError(f"a values column has {len(values)} rows, not {len(keys)}")
        chunk = dict.fromkeys(zip(keys, values, strict=True))
        if None in values or "" in values:  # rare: only then look at pairs one by one
            self._valueless.update(pair for pair in chunk if pair[1] in _ABSENT)
        if self._pairs:
            self._pairs.update(chunk)
        else:
            self._pairs = chunk

    def finish(self, window_start_ns: int) -> WindowResult:
        """The window's keys, threshold and findings (sorted by count, then key)."""
        spec = self._spec
        if self._pairs is None:
            per_key = self._events
        else:
            per_key = Counter(map(itemgetter(0), self._pairs))
            # A key seen only without a counted value is still a key evaluated, with count 0.
            per_key.subtract(map(itemgetter(0), self._valueless))
        for absent in _ABSENT:
            per_key.pop(absent, None)
        counts = np.fromiter(per_key.values(), np.int64, len(per_key))
        median = float(np.median(counts)) if len(counts) else 0.0
        threshold = max(float(spec.at_least), spec.factor * median)
        labels = list(per_key)
        findings = sorted(
            (
                Finding(spec.detection, window_start_ns, str(labels[c]), int(counts[c]), threshold)
                for c in np.flatnonzero(counts >= threshold).tolist()
            ),
            key=lambda f: (-f.count, f.key),
        )
        return WindowResult(window_start_ns, self._rows, len(counts), threshold, tuple(findings))


def detect_window(
    spec: DetectionSpec,
    window_start_ns: int,
    keys: Column,
    values: Column | None = None,
) -> WindowResult:
    """One whole window's result from its columns at once (see `DetectionCounter`)."""
    counter = DetectionCounter(spec)
    counter.add(keys, values)
    return counter.finish(window_start_ns)


def key_id(key: str) -> str:
    """The tag a finding's series is keyed by: a hash of the key value, so that re-running a
    window rewrites the same finding (the value itself stays a field, as personal data must)."""
    return hashlib.sha256(key.encode()).hexdigest()[:16]


def finding_points(spec: DetectionSpec, result: WindowResult, *, run: int) -> list[Point]:
    """The findings as points for the DC's own InfluxDB (raw database, raw RP), never central,
    then the window's run point (`DETECTION_RUNS_MEASUREMENT`).

    `run` lets a reader keep only a window's newest computation: a re-run with more data may
    no longer find a key an earlier run found (the median moved), and that stale point stays.
    """
    run_point = Point(
        DETECTION_RUNS_MEASUREMENT,
        {"detection": spec.detection},
        {"run": run, "keys": result.keys, "findings": len(result.findings)},
        result.window_start_ns,
    )
    return [
        Point(
            FINDINGS_MEASUREMENT,
            {"detection": f.detection, "key_id": key_id(f.key)},
            {"key": f.key, "count": f.count, "threshold": f.threshold, "run": run},
            f.window_start_ns,
        )
        for f in result.findings
    ] + [run_point]


def shipped_points(spec: DetectionSpec, result: WindowResult, *, run: int) -> list[Point]:
    """What leaves the DC for one window: the count point (tag `dc` alone; no key, no value of
    one) and the manifest. An empty window ships its manifest alone, as Kapacitor sees no batch
    for it and the agent ships the zero manifest itself."""
    points: list[Point] = []
    if result.events:
        fields: dict[str, int | float | str | bool] = {
            "count": result.events,
            "keys": result.keys,
            "findings": len(result.findings),
        }
        points.append(Point(spec.aggregation, {"dc": spec.dc}, fields, result.window_start_ns))
    points.append(
        manifest_point(
            spec,
            result.window_start_ns,
            events=result.events,
            groups=len(points),
            suppressed_events=0,
            run=run,
        )
    )
    return points
