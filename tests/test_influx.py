"""The InfluxDB client and the local influxd harness, against real influxd processes."""

from __future__ import annotations

import httpx
import pytest

from federation.devstack.localstack import InfluxServer, LocalStack
from federation.errors import InfluxError
from federation.influx import InfluxClient, parse_influx_duration, rows


def test_write_then_read_back(influx: InfluxClient) -> None:
    influx.create_database("mail")
    body = (
        b'delivery,direction=inbound,mailer=mx1 latency_ms=12.5,size=2048i,sender="a@example.org" 1000000000\n'
        b"delivery,direction=outbound,mailer=mx2 latency_ms=80,size=10i 2000000000\n"
    )
    influx.write(body, database="mail")
    result = list(rows(influx.query('SELECT * FROM "delivery"', database="mail")))
    assert [r["time"] for r in result] == [1_000_000_000, 2_000_000_000]
    assert result[0]["latency_ms"] == 12.5 and result[0]["size"] == 2048
    assert result[1]["direction"] == "outbound"


def test_chunked_stream_returns_every_row(influx: InfluxClient) -> None:
    influx.create_database("mail")
    lines = [f"delivery,customer=c{i % 7} latency_ms={i}.5 {i * 1000}" for i in range(25_000)]
    influx.write("\n".join(lines).encode(), database="mail")
    series = list(
        influx.iter_series(
            'SELECT "latency_ms", "customer"::tag FROM "mail"."autogen"."delivery"',
            database="mail",
            chunk_size=4000,
        )
    )
    assert len(series) > 1, "a long result arrives in several chunks"
    values = [row[1] for s in series for row in s.values]
    assert len(values) == 25_000 and values[-1] == 24_999.5


def test_statement_error_is_raised_with_url(influx: InfluxClient) -> None:
    with pytest.raises(InfluxError) as info:
        influx.query("SELECT FROM nowhere", database="mail")
    assert influx.url in str(info.value)


def test_refused_write_names_status(influx: InfluxClient) -> None:
    with pytest.raises(InfluxError) as info:
        influx.write(b"delivery latency_ms=1 1", database="does_not_exist")
    assert info.value.status == 404
    assert "database not found" in info.value.message


def test_unreachable_server_names_url() -> None:
    from federation.devstack.processes import free_port

    url = f"http://127.0.0.1:{free_port()}"
    with InfluxClient(url, timeout=1.0) as client, pytest.raises(InfluxError) as info:
        client.ping()
    assert url in str(info.value) and info.value.status is None


def test_retention_policies_are_parsed(influx: InfluxClient) -> None:
    influx.create_database("mail")
    influx.execute(
        'CREATE RETENTION POLICY "raw_30d" ON "mail" DURATION 30d REPLICATION 1 SHARD DURATION 1d DEFAULT'
    )
    policies = {p.name: p for p in influx.retention_policies("mail")}
    assert policies["raw_30d"].duration_ns == 30 * 86400 * 10**9
    assert policies["raw_30d"].shard_duration_ns == 86400 * 10**9
    assert policies["raw_30d"].default and not policies["autogen"].default
    assert policies["autogen"].duration_ns == 0


def test_go_durations() -> None:
    assert parse_influx_duration("720h0m0s") == 720 * 3600 * 10**9
    assert parse_influx_duration("1h30m0s") == 5400 * 10**9
    assert parse_influx_duration("0s") == 0


def test_several_servers_at_once_and_clean_stop(tmp_path: object) -> None:
    with LocalStack() as stack:
        servers = [stack.influxd(name) for name in ("dub1", "lon1", "central")]
        assert len({s.http_port for s in servers}) == 3
        for server in servers:
            assert httpx.get(server.url + "/ping").status_code == 204
        root = stack.root
    assert all(not s.running for s in servers)
    assert not root.exists()


def test_restart_keeps_data(influxd: InfluxServer) -> None:
    with InfluxClient(influxd.url) as client:
        client.create_database("mail")
        client.write(b"delivery latency_ms=3 5", database="mail")
    influxd.restart()
    with InfluxClient(influxd.url) as client:
        assert (
            next(iter(rows(client.query("SELECT * FROM delivery", database="mail"))))["latency_ms"]
            == 3
        )


def test_a_free_port_is_never_one_an_outgoing_connection_may_take() -> None:
    """Servers get ports below the kernel's ephemeral range (outgoing connections take their
    source ports from it, and one could take a server's port before the server binds it)."""
    import socket

    from federation.devstack.processes import ephemeral_ports, free_port

    low, _ = ephemeral_ports()
    ports = {free_port() for _ in range(50)}
    assert all(10_000 <= p < low for p in ports), sorted(p for p in ports if p >= low)
    assert len(ports) > 40  # random, not one port again and again
    for port in list(ports)[:5]:
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
            sock.bind(("127.0.0.1", port))  # nothing listens there
