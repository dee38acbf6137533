"""The previous content of windows, kept at central so that a changed window costs what changed.

A day's rollup is the sum of its windows' histograms. When one window is re-shipped, central
overwrites its points, so its previous content is gone; without it the day can only be re-merged
from all of its windows. A **window part** (in the `<aggregation>__merged` measurement beside the
rollups, the DC's central retention policy; tags `dc`, `kind=window`; timestamp = window start)
keeps the histogram of every group (every dimension) of one window, as a rollup merged it,
labelled with that window's manifest entry (`start:run:version:events:suppressed`); the day's
marker lists the entries it merged (`federation.reporting.daily`).

A day is then refreshed as its points, minus the window parts of its changed windows, plus their
new content: exact, since counts are integers. A label says which computation a part holds: a
window part is written only from a read whose counts sum to its manifest's exported events (the
check verification makes), and one window computation (a run of a version, with so many events)
has one content. A part keeps each group's `sketch` text as central held it, so the groups a
re-shipped window changed are the ones whose text differs, found without decoding any; it is
packed (the groups' values, then the texts, zlib-compressed, in base64: ~1 MB for 32k groups)
in chunks of at most 60,000 ASCII characters (InfluxDB's limit being 64 KiB), so a window of
32k groups is read and written as a few dozen points, not 32k. A part is used only when all of
its chunks are there with one label.
"""

from __future__ import annotations

import base64
import binascii
import zlib
from collections import defaultdict
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any
from urllib.parse import quote, unquote

from federation.core.lineprotocol import serialize
from federation.core.points import FieldValue, Point
from federation.reporting._central import (
    CentralWriter,
    WindowManifest,
    dc_condition,
    select_query,
    stream_rows,
)

MERGED_SUFFIX = "__merged"
_CHUNK = 60_000
_WRITE_BATCH = 64

GroupTexts = dict[tuple[str, ...], str]
"""Group (values of every dimension, in plan order) -> its `sketch` text."""
_TEXTS = "z:"
"""How a part's histograms begin: their `sketch` texts, zlib-compressed, in base64."""


def merged_measurement(aggregation: str) -> str:
    """`<aggregation>__merged`: the measurement holding an aggregation's window parts."""
    return aggregation + MERGED_SUFFIX


def window_label(m: WindowManifest) -> str:
    """The label of a window part holding the content `m` describes."""
    return f"{m.start_ns}:{m.run}:{m.version}:{m.events}:{m.suppressed_events}"


def manifest_of(dc: str, label: str) -> WindowManifest | None:
    """The manifest a window label describes; None when `label` is not one."""
    parts = label.split(":")
    if len(parts) != 5:
        return None
    try:
        start, run, events, suppressed = (int(parts[i]) for i in (0, 1, 3, 4))
    except ValueError:
        return None
    return WindowManifest(dc, start, parts[2], run, events, suppressed)


def day_entries(dc: str, merged: str) -> list[WindowManifest] | None:
    """The manifests a day marker's `merged` field lists; None when it does not parse."""
    if not merged:
        return []
    found = [manifest_of(dc, label) for label in merged.split(";")]
    return None if any(m is None for m in found) else [m for m in found if m is not None]


@dataclass(frozen=True)
class Packed:
    """One whole window part: its label and every group's `sketch` text."""

    label: str
    texts: GroupTexts


def _pack(texts: Mapping[tuple[str, ...], str]) -> str:
    quoted: dict[str, str] = {}

    def q(value: str) -> str:
        found = quoted.get(value)
        if found is None:
            found = quoted[value] = quote(value, safe="")
        return found

    keys = sorted(texts)
    rows = "|".join(" ".join(map(q, key)) for key in keys)
    joined = "\n".join(texts[k] for k in keys).encode()
    return f"{len(keys)}|{rows}#{_TEXTS}{base64.b64encode(zlib.compress(joined, 1)).decode()}"


def _unpack(body: str, width: int) -> GroupTexts | None:
    head, sep, packed = body.partition("#")
    n_text, _, rows = head.partition("|")
    if not sep or not n_text.isdigit():
        return None
    n = int(n_text)
    unquoted: dict[str, str] = {}
    keys = []
    for row in rows.split("|") if n else ():
        cells = row.split(" ") if width else []
        if len(cells) != width:
            return None
        key = []
        for cell in cells:
            value = unquoted.get(cell)
            if value is None:
                value = unquoted[cell] = unquote(cell)
            key.append(value)
        keys.append(tuple(key))
    if len(keys) != n or len(set(keys)) != n:
        return None
    if not packed.startswith(_TEXTS):
        return None  # a part of another format: not read
    try:
        joined = zlib.decompress(base64.b64decode(packed[len(_TEXTS) :], validate=True))
        texts = joined.decode().split("\n") if n else []
    except (ValueError, binascii.Error, zlib.error):
        return None
    if len(texts) != n:
        return None
    return dict(zip(keys, texts, strict=True))


def packed_points(
    measurement: str,
    tags: Mapping[str, str],
    label: str,
    texts: Mapping[tuple[str, ...], str],
    time_ns: int,
) -> list[Point]:
    """The points of one window part; ValueError when a text holds a line break (a part
    could not give it back)."""
    if any("\n" in text for text in texts.values()):
        raise ValueError("a sketch text holds a line break")
    body = _pack(texts)
    chunks = [body[i : i + _CHUNK] for i in range(0, len(body), _CHUNK)]
    points = []
    for k, chunk in enumerate(chunks):
        fields: dict[str, FieldValue] = {
            "label": label,
            "chunks": len(chunks),
            "groups": len(texts),
            "body": chunk,
        }
        points.append(Point(measurement, {**tags, "chunk": str(k)}, fields, time_ns))
    return points


def write_packed(central: CentralWriter, database: str, rp: str, points: Sequence[Point]) -> None:
    """Write records' points (a few big points per request)."""
    for i in range(0, len(points), _WRITE_BATCH):
        body = serialize(points[i : i + _WRITE_BATCH])
        central.write(body, database=database, retention_policy=rp)


def read_packed(
    central: CentralWriter,
    database: str,
    rp: str,
    aggregation: str,
    where: Iterable[str],
    start_ns: int,
    end_ns: int,
    width: int,
    *,
    labels_only: bool = False,
) -> dict[int, Packed]:
    """Time -> the whole record there (all chunks present, of one label and group count),
    among the records `where` selects in [start, end). With `labels_only`, only chunk 0 is read
    and `texts` is empty: what is there, not whether it is whole."""
    fields = ("label", "chunks", "groups") + (() if labels_only else ("body",))
    conditions = list(where)
    if labels_only:
        conditions.append("\"chunk\" = '0'")
    q = select_query(
        database, rp, merged_measurement(aggregation), fields, conditions, start_ns, end_ns,
        ("chunk",),
    )  # fmt: skip
    parts: dict[int, dict[int, list[Any]]] = defaultdict(dict)
    for tags, (t, *row) in stream_rows(central, q, database):
        parts[int(t)][int(tags.get("chunk") or 0)] = row
    found: dict[int, Packed] = {}
    for t, chunks in parts.items():
        first = chunks.get(0)
        if first is None:
            continue
        label, n, groups = first[:3]
        if labels_only:
            found[t] = Packed(str(label), {})
            continue
        # Chunks past the count are left from an earlier, longer part of the same window.
        mine = [chunks.get(k) for k in range(int(n or 0))]
        if any(c is None or c[:3] != [label, n, groups] for c in mine):
            continue  # a part half overwritten by another: not whole
        held = _unpack("".join(str(c[3] or "") for c in mine if c is not None), width)
        if held is not None and len(held) == groups:
            found[t] = Packed(str(label), held)
    return found


def window_conditions(dc: str) -> list[str]:
    """The WHERE selecting a DC's window parts."""
    return [dc_condition([dc]), "\"kind\" = 'window'"]
