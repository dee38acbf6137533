"""Right to erasure against a real influxd: redact in place, prove it, record it."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
import yaml
from typer.testing import CliRunner

from federation.cli import app
from federation.core.lineprotocol import serialize
from federation.core.points import FieldValue, Point
from federation.devstack.localstack import LocalStack
from federation.errors import InvalidInput
from federation.influx import InfluxClient
from federation.policy import (
    AUDIT_DATABASE,
    REDACTED,
    ErasureBlocked,
    apply_retention,
    audit,
    erase_subject,
    erasure_records,
    subject_hash,
)

from . import Federation, start_federation

SUBJECT = "alice@example.org"
SALT_ENV = "FEDERATION_TEST_ERASURE_SALT"
SALT = "pepper-for-tests"

Key = tuple[str, tuple[tuple[str, str], ...], int]


@pytest.fixture
def fed(
    localstack: LocalStack,
    request: pytest.FixtureRequest,
    config_dir: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> Federation:
    monkeypatch.setenv(SALT_ENV, SALT)
    fed = start_federation(localstack, request, config_dir, dcs=("dub1",))
    apply_retention(fed.config)
    return fed


def _point(t: int, tags: dict[str, str], **fields: FieldValue) -> Point:
    base: dict[str, FieldValue] = {"latency_ms": 12.5, "size": 2048}
    return Point("delivery", tags, {**base, **fields}, t)


def _plant(client: InfluxClient) -> int:
    """Raw points in two RPs; returns the base timestamp."""
    t0 = (time.time_ns() - 3_600 * 10**9) // 10**9 * 10**9
    tags = {"direction": "inbound", "mailer": "mx1", "customer": "c1"}
    other = {"direction": "outbound", "mailer": "mx2", "customer": "c2"}
    raw = [
        _point(t0 + 1, tags, sender=SUBJECT, recipient="bob@example.org", helo="mx.example.org"),
        _point(t0 + 2, other, sender="carol@example.org", recipient=SUBJECT, client_ip="10.0.0.1"),
        _point(t0 + 3, tags, sender=SUBJECT, recipient=SUBJECT, helo=SUBJECT, client_ip="10.0.0.2"),
        _point(t0 + 4, other, sender="carol@example.org", recipient="bob@example.org"),
        _point(t0 + 5, tags, sender="ALICE@example.org", recipient="bob@example.org"),
        _point(t0 + 6, {"direction": "inbound"}, sender=SUBJECT, recipient="bob@example.org"),
    ]
    client.write(serialize(raw), database="mail")
    legacy = [_point(t0 + 7, tags, sender=SUBJECT, recipient="dave@example.org")]
    client.write(serialize(legacy), database="mail", retention_policy="autogen")
    return t0


def _snapshot(client: InfluxClient) -> dict[Key, dict[str, Any]]:
    result: dict[Key, dict[str, Any]] = {}
    for rp in ("raw", "autogen"):
        q = f'SELECT * FROM "mail"."{rp}"."delivery" GROUP BY *'
        for series in client.query(q, database="mail"):
            tags = tuple(sorted((k, v) for k, v in series.tags.items() if v))
            for row in series.values:
                values = dict(zip(series.columns, row, strict=True))
                t = values.pop("time")
                result[(rp, tags, t)] = {k: v for k, v in values.items() if v is not None}
    return result


def test_erase_redacts_every_matching_field_and_nothing_else(fed: Federation) -> None:
    with fed.client("dub1") as client:
        t0 = _plant(client)
        before = _snapshot(client)
    result = erase_subject(fed.config, "dub1", SUBJECT, salt_env=SALT_ENV)
    assert result.verified and result.recorded and not result.dry_run
    assert result.points == 5
    assert result.subject_hash == subject_hash(SUBJECT, SALT.encode())
    counts = {(r.retention_policy, r.key): r.points for r in result.redactions}
    assert counts == {
        ("raw", "sender"): 3,
        ("raw", "recipient"): 2,
        ("raw", "helo"): 1,
        ("autogen", "sender"): 1,
    }
    with fed.client("dub1") as client:
        after = _snapshot(client)
        records = erasure_records(client)
    expected = {key: dict(fields) for key, fields in before.items()}
    for fields in expected.values():
        for name in ("sender", "recipient", "helo", "client_ip"):
            if fields.get(name) == SUBJECT:
                fields[name] = REDACTED
    assert after == expected, "only the subject's fields changed; no point added or lost"
    assert sum(1 for key in after if key[2] == t0 + 6 and key[1] == (("direction", "inbound"),))
    assert not any(SUBJECT in str(fields.values()) for fields in after.values())

    (record,) = records
    assert (record.dc, record.subject_hash, record.points, record.verified) == (
        "dub1",
        result.subject_hash,
        5,
        True,
    )
    report = audit(fed.config)
    (dub1,) = report.dcs
    assert [e.subject_hash for e in dub1.erasures] == [result.subject_hash]
    assert SUBJECT not in str(report.as_dict())

    again = erase_subject(fed.config, "dub1", SUBJECT, salt_env=SALT_ENV)
    assert again.points == 0 and again.verified


def test_dry_run_counts_and_changes_nothing(fed: Federation) -> None:
    with fed.client("dub1") as client:
        _plant(client)
        before = _snapshot(client)
    result = erase_subject(fed.config, "dub1", SUBJECT, salt_env=SALT_ENV, dry_run=True)
    assert result.points == 5 and not result.recorded
    with fed.client("dub1") as client:
        assert _snapshot(client) == before
        assert AUDIT_DATABASE not in client.databases()


def test_subject_with_a_quote_is_matched_exactly(fed: Federation) -> None:
    subject = "o'brien\\x@example.org"
    with fed.client("dub1") as client:
        client.write(
            serialize([_point(time.time_ns() - 10**9, {"mailer": "mx1"}, sender=subject)]),
            database="mail",
        )
    result = erase_subject(fed.config, "dub1", subject, salt_env=SALT_ENV)
    assert result.points == 1 and result.verified


def test_unset_salt_is_refused_before_anything_runs(
    fed: Federation, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv(SALT_ENV)
    with pytest.raises(InvalidInput) as info:
        erase_subject(fed.config, "dub1", SUBJECT, salt_env=SALT_ENV)
    assert SALT_ENV in str(info.value)
    with fed.client("dub1") as client:
        assert AUDIT_DATABASE not in client.databases()


def test_cli_erase_prints_only_the_hash(fed: Federation) -> None:
    with fed.client("dub1") as client:
        _plant(client)
    runner = CliRunner()
    args = ["erase", "-c", str(fed.root), "--dc", "dub1", "--salt-env", SALT_ENV]
    dry = runner.invoke(app, [*args, "--subject", SUBJECT, "--dry-run"])
    assert dry.exit_code == 0, dry.output
    assert "would redact 5 point(s)" in dry.output and SUBJECT not in dry.output

    done = runner.invoke(app, [*args, "--subject", "-"], input=SUBJECT + "\n")
    assert done.exit_code == 0, done.output
    assert subject_hash(SUBJECT, SALT.encode()) in done.output
    assert "redacted 5 point(s)" in done.output and SUBJECT not in done.output


def test_a_dry_run_needs_no_salt(fed: Federation, monkeypatch: pytest.MonkeyPatch) -> None:
    with fed.client("dub1") as client:
        _plant(client)
    monkeypatch.delenv(SALT_ENV)
    args = ["erase", "-c", str(fed.root), "--dc", "dub1", "--salt-env", SALT_ENV, "--dry-run"]
    dry = CliRunner().invoke(app, [*args, "--subject", SUBJECT])
    assert dry.exit_code == 0, dry.output
    assert f"subject not hashed ({SALT_ENV} unset" in dry.output
    assert "would redact 5 point(s)" in dry.output and SUBJECT not in dry.output


def test_cli_erase_without_salt_exits_2_without_echoing_the_subject(fed: Federation) -> None:
    env = {k: v for k, v in os.environ.items() if k != SALT_ENV}
    command = [sys.executable, "-m", "federation.cli", "erase", "-c", str(fed.root)]
    proc = subprocess.run(
        [*command, "--dc", "dub1", "--subject", SUBJECT, "--salt-env", SALT_ENV],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == 2
    assert SALT_ENV in proc.stderr
    assert SUBJECT not in proc.stdout + proc.stderr


def test_points_whose_personal_tag_holds_the_subject_are_deleted(fed: Federation) -> None:
    path = fed.root / "policies" / "eu.yaml"
    policy = yaml.safe_load(path.read_text())
    policy["measurements"]["delivery"]["personal_tags"] = ["relay"]
    path.write_text(yaml.safe_dump(policy))
    fed.reload()
    now = time.time_ns() - 10**9
    with fed.client("dub1") as client:
        client.write(
            serialize(
                [
                    _point(now, {"relay": SUBJECT}, sender="carol@example.org"),
                    _point(now + 1, {"relay": "relay.example.org"}, sender=SUBJECT),
                ]
            ),
            database="mail",
        )
    result = erase_subject(fed.config, "dub1", SUBJECT, salt_env=SALT_ENV)
    assert (result.points, result.deleted_points, result.verified) == (1, 1, True)
    with fed.client("dub1") as client:
        rows = client.query('SELECT "sender", "relay"::tag FROM "delivery"', database="mail")
    assert [row[1:] for row in rows[0].values] == [[REDACTED, "relay.example.org"]]


def _plant_in_a_dimension(client: InfluxClient) -> list[Point]:
    """The subject as the value of the `customer` dimension tag (not declared personal) and of
    the `status` text field (neither), as something other than ingest may have written it."""
    t0 = time.time_ns() - 10**9
    planted = [
        _point(t0 + i, {"direction": "inbound", "mailer": "mx1", "customer": SUBJECT})
        for i in range(3)
    ]
    planted.append(_point(t0 + 9, {"customer": "c1"}, status=SUBJECT, sender="x@example.org"))
    client.write(serialize(planted), database="mail")
    return planted


def test_a_subject_in_an_undeclared_tag_is_found_and_not_erased_without_the_flag(
    fed: Federation,
) -> None:
    with fed.client("dub1") as client:
        _plant_in_a_dimension(client)
        before = _snapshot(client)
    with pytest.raises(ErasureBlocked) as info:
        erase_subject(fed.config, "dub1", SUBJECT, salt_env=SALT_ENV)
    assert info.value.where == ("raw.delivery tag customer: 3 point(s)",)
    assert SUBJECT not in str(info.value)
    with fed.client("dub1") as client:
        assert _snapshot(client) == before  # refused before anything changed
        assert AUDIT_DATABASE not in client.databases()

    dry = erase_subject(fed.config, "dub1", SUBJECT, salt_env=SALT_ENV, dry_run=True)
    assert dry.points == 1 and dry.deleted_points == 3 and dry.blocked == info.value.where

    done = erase_subject(fed.config, "dub1", SUBJECT, salt_env=SALT_ENV, delete_points=True)
    assert (done.points, done.deleted_points, done.verified) == (1, 3, True)
    assert {(r.key, r.kind, r.points) for r in done.redactions} == {
        ("status", "field", 1),
        ("customer", "tag", 3),
    }
    with fed.client("dub1") as client:
        after = _snapshot(client)
        # (InfluxDB 1.6's bare SHOW TAG VALUES still lists a dropped series' value; any
        # condition makes it read the series index, which no longer has it.)
        q = 'SHOW TAG VALUES FROM "delivery" WITH KEY = "customer" WHERE "customer" =~ /./'
        tags = client.query(q, database="mail")
        series = client.query("SHOW SERIES", database="mail")
    assert SUBJECT not in repr(after) and SUBJECT not in repr(tags) + repr(series)
    assert [v["status"] for v in after.values()] == [REDACTED]


def test_cli_erase_never_says_verified_while_a_tag_holds_the_subject(fed: Federation) -> None:
    with fed.client("dub1") as client:
        _plant_in_a_dimension(client)
    runner = CliRunner()
    args = ["erase", "-c", str(fed.root), "--dc", "dub1", "--salt-env", SALT_ENV, "--subject", "-"]
    refused = runner.invoke(app, args, input=SUBJECT + "\n")
    # (The installed entry point prints a FederationError as one `error:` line and exits 1.)
    said = refused.stdout + str(refused.exception)
    assert refused.exit_code == 1 and isinstance(refused.exception, ErasureBlocked), said
    assert "verified" not in said and SUBJECT not in said
    assert "tag customer: 3 point(s)" in said and "--delete-points" in said
    done = runner.invoke(app, [*args, "--delete-points"], input=SUBJECT + "\n")
    assert done.exit_code == 0, done.output
    assert "deleted 3" in done.output and "verified" in done.output


def test_erase_purges_the_subject_from_ingest_dead_letters(fed: Federation, tmp_path: Path) -> None:
    from federation.ingest import Reason
    from federation.ingest.writer import DeadLetter

    letters = DeadLetter(tmp_path / "ingest-dub1.dead.jsonl")
    letters.add("<stdin>", 1, Reason.personal_value, f'{{"customer": "{SUBJECT}"}}', key="customer")
    letters.add("<stdin>", 2, Reason.not_json, "carol@example.org oops")
    escaped = '{"sender": "alice\\u0040example.org", "latency_ms": "x"}'
    letters.add("<stdin>", 3, Reason.wrong_type, escaped, key="latency_ms")
    letters.add("<stdin>", 4, Reason.not_json, SUBJECT.encode() + b"\xff")
    letters.close()
    result = erase_subject(
        fed.config, "dub1", SUBJECT, salt_env=SALT_ENV, dead_letters=[letters.path]
    )
    assert [(d.path, d.records) for d in result.dead_letters] == [(str(letters.path), 3)]
    text = letters.path.read_text()
    assert SUBJECT not in text and "alice\\u0040" not in text
    records = [json.loads(line) for line in text.splitlines()]
    assert [(r["line"], r["reason"], r.get("raw_erased", False)) for r in records] == [
        (1, "personal_value", True),
        (2, "not_json", False),
        (3, "wrong_type", True),
        (4, "not_json", True),
    ]
    assert records[1]["raw"] == "carol@example.org oops"
    assert letters.path.stat().st_mode & 0o777 == 0o600
