"""Kapacitor's own error text for a task, from its log stream.

Kapacitor 1.5.7 keeps a failed batch query out of the task: the task stays `executing` with an
empty `error`, and only the query node's `errors` counter grows (`batch.go` `doQuery` logs
"error executing query" and waits for the next tick; `/kapacitor/v1/debug/vars` holds the same
counters, no text). The text is only in kapacitord's log, which can be followed over HTTP:
`GET /kapacitor/v1preview/logs?lvl=error+` with `Accept: application/json` streams every error
line from the moment the request is made, one JSON object a line, tagged with `task` and `node`
(`services/diagnostic/api.go`), e.g.

    {"ts":"…","lvl":"error","msg":"error executing query","service":"kapacitor",
     "task_master":"main","task":"fed-…","node":"influxdb_out3","err":"retention policy not found: raw"}

(the `node` tag Kapacitor 1.5.7 puts on a query error is not the query node's: it named the
branch's last node, while the query node's `errors` counter grew). `ErrorLog` follows that stream in
a thread and keeps the last error of each task. Kapacitor keeps no history: errors logged while
no one follows the stream are not seen, and the stream is opened again when it breaks. (kapacitord sends the response's headers only with
the first line it logs.)

The follower mostly waits in a blocking read for a line (or for those headers) that may not come
for hours, and closing the HTTP client does not wake it: `close` shuts the connection's socket
down, which ends that read at once, so an agent stops without waiting for Kapacitor to log.
"""

from __future__ import annotations

import contextlib
import json
import logging
import socket
import threading
from dataclasses import dataclass
from typing import Any

import httpx

__all__ = ["LOGS_PATH", "ErrorLog", "LoggedError"]

log = logging.getLogger(__name__)

LOGS_PATH = "/kapacitor/v1preview/logs"


@dataclass(frozen=True)
class LoggedError:
    """The last error Kapacitor logged for one task."""

    task: str
    node: str
    text: str
    """`msg: err` as Kapacitor wrote them (e.g. `error executing query: retention policy …`)."""
    at: str
    """Kapacitor's timestamp of the line (RFC 3339)."""

    @classmethod
    def from_line(cls, line: str) -> LoggedError | None:
        """The error of one JSON log line, or None for a line that is not a task's error."""
        try:
            entry = json.loads(line)
        except ValueError:
            return None
        if not isinstance(entry, dict) or not isinstance(entry.get("task"), str):
            return None
        message = str(entry.get("msg", ""))
        if entry.get("err"):
            message = f"{message}: {entry['err']}"
        return cls(entry["task"], str(entry.get("node", "")), message, str(entry.get("ts", "")))


class ErrorLog:
    """Follows one Kapacitor's error log in a daemon thread; `last(task)` is the newest error."""

    def __init__(
        self,
        base_url: str,
        *,
        auth: httpx.Auth | tuple[str, str] | None = None,
        reconnect_s: float = 2.0,
        transport: httpx.BaseTransport | None = None,
    ) -> None:
        self.url = base_url.rstrip("/") + LOGS_PATH
        self.reconnect_s = reconnect_s
        self._http = httpx.Client(
            auth=auth, transport=transport, timeout=httpx.Timeout(10.0, read=None)
        )
        self._errors: dict[str, LoggedError] = {}
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._socket: socket.socket | None = None
        """The socket of the stream's connection, for `close` to shut down."""

    def start(self) -> ErrorLog:
        self._thread = threading.Thread(target=self._follow, name="kapacitor-error-log", daemon=True)  # fmt: skip
        self._thread.start()
        return self

    def last(self, task_id: str) -> LoggedError | None:
        with self._lock:
            return self._errors.get(task_id)

    def _follow(self) -> None:
        while not self._stop.is_set():
            try:
                with self._http.stream(
                    "GET",
                    self.url,
                    params={"lvl": "error+"},
                    headers={"Accept": "application/json"},
                    extensions={"trace": self._trace},
                ) as response:
                    if response.status_code != 200:
                        raise httpx.HTTPStatusError(
                            f"HTTP {response.status_code}", request=response.request, response=response
                        )  # fmt: skip
                    for line in response.iter_lines():
                        error = LoggedError.from_line(line)
                        if error is not None:
                            with self._lock:
                                self._errors[error.task] = error
            except Exception as exc:  # the thread must outlive a broken stream (and `close`)
                if self._stop.is_set():
                    return
                log.debug("Kapacitor error log %s: %s; following it again", self.url, exc)
            self._stop.wait(self.reconnect_s)

    def _trace(self, event: str, info: dict[str, Any]) -> None:
        """httpx's trace hook: keeps the socket of each connection the stream opens (and shuts
        it down at once when `close` came first)."""
        if event != "connection.connect_tcp.complete" or info.get("return_value") is None:
            return
        sock = info["return_value"].get_extra_info("socket")
        with self._lock:
            self._socket = sock
        if self._stop.is_set():
            _shut_down(sock)

    def close(self) -> None:
        """Stop following: the open stream ends at once, and the thread with it."""
        self._stop.set()
        with self._lock:
            sock = self._socket
        if sock is not None:
            _shut_down(sock)
        self._http.close()
        if self._thread is not None:
            self._thread.join(5)


def _shut_down(sock: socket.socket) -> None:
    """End both directions of `sock`: a read blocked on it in another thread returns."""
    with contextlib.suppress(OSError):
        sock.shutdown(socket.SHUT_RDWR)
