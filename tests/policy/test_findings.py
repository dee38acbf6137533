"""A DC's kept findings: listed for its security team, newest run only, erased with a subject."""

from __future__ import annotations

import dataclasses
import threading
import time
from collections.abc import Iterable
from pathlib import Path

import pytest
from typer.testing import CliRunner

from federation.agent import RunIds
from federation.agent.detection_executor import run_detection_windows
from federation.agent.findings import list_findings
from federation.cli import app
from federation.config.resolve import resolve_detection
from federation.core.clock import FakeClock
from federation.core.detection_plan import DetectionPlan
from federation.core.lineprotocol import serialize
from federation.core.plan import ShippedPlan
from federation.core.points import Point
from federation.core.windows import Window
from federation.devstack.localstack import LocalStack
from federation.influx import InfluxClient
from federation.policy import REDACTED, apply_retention, erase_subject

from . import Federation, start_federation

SECOND = 10**9
HIJACKED = "hijacked@example.org"
SALT_ENV = "FEDERATION_TEST_ERASURE_SALT"


class Collected:
    """A sink that keeps what would go to the gateway (these tests look at the DC's side)."""

    def __init__(self) -> None:
        self.points: list[Point] = []

    def ship_window(
        self, plan: ShippedPlan, points: Iterable[Point], *, stop: threading.Event | None = None
    ) -> bool:
        self.points.extend(points)
        return True


@pytest.fixture
def fed(localstack: LocalStack, request: pytest.FixtureRequest, config_dir: Path) -> Federation:
    fed = start_federation(localstack, request, config_dir, dcs=("dub1",))
    apply_retention(fed.config)
    return fed


def plan_of(fed: Federation) -> DetectionPlan:
    plan = resolve_detection(fed.config, "recipients_per_sender", "dub1")
    return dataclasses.replace(plan, window_ns=SECOND, lookback_ns=SECOND, at_least=5, factor=3.0)


def mail(client: InfluxClient, start: int, sender: str, recipients: int, offset: int = 0) -> None:
    points = [
        Point("delivery", {"mailer": "m1"},
              {"latency_ms": 1.0, "sender": sender, "recipient": f"r{offset + r}@example.com"},
              start + offset + r)
        for r in range(recipients)
    ]  # fmt: skip
    client.write(serialize(points), database="mail", retention_policy="raw")


def detect(fed: Federation, start: int, run_at: int) -> None:
    with fed.client("dub1") as client:
        result = run_detection_windows(
            plan_of(fed), [Window(start, SECOND)], source=client, sink=Collected(),
            run_ids=RunIds(FakeClock(run_at)),
        )  # fmt: skip
    assert result.ok


def test_findings_are_listed_newest_run_only_and_erased_with_their_subject(
    fed: Federation, monkeypatch: pytest.MonkeyPatch
) -> None:
    now = time.time_ns()
    start = now - now % SECOND - 60 * SECOND
    with fed.client("dub1") as client:
        mail(client, start, HIJACKED, 30)
        for s in range(4):
            mail(client, start, f"user{s}@example.org", 2, offset=1000 * (s + 1))
    detect(fed, start, start + 2 * SECOND)
    (found,) = list_findings(fed.config, "dub1")
    assert (found.key, found.count, found.threshold) == (HIJACKED, 30, 6.0)

    # Late data: a busier window moves the median; the re-run no longer finds the sender, and
    # the earlier run's finding (still stored) is not listed.
    with fed.client("dub1") as client:
        for s in range(8):
            mail(client, start, f"busy{s}@example.org", 12, offset=10**6 * (s + 1))
    detect(fed, start, start + 3 * SECOND)
    assert list_findings(fed.config, "dub1") == []
    assert list_findings(fed.config, "dub1", since_ns=start + SECOND) == []

    with fed.client("dub1") as client:
        mail(client, start, HIJACKED, 400, offset=10**7)
    detect(fed, start, start + 4 * SECOND)
    result = CliRunner().invoke(
        app, ["findings", "--dc", "dub1", "--config", str(fed.root), "--format", "csv"]
    )
    assert result.exit_code == 0, result.output
    assert f"recipients_per_sender,{HIJACKED},430,36.0" in result.output

    monkeypatch.setenv(SALT_ENV, "pepper")
    erased = erase_subject(fed.config, "dub1", HIJACKED, salt_env=SALT_ENV)
    assert erased.verified
    assert [f.key for f in list_findings(fed.config, "dub1")] == [REDACTED]


def test_the_audit_treats_findings_outside_the_raw_rp_as_personal_data(fed: Federation) -> None:
    from federation.core.detect import detect_window, finding_points
    from federation.policy import audit

    now = time.time_ns()
    start = now - now % SECOND - 60 * SECOND
    plan = plan_of(fed)
    senders = [HIJACKED] * 6 + [f"user{i}@example.org" for i in range(4)]
    detected = detect_window(plan, start, senders, [f"r{i}" for i in range(10)])
    assert detected.findings
    with fed.client("dub1") as client:
        body = serialize(finding_points(plan, detected, run=1))
        client.write(body, database="mail", retention_policy="raw")
    assert not [v for v in audit(fed.config).violations if "federation_findings" in v.line()]
    with fed.client("dub1") as client:
        client.write(body, database="mail", retention_policy="autogen")
    lines = [v.line() for v in audit(fed.config).violations if "federation_findings" in v.line()]
    assert lines == [
        'VIOLATION dub1: personal-rp: RP "autogen" measurement "federation_findings" field key '
        '"key": personal data outside the raw RP "raw" (retention infinite) -- fix: '
        'DROP RETENTION POLICY "autogen" ON "mail"'
    ]
