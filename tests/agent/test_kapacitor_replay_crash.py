"""A live batch replay whose second query fails while the first one's batches are still being
sent: the real kapacitord 1.5.7 exits (`panic: send on closed channel`, `replay.go`
`replayBatchFromChan`), and the Kapacitor mode's error says so (`KAPACITORD_GONE`).

How it happens (`services/replay/service.go`, `replay.go` at v1.5.7): one goroutine runs the
replay's queries one after another, handing each batch to the one that sends batches into the
task (`replayBatchFromChan`), and runs the next query as soon as the last batch is handed over.
When a query fails, `doLiveBatchReplay` returns at once and `doReplay`'s deferred calls close the
task's input edge; a send waiting on that edge, full, then panics. An edge holds 1000 batches:
with a UDF node that takes nothing from its input (here its UDF never answers Kapacitor's init
request, like a UDF still starting), the task holds `HELD` batches, and the next one's send
waits. With `HELD` batches before the failing query kapacitord survives (the replay fails with
the query's error); with one more it exits, every time.

The plan's query has no GROUP BY: a window is one batch. Rather than `HELD + 1` windows (as many
InfluxDB queries: far too slow for a test), kapacitord's InfluxDB is `SplittingProxy`, in front
of the DC's influxd: it answers the replay's first query with influxd's rows as one series each
(one batch each, as a GROUP BY of that many groups would) and closes the connection on the
second. The agent reads influxd directly.
"""

from __future__ import annotations

import json
import socket
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, urlsplit

import httpx
import pytest
from kapacitor_fixture import StartKapacitord, stall_udf

from federation.agent.kapacitor_replay import KAPACITORD_GONE
from federation.core.clock import format_rfc3339
from federation.core.windows import windows_between
from federation.devstack.localstack import InfluxServer
from federation.influx import InfluxClient
from federation.kapacitor.client import KapacitorClient

from .conftest import SECOND, Event, make_plan, write_events
from .test_kapacitor_mode import new_mode, recent_minute

pytestmark = pytest.mark.kapacitor

EDGE_BUFFER = 1000
"""Batches a Kapacitor 1.5.7 edge holds (`defaultEdgeBufferSize`, `edge.go`)."""

HELD = 2 * EDGE_BUFFER + 1
"""Batches a replay's task holds while its UDF node takes none: the input edge's, the one the
query node has in hand, and the edge's to the UDF node."""


def replay_query(q: str) -> bool:
    """Whether `q` is a replayed window's query of the plan (as Kapacitor writes it)."""
    return q.startswith("SELECT ") and " FROM mail.raw.delivery WHERE time >= " in q


def one_series_per_row(answer: dict[str, Any]) -> dict[str, Any]:
    """InfluxDB's answer to a query, its rows as one series each (tag `row`)."""
    (result,) = answer["results"]
    (series,) = result["series"]
    result["series"] = [
        {"name": series["name"], "tags": {"row": str(i)}, "columns": series["columns"], "values": [row]}
        for i, row in enumerate(series["values"])
    ]  # fmt: skip
    return answer


class SplittingProxy(ThreadingHTTPServer):
    """influxd for kapacitord: forwards every request, but answers the first replayed window's
    query with one series per row, and closes the connection on every later one."""

    def __init__(self, upstream: str) -> None:
        super().__init__(("127.0.0.1", 0), _ProxyHandler)
        self.upstream = httpx.Client(base_url=upstream, timeout=60)
        self.queries: list[str] = []
        self.rows = 0

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}"


class _ProxyHandler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server: SplittingProxy

    def setup(self) -> None:
        super().setup()
        # An answer is two writes (head, body): without this the body waits for the client's
        # delayed ACK of the head, 40 ms an answer.
        self.connection.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

    def log_message(self, format: str, *args: Any) -> None:
        pass

    def do_GET(self) -> None:
        body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
        url = urlsplit(self.path)
        q = " ".join(parse_qs(url.query).get("q", []) + parse_qs(body.decode()).get("q", []))
        split = url.path == "/query" and replay_query(q)
        if split:
            self.server.queries.append(q)
            if len(self.server.queries) > 1:
                self.close_connection = True
                self.connection.shutdown(socket.SHUT_RDWR)
                return
        answer = self.server.upstream.request(
            self.command, self.path, content=body, headers={"Content-Type": self.headers.get("Content-Type", "")}
        )  # fmt: skip
        content = answer.content
        if split and answer.status_code == 200:
            data = one_series_per_row(answer.json())
            self.server.rows = len(data["results"][0]["series"])
            content = json.dumps(data).encode()
        self.send_response(answer.status_code)
        for name in ("Content-Type", "X-Influxdb-Version", "Request-Id"):
            if name in answer.headers:
                self.send_header(name, answer.headers[name])
        self.send_header("Content-Length", str(len(content)))
        self.end_headers()
        self.wfile.write(content)

    do_POST = do_HEAD = do_GET


@contextmanager
def splitting_proxy(upstream: str) -> Iterator[SplittingProxy]:
    proxy = SplittingProxy(upstream)
    thread = threading.Thread(target=proxy.serve_forever, daemon=True)
    thread.start()
    try:
        yield proxy
    finally:
        proxy.shutdown()
        proxy.server_close()
        proxy.upstream.close()
        thread.join(10)


def test_a_replay_whose_second_query_fails_under_a_full_task_kills_kapacitord(
    start_kapacitord: StartKapacitord, dc: InfluxClient, dc_influxd: InfluxServer
) -> None:
    plan = make_plan()
    t0 = recent_minute()
    # The first window: one batch more than the task holds; the second: one event.
    events = [Event(t0 + i * (SECOND // (2 * HELD)), 10.0) for i in range(HELD + 1)]
    write_events(dc, [*events, Event(t0 + SECOND, 20.0)])
    with splitting_proxy(dc_influxd.url) as proxy:
        server = start_kapacitord("dc1", influx_url=proxy.url)
        stall_udf(server)
        assert server.process is not None
        kapacitord = server.process
        with KapacitorClient(server.url, timeout=60) as client:
            mode = new_mode(client, dc="dc1", source=dc)
            windows = windows_between(t0, t0 + 2 * SECOND, SECOND)
            result = mode.run_windows(plan, windows, threading.Event())
            mode.close()
        # (1) The second window's query failed, with the first one's last batch waiting to be
        # sent into the full task: kapacitord is gone, and says why.
        assert len(proxy.queries) == 2 and proxy.rows == HELD + 1
        assert kapacitord.wait(30) != 0
        output = (server.root / "kapacitord.out").read_text()
        assert "panic: send on closed channel" in output
        assert "replayBatchFromChan" in output
    # (2) The mode's error says kapacitord stopped answering while the replay ran, and why.
    assert not result.ok and result.shipped == 0
    assert result.error is not None
    assert result.error.startswith(f"replay of {format_rfc3339(t0)}..")
    assert result.error.endswith(KAPACITORD_GONE), result.error
