"""From one window of raw values to the points a DC ships: summaries, histograms, manifest.

This is the single implementation both executors use — the embedded executor and the Kapacitor
UDF — so that for the same raw data they write identical points.

A group is withheld from the shipment, whatever its size, when one of its dimension values looks
like personal data (`federation.core.pii`: the same detector as the gateway's). Ingest refuses such a
tag, but raw data written by something else may still hold one; without this the gateway would
refuse the DC's whole batch and the window would never ship. The withheld events are counted in
the manifest's `suppressed_events` (so events = Σ count + suppressed still holds) and, apart, in
`personal_value_events`, so the coordinator can say which windows hold such data.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from typing import Protocol

import numpy as np
import numpy.typing as npt

from federation.core.pii import personal_data_kind
from federation.core.plan import MANIFEST_MEASUREMENT, NONE_VALUE
from federation.core.points import FieldValue, Point
from federation.core.sketch import encode_many
from federation.core.stats import GroupedValues

DimensionColumn = Sequence[str | None]

SLICE_GROUPS = 250
"""Groups whose summary points are made at a time while a window is shipped: a fraction of the
shipper's first batch, so that batch is ready as soon as its own groups are made."""


class ManifestSpec(Protocol):
    """What a manifest names: the plan (aggregation or detection), the DC, the version."""

    @property
    def aggregation(self) -> str: ...
    @property
    def dc(self) -> str: ...
    @property
    def version(self) -> str: ...


class OutputSpec(Protocol):
    """What computing a window's points needs to know; an AggregationPlan is one.

    The Kapacitor UDF builds one from its TICKscript options, so it needs no config.
    """

    @property
    def aggregation(self) -> str: ...
    @property
    def dc(self) -> str: ...
    @property
    def dimensions(self) -> tuple[str, ...]: ...
    @property
    def percentiles(self) -> tuple[float, ...]: ...
    @property
    def accuracy(self) -> float: ...
    @property
    def min_group_events(self) -> int: ...
    @property
    def version(self) -> str: ...


class RowGrouper:
    """Group codes for a window's rows as they arrive in chunks (the executor's read).

    `add` numbers each column's values by first appearance, chunk after chunk; `finish` then
    gives exactly what `group_rows` of all the rows at once gives, so a window's groups do not
    depend on how its rows were chunked.
    """

    def __init__(self, n_columns: int) -> None:
        self._index: list[dict[str | None, int]] = [{} for _ in range(n_columns)]
        self._codes: list[list[npt.NDArray[np.int64]]] = [[] for _ in range(n_columns)]
        self._rows = 0

    def add(self, columns: Sequence[DimensionColumn], n_rows: int) -> None:
        """Code the next `n_rows` rows, one column per dimension (None: the tag is missing)."""
        if len(columns) != len(self._index):
            raise ValueError(f"expected {len(self._index)} dimension columns, got {len(columns)}")
        for index, codes, column in zip(self._index, self._codes, columns, strict=True):
            if len(column) != n_rows:
                raise ValueError(f"a dimension column has {len(column)} rows, not {n_rows}")
            # Both passes run in C but the loop over the chunk's distinct values (a few
            # thousand over up to millions of rows).
            for value in dict.fromkeys(column):
                if value not in index:
                    index[value] = len(index)
            codes.append(np.fromiter(map(index.__getitem__, column), np.int64, count=n_rows))
        self._rows += n_rows

    def finish(self) -> tuple[npt.NDArray[np.int64], list[tuple[str, ...]]]:
        """Every row's group code, and each group's dimension values (see `group_rows`)."""
        n_rows = self._rows
        if not self._index:
            return np.zeros(n_rows, dtype=np.int64), [()]
        combined = np.zeros(n_rows, dtype=np.int64)
        per_column: list[list[str]] = []
        for index, parts in zip(self._index, self._codes, strict=True):
            labels = [value or NONE_VALUE for value in index]
            per_column.append(labels)
            codes = np.concatenate(parts) if parts else np.zeros(0, dtype=np.int64)
            combined = combined * max(len(labels), 1) + codes
        return _split_groups(combined, per_column)


def _split_groups(
    combined: npt.NDArray[np.int64], per_column: list[list[str]]
) -> tuple[npt.NDArray[np.int64], list[tuple[str, ...]]]:
    unique, inverse = np.unique(combined, return_inverse=True)
    # Split each distinct combined code back into its per-column codes, last column first.
    label_columns: list[list[str]] = []
    rest = unique
    for labels in reversed(per_column):
        rest, code = np.divmod(rest, max(len(labels), 1))
        label_columns.append(list(map(labels.__getitem__, code.tolist())))
    keys = list(zip(*reversed(label_columns), strict=True))
    # Groups whose raw values differed only as None vs "" map to the same key: merge them.
    canonical = {key: code for code, key in enumerate(dict.fromkeys(keys))}
    if len(canonical) == len(keys):
        return inverse.astype(np.int64).reshape(-1), keys
    remap = np.fromiter(map(canonical.__getitem__, keys), dtype=np.int64, count=len(keys))
    return remap[inverse.astype(np.int64).reshape(-1)], list(canonical)


def group_rows(
    columns: Sequence[DimensionColumn], n_rows: int
) -> tuple[npt.NDArray[np.int64], list[tuple[str, ...]]]:
    """Assign every row a group code; return the codes and each group's dimension values.

    Rows whose dimension values are equal after mapping missing/empty to `_none` share a group.
    """
    grouper = RowGrouper(len(columns))
    grouper.add(columns, n_rows)
    return grouper.finish()


def personal_groups(keys: Sequence[tuple[str, ...]]) -> npt.NDArray[np.bool_]:
    """For each group key, whether one of its dimension values looks like personal data."""
    distinct = {value for key in keys for value in key}
    personal = {value for value in distinct if personal_data_kind(value) is not None}
    if not personal:
        return np.zeros(len(keys), dtype=np.bool_)
    return np.fromiter(
        (not personal.isdisjoint(key) for key in keys), dtype=np.bool_, count=len(keys)
    )


def window_points(
    plan: OutputSpec,
    window_start_ns: int,
    values: npt.NDArray[np.float64],
    dimensions: Sequence[DimensionColumn],
    *,
    run: int,
) -> list[Point]:
    """The points one DC ships for one whole window: a summary per group, then the manifest.

    `values` are the window's raw values (float64, as both InfluxDB's JSON and Kapacitor
    deliver them); `dimensions` holds one column per exported dimension, in plan order.
    Groups below `plan.min_group_events`, and groups with a dimension value that looks like
    personal data (`personal_groups`), are not emitted; their events are counted in the
    manifest's `suppressed_events`, the latter's also in `personal_value_events`. Summaries
    come sorted by their tags, so the output is the same for the same input whatever order the
    rows arrived in.
    """
    if len(dimensions) != len(plan.dimensions):
        raise ValueError(
            f"expected {len(plan.dimensions)} dimension columns, got {len(dimensions)}"
        )
    values = np.asarray(values, dtype=np.float64)
    codes, keys = group_rows(dimensions, len(values))
    return list(lazy_window_points(plan, window_start_ns, values, codes, keys, run=run))


def lazy_window_points(
    plan: OutputSpec,
    window_start_ns: int,
    values: npt.NDArray[np.float64],
    codes: npt.NDArray[np.int64],
    keys: Sequence[tuple[str, ...]],
    *,
    run: int,
    slice_groups: int = SLICE_GROUPS,
) -> WindowPoints:
    """`window_points` of rows already grouped (row `i` is in the group whose dimension values
    are `keys[codes[i]]`, as `group_rows`, or a `RowGrouper` fed chunk by chunk, gives), its
    summary points made `slice_groups` groups at a time as they are iterated.

    The work that spans every value (validation, one sort, the histogram buckets) and the
    manifest are done here, so a value the computation cannot take raises ValueError here and
    not while shipping; each group's statistics and histogram are then made with its point."""
    k = plan.min_group_events
    grouped = GroupedValues(values, codes, len(keys), plan.percentiles, plan.accuracy)
    sizes = grouped.sizes
    personal = personal_groups(keys)
    suppressed = int(sizes[(sizes < k) | personal].sum())
    # Empty groups, groups below k and groups keyed by a personal-looking value have no
    # summary shipped: their events are in `suppressed`.
    exported = sorted(
        np.flatnonzero((sizes >= max(k, 1)) & ~personal).tolist(), key=keys.__getitem__
    )
    manifest = manifest_point(
        plan,
        window_start_ns,
        events=len(values),
        groups=len(exported),
        suppressed_events=suppressed,
        personal_value_events=int(sizes[personal].sum()),
        run=run,
    )
    return WindowPoints(plan, window_start_ns, grouped, keys, exported, manifest, slice_groups)


class WindowPoints:
    """One window's points: a summary per exported group, sorted by tags, then the manifest.

    The summaries (numbers, histograms, points) are made `slice_groups` groups at a time as
    they are iterated, and not kept, so a shipper sends the first while the rest are still
    being made. Iterating twice gives the same points, those of `window_points`.
    """

    def __init__(
        self,
        plan: OutputSpec,
        window_start_ns: int,
        grouped: GroupedValues,
        keys: Sequence[tuple[str, ...]],
        exported: list[int],
        manifest: Point,
        slice_groups: int = SLICE_GROUPS,
    ) -> None:
        if slice_groups < 1:
            raise ValueError("slice_groups must be >= 1")
        self._plan = plan
        self._start = window_start_ns
        self._grouped = grouped
        self._keys = keys
        self._exported = exported
        self._slice = slice_groups
        self.manifest = manifest

    def __len__(self) -> int:
        return len(self._exported) + 1

    def __iter__(self) -> Iterator[Point]:
        for start in range(0, len(self._exported), self._slice):
            yield from self._summary_points(self._exported[start : start + self._slice])
        yield self.manifest

    def _summary_points(self, groups: list[int]) -> list[Point]:
        plan = self._plan
        summaries = self._grouped.summaries(groups)
        sketches = encode_many([summary.sketch for summary in summaries])
        points: list[Point] = []
        for group, summary, sketch in zip(groups, summaries, sketches, strict=True):
            fields: dict[str, FieldValue] = {
                "count": summary.count,
                "sum": summary.sum,
                "min": summary.min,
                "max": summary.max,
            }
            fields.update(summary.percentiles)
            fields["sketch"] = sketch
            tags = {"dc": plan.dc, **dict(zip(plan.dimensions, self._keys[group], strict=True))}
            points.append(Point(plan.aggregation, tags, fields, self._start))
        return points


def manifest_point(
    plan: ManifestSpec,
    window_start_ns: int,
    *,
    events: int,
    groups: int,
    suppressed_events: int,
    run: int,
    personal_value_events: int = 0,
) -> Point:
    """The manifest of one window; written for empty windows too, so empty differs from missing.

    `personal_value_events` (part of `suppressed_events`) counts the events of groups withheld
    because a dimension value looked like personal data.
    """
    return Point(
        MANIFEST_MEASUREMENT,
        {"aggregation": plan.aggregation, "dc": plan.dc},
        {
            "events": events,
            "groups": groups,
            "suppressed_events": suppressed_events,
            "personal_value_events": personal_value_events,
            "version": plan.version,
            "run": run,
        },
        window_start_ns,
    )
