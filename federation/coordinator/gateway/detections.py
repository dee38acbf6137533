"""The gateway's rule for a detection's count point, beside the schema checks it shares.

A detection's count point carries the tag `dc` alone and three integer fields (the schema
`DetectionPlan.count_schema` gives the gateway, so any other tag or field is refused as for an
aggregation). What is left to check is that the counts agree: a window cannot hold more
findings than keys evaluated, nor more keys than events, and none is negative. A point that
breaks this was not computed by `federation.core.detect`.
"""

from __future__ import annotations

from collections.abc import Mapping

from federation.core.points import FieldValue


def detection_counts_problem(fields: Mapping[str, FieldValue]) -> tuple[str, str] | None:
    """None when 0 <= findings <= keys <= count, else the key at fault and why."""
    count, keys, findings = (fields[k] for k in ("count", "keys", "findings"))
    assert isinstance(count, int) and isinstance(keys, int) and isinstance(findings, int)
    if 0 <= findings <= keys <= count:
        return None
    key = "findings" if findings > keys or findings < 0 else "keys"
    return key, "a detection's counts must satisfy 0 <= findings <= keys <= count"
