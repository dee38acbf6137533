"""Re-merging a local day's rollups: whole, or by what changed since it was last merged.

`remerge_day` merges all of a day's windows. `refresh_day` (what `refresh_rollups` runs) starts
from the windows the day's marker lists (`merged`, written with the rollup) and applies only
the windows whose manifest differs: minus each one's previous content (its window part,
`federation.reporting._merged`), plus its content now; only the groups whose histogram that
changes are read and written again, the others keeping their points (the marker's `builds`,
see `federation.reporting.rollups`). It re-merges the day whole whenever it cannot show that
the result is the one a whole re-merge gives: a marker listing no windows or of another version
or sets, a window part missing or of another label, a window gone, a changed window whose
points read do not sum to its manifest's exported events (a shipment still arriving), a group
that held content without a current point, or a group left empty. The window parts they read
are written only after every zone's day has been refreshed (`WindowParts.flush`), so no day
loses the previous content it needs.
"""

from __future__ import annotations

import logging
from collections import defaultdict
from collections.abc import Container, Iterable, Iterator, Mapping, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from datetime import date
from typing import Any

from federation.config import FederationConfig
from federation.core.calendar import CalendarPeriod, period_windows
from federation.core.influxql import quote_string
from federation.core.points import Point
from federation.core.sketch import Sketch, decode_many
from federation.errors import SketchDecodeError
from federation.reporting._central import (
    CentralWriter,
    SketchMerger,
    WindowManifest,
    dc_condition,
    fingerprint,
    flat_rows,
    select_query,
    stream_rows,
    tag_value,
)
from federation.reporting._changes import (
    Change,
    PeriodPoints,
    apply_changes,
    densely_changed,
    net_change,
)
from federation.reporting._merged import (
    GroupTexts,
    Packed,
    day_entries,
    merged_measurement,
    packed_points,
    read_packed,
    window_conditions,
    window_label,
    write_packed,
)
from federation.reporting.rollups import (
    MAX_FIELD_CHARS,
    ROLLUP_MARKER_MEASUREMENT,
    RemergeOutcome,
    _check_dimensions,
    _day_period,
    _manifests_per_dc,
    _project,
    _spec,
    _write_rollup,
    dims_tag,
    read_markers,
    rollup_dimension_sets,
    rollup_measurement,
)

__all__ = ["DayChange", "WindowParts", "refresh_day", "remerge_day"]

log = logging.getLogger(__name__)

Key = tuple[str, ...]


@dataclass(frozen=True)
class DayChange:
    """What refreshing one (tz, day, dc) by its changed windows did to its finest groups: the
    rollup's build before and after, the windows' content added and their previous content
    taken away (a month changes by exactly that)."""

    dc: str
    start_ns: int
    old_build: str
    new_build: str
    added: list[tuple[Key, Sketch]]
    removed: list[tuple[Key, Sketch]]


class WindowParts:
    """The window parts one refresh pass reads (previous content) and writes (content merged
    now). New parts are held until `flush`, so that every zone's day refreshed in the same pass
    reads the previous content first."""

    def __init__(
        self,
        central: CentralWriter,
        database: str,
        aggregation: str,
        expected: Iterable[tuple[str, int]] = (),
    ) -> None:
        self.central = central
        self.database = database
        self.aggregation = aggregation
        self.expected = frozenset(expected)
        """(dc, window start) said to have changed: read while a day's marker is."""
        self._old: dict[tuple[str, str, int], Packed | None] = {}
        self._new: dict[tuple[str, str, int], tuple[str, GroupTexts]] = {}
        self.now: dict[tuple[str, str], GroupTexts | None] = {}
        """Changed windows' content as read in this pass (None: it did not sum to its
        manifest), so that each is read once whichever zones' days it falls in."""

    def previous(self, rp: str, dc: str, start_ns: int, width: int) -> Packed | None:
        """The whole window part of (dc, window) held before this pass wrote any."""
        key = (rp, dc, start_ns)
        if key not in self._old:
            found = read_packed(
                self.central, self.database, rp, self.aggregation, window_conditions(dc),
                start_ns, start_ns + 1, width,
            )  # fmt: skip
            self._old[key] = found.get(start_ns)
        return self._old[key]

    def keep(self, rp: str, m: WindowManifest, texts: GroupTexts) -> None:
        """Hold the content of window `m` as merged now, for `flush` to write."""
        self._new[(rp, m.dc, m.start_ns)] = (window_label(m), texts)

    def flush(self) -> None:
        """Write every window part held."""
        per_rp: dict[str, list[Point]] = defaultdict(list)
        measurement = merged_measurement(self.aggregation)
        for (rp, dc, start), (label, texts) in sorted(self._new.items()):
            tags = {"dc": dc, "kind": "window"}
            try:
                per_rp[rp] += packed_points(measurement, tags, label, texts, start)
            except ValueError as exc:  # not kept: a later refresh re-merges its days whole
                log.warning("%s dc=%s window %s: no window part: %s", self.aggregation, dc,
                            start, exc)  # fmt: skip
        for rp, points in sorted(per_rp.items()):
            write_packed(self.central, self.database, rp, points)
        self._new.clear()


def _decoded(items: Sequence[tuple[Key, str]]) -> Change:
    """Each (group, text) as (group, histogram), the texts decoded together."""
    return list(zip((k for k, _ in items), decode_many([t for _, t in items]), strict=True))


def _exported(m: WindowManifest) -> int:
    """The events of a window its summary points count (the rest were suppressed)."""
    return m.events - m.suppressed_events


def remerge_day(
    config: FederationConfig,
    central: CentralWriter,
    aggregation: str,
    tz: str,
    day: date | str,
    *,
    dcs: Iterable[str] | None = None,
) -> list[RemergeOutcome]:
    """Rebuild the rollups of one local day in `tz` for `dcs` (default: every DC of the fleet)
    from all of its windows.

    Guarantees, per DC: when all of the day's manifests name one plan version, the written
    rollup of each declared dimension set holds, per group, exactly the bucket counts of that
    day's window histograms (so a report from it equals one from the windows), then a marker
    with the digest of those manifests and the windows it merged, then the window parts whose
    content changed; a day with several versions or no manifest writes nothing. Raises
    CalendarError when the aggregation's windows cannot tile the day in `tz`, InvalidInput for
    an unknown aggregation, InfluxError when central fails (a partly written day keeps its old
    marker, which no longer matches, so reports read its windows).
    """
    parts = WindowParts(central, config.fleet.central.database, aggregation)
    done = refresh_day(config, central, aggregation, tz, day, dcs=dcs, parts=parts, whole=True)
    parts.flush()
    return [outcome for outcome, _ in done]


def refresh_day(
    config: FederationConfig,
    central: CentralWriter,
    aggregation: str,
    tz: str,
    day: date | str,
    *,
    parts: WindowParts,
    dcs: Iterable[str] | None = None,
    whole: bool = False,
) -> list[tuple[RemergeOutcome, DayChange | None]]:
    """Bring the rollups of one local day in `tz` up to the manifests central holds, for `dcs`
    (default: every DC of the fleet), by the windows that changed since the windows its marker
    lists (or whole, see the module docstring; always with `whole`).

    Guarantees: every point current afterwards holds what `remerge_day` writes for the same
    windows, and the marker counts and lists the same; a day found current writes nothing
    (status `unchanged`). The window parts of changed windows are held in `parts` (the caller
    flushes them). Each outcome comes with the change applied, or None when the day was
    re-merged whole or not at all.
    """
    spec = _spec(config, aggregation)
    _check_dimensions(aggregation, spec.dimensions)
    period = _day_period(day, tz)
    period_windows(period, spec.window)
    target = _Day(
        central, config.fleet.central.database, aggregation, tuple(spec.dimensions),
        rollup_dimension_sets(spec.dimensions), tz, period, parts,
    )  # fmt: skip
    done: list[tuple[RemergeOutcome, DayChange | None]] = []
    for rp, rp_dcs, per_dc in _manifests_per_dc(central, config, aggregation, dcs, period):
        for dc in rp_dcs:
            done.append(target.refresh(rp, dc, per_dc.get(dc, []), whole))
    return done


@dataclass(frozen=True)
class _Day:
    """One (tz, local day) of an aggregation being re-merged."""

    central: CentralWriter
    database: str
    aggregation: str
    dimensions: tuple[str, ...]
    sets: Sequence[tuple[str, ...]]
    tz: str
    period: CalendarPeriod
    parts: WindowParts

    def outcome(
        self, dc: str, status: str, windows: int = 0, groups: int = 0, version: str = ""
    ) -> RemergeOutcome:
        return RemergeOutcome(
            self.aggregation, self.tz, self.period.label, dc, status, windows, groups, version
        )

    def refresh(
        self, rp: str, dc: str, manifests: Sequence[WindowManifest], whole: bool
    ) -> tuple[RemergeOutcome, DayChange | None]:
        if not manifests:
            return self.outcome(dc, "no data"), None
        versions = {m.version for m in manifests}
        if len(versions) > 1:
            log.info("%s %s %s %s: mixed versions, not rolled up", self.aggregation, self.tz,
                     self.period.label, dc)  # fmt: skip
            return self.outcome(dc, "mixed versions", len(manifests)), None
        version = versions.pop()
        ordered = sorted(manifests, key=lambda m: m.start_ns)
        if not whole:
            done = self._increment(rp, dc, ordered, version)
            if not isinstance(done, str):
                return done
            log.info("%s %s %s %s: re-merged whole: %s", self.aggregation, self.tz,
                     self.period.label, dc, done)  # fmt: skip
        return self._whole(rp, dc, ordered, version), None

    def _increment(
        self, rp: str, dc: str, manifests: Sequence[WindowManifest], version: str
    ) -> tuple[RemergeOutcome, DayChange] | str:
        """The day by its changed windows, or why that cannot be shown exact."""
        start = self.period.start_ns
        width = len(self.dimensions)
        expected = [m for m in manifests if (dc, m.start_ns) in self.parts.expected]
        with ThreadPoolExecutor(2, thread_name_prefix="rollup-read") as reader:
            # Central answers both at once: the windows said to have changed are read (and
            # kept in `parts`), their content now and their previous part, while the day's
            # marker is.
            ahead: list[Future[object]] = [reader.submit(self._now, rp, m) for m in expected]
            ahead += [
                reader.submit(self.parts.previous, rp, dc, m.start_ns, width) for m in expected
            ]
            marker = read_markers(
                self.central, self.database, rp, self.aggregation, self.tz, [dc], start,
                start + 1, monthly=False,
            ).get((dc, start))  # fmt: skip
            for future in ahead:
                future.result()
        entries = None if marker is None else day_entries(dc, marker.merged)
        if marker is None or not entries or fingerprint(entries) != marker.fingerprint:
            return "the day's marker does not list the windows it merged"
        if marker.version != version or any(e.version != version for e in entries):
            return "the day was merged from another version"
        if marker.dims != tuple(dims_tag(s) for s in self.sets):
            return "the day was merged over other dimension sets"
        before = {e.start_ns: e for e in entries}
        now = {m.start_ns: m for m in manifests}
        if before.keys() - now.keys():
            return "a window the day merged has no manifest now"
        changed = [
            m
            for m in manifests
            if m.start_ns not in before or window_label(before[m.start_ns]) != window_label(m)
        ]
        build = fingerprint(manifests)
        if not changed:
            unchanged = self.outcome(dc, "unchanged", len(manifests), 0, version)
            return unchanged, DayChange(dc, start, build, build, [], [])
        # Per changed window, the groups whose text differs from its previous part's: only
        # those are decoded, added and taken away.
        removed_texts: list[tuple[Key, str]] = []
        added_texts: list[tuple[Key, str]] = []
        content_now: dict[int, GroupTexts] = {}
        for m in changed:
            old = before.get(m.start_ns)
            previous: GroupTexts = {}
            if old is not None and _exported(old):
                part = self.parts.previous(rp, dc, m.start_ns, width)
                if part is None or part.label != window_label(old):
                    return f"no whole window part of {old.start_ns} run {old.run}"
                previous = part.texts
            content = self._now(rp, m)
            if content is None:  # still arriving, or inconsistent: as a whole re-merge reads it
                return f"the points of window {m.start_ns} do not sum to its manifest"
            content_now[m.start_ns] = content
            removed_texts += [(k, t) for k, t in previous.items() if content.get(k) != t]
            added_texts += [(k, t) for k, t in content.items() if previous.get(k) != t]
        at = PeriodPoints(
            self.central, self.database, rp, rollup_measurement(self.aggregation),
            (f'"tz" = {quote_string(self.tz)}', dc_condition([dc])), self.dimensions,
            self.sets, marker, start,
        )  # fmt: skip
        groups = len({k for k, _ in added_texts} | {k for k, _ in removed_texts})
        finest = densely_changed(at, groups)
        with ThreadPoolExecutor(1, thread_name_prefix="rollup-read") as reader:
            # When every point is to be merged again, central reads them while the changes are
            # decoded.
            finest_read = None if finest is None else reader.submit(at.read, {finest: None})
            try:
                added = _decoded(added_texts)
                removed = _decoded(removed_texts)
                if len(changed) > 1:  # a group may change in several windows, net to nothing
                    added, removed = net_change(added, removed)
                points, counts, kept = apply_changes(at, added, removed, finest_read)
            except (ValueError, SketchDecodeError) as exc:
                return str(exc)
        written = self._write(
            rp, dc, points, manifests, version, build, builds=kept, set_groups=counts
        )
        for m in changed:
            if _exported(m):
                self.parts.keep(rp, m, content_now[m.start_ns])
        outcome = self.outcome(dc, "written", len(manifests), written, version)
        return outcome, DayChange(dc, start, marker.fingerprint, build, added, removed)

    def _whole(
        self, rp: str, dc: str, manifests: Sequence[WindowManifest], version: str
    ) -> RemergeOutcome:
        start, end = self.period.start_ns, self.period.end_ns
        held = read_packed(
            self.central, self.database, rp, self.aggregation, window_conditions(dc), start,
            end, len(self.dimensions), labels_only=True,
        )  # fmt: skip
        labels = {start: part.label for start, part in held.items()}
        stale = {
            m.start_ns
            for m in manifests
            if _exported(m) and labels.get(m.start_ns) != window_label(m)
        }
        # Each window series is one group of the finest set (every dimension): its windows are
        # merged once, and every coarser set is merged from those per-group results.
        merger: SketchMerger[Key] = SketchMerger()
        texts, totals = self._read(rp, dc, start, end, stale, merger)
        whole = {m.start_ns for m in manifests if totals.get(m.start_ns, 0) == _exported(m)}
        record = len(whole) == len(manifests) and set(totals) <= whole
        points = _project(merger.results(), self.dimensions, self.sets)
        groups = self._write(
            rp, dc, points, manifests, version, fingerprint(manifests), listed=record
        )
        for m in manifests:
            if _exported(m) and m.start_ns in stale and m.start_ns in whole:
                self.parts.keep(rp, m, texts.get(m.start_ns, {}))
        return self.outcome(dc, "written", len(manifests), groups, version)

    def _now(self, rp: str, m: WindowManifest) -> GroupTexts | None:
        """The content of window `m` now; None unless its counts sum to its exported events."""
        key = (rp, m.dc + "/" + window_label(m))
        if key not in self.parts.now:
            texts, totals = self._read(rp, m.dc, m.start_ns, m.start_ns + 1, {m.start_ns})
            whole = set(totals) <= {m.start_ns} and totals.get(m.start_ns, 0) == _exported(m)
            self.parts.now[key] = texts.get(m.start_ns, {}) if whole else None
        return self.parts.now[key]

    def _read(
        self,
        rp: str,
        dc: str,
        start_ns: int,
        end_ns: int,
        keep: Container[int],
        merger: SketchMerger[Key] | None = None,
    ) -> tuple[dict[int, dict[Key, str]], dict[int, int]]:
        """The window points of `dc` in [start, end): added to `merger` per group, the texts of
        the windows in `keep`, and each window's total count."""
        texts: dict[int, dict[Key, str]] = defaultdict(dict)
        totals: dict[int, int] = defaultdict(int)
        for key, (t, text, count) in self._rows(rp, dc, start_ns, end_ns):
            t = int(t)
            totals[t] += int(count or 0)
            if merger is not None:
                merger.add_encoded((key,), text, (self.aggregation, dc, t))
            if t in keep:
                texts[t][key] = text
        return texts, totals

    def _rows(
        self, rp: str, dc: str, start_ns: int, end_ns: int
    ) -> Iterator[tuple[Key, list[Any]]]:
        """(group, [time, sketch, count]) of each window point of `dc` in [start, end): one
        window read flat, several by series (the faster shape for each)."""
        where = (dc_condition([dc]),)
        fields = ("sketch", "count")
        if end_ns - start_ns == 1:
            yield from flat_rows(
                self.central, self.database, rp, self.aggregation, fields, self.dimensions,
                where, start_ns, end_ns,
            )  # fmt: skip
            return
        q = select_query(
            self.database, rp, self.aggregation, fields, where, start_ns, end_ns, self.dimensions
        )
        series_tags: dict[str, str] | None = None
        key: Key = ()
        for tags, row in stream_rows(self.central, q, self.database):
            if tags is not series_tags:  # rows of one series share its tags
                series_tags = tags
                key = tuple(tag_value(tags, d) for d in self.dimensions)
            yield key, row

    def _write(
        self,
        rp: str,
        dc: str,
        points: Mapping[tuple[int, Key], Sketch],
        manifests: Sequence[WindowManifest],
        version: str,
        build: str,
        *,
        listed: bool = True,
        builds: Iterable[str] = (),
        set_groups: Sequence[int] | None = None,
    ) -> int:
        """Write the day's points (every one, or with `set_groups` the changed ones), then its
        marker, listing the windows merged when `listed` (a later refresh starts from them);
        return how many points were written."""
        merged = ";".join(window_label(m) for m in manifests) if listed else ""
        return _write_rollup(
            self.central, self.database, rp, rollup_measurement(self.aggregation),
            ROLLUP_MARKER_MEASUREMENT, points, self.sets, tz=self.tz, dc=dc,
            aggregation=self.aggregation, version=version, build=build,
            start_ns=self.period.start_ns, manifests=manifests,
            marker_fields={"merged": merged if len(merged) <= MAX_FIELD_CHARS else ""},
            builds=sorted(builds), set_groups=set_groups,
        )  # fmt: skip
