"""Following Kapacitor's error log (`federation.kapacitor.logs.ErrorLog`): closing it ends the
follower while it waits on a stream that says nothing more, as kapacitord's does between the
lines it logs (and before the first one, when it has not even sent the response's headers)."""

from __future__ import annotations

import contextlib
import socket
import threading
import time
from collections.abc import Iterator

import pytest

from federation.kapacitor.logs import ErrorLog

LINE = (
    b'{"ts":"2026-12-07T14:37:28.002Z","lvl":"error","msg":"error executing query",'
    b'"task":"t1","node":"query1","err":"retention policy not found: raw"}\n'
)
HEADERS_AND_A_LINE = (
    b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nTransfer-Encoding: chunked\r\n\r\n"
    + f"{len(LINE):x}\r\n".encode()
    + LINE
    + b"\r\n"
)


@pytest.fixture
def quiet_kapacitor(request: pytest.FixtureRequest) -> Iterator[tuple[str, threading.Event]]:
    """An HTTP server that reads a request, answers it with `request.param` (the headers and a
    line, or nothing at all) and then says nothing more; and an event set once it answered."""
    listener = socket.create_server(("127.0.0.1", 0))
    answered = threading.Event()
    accepted: list[socket.socket] = []

    def serve() -> None:
        with contextlib.suppress(OSError):  # the listener closed first
            connection, _ = listener.accept()
            accepted.append(connection)
            connection.recv(65536)
            connection.sendall(request.param)
            answered.set()

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{listener.getsockname()[1]}", answered
    finally:
        listener.close()
        for connection in accepted:
            connection.close()
        thread.join(5)


@pytest.mark.parametrize(
    "quiet_kapacitor", [b"", HEADERS_AND_A_LINE], ids=["no-headers", "a-line"], indirect=True
)
def test_close_ends_the_follower_waiting_for_the_stream(
    quiet_kapacitor: tuple[str, threading.Event], request: pytest.FixtureRequest
) -> None:
    url, answered = quiet_kapacitor
    error_log = ErrorLog(url).start()
    assert answered.wait(10), "the error log never asked for the stream"
    if "a-line" in request.node.name:
        deadline = time.monotonic() + 10
        while error_log.last("t1") is None:
            assert time.monotonic() < deadline, "the logged line was never read"
            time.sleep(0.01)
        assert error_log.last("t1").text.endswith("retention policy not found: raw")  # type: ignore[union-attr]
    # Let the follower block in its next read: closing the HTTP client alone does not wake it.
    time.sleep(0.2)
    error_log.close()
    assert error_log._thread is not None and not error_log._thread.is_alive()


def test_close_before_the_stream_is_open_ends_the_follower() -> None:
    listener = socket.create_server(("127.0.0.1", 0))  # connects, and is never accepted
    try:
        error_log = ErrorLog(f"http://127.0.0.1:{listener.getsockname()[1]}").start()
        error_log.close()
        assert error_log._thread is not None and not error_log._thread.is_alive()
    finally:
        listener.close()
