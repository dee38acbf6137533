"""The gateway and a detection's counts: the tag `dc` alone, three consistent integers."""

from __future__ import annotations

import dataclasses

import pytest
from starlette.testclient import TestClient

from federation.config import FederationConfig
from federation.config.resolve import resolve_detection
from federation.coordinator.ledger import Ledger
from federation.core.detect import detect_window, shipped_points
from federation.core.points import Point
from federation.influx import InfluxClient, rows

from .helpers import HOUR, body
from .test_gateway import DC, _refused, ledger_windows, write


def detection_batch(config: FederationConfig, start: int) -> list[Point]:
    plan = resolve_detection(config, "recipients_per_sender", DC)
    senders = ["a@example.org"] * 3 + ["b@example.org"]
    detected = detect_window(plan, start, senders, ["x", "y", "z", "x"])
    return shipped_points(plan, detected, run=1)


def test_counts_are_accepted_stored_and_the_window_tracked(
    client: TestClient, config: FederationConfig, influx: InfluxClient, ledger: Ledger, hour0: int
) -> None:
    points = detection_batch(config, hour0 - HOUR)
    response = write(client, config, body(points))
    assert response.status_code == 204, response.text  # type: ignore[attr-defined]
    rp = config.policy_for(DC).central.retention_policy
    q = f'SELECT * FROM "federation"."{rp}"."recipients_per_sender" GROUP BY *'
    (row,) = rows(influx.query(q, database="federation"))
    assert {k: row[k] for k in ("dc", "count", "keys", "findings")} == {
        "dc": DC, "count": 4, "keys": 2, "findings": 0,
    }  # fmt: skip
    (window,) = ledger_windows(ledger)
    assert (window.aggregation, window.state, window.events) == (
        "recipients_per_sender", "shipped", 4,
    )  # fmt: skip


@pytest.mark.parametrize(
    ("change", "rule", "key"),
    [
        ("sender-tag", "tag-key", "sender"),
        ("customer-tag", "tag-key", "customer"),
        ("key-field", "field-key", "key"),
        ("sketch-field", "field-key", "sketch"),
        ("more-findings-than-keys", "detection-counts", "findings"),
        ("more-keys-than-events", "detection-counts", "keys"),
        ("float-count", "field-type", "count"),
    ],
)
def test_anything_but_the_counts_is_refused_whole(
    client: TestClient, config: FederationConfig, influx: InfluxClient, ledger: Ledger,
    hour0: int, change: str, rule: str, key: str,
) -> None:  # fmt: skip
    count, manifest = detection_batch(config, hour0 - HOUR)
    fields = dict(count.fields)
    tags = dict(count.tags)
    if change == "sender-tag":
        tags["sender"] = "hijacked@example.org"
    elif change == "customer-tag":  # not personal data, and still not the tag `dc`
        tags["customer"] = "c0042"
    elif change == "key-field":
        fields["key"] = "hijacked@example.org"
    elif change == "sketch-field":
        fields["sketch"] = "v1"
    elif change == "more-findings-than-keys":
        fields["findings"] = 3
    elif change == "more-keys-than-events":
        fields["keys"] = 5
    else:
        fields["count"] = 4.0
    hostile = dataclasses.replace(count, tags=tags, fields=fields)
    data = _refused(write(client, config, body([hostile, manifest])), rule)
    assert data["key"] == key
    assert "hijacked" not in str(data)
    assert ledger_windows(ledger) == []
