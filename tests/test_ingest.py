"""Ingest: JSON lines into a real influxd, schema checks, dead letters, tie-break, restarts."""

from __future__ import annotations

import io
import json
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any, BinaryIO, cast

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from terminal import sigint_as_at_a_terminal
from typer.testing import CliRunner

from federation.cli import app
from federation.config import FederationConfig, load_config
from federation.core.lineprotocol import parse, serialize
from federation.core.pii import personal_data_kind
from federation.core.points import Point
from federation.core.retry import RetryPolicy
from federation.devstack.localstack import InfluxServer
from federation.errors import ConfigProblems, InvalidInput
from federation.influx import InfluxClient, rows
from federation.ingest import (
    Encoder,
    EventSchema,
    IngestAborted,
    IngestError,
    IngestSummary,
    Reason,
    Rejected,
    TieBreaker,
    ingest,
    load_schema,
)

runner = CliRunner()
DC = "fra1"  # region eu: database mail, retention policy raw, no credentials
NOW_MS = (int(time.time()) - 3600) * 1000
FAST = RetryPolicy(initial_s=0.05, max_s=0.3)


@pytest.fixture
def config(config_dir: Path) -> FederationConfig:
    return load_config(config_dir)


@pytest.fixture
def raw(influx: InfluxClient) -> InfluxClient:
    """The influxd with the DC's raw database and its region's retention policy."""
    create_raw(influx)
    return influx


def create_raw(client: InfluxClient) -> None:
    client.execute("CREATE DATABASE mail")
    client.execute(
        "CREATE RETENTION POLICY raw ON mail DURATION 30d REPLICATION 1 SHARD DURATION 1d"
    )


def event(i: int, **overrides: Any) -> dict[str, Any]:
    data: dict[str, Any] = {
        "ts": NOW_MS + i,
        "direction": "inbound" if i % 2 else "outbound",
        "mailer": f"mx{i % 3}",
        "customer": f"c{i % 7}",
        "latency_ms": i + 0.5,
        "size": 1000 + i,
        "sender": f"s{i}@example.org",
    }
    data.update(overrides)
    return data


def jsonl(events: list[dict[str, Any]]) -> bytes:
    return b"".join(json.dumps(e).encode() + b"\n" for e in events)


def points(client: InfluxClient, where: str = "") -> list[dict[str, Any]]:
    q = f'SELECT * FROM "mail"."raw"."delivery" {where}'
    return list(rows(client.query(q, database="mail")))


def run(
    config: FederationConfig, client: InfluxClient, data: bytes, tmp_path: Path, **kwargs: Any
) -> IngestSummary:
    kwargs.setdefault("dead_letter", tmp_path / "dead.jsonl")
    kwargs.setdefault("retry", FAST)
    summary = ingest(config, DC, io.BytesIO(data), client=client, **kwargs)
    assert summary.complete, summary
    return summary


def dead_letters(tmp_path: Path) -> list[dict[str, Any]]:
    path = tmp_path / "dead.jsonl"
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines()]


# -- writing ------------------------------------------------------------------------------------


def test_events_are_written_with_their_types(
    config: FederationConfig, raw: InfluxClient, tmp_path: Path
) -> None:
    events = [event(i) for i in range(12)]
    summary = run(config, raw, jsonl(events), tmp_path, batch_size=5)
    assert (summary.lines_read, summary.points_written, summary.batches) == (12, 12, 3)
    assert summary.dead_letter_file is None and not (tmp_path / "dead.jsonl").exists()
    got = points(raw)
    assert [p["time"] for p in got] == [(NOW_MS + i) * 1_000_000 for i in range(12)]
    assert got[3]["latency_ms"] == 3.5 and got[3]["size"] == 1003 and got[3]["mailer"] == "mx0"
    field_keys = raw.query('SHOW FIELD KEYS FROM "raw"."delivery"', database="mail")
    assert dict(map(tuple, field_keys[0].values)) == {
        "latency_ms": "float",
        "sender": "string",
        "size": "integer",
    }
    tag_keys = raw.query('SHOW TAG KEYS FROM "raw"."delivery"', database="mail")
    assert sorted(row[0] for row in tag_keys[0].values) == ["customer", "direction", "mailer"]


class Trickle(io.RawIOBase):
    """A stream that hands out at most 7 bytes per read, so lines straddle every chunk."""

    def __init__(self, data: bytes) -> None:
        self.data = data

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: Any) -> int:
        piece, self.data = self.data[:7], self.data[7:]
        buffer[: len(piece)] = piece
        return len(piece)


def test_lines_straddling_chunks_and_a_last_line_without_newline(
    config: FederationConfig, raw: InfluxClient, tmp_path: Path
) -> None:
    data = jsonl([event(i) for i in range(30)]) + b"\r\n" + json.dumps(event(30)).encode()
    summary = ingest(
        config,
        DC,
        cast(BinaryIO, Trickle(data)),
        client=raw,
        batch_size=4,
        dead_letter=tmp_path / "d.jsonl",
    )
    assert (summary.lines_read, summary.points_written, summary.blank_lines) == (32, 31, 1)
    assert len(points(raw)) == 31


@pytest.mark.parametrize(
    ("fmt", "stamp", "expected_ns"),
    [
        ("epoch_s", 1_700_000_000, 1_700_000_000 * 10**9),
        ("epoch_s", 1_700_000_000.123, 1_700_000_000_123_000_000),
        ("epoch_ms", 1_700_000_000_123, 1_700_000_000_123_000_000),
        ("epoch_us", 1_700_000_000_123_456, 1_700_000_000_123_456_000),
        ("epoch_ns", 1_700_000_000_123_456_789, 1_700_000_000_123_456_789),
        ("rfc3339", "2023-11-14T22:13:20Z", 1_700_000_000 * 10**9),
        ("rfc3339", "2023-11-14T22:13:20.123456789Z", 1_700_000_000_123_456_789),
        ("rfc3339", "2023-11-15T00:13:20.5+02:00", 1_700_000_000_500_000_000),
        ("rfc3339", "2023-11-14T20:13:20-02:00", 1_700_000_000 * 10**9),
    ],
)
def test_timestamp_forms(fmt: str, stamp: object, expected_ns: int) -> None:
    schema = EventSchema.model_validate(
        {
            "measurement": "m",
            "timestamp": {"name": "t", "format": fmt},
            "fields": {"v": {"type": "integer"}},
        }
    )
    line = Encoder(schema).encode({"t": stamp, "v": 1})
    assert parse(line)[0].time_ns == expected_ns


@pytest.mark.parametrize(
    ("fmt", "stamp", "reason"),
    [
        ("rfc3339", "2023-13-01T00:00:00Z", Reason.bad_timestamp),
        ("rfc3339", "2023-11-14 22:13:20", Reason.bad_timestamp),  # no offset
        ("rfc3339", "yesterday", Reason.bad_timestamp),
        ("rfc3339", 1_700_000_000, Reason.wrong_type),
        ("epoch_ms", "1700000000000", Reason.wrong_type),
        ("epoch_s", 1e300, Reason.bad_timestamp),
        ("epoch_ns", True, Reason.wrong_type),
    ],
)
def test_bad_timestamps(fmt: str, stamp: object, reason: Reason) -> None:
    schema = EventSchema.model_validate(
        {
            "measurement": "m",
            "timestamp": {"name": "t", "format": fmt},
            "fields": {"v": {"type": "integer"}},
        }
    )
    with pytest.raises(Rejected) as info:
        Encoder(schema).encode({"t": stamp, "v": 1})
    assert (info.value.reason, info.value.key) == (reason, "t")


# -- escaping, read back through InfluxDB ---------------------------------------------------------

AWKWARD = [
    "plain",
    "with space",
    "comma,inside",
    "equals=inside",
    'double"quote',
    "single'quote",
    "back\\slash",
    "two\\\\backslashes",
    "even\\\\,comma",
    " leading and trailing ",
    "ünïcødé ✉",
    '=," \\x',
]


def test_escaping_round_trips_through_influxdb(
    config: FederationConfig, raw: InfluxClient, tmp_path: Path
) -> None:
    events = [
        event(i, customer=value, sender=value + "\nsecond line", mailer=f"m{i}")
        for i, value in enumerate(AWKWARD)
    ]
    summary = run(config, raw, jsonl(events), tmp_path)
    assert summary.points_written == len(AWKWARD), dead_letters(tmp_path)
    got = {p["mailer"]: p for p in points(raw)}
    for i, value in enumerate(AWKWARD):
        assert got[f"m{i}"]["customer"] == value
        assert got[f"m{i}"]["sender"] == value + "\nsecond line"


tag_text = st.text(st.characters(exclude_categories=["Cs"]), min_size=1, max_size=12)
field_text = st.text(st.characters(exclude_categories=["Cs"]), max_size=12)


@settings(max_examples=300, deadline=None)
@given(
    tags=st.dictionaries(st.sampled_from(["a", "b c", "d,e", "f=g"]), tag_text, max_size=4),
    text=field_text,
    number=st.floats(allow_nan=False, allow_infinity=False),
    integer=st.integers(-(2**63), 2**63 - 1),
    flag=st.booleans(),
    stamp=st.integers(-(10**12), 10**12),
)
def test_encoder_writes_what_serialize_writes(
    tags: dict[str, str], text: str, number: float, integer: int, flag: bool, stamp: int
) -> None:
    schema = EventSchema.model_validate(
        {
            "measurement": "my measurement,x",
            "timestamp": {"name": "t", "format": "epoch_us"},
            "tags": {key: {} for key in ["a", "b c", "d,e", "f=g"]},
            "fields": {
                "s p": {"type": "string"},
                "x,y": {"type": "float"},
                "n=m": {"type": "integer"},
                "b": {"type": "boolean"},
            },
        }
    )
    event = {**tags, "s p": text, "x,y": number, "n=m": integer, "b": flag, "t": stamp}
    expected = Point(
        "my measurement,x",
        tags,
        {"s p": text, "x,y": number, "n=m": integer, "b": flag},
        stamp * 1000,
    )
    try:
        reference = serialize([expected])
    except InvalidInput:
        # A tag value line protocol cannot carry: the encoder refuses it as well.
        with pytest.raises(Rejected) as info:
            Encoder(schema).encode(event)
        assert info.value.reason is Reason.unrepresentable
        return
    if any(personal_data_kind(value) for value in tags.values()):
        # A tag value that looks like personal data never reaches the raw database as a tag.
        with pytest.raises(Rejected) as info:
            Encoder(schema).encode(event)
        assert info.value.reason is Reason.personal_value
        return
    assert Encoder(schema).encode(event) == reference
    assert parse(reference) == [expected]


# -- dead letters ---------------------------------------------------------------------------------


def test_every_schema_reason_is_dead_lettered_and_the_stream_goes_on(
    config: FederationConfig, raw: InfluxClient, tmp_path: Path
) -> None:
    cases: list[tuple[bytes, str]] = [
        (b"this is not json", "not_json"),
        (b'{"ts": 1, "direction": "in', "not_json"),
        (b"\xff\xfe{}", "not_json"),
        (b"[1, 2]", "not_object"),
        (b"  null", "not_object"),
        (b'{"ts": 1} trailing', "not_json"),
        (json.dumps(event(0, customer=None)).encode(), "missing_key"),
        (
            json.dumps({k: v for k, v in event(0).items() if k != "latency_ms"}).encode(),
            "missing_key",
        ),
        (json.dumps({k: v for k, v in event(0).items() if k != "ts"}).encode(), "missing_key"),
        (json.dumps(event(0, latency_ms="12")).encode(), "wrong_type"),
        (json.dumps(event(0, size=1.5)).encode(), "wrong_type"),
        (json.dumps(event(0, mailer=["mx1"])).encode(), "wrong_type"),
        (json.dumps(event(0, sender=42)).encode(), "wrong_type"),
        (json.dumps(event(0, latency_ms=True)).encode(), "wrong_type"),
        (json.dumps(event(0, latency_ms=float("nan"))).encode(), "not_finite"),
        (
            json.dumps(event(0)).replace('"latency_ms": 0.5', '"latency_ms": 1e999').encode(),
            "not_finite",
        ),
        (json.dumps(event(0, latency_ms=float("-inf"))).encode(), "not_finite"),
        (json.dumps(event(0, size=2**63)).encode(), "out_of_range"),
        (json.dumps(event(0, latency_ms=10**400)).encode(), "out_of_range"),
        (json.dumps(event(0, sender="x" * 70_000)).encode(), "string_too_long"),
        (json.dumps(event(0, customer="")).encode(), "empty_tag"),
        (json.dumps(event(0, customer="line\nbreak")).encode(), "unrepresentable"),
        (json.dumps(event(0, customer="ends with \\")).encode(), "unrepresentable"),
        (json.dumps(event(0, sender="\ud800")).encode(), "unrepresentable"),
        (json.dumps(event(0, ts="yesterday")).encode(), "wrong_type"),
        (json.dumps(event(0, ts=10**20)).encode(), "bad_timestamp"),
    ]
    good = [json.dumps(event(i)).encode() for i in range(1, len(cases) + 1)]
    body = b"".join(bad + b"\n" + ok + b"\n" for (bad, _), ok in zip(cases, good, strict=True))
    summary = run(config, raw, body + b"\n   \n", tmp_path, batch_size=4)
    assert summary.points_written == len(good)
    assert summary.blank_lines == 2
    expected: dict[str, int] = {}
    for _, reason in cases:
        expected[reason] = expected.get(reason, 0) + 1
    assert summary.dead_lettered == expected
    letters = dead_letters(tmp_path)
    assert [(d["line"], d["reason"]) for d in letters] == [
        (2 * i + 1, reason) for i, (_, reason) in enumerate(cases)
    ]
    assert letters[2]["raw_base64"]  # not UTF-8: kept byte for byte
    assert letters[6]["key"] == "customer" and letters[6]["raw"] == cases[6][0].decode()
    assert len(points(raw)) == len(good)


def test_a_tag_value_that_looks_like_personal_data_is_dead_lettered(
    config: FederationConfig, raw: InfluxClient, tmp_path: Path
) -> None:
    # A personal value in a dimension tag would make every shipment of its window refused at
    # the gateway; ingest refuses it with the gateway's own detector, naming the kind only.
    cases = [
        event(0, customer="bob@example.org"),
        event(1, mailer="192.0.2.55"),
        event(2, direction="2001:db8::7"),
        event(3, customer="rcpt=bob%40example.org"),
    ]
    ok = [event(i, customer="c1042", mailer="smtp-out-3") for i in range(10, 13)]
    summary = run(config, raw, jsonl(cases + ok), tmp_path)
    assert summary.points_written == len(ok)
    assert summary.dead_lettered == {"personal_value": len(cases)}
    letters = dead_letters(tmp_path)
    assert [(d["line"], d["key"]) for d in letters] == [
        (1, "customer"),
        (2, "mailer"),
        (3, "direction"),
        (4, "customer"),
    ]
    assert letters[0]["detail"] == "the value looks like an e-mail address"
    assert letters[1]["detail"] == "the value looks like an IPv4 address"
    tag_values = raw.query('SHOW TAG VALUES FROM "delivery" WITH KEY =~ /.*/', database="mail")
    assert {row[1] for s in tag_values for row in s.values} == {
        "c1042",
        "smtp-out-3",
        "inbound",
        "outbound",
    }


def test_the_dead_letter_file_is_owner_only_and_the_summary_says_so(
    config: FederationConfig, raw: InfluxClient, tmp_path: Path
) -> None:
    path = tmp_path / "dead.jsonl"
    path.write_text("")
    path.chmod(0o644)  # left by an older run: narrowed too
    summary = run(config, raw, jsonl([event(0, customer="bob@example.org")]), tmp_path)
    assert path.stat().st_mode & 0o777 == 0o600
    assert summary.to_dict()["dead_letter_access"] == "owner only (0600)"
    path.unlink()
    run(config, raw, b"not json\n", tmp_path)
    assert path.stat().st_mode & 0o777 == 0o600
    clean = run(config, raw, jsonl([event(1)]), tmp_path, dead_letter=tmp_path / "other.jsonl")
    assert clean.to_dict()["dead_letter_access"] is None


def test_no_fields_and_a_custom_string_limit(
    config: FederationConfig, raw: InfluxClient, tmp_path: Path
) -> None:
    schema = EventSchema.model_validate(
        {
            "measurement": "delivery",
            "timestamp": {"name": "ts", "format": "epoch_ms"},
            "tags": {"mailer": {"required": True}},
            "fields": {"status": {"type": "string"}, "ok": {"type": "boolean"}},
            "max_string_bytes": 8,
        }
    )
    lines = [
        {"ts": NOW_MS, "mailer": "mx1"},
        {"ts": NOW_MS, "mailer": "mx1", "status": "éééé€"},  # 11 UTF-8 bytes
        {"ts": NOW_MS, "mailer": "mx1", "status": "éééé", "ok": False},  # 8 bytes
    ]
    summary = run(config, raw, jsonl(lines), tmp_path, schema=schema)
    assert summary.dead_lettered == {"no_fields": 1, "string_too_long": 1}
    assert [(p["status"], p["ok"]) for p in points(raw)] == [("éééé", False)]


def test_points_influxdb_refuses_are_split_out_with_its_reason(
    config: FederationConfig, raw: InfluxClient, tmp_path: Path
) -> None:
    # `size` already exists as a float: InfluxDB refuses it as an integer.
    raw.write(
        b"delivery,mailer=old size=1.5,latency_ms=1 %d\n" % (NOW_MS * 10**6),
        database="mail",
        retention_policy="raw",
    )
    events = [event(i, size=None) for i in range(20)]
    events[3]["size"] = 7
    events[11]["size"] = 8
    events[15]["ts"] = NOW_MS - 60 * 86400 * 1000  # older than the 30d retention policy
    events[17]["customer"] = "k" * 30_000
    events[17]["direction"] = "d" * 30_000
    events[17]["mailer"] = "m" * 30_000  # a series key InfluxDB finds too long
    summary = run(config, raw, jsonl(events), tmp_path, batch_size=8)
    assert summary.dead_lettered == {
        "field_type_conflict": 2,
        "beyond_retention": 1,
        "influx_rejected": 1,
    }
    assert summary.points_written == 16 and summary.splits > 0
    letters = {d["line"]: d for d in dead_letters(tmp_path)}
    assert sorted(letters) == [4, 12, 16, 18]
    assert "field type conflict" in letters[4]["detail"]
    assert json.loads(letters[4]["raw"])["size"] == 7
    assert len(points(raw, "WHERE mailer != 'old'")) == 16


# -- tie-break ------------------------------------------------------------------------------------


def test_equal_timestamps_are_kept_apart_the_same_way_every_time(
    config: FederationConfig, raw: InfluxClient, tmp_path: Path
) -> None:
    events = [event(0, latency_ms=float(i), sender=f"s{i}") for i in range(5)]
    events += [event(1, latency_ms=10.0 + i) for i in range(3)]
    events.append(event(0, ts=NOW_MS, latency_ms=99.0, mailer="other"))  # another series
    data = jsonl(events)
    first = run(config, raw, data, tmp_path, batch_size=2)
    assert first.points_written == len(events)
    before = points(raw)
    assert len(before) == len(events), "no event overwrote another"
    base = NOW_MS * 1_000_000
    zero = sorted((p["time"], p["latency_ms"]) for p in before if p["mailer"] == "mx0")
    assert zero == [(base + k, float(k)) for k in range(5)]
    second = run(config, raw, data, tmp_path, batch_size=1000)  # other batch boundaries
    assert second.points_written == len(events)
    assert points(raw) == before


def test_tie_breaker_limits() -> None:
    ties = TieBreaker(window=3)
    assert [ties.place("s", 10) for _ in range(3)] == [10, 11, 12]
    assert ties.place("s", 11) == 13  # t+1 is taken by a shifted event: the next free slot
    assert ties.place("other", 10) == 10
    # (s, 10) has left the three-event window: a later tie with it is no longer seen.
    assert ties.place("s", 10) == 10
    assert [TieBreaker(window=0).place("s", 5) for _ in range(2)] == [5, 5]


# -- schema checks --------------------------------------------------------------------------------


def test_example_schema_loads(config: FederationConfig) -> None:
    schema = load_schema(config, DC)
    assert schema.measurement == "delivery"
    assert set(schema.tags) == {"direction", "mailer", "customer"}
    assert load_schema(config, DC, "delivery") == schema


def edit_schema(config_dir: Path, old: str, new: str) -> None:
    path = config_dir / "policies" / "schemas" / "delivery.yaml"
    text = path.read_text()
    assert old in text
    path.write_text(text.replace(old, new, 1))


def line_of(config_dir: Path, needle: str) -> int:
    text = (config_dir / "policies" / "schemas" / "delivery.yaml").read_text()
    return next(i for i, line in enumerate(text.splitlines(), 1) if line.strip().startswith(needle))


def test_schema_errors_name_file_key_path_and_line(config_dir: Path) -> None:
    edit_schema(config_dir, "size: {type: integer}", "size: {type: int64}")
    edit_schema(config_dir, "status: {type: string}", "status: {type: string, indexed: true}")
    edit_schema(config_dir, "format: epoch_ms", "format: epoch_minutes")
    with pytest.raises(ConfigProblems) as info:
        load_schema(load_config(config_dir), DC)
    messages = [str(p) for p in info.value.problems]
    file = "policies/schemas/delivery.yaml"
    size, status, stamp = (line_of(config_dir, n) for n in ("size:", "status:", "format:"))
    assert any(m.startswith(f"{file}:{size}: fields.size.type: ") for m in messages), messages
    assert f"{file}:{status}: fields.status.indexed: unknown key" in messages
    assert any(m.startswith(f"{file}:{stamp}: timestamp.format: ") for m in messages), messages


def test_schema_cross_checks(config_dir: Path) -> None:
    edit_schema(config_dir, "measurement: delivery", "measurement: bounce")
    edit_schema(
        config_dir, "  status: {type: string}", "  status: {type: string}\n  mailer: {type: string}"
    )
    edit_schema(
        config_dir, "  size: {type: integer}", "  size: {type: integer}\n  ts: {type: integer}"
    )
    with pytest.raises(ConfigProblems) as info:
        load_schema(load_config(config_dir), DC)
    assert [str(p) for p in info.value.problems] == [
        f"policies/schemas/delivery.yaml:{line_of(config_dir, 'fields:')}: fields: "
        "declared both as tag and as field: mailer"
    ]
    edit_schema(config_dir, "  mailer: {type: string}\n", "")
    with pytest.raises(ConfigProblems) as info:
        load_schema(load_config(config_dir), DC)
    assert "fields: 'ts' is the timestamp key" in str(info.value)
    edit_schema(config_dir, "  ts: {type: integer}\n", "")
    with pytest.raises(ConfigProblems) as info:
        load_schema(load_config(config_dir), DC)
    messages = "\n".join(str(p) for p in info.value.problems)
    assert "measurement: is 'bounce' but the file is named for 'delivery'" in messages
    assert "not declared in region eu" in messages


def test_personal_key_declared_as_tag_is_refused(config_dir: Path) -> None:
    edit_schema(
        config_dir, "  customer: {required: true}", "  customer: {required: true}\n  sender: {}"
    )
    edit_schema(config_dir, "  sender: {type: string}    # personal data\n", "")
    with pytest.raises(ConfigProblems) as info:
        load_schema(load_config(config_dir), "tor1")
    (problem,) = info.value.problems
    assert problem.file == "policies/schemas/delivery.yaml"
    assert problem.key_path == "tags.sender"
    assert problem.line == line_of(config_dir, "sender: {}")
    assert "personal data in region na" in str(problem) and "must be a field" in str(problem)


def test_personal_tag_in_a_schema_object_is_refused(
    config: FederationConfig, raw: InfluxClient, tmp_path: Path
) -> None:
    schema = EventSchema.model_validate(
        {
            "measurement": "delivery",
            "timestamp": {"name": "ts", "format": "epoch_ms"},
            "tags": {"client_ip": {}},
            "fields": {"latency_ms": {"type": "float"}},
        }
    )
    with pytest.raises(ConfigProblems, match=r"tags\.client_ip"):
        ingest(config, DC, io.BytesIO(b""), schema=schema, client=raw)
    assert points(raw) == []


def test_missing_retention_policy_is_one_clear_error(
    config: FederationConfig, influx: InfluxClient, tmp_path: Path
) -> None:
    with pytest.raises(IngestError, match="no database 'mail'"):
        ingest(config, DC, io.BytesIO(jsonl([event(0)])), client=influx)
    influx.create_database("mail")
    with pytest.raises(IngestError, match="no retention policy 'raw'"):
        ingest(config, DC, io.BytesIO(jsonl([event(0)])), client=influx)


# -- InfluxDB away --------------------------------------------------------------------------------


class Pipe:
    """A pipe the test writes into while ingest reads the other end in a thread."""

    def __init__(self) -> None:
        read_fd, write_fd = os.pipe()
        self.reader = os.fdopen(read_fd, "rb")
        self.writer = os.fdopen(write_fd, "wb", buffering=0)
        self.sent = 0
        self.lines = 0

    def feed(self, lines: Iterator[bytes]) -> None:
        for line in lines:
            self.writer.write(line)
            self.sent += len(line)
            self.lines += 1

    def close(self) -> None:
        self.writer.close()


class Background:
    """Runs `ingest` in a thread and keeps its last progress report."""

    def __init__(self, config: FederationConfig, client: InfluxClient, pipe: Pipe, **kw: Any):
        self.last: IngestSummary | None = None
        self.result: IngestSummary | None = None
        self.error: BaseException | None = None

        def target() -> None:
            try:
                self.result = ingest(
                    config, DC, pipe.reader, client=client, progress=self.seen, **kw
                )
            except BaseException as exc:
                self.error = exc

        self.thread = threading.Thread(target=target, daemon=True)
        self.thread.start()

    def seen(self, summary: IngestSummary) -> None:
        self.last = summary

    def wait_for(self, predicate: Any, timeout: float = 30.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.last is not None and predicate(self.last):
                return
            assert self.error is None, self.error
            time.sleep(0.02)
        raise AssertionError(f"timed out; last progress {self.last}")


def lines_for(start: int, stop: int) -> Iterator[bytes]:
    for i in range(start, stop):
        yield json.dumps(event(i, sender="x" * 60)).encode() + b"\n"


@pytest.mark.parametrize("how", ["stop", "kill"])
def test_influxd_going_away_mid_stream_loses_and_doubles_nothing(
    config: FederationConfig, influxd: InfluxServer, raw: InfluxClient, tmp_path: Path, how: str
) -> None:
    pipe = Pipe()
    job = Background(
        config,
        raw,
        pipe,
        batch_size=100,
        flush_interval=0.1,
        max_queued_batches=2,
        retry=FAST,
        dead_letter=tmp_path / "dead.jsonl",
    )
    pipe.feed(lines_for(0, 1000))
    job.wait_for(lambda s: s.points_written >= 500)
    influxd.stop() if how == "stop" else influxd.kill()
    total = 60_000
    feeder = threading.Thread(target=pipe.feed, args=(lines_for(1000, total),), daemon=True)
    feeder.start()
    job.wait_for(lambda s: s.retries >= 3)
    time.sleep(0.5)
    held_back = pipe.sent
    time.sleep(0.5)
    # Reading has paused: the input is held back in the pipe, not buffered in memory.
    assert pipe.sent == held_back
    assert pipe.lines < total / 3, "reading went on while InfluxDB was away"
    influxd.start()
    feeder.join(60)
    pipe.close()
    job.thread.join(120)
    assert job.error is None, job.error
    summary = job.result
    assert summary is not None and summary.complete
    assert summary.points_written == total and summary.dead_lettered == {}
    assert summary.retries >= 3
    with InfluxClient(influxd.url) as client:
        count = client.query(
            'SELECT count("latency_ms") FROM "mail"."raw"."delivery"', database="mail"
        )
        assert count[0].values[0][1] == total
        times = {
            row[0]
            for s in client.iter_series(
                'SELECT "latency_ms" FROM "mail"."raw"."delivery"', database="mail"
            )
            for row in s.values
        }
    assert times == {(NOW_MS + i) * 1_000_000 for i in range(total)}


def test_a_partial_batch_is_written_after_the_flush_interval(
    config: FederationConfig, raw: InfluxClient, tmp_path: Path
) -> None:
    pipe = Pipe()
    job = Background(
        config, raw, pipe, batch_size=5000, flush_interval=0.2, dead_letter=tmp_path / "d.jsonl"
    )
    pipe.feed(lines_for(0, 3))
    job.wait_for(lambda s: s.points_written == 3, timeout=10)
    assert len(points(raw)) == 3  # while the input is still open
    pipe.close()
    job.thread.join(10)
    assert job.result is not None and job.result.points_written == 3


def test_give_up_after_stops_with_what_was_written(
    config: FederationConfig, influxd: InfluxServer, raw: InfluxClient, tmp_path: Path
) -> None:
    pipe = Pipe()
    job = Background(
        config,
        raw,
        pipe,
        batch_size=10,
        flush_interval=0.05,
        retry=RetryPolicy(initial_s=0.05, max_s=0.1, give_up_after_s=0.5),
        dead_letter=tmp_path / "d.jsonl",
    )
    pipe.feed(lines_for(0, 20))
    job.wait_for(lambda s: s.points_written == 20)
    influxd.stop()
    pipe.feed(lines_for(20, 30))
    pipe.close()
    job.thread.join(30)
    assert isinstance(job.error, IngestAborted) and "giving up" in str(job.error)
    assert job.error.summary.points_written == 20


def test_a_database_dropped_mid_stream_stops_the_ingest(
    config: FederationConfig, raw: InfluxClient, tmp_path: Path
) -> None:
    pipe = Pipe()
    job = Background(
        config, raw, pipe, batch_size=10, flush_interval=0.05, dead_letter=tmp_path / "d.jsonl"
    )
    pipe.feed(lines_for(0, 20))
    job.wait_for(lambda s: s.points_written == 20)
    raw.execute('DROP DATABASE "mail"')
    pipe.feed(lines_for(20, 30))
    pipe.close()
    job.thread.join(30)
    assert isinstance(job.error, IngestAborted), job.error
    assert "database not found" in str(job.error)
    assert job.error.summary.points_written == 20
    assert not (tmp_path / "d.jsonl").exists(), "a missing database is not the lines' fault"


# -- CLI ------------------------------------------------------------------------------------------


def point_fleet_at(config_dir: Path, url: str) -> None:
    fleet = config_dir / "fleet.yaml"
    fleet.write_text(fleet.read_text().replace("http://influxdb.fra1.mail.internal:8086", url))


def test_cli_ingests_stdin_and_prints_the_summary(
    config_dir: Path, influxd: InfluxServer, raw: InfluxClient, tmp_path: Path
) -> None:
    point_fleet_at(config_dir, influxd.url)
    data = jsonl([event(i) for i in range(5)]) + b"oops\n"
    dead = tmp_path / "dead.jsonl"
    args = ["ingest", "--dc", DC, "-c", str(config_dir), "--dead-letter", str(dead)]
    result = runner.invoke(app, [*args, "--format", "json"], input=data)
    assert result.exit_code == 3, result.output  # a line was dead-lettered
    summary = json.loads(result.stdout)
    assert summary["lines_read"] == 6 and summary["points_written"] == 5
    assert summary["dead_lettered_by_reason"] == {"not_json": 1}
    assert "oops" not in result.stdout  # the summary names reasons, never content
    events_file = tmp_path / "events.jsonl"
    events_file.write_bytes(data)
    result = runner.invoke(app, [*args, "--batch", "2", "--flush", "500ms", str(events_file)])
    assert result.exit_code == 3, result.output
    assert "points_written" in result.stdout and "dead_lettered.not_json" in result.stdout
    assert len(points(raw)) == 5
    clean = runner.invoke(app, args, input=jsonl([event(i) for i in range(5)]))
    assert clean.exit_code == 0, clean.output


@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM])
def test_cli_interrupted_prints_its_summary_and_exits_130(
    config_dir: Path, influxd: InfluxServer, raw: InfluxClient, tmp_path: Path, signum: int
) -> None:
    point_fleet_at(config_dir, influxd.url)
    proc = subprocess.Popen(
        [sys.executable, "-m", "federation.cli", "ingest", "--dc", DC, "-c", str(config_dir),
         "--dead-letter", str(tmp_path / "dead.jsonl"), "--flush", "100ms", "--format", "json"],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
        preexec_fn=sigint_as_at_a_terminal,
    )  # fmt: skip
    assert proc.stdin is not None
    proc.stdin.write(jsonl([event(i) for i in range(5)]))
    proc.stdin.flush()  # the pipe stays open: ingest waits for more
    deadline = time.monotonic() + 30
    while len(points(raw)) < 5:
        assert time.monotonic() < deadline, "the first lines were not written"
        time.sleep(0.1)
    proc.send_signal(signum)
    stdout, stderr = proc.communicate(timeout=30)
    assert proc.returncode == 130, stderr
    assert json.loads(stdout)["points_written"] == 5
    assert (
        stderr.decode().strip().splitlines()[-1].startswith("error: interrupted; stopped after 5")
    )


def test_cli_schema_problem_exits_2(config_dir: Path) -> None:
    edit_schema(
        config_dir, "  customer: {required: true}", "  customer: {required: true}\n  helo: {}"
    )
    edit_schema(config_dir, "  helo: {type: string}      # personal data\n", "")
    proc = subprocess.run(
        [sys.executable, "-m", "federation.cli", "ingest", "--dc", DC, "-c", str(config_dir)],
        input=b"",
        capture_output=True,
        timeout=60,
    )
    assert proc.returncode == 2, proc.stderr
    line = line_of(config_dir, "helo: {}")
    assert (
        f"error: policies/schemas/delivery.yaml:{line}: tags.helo: 'helo' is personal data".encode()
        in proc.stderr
    )
