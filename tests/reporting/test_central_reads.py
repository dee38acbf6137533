"""Reading one period's points flat (tags as columns) finds what reading them by series finds."""

from __future__ import annotations

import numpy as np

from federation.core.lineprotocol import serialize
from federation.core.points import Point
from federation.core.sketch import Sketch
from federation.influx import InfluxClient
from federation.reporting._central import flat_rows, select_query, stream_rows, tag_value
from federation.reporting._changes import read_groups
from federation.reporting._merged import (
    merged_measurement,
    packed_points,
    read_packed,
    window_conditions,
    write_packed,
)

T = 1_794_441_600_000_000_000
DIMS = ("direction", "customer")


def test_a_flat_read_finds_every_point_with_its_tags_a_missing_one_as_none(
    influx: InfluxClient,
) -> None:
    influx.create_database("central")
    points = [
        Point("m", {"dc": "dub1", "direction": d, "customer": f"c{c}"}, {"n": c, "s": d}, T)
        for d in ("in", "out")
        for c in range(3)
    ]
    # no customer tag; a field named like a tag (the tag is read, not the field); another time
    points.append(Point("m", {"dc": "dub1", "direction": "in"}, {"n": 7, "s": "x"}, T))
    points.append(Point("m", {"dc": "dub1", "customer": "c9"}, {"n": 8, "direction": "f"}, T))
    points.append(Point("m", {"dc": "dub1", "direction": "in", "customer": "c0"}, {"n": 9}, T + 1))
    points.append(Point("m", {"dc": "lon1", "direction": "in", "customer": "c0"}, {"n": 10}, T))
    influx.write(serialize(points), database="central", retention_policy="autogen")

    where = ("\"dc\" = 'dub1'",)
    flat = flat_rows(influx, "central", "autogen", "m", ("n", "s"), DIMS, where, T, T + 1)
    q = select_query("central", "autogen", "m", ("n", "s"), where, T, T + 1, DIMS)
    grouped = [
        (tuple(tag_value(tags, d) for d in DIMS), row)
        for tags, row in stream_rows(influx, q, "central")
    ]
    found = sorted(flat, key=repr)
    assert found == sorted(grouped, key=repr)
    assert len(found) == 8
    assert (("in", "_none"), [T, 7, "x"]) in found
    assert (("_none", "c9"), [T, 8, None]) in found


def test_a_window_part_shorter_than_the_one_it_replaced_is_read_whole(
    influx: InfluxClient,
) -> None:
    """A window re-shipped with less content packs into fewer chunks; the earlier part's
    last chunks stay behind at central and must not make the new part unreadable."""
    influx.create_database("central")
    rng = np.random.default_rng(7)

    def part(groups: int) -> dict[tuple[str, ...], str]:
        return {
            (f"c{g}",): Sketch.from_values(rng.lognormal(5, 1, 40), 0.01).encode()
            for g in range(groups)
        }

    conditions = window_conditions("dub1")
    tags = {"dc": "dub1", "kind": "window"}
    measurement = merged_measurement("agg")
    long, short = part(3000), part(40)
    for label, sketches in (("run1", long), ("run2", short)):
        points = packed_points(measurement, tags, label, sketches, T)
        write_packed(influx, "central", "autogen", points)
        found = read_packed(influx, "central", "autogen", "agg", conditions, T, T + 1, 1)
        assert found[T].label == label
        assert found[T].texts == sketches
    assert len(packed_points(measurement, tags, "run1", long, T)) > 1  # chunks were left over


def test_reading_named_groups_finds_those_groups_points_in_each_set(
    influx: InfluxClient,
) -> None:
    influx.create_database("central")
    sets = [(), ("direction",), ("direction", "customer")]
    points = [Point("m", {"dims": "_all"}, {"sketch": "a", "build": "b1"}, T)]
    points += [
        Point("m", {"dims": "direction", "direction": d}, {"sketch": d, "build": "b1"}, T)
        for d in ("in", "out")
    ]
    points += [
        Point(
            "m",
            {"dims": "direction,customer", "direction": d, "customer": f"c{c}"},
            {"sketch": f"{d}{c}", "build": f"b{c % 2}"},
            T,
        )
        for d in ("in", "out")
        for c in range(400)
    ]
    influx.write(serialize(points), database="central", retention_policy="autogen")
    wanted = {
        0: {()},
        1: {("out",)},
        # more groups than one query names, one that has no point
        2: {("in", f"c{c}") for c in range(0, 400, 2)} | {("out", "c7"), ("out", "nobody")},
    }
    found = read_groups(influx, "central", "autogen", "m", (), sets, wanted, T)
    expected = {(0, ()): ("a", "b1"), (1, ("out",)): ("out", "b1")}
    expected |= {(2, ("in", f"c{c}")): (f"in{c}", "b0") for c in range(0, 400, 2)}
    expected[(2, ("out", "c7"))] = ("out7", "b1")
    assert found == expected
