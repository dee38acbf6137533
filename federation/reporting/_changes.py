"""Applying what changed in a period's windows to its rollup points, point by point.

A refresh (`federation.reporting.daily`, `federation.reporting.monthly`) knows, per finest group
(every dimension), the content a changed window added and the content it took away. The points
that change are those groups' points and the coarser points they fall in: `apply_changes` reads
only those (`read_groups`), adds and takes away, and says how many points each set holds then;
the caller writes them, and the marker lists the builds of the points left as they were (see
`federation.reporting.rollups`). When most groups change, every point is merged again the way a
whole re-merge does (`_apply_densely`).
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Collection, Mapping, Sequence
from concurrent.futures import Future
from dataclasses import dataclass

from federation.core.influxql import quote_ident, quote_string
from federation.core.sketch import Sketch, decode_many
from federation.reporting._central import CentralWriter, flat_rows, signed_merge
from federation.reporting.rollups import Marker, _project, dims_tag

MAX_BUILDS = 24
"""The most builds a marker lists; a refresh that would list more re-merges the period whole."""

_GROUPS_PER_QUERY = 150
"""Groups named in one query's WHERE (InfluxDB answers 200 in 0.07 s, 400 in 0.23 s)."""
_READ_SET_WHOLE = 1_500
"""From this many groups of one set on, the set is read whole instead of group by group."""
_DENSE_SHARE = 0.5
"""From this share of a period's finest groups changed on, every point is merged and written
again (the coarser sets merged from the finest, as a whole re-merge does): cheaper then than
adding each change to every set."""


Points = dict[tuple[int, tuple[str, ...]], tuple[str, str]]
"""(set index, group) -> (`sketch`, `build`) of rollup points, as `read_groups` gives them."""


def group_condition(dimension_set: Sequence[str], key: Sequence[str]) -> str:
    """The WHERE selecting the point of group `key` of `dimension_set` (every tag of it)."""
    return (
        "("
        + " AND ".join(
            f"{quote_ident(d)} = {quote_string(v)}" for d, v in zip(dimension_set, key, strict=True)
        )
        + ")"
    )


def read_groups(
    central: CentralWriter,
    database: str,
    rp: str,
    measurement: str,
    where: Sequence[str],
    sets: Sequence[Sequence[str]],
    wanted: Mapping[int, Collection[tuple[str, ...]] | None],
    start_ns: int,
) -> Points:
    """(set index, group) -> (`sketch`, `build`) of the rollup points at `start_ns` of the
    `wanted` groups of each set (set index -> groups; None: every group) that `where` selects
    and central holds.

    A few groups are named in the WHERE, a query per `_GROUPS_PER_QUERY`; a set with many is
    read whole (flat), which then costs what the set holds."""
    found: Points = {}
    for index, keys in sorted(wanted.items()):
        if keys is not None and not keys:
            continue
        dimension_set = list(sets[index])
        base = [*where, f'"dims" = {quote_string(dims_tag(dimension_set))}']
        if keys is None or not dimension_set or len(keys) >= _READ_SET_WHOLE:
            queries = [base]
        else:
            ordered = sorted(keys)
            queries = [
                [*base, "(" + " OR ".join(
                    group_condition(dimension_set, k) for k in ordered[i : i + _GROUPS_PER_QUERY]
                ) + ")"]
                for i in range(0, len(ordered), _GROUPS_PER_QUERY)
            ]  # fmt: skip
        chosen = None if keys is None else keys if isinstance(keys, (set, frozenset)) else set(keys)
        for conditions in queries:
            rows = flat_rows(
                central, database, rp, measurement, ("sketch", "build"), dimension_set,
                conditions, start_ns, start_ns + 1,
            )  # fmt: skip
            for key, (_, text, build) in rows:
                if chosen is None or key in chosen:
                    found[(index, key)] = (str(text), str(build))
    return found


Change = list[tuple[tuple[str, ...], Sketch]]
"""(finest group, histogram) pairs: content added to, or taken from, a period."""


def net_change(added: Change, removed: Change) -> tuple[Change, Change]:
    """Per finest group whose histogram changes, the sum of what is `added` and of what is
    `removed`; groups whose sums are equal change nothing and are left out."""
    plus, minus = signed_merge(added), signed_merge(removed)
    changed = sorted(k for k in plus.keys() | minus.keys() if plus.get(k) != minus.get(k))
    return (
        [(k, plus[k]) for k in changed if k in plus],
        [(k, minus[k]) for k in changed if k in minus],
    )


Merged = dict[tuple[int, tuple[str, ...]], Sketch]
"""(set index, group) -> its histogram."""


@dataclass(frozen=True)
class PeriodPoints:
    """The rollup points of one period (at `start_ns`, the ones `where` selects in
    `measurement`), over `sets` of an aggregation's `dimensions`, current under `old`."""

    central: CentralWriter
    database: str
    rp: str
    measurement: str
    where: Sequence[str]
    dimensions: Sequence[str]
    sets: Sequence[tuple[str, ...]]
    old: Marker
    start_ns: int

    def read(self, wanted: Mapping[int, Collection[tuple[str, ...]] | None]) -> Points:
        """`read_groups` of these points."""
        return read_groups(
            self.central, self.database, self.rp, self.measurement, self.where, self.sets,
            wanted, self.start_ns,
        )  # fmt: skip


def densely_changed(at: PeriodPoints, groups: int) -> int | None:
    """The index of the finest set (every dimension) when `groups` changed finest groups make
    `apply_changes` merge every point again (`_DENSE_SHARE`); None when they do not."""
    held = at.old.groups_of(at.sets)
    finest = next((i for i, s in enumerate(at.sets) if tuple(s) == tuple(at.dimensions)), None)
    if held is None or finest is None or groups < _DENSE_SHARE * max(held[finest], 1):
        return None
    return finest


def apply_changes(
    at: PeriodPoints, added: Change, removed: Change, finest_read: Future[Points] | None = None
) -> tuple[Merged, list[int], frozenset[str]]:
    """The points of the period `at` that the finest groups' `added` and `removed` content
    changes: each the point current under `at.old` plus what was added and minus what was
    removed, in every set; then each set's point count and the builds of the points left as
    they were.

    Reads only those groups' points; when `_DENSE_SHARE` of the finest groups change, every
    point instead (`_apply_densely`; `finest_read`, when given, is that read of the finest
    set begun earlier), and then no earlier build is left current. Raises
    ValueError when the result cannot be shown to be the whole re-merge's: the marker lists
    `MAX_BUILDS` builds or does not count its sets' points, a group that held content has no
    current point, or a group would be left empty (its point would have to go)."""
    old, sets = at.old, at.sets
    if len(old.builds) >= MAX_BUILDS:
        raise ValueError(f"the marker lists {len(old.builds)} builds")
    held = old.groups_of(sets)
    if held is None:
        raise ValueError("the marker does not count each set's points")
    finest = densely_changed(at, len({k for k, _ in (*added, *removed)}))
    if finest is not None:
        every = finest_read.result() if finest_read is not None else at.read({finest: None})
        return _apply_densely(at, finest, held[finest], every, added, removed)
    picks = [[list(at.dimensions).index(d) for d in s] for s in sets]

    def projected(items: Change) -> list[tuple[tuple[int, tuple[str, ...]], Sketch]]:
        return [
            ((i, tuple(key[p] for p in pick)), sketch)
            for key, sketch in items
            for i, pick in enumerate(picks)
        ]

    plus, minus = projected(added), projected(removed)
    affected: dict[int, set[tuple[str, ...]]] = defaultdict(set)
    for (i, key), _ in (*plus, *minus):
        affected[i].add(key)
    had = {group for group, _ in minus}  # groups that held the content taken away
    found = at.read(affected)
    counts = [held[i] for i in range(len(sets))]
    base: list[tuple[int, tuple[str, ...]]] = []
    texts: list[str] = []
    for i, keys in sorted(affected.items()):
        for key in sorted(keys):
            point = found.get((i, key))
            if point is not None and point[1] in old.builds:
                base.append((i, key))
                texts.append(point[0])
            elif (i, key) in had:
                raise ValueError(f"a point of set {dims_tag(sets[i])} held before is not current")
            else:
                counts[i] += 1  # a group new to the period
    merged = signed_merge([*zip(base, decode_many(texts), strict=True), *plus], minus)
    if len(merged) != sum(len(keys) for keys in affected.values()):
        raise ValueError("a group would be left empty")
    return merged, counts, old.builds


def _apply_densely(
    at: PeriodPoints, finest: int, held: int, every: Points, added: Change, removed: Change
) -> tuple[Merged, list[int], frozenset[str]]:
    """`apply_changes` when most groups change: every point of the finest set (`finest`, the
    set of every dimension; `held` points; `every`, as read) plus what was added minus what was
    removed, each coarser set merged from those as a whole re-merge does; every point of every
    set is written again, so no earlier build stays current (the builds returned are none)."""
    current = [(key, text) for (_, key), (text, build) in every.items() if build in at.old.builds]
    if len(current) != held:
        raise ValueError(
            f"set {dims_tag(at.sets[finest])} holds {len(current)} current points, its marker "
            f"counts {held}"
        )
    keys = [key for key, _ in current]
    day = signed_merge(
        [*zip(keys, decode_many([text for _, text in current]), strict=True), *added], removed
    )
    if len(day) != len({*keys, *(key for key, _ in added)}):
        raise ValueError("a group would be left empty")
    merged = _project(day, at.dimensions, at.sets)
    counts = [0] * len(at.sets)
    for index, _ in merged:
        counts[index] += 1
    return merged, counts, frozenset()
