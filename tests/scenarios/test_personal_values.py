"""Scenario 14: personal data in a dimension tag of a DC's raw data, and its erasure.

Something other than `federation ingest` wrote deliveries whose `customer` tag is an e-mail
address and whose `mailer` tag is an IP address into lon1's raw database. Before, the agent
built groups keyed by those values, the gateway refused lon1's whole batch, and the windows
never verified. Now the executors withhold those groups (their events counted in the
manifest), every window verifies, status and /metrics name the windows, the audit names the
raw series without the values, and erasure finds the subject in the tag: it refuses without
`--delete-points`, never saying `verified` while a tag holds it.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from federation.core.clock import format_rfc3339
from federation.core.lineprotocol import serialize
from federation.core.points import Point
from federation.policy import audit

from .checks import Outcome, check_invariants
from .harness import READER_ENV, SECOND, LiveRun, ScenarioFederation

pytestmark = pytest.mark.slow

SUBJECT = "bob@example.org"
MAILER_IP = "192.0.2.55"


def _sample(text: str, name: str, **labels: str) -> float:
    """The value of one sample of a /metrics page, read by prometheus_client's own parser."""
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == name and sample.labels == labels:
                return float(sample.value)
    raise AssertionError(f"no sample {name}{labels} in /metrics")


def _plant(fed: ScenarioFederation, start_ns: int, count: int = 10) -> None:
    """`count` deliveries keyed by an address, and `count` by an IP, in one lon1 window."""
    step = fed.window_ns // (2 * count + 1)
    points = [
        Point(
            "delivery",
            {"direction": "inbound", "mailer": "mx1", "customer": SUBJECT},
            {"latency_ms": 100.0 + i, "sender": "x@example.org"},
            start_ns + (i + 1) * step,
        )
        for i in range(count)
    ] + [
        Point(
            "delivery",
            {"direction": "outbound", "mailer": MAILER_IP, "customer": "c0001"},
            {"latency_ms": 200.0 + i},
            start_ns + (count + i + 1) * step,
        )
        for i in range(count)
    ]
    with fed.influx("lon1") as raw:
        rp = fed.config.policy_for("lon1").raw.retention_policy
        raw.write(serialize(points), database="mail", retention_policy=rp)


def test_14_personal_values_in_dimension_tags_are_withheld_reported_and_erasable(
    federation: ScenarioFederation,
    record: Callable[[Outcome], None],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("FEDERATION_ERASURE_SALT", "scenario-salt")
    run = LiveRun.begin(federation, history_windows=3, traffic_windows=5)
    planted = [run.began_ns - 2 * federation.window_ns, run.began_ns + 2 * federation.window_ns]
    for start in planted:
        _plant(federation, start)
    federation.start_agent("dub1")
    federation.start_agent("lon1")
    run.finish(timeout_s=40)
    # Every window verified (or empty), central equal to a recomputation that withholds the
    # same groups, and no personal data at central.
    record(check_invariants(federation, run.start_ns, run.until_ns))

    status = json.loads(
        federation.cli("status", "--format", "json", "--since", format_rfc3339(run.start_ns)).stdout
    )
    noticed = {
        (a["aggregation"], d["dc"], n["start_ns"]): n
        for a in status["aggregations"]
        for d in a["dcs"]
        for n in d["notices"]
    }
    # delivery_latency groups by mailer and customer; delivery_direction by direction only.
    assert set(noticed) == {("delivery_latency", "lon1", start) for start in planted}
    for notice in noticed.values():
        assert notice["state"] == "verified"
        assert notice["reason"].startswith("20 event(s) withheld: a dimension value looked")
    metrics = httpx.get(
        f"http://127.0.0.1:{federation.port}/metrics",
        headers={"Authorization": f"Bearer {os.environ[READER_ENV]}"},
        timeout=10,
    ).text
    labels = {"dc": "lon1", "aggregation": "delivery_latency"}
    assert _sample(metrics, "federation_windows_personal_values", **labels) == 2
    latest = "federation_windows_personal_values_latest_start_seconds"
    assert _sample(metrics, latest, **labels) == planted[1] / SECOND

    audited = federation.cli("policy", "audit", "--format", "json", check=False)
    assert audited.returncode == 1
    findings = {
        v["subject"]: v
        for v in json.loads(audited.stdout)["violations"]
        if v["check"] == "raw-personal-tag-value"
    }
    assert set(findings) == {
        'measurement "delivery" tag "customer"',
        'measurement "delivery" tag "mailer"',
    }
    assert all(v["target"] == "lon1" for v in findings.values())
    assert SUBJECT not in audited.stdout + audited.stderr and MAILER_IP not in audited.stdout

    # Erasure finds the subject in the customer tag: refused, nothing changed, not "verified".
    erase = ["erase", "--dc", "lon1", "--subject", SUBJECT]
    refused = federation.cli(*erase, check=False)
    assert refused.returncode == 1
    said = refused.stdout + refused.stderr
    assert "verified" not in said and SUBJECT not in said
    rp = federation.config.policy_for("lon1").raw.retention_policy
    assert f"{rp}.delivery tag customer: 20 point(s)" in said and "--delete-points" in said
    done = federation.cli(*erase, "--delete-points")
    assert "deleted 20" in done.stdout and "verified: " in done.stdout
    assert SUBJECT not in done.stdout
    after = audit(federation.config).violations
    assert {v.subject for v in after} == {'measurement "delivery" tag "mailer"'}
