"""Reading one period's points flat (tags as columns) finds what reading them by series finds."""

from __future__ import annotations

from federation.core.lineprotocol import serialize
from federation.core.points import Point
from federation.influx import InfluxClient
from federation.reporting._central import flat_rows, select_query, stream_rows, tag_value

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
