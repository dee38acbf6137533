"""The UDF's detection mode: `@fedagg().detection(…)` computes one window of a detection.

A detection's TICKscript (`tickscripts/detection.tick.j2`) calls the project's one UDF once per
window branch, in `split` mode: it computes the window once and emits every point tagged
`ROUTE_TAG` — `local` on the findings (each with its key value) and the window's run point,
`central` on the count point (tag `dc` alone) and the manifest. The script splits them after
the UDF: `|where(lambda: "federation_to" == 'local')` to the DC's own InfluxDB under the raw
retention policy, `|where(lambda: "federation_to" == 'central')` to the gateway, each through
`|delete().tag('federation_to')`, so both destinations see exactly the embedded executor's
points. One Python process per branch, not one per branch and destination: Kapacitor starts
every UDF process of a task at once, and a DC runs several detections beside its aggregations.

`findings` and `counts` modes emit one destination's points only, untagged; a process in
`counts` mode never emits a key value, whatever the batch holds. Every mode computes the window
with `federation.core.detect`, the code the embedded executor runs, so the two executors keep
the same findings and ship the same counts.

The options are declared beside the aggregation's in the UDF's Info answer (Kapacitor checks
every call against it); an Init that names `detection` is read with `DETECTION_OPTION_TYPES`.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Final

from federation.core.detect import detect_window, finding_points, shipped_points
from federation.core.detection_plan import ROUTE_CENTRAL, ROUTE_LOCAL, ROUTE_TAG
from federation.core.durations import DAY_NS, format_duration
from federation.core.points import Point
from federation.kapacitor import _udf_pb2 as pb

DETECTION_OPTION_TYPES: Final[dict[str, pb.ValueType]] = {
    "detection": pb.STRING,
    "mode": pb.STRING,
    "dc": pb.STRING,
    "key": pb.STRING,
    "distinct": pb.STRING,
    "atLeast": pb.INT,
    "factor": pb.DOUBLE,
    "window": pb.DURATION,
    "version": pb.STRING,
}
"""Every option of `@fedagg()` in detection mode and the one value it takes."""

DETECTION_OPTIONAL: Final = frozenset({"distinct"})
"""Options a detection may leave out: without `distinct` it counts events per key."""

MODES: Final = ("findings", "counts", "split")
"""`findings`: the findings and run point, for the DC's own InfluxDB. `counts`: what leaves.
`split`: both, each point tagged with its destination (`ROUTE_TAG`)."""

OptionValues = Mapping[str, Sequence[bool | int | float | str]]


@dataclass(frozen=True)
class DetectionOptions:
    """The validated options of one `@fedagg()` node in detection mode: a `DetectionSpec`."""

    detection: str
    mode: str
    dc: str
    key: str
    distinct: str | None
    at_least: int
    factor: float
    window_ns: int
    version: str

    @property
    def aggregation(self) -> str:
        """The name the manifest and central's measurement know the detection by."""
        return self.detection

    @property
    def columns(self) -> tuple[str, ...]:
        """The keys each point is read for: the key, then the counted key if any."""
        return (self.key,) if self.distinct is None else (self.key, self.distinct)


def window_option(given: OptionValues, problems: list[str]) -> int:
    """The `window` option in nanoseconds (0 when not given); a problem unless it is positive
    and divides 24h. Both modes of the UDF read it so."""
    window = int(given.get("window", [0])[0])
    if "window" in given and (window <= 0 or DAY_NS % window):
        shown = format_duration(window) if window > 0 else f"{window} ns"
        problems.append(f"window: {shown} must be positive and divide 24h")
    return window


def detection_options(given: OptionValues, problems: list[str]) -> DetectionOptions | None:
    """Check the collected values of a detection's options (each given once, with its type:
    the caller checked that); append what is wrong to `problems`, None when anything is.

    Guarantees on success: detection, dc, key, version (and distinct, when given) are
    non-empty and distinct differs from key; mode is one of `MODES`; the window is positive
    and divides 24h; atLeast >= 1; factor is finite and >= 0.
    """
    texts: dict[str, str] = {}
    for name in ("detection", "mode", "dc", "key", "version", "distinct"):
        if name in given:
            texts[name] = str(given[name][0])
            if not texts[name].strip():
                problems.append(f"{name}: must not be empty")
    if "mode" in texts and texts["mode"] not in MODES:
        problems.append(f"mode: {texts['mode']!r} is not one of {', '.join(MODES)}")
    distinct = texts.get("distinct")
    if distinct is not None and distinct == texts.get("key"):
        problems.append("distinct: must name another key than key")
    window = window_option(given, problems)
    at_least = int(given.get("atLeast", [1])[0])
    if at_least < 1:
        problems.append(f"atLeast: {at_least} must be at least 1")
    factor = float(given.get("factor", [0.0])[0])
    if not (factor >= 0 and factor != float("inf")):
        problems.append(f"factor: {factor} must be a finite number >= 0")
    if problems:
        return None
    return DetectionOptions(
        detection=texts["detection"],
        mode=texts["mode"],
        dc=texts["dc"],
        key=texts["key"],
        distinct=distinct,
        at_least=at_least,
        factor=factor,
        window_ns=window,
        version=texts["version"],
    )


def detection_points(
    options: DetectionOptions,
    window_start_ns: int,
    columns: Sequence[Sequence[str | None]],
    *,
    run: int,
) -> list[Point]:
    """The points of one whole window for the mode's output: `finding_points` (findings mode),
    `shipped_points` (counts mode), or both with `ROUTE_TAG` on each (split mode), from
    `detect_window` over the key column (and the counted key's column)."""
    values = columns[1] if options.distinct is not None else None
    result = detect_window(options, window_start_ns, columns[0], values)
    if options.mode == "findings":
        return finding_points(options, result, run=run)
    if options.mode == "counts":
        return shipped_points(options, result, run=run)
    return [
        Point(p.measurement, {**p.tags, ROUTE_TAG: route}, p.fields, p.time_ns)
        for points, route in (
            (finding_points(options, result, run=run), ROUTE_LOCAL),
            (shipped_points(options, result, run=run), ROUTE_CENTRAL),
        )
        for p in points
    ]
