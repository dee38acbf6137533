"""The compliance audit against real influxd servers: clean passes, every planted leak fails."""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest
import yaml
from typer.testing import CliRunner

from federation.cli import app
from federation.core.clock import FakeClock
from federation.core.durations import DAY_NS
from federation.core.lineprotocol import serialize
from federation.core.points import FieldValue, Point
from federation.core.sketch import Sketch
from federation.devstack.localstack import LocalStack
from federation.policy import apply_retention, audit, personal_patterns

from . import Federation, start_federation

runner = CliRunner()
PERSONAL_VALUE = "alice@example.org"


@pytest.fixture
def fed(localstack: LocalStack, request: pytest.FixtureRequest, config_dir: Path) -> Federation:
    fed = start_federation(localstack, request, config_dir)
    apply_retention(fed.config)
    now = time.time_ns()
    for dc in ("dub1", "lon1"):
        with fed.client(dc) as client:
            point = Point(
                "delivery",
                {"direction": "inbound", "mailer": "mx1", "customer": "c1"},
                {"latency_ms": 12.5, "sender": PERSONAL_VALUE, "client_ip": "10.1.2.3"},
                now - 3_600 * 10**9,
            )
            client.write(serialize([point]), database="mail")
    _ship(fed, "dub1", {"customer": "c1"}, "agg_400d")
    _ship(fed, "lon1", {"customer": "c2"}, "agg_400d")
    return fed


def _ship(fed: Federation, dc: str, tags: dict[str, str], rp: str, **extra: FieldValue) -> None:
    """A central summary point and manifest as the gateway would store them."""
    sketch = Sketch.from_values([10.0, 12.0, 15.0, 20.0, 30.0], 0.01)
    t = (time.time_ns() - 7_200 * 10**9) // (3_600 * 10**9) * 3_600 * 10**9
    summary: dict[str, FieldValue] = {
        "count": 5,
        "sum": 87.0,
        "min": 10.0,
        "max": 30.0,
        "p50": 15.0,
        "sketch": sketch.encode(),
        **extra,
    }
    points = [
        Point("delivery_latency", {"dc": dc, "direction": "inbound", **tags}, summary, t),
        Point(
            "federation_manifest",
            {"dc": dc, "aggregation": "delivery_latency"},
            {"events": 5, "groups": 1, "suppressed_events": 0, "version": "0123456789ab", "run": 1},
            t,
        ),
    ]
    with fed.client("central") as client:
        client.write(serialize(points), database="federation", retention_policy=rp)


def test_personal_patterns() -> None:
    assert personal_patterns("mail from alice@example.org") == ["e-mail"]
    assert personal_patterns("192.168.0.10") == ["ipv4"]
    assert personal_patterns("2001:db8::7") == ["ipv6"]
    assert personal_patterns("fe80::1%eth0") == ["ipv6"]
    for clean in (
        "customer-42",
        "mx1",
        "10:00:00",
        "v1:a=0.01:n=5:p=12,AbC",
        "1.2.3.4.5",
        "Foo::Bar",
    ):
        assert personal_patterns(clean) == [], clean


def test_clean_federation_passes_with_evidence(fed: Federation) -> None:
    report = audit(fed.config)
    assert report.ok, [v.line() for v in report.violations]
    data = report.as_dict()
    assert data["policies"]["eu"]["sha256"] == fed.config.policy_hashes["eu"]
    assert data["check_interval"] == "30m"
    dub1 = next(d for d in report.dcs if d.dc == "dub1")
    assert dub1.retention is not None and dub1.retention.is_default
    assert dub1.retention.worst_case_lifetime_ns == 31 * DAY_NS + 30 * 60 * 10**9
    assert [(p.measurement, p.within) for p in dub1.oldest] == [("delivery", True)]
    assert report.central.tag_values_sampled > 0 and report.central.field_values_sampled > 0
    assert not [w for w in report.warnings if "beyond the region's maximum" in w]
    assert PERSONAL_VALUE not in json.dumps(data), "raw personal values never reach the report"

    result = runner.invoke(app, ["policy", "audit", "-c", str(fed.root), "-f", "json"])
    assert result.exit_code == 0, result.output
    parsed = json.loads(result.output)
    assert parsed["ok"] and set(parsed["policies"]) == {"eu", "uk", "na"}
    assert parsed["time"].endswith("Z")
    table = runner.invoke(app, ["policy", "audit", "-c", str(fed.root), "--check-interval", "1h"])
    assert table.exit_code == 0, table.output
    assert "audit: no violations" in table.output and "check interval 1h" in table.output


def test_planted_personal_tag_key_fails_and_its_drop_statement_works(fed: Federation) -> None:
    _ship(fed, "dub1", {"customer": "c1", "sender": "s-17"}, "agg_400d")
    report = audit(fed.config)
    (violation,) = report.violations
    assert violation.check == "personal-key"
    assert violation.subject == 'measurement "delivery_latency" tag key "sender"'
    assert "1 central series hold it (from dub1)" in violation.message
    assert violation.remedy == 'DROP SERIES FROM "delivery_latency" WHERE "sender" != \'\''

    result = runner.invoke(app, ["policy", "audit", "-c", str(fed.root)])
    assert result.exit_code == 1
    (line,) = [ln for ln in result.output.splitlines() if ln.startswith("VIOLATION")]
    assert "personal-key" in line and "DROP SERIES" in line

    with fed.client("central") as client:
        client.execute(violation.remedy, database="federation")
    assert audit(fed.config).ok


def test_email_planted_in_a_central_tag_value_fails_without_printing_it(fed: Federation) -> None:
    _ship(fed, "lon1", {"customer": PERSONAL_VALUE}, "agg_400d")
    report = audit(fed.config)
    (violation,) = report.violations
    assert violation.check == "personal-value"
    assert violation.subject == 'measurement "delivery_latency" tag "customer"'
    assert "match the e-mail pattern" in violation.message
    assert PERSONAL_VALUE not in violation.line()
    assert violation.remedy is not None

    result = runner.invoke(app, ["policy", "audit", "-c", str(fed.root)])
    assert result.exit_code == 1 and PERSONAL_VALUE not in result.output

    with fed.client("central") as client:
        client.execute(violation.remedy, database="federation")
        q = 'SHOW SERIES FROM "agg_400d"."delivery_latency"'
        series = client.query(q, database="federation")
    assert len(series[0].values) == 2, "only the offending series was dropped"
    assert audit(fed.config).ok


def test_ip_addresses_in_tag_values_and_string_fields_fail(fed: Federation) -> None:
    _ship(fed, "dub1", {"mailer": "2001:db8::25"}, "agg_800d", note="relay 192.0.2.7")
    checks = {
        (v.check, v.subject, v.message.split(" pattern")[0][-4:])
        for v in audit(fed.config).violations
    }
    assert checks == {
        ("personal-value", 'measurement "delivery_latency" tag "mailer"', "ipv6"),
        ("personal-value", 'measurement "delivery_latency" field "note"', "ipv4"),
    }


def test_policy_change_making_an_exported_dimension_personal_lists_series_to_drop(
    fed: Federation,
) -> None:
    policy_path = fed.root / "policies" / "eu.yaml"
    policy = yaml.safe_load(policy_path.read_text())
    policy["measurements"]["delivery"]["personal_tags"] = ["customer"]
    policy["measurements"]["delivery"]["exportable_dimensions"] = ["direction", "mailer"]
    policy_path.write_text(yaml.safe_dump(policy))
    agg_path = fed.root / "tickscripts" / "delivery_latency.yaml"
    agg = yaml.safe_load(agg_path.read_text())
    agg["dimensions"] = ["direction", "mailer"]
    agg_path.write_text(yaml.safe_dump(agg))
    fed.reload()

    report = audit(fed.config)
    (violation,) = report.violations
    assert violation.subject == 'measurement "delivery_latency" tag key "customer"'
    assert "declared personal data in eu" in violation.message
    assert "2 central series hold it (from dub1, lon1)" in violation.message
    assert violation.remedy == 'DROP SERIES FROM "delivery_latency" WHERE "customer" != \'\''
    assert report.as_dict()["policies"]["eu"]["sha256"] == fed.config.policy_hashes["eu"]


def test_raw_series_with_a_personal_tag_value_are_reported_redacted(fed: Federation) -> None:
    # Written by something other than ingest: an address and an IP as dimension tag values.
    now = time.time_ns() - 60 * 10**9
    planted = [
        Point("delivery", {"direction": "in", "mailer": "mx1", "customer": PERSONAL_VALUE},
              {"latency_ms": 1.0}, now),
        Point("delivery", {"direction": "out", "mailer": "mx1", "customer": PERSONAL_VALUE},
              {"latency_ms": 2.0}, now),
        Point("delivery", {"direction": "in", "mailer": "192.0.2.55", "customer": "c1"},
              {"latency_ms": 3.0}, now),
    ]  # fmt: skip
    with fed.client("lon1") as client:
        client.write(serialize(planted), database="mail")
    report = audit(fed.config)
    assert not report.ok
    found = {v.subject: v for v in report.violations if v.check == "raw-personal-tag-value"}
    assert {v.target for v in report.violations} == {"lon1"}
    customer = found['measurement "delivery" tag "customer"']
    assert customer.message.startswith(
        "2 raw series (1 distinct value(s)) hold a tag value that looks like an e-mail address"
    )
    assert "delivery,customer=<e-mail address>,direction=in,mailer=mx1" in customer.message
    assert customer.remedy is not None and "--delete-points" in customer.remedy
    assert 'WITH KEY = "customer" WHERE "customer" =~ /@|%40/' in customer.remedy
    mailer = found['measurement "delivery" tag "mailer"']
    assert "looks like an IPv4 address" in mailer.message
    assert "delivery,customer=c1,direction=in,mailer=<IPv4 address>" in mailer.message
    text = json.dumps(report.as_dict())
    assert PERSONAL_VALUE not in text and "192.0.2.55" not in text
    # The statement it gives lists exactly the planted values, inside the DC.
    with fed.client("lon1") as client:
        statement = customer.remedy.split(" with ")[1].split(", then")[0]
        listed = client.query(statement, database="mail")
    assert [row[1] for s in listed for row in s.values] == [PERSONAL_VALUE]


def test_retention_drift_default_and_old_raw_points_are_violations(fed: Federation) -> None:
    with fed.client("dub1") as client:
        client.execute('ALTER RETENTION POLICY "raw" ON "mail" DURATION 60d')
        client.execute('ALTER RETENTION POLICY "autogen" ON "mail" DEFAULT')
        old = Point(
            "delivery", {"mailer": "mx1"}, {"latency_ms": 1.0}, time.time_ns() - 45 * DAY_NS
        )
        client.write(serialize([old]), database="mail", retention_policy="autogen")
    lines = [v.line() for v in audit(fed.config).violations]
    assert len(lines) == 4, lines
    assert (
        'VIOLATION dub1: retention: database "mail" RP "raw": duration is 60d, declared 30d'
        in lines
    )
    assert any("default-rp" in ln and "the default is autogen" in ln for ln in lines)
    assert any("raw-age" in ln and 'RP "autogen" measurement "delivery"' in ln for ln in lines)
    # The lifetime is judged from the RP InfluxDB holds (60d), not from the declaration (30d).
    assert any("lifetime" in ln and "up to 61d30m (retention 60d" in ln for ln in lines)


def test_raw_point_age_uses_the_injected_clock(fed: Federation) -> None:
    # The raw points are an hour old; 20 days on, lon1's (14d + 1d + 30m) has outlived its RP.
    later = FakeClock(time.time_ns() + 20 * DAY_NS)
    violations = audit(fed.config, clock=later).violations
    assert {(v.target, v.check) for v in violations} == {("lon1", "raw-age")}
    roomy = audit(fed.config, clock=later, check_interval_ns=6 * DAY_NS).violations
    assert not [v for v in roomy if v.check == "raw-age"]
    # ...but a check interval that long lets dub1's raw points outlive the EU maximum.
    assert "dub1" in {v.target for v in roomy if v.check == "lifetime"}


def test_unreachable_dc_is_a_violation_and_the_others_are_audited(
    localstack: LocalStack, request: pytest.FixtureRequest, config_dir: Path
) -> None:
    fed = start_federation(localstack, request, config_dir, dcs=("dub1",), unreachable=("van1",))
    apply_retention(fed.config, "dub1")
    apply_retention(fed.config, "central")
    report = audit(fed.config, timeout=2.0)
    url = fed.config.dc("van1").influxdb.url
    (violation,) = report.violations
    assert (violation.target, violation.check, violation.subject) == ("van1", "unreachable", url)
    dub1 = next(d for d in report.dcs if d.dc == "dub1")
    assert dub1.error is None and dub1.retention is not None
    result = runner.invoke(app, ["policy", "audit", "-c", str(fed.root), "--timeout", "2"])
    assert result.exit_code == 1 and url in result.output


def test_worst_case_lifetime_comes_from_the_shard_groups_influxdb_holds(fed: Federation) -> None:
    # 31d with 1d shards outlives the EU maximum (32d); 31d with 12h shards is declared legal,
    # but the 1-day shard group created before the change still holds points for 32d + 30m.
    policy_path = fed.root / "policies" / "eu.yaml"
    policy = yaml.safe_load(policy_path.read_text())
    policy["raw"].update(retention="31d", shard_duration="12h")
    policy_path.write_text(yaml.safe_dump(policy))
    fed.reload()
    apply_retention(fed.config, "dub1")

    report = audit(fed.config)
    dub1 = next(d for d in report.dcs if d.dc == "dub1")
    assert dub1.retention is not None
    assert dub1.retention.actual_shard_ns == DAY_NS // 2
    assert dub1.retention.longest_shard_group_ns == DAY_NS
    assert dub1.retention.worst_case_lifetime_ns == 32 * DAY_NS + 30 * 60 * 10**9
    (violation,) = report.violations
    assert (violation.target, violation.check) == ("dub1", "lifetime")
    assert "up to 32d30m" in violation.message
    assert "an existing 1d shard group outlives the current shard duration 12h" in violation.message
    data = report.as_dict()["dcs"][0]["retention"]
    assert data["longest_shard_group"] == "1d" and data["latest_expiry"].endswith("Z")

    # Once the old group is gone, the 12h groups are the evidence and the audit passes.
    with fed.client("dub1") as client:
        client.execute("DROP SHARD 1")
    assert audit(fed.config).ok


def test_personal_data_in_any_rp_but_the_raw_one_is_a_violation_at_once(fed: Federation) -> None:
    fresh = time.time_ns() - 60 * 10**9
    with fed.client("dub1") as client:
        point = Point(
            "delivery",
            {"mailer": "mx1", "client_ip": "10.9.8.7"},
            {"latency_ms": 3.0, "recipient": PERSONAL_VALUE},
            fresh,
        )
        client.write(serialize([point]), database="mail", retention_policy="autogen")
    report = audit(fed.config)
    lines = sorted(v.line() for v in report.violations)
    assert lines == [
        'VIOLATION dub1: personal-rp: RP "autogen" measurement "delivery" field key "recipient": '
        'personal data outside the raw RP "raw" (retention infinite) -- fix: '
        'DROP RETENTION POLICY "autogen" ON "mail"',
        'VIOLATION dub1: personal-rp: RP "autogen" measurement "delivery" tag key "client_ip": '
        'personal data outside the raw RP "raw" (retention infinite) -- fix: '
        'DROP RETENTION POLICY "autogen" ON "mail"',
    ], lines
    assert PERSONAL_VALUE not in json.dumps(report.as_dict())
    # lon1 holds the same keys in its raw RP: that is where they belong.
    assert {v.target for v in report.violations} == {"dub1"}
    with fed.client("dub1") as client:
        client.execute(report.violations[0].remedy or "")
    assert audit(fed.config).ok
