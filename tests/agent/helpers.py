"""Transports that forward to a real server while recording or failing requests."""

from __future__ import annotations

import threading
from collections.abc import Callable

import httpx

Hook = Callable[[int, httpx.Request], httpx.Response | None]


class Forwarding(httpx.BaseTransport):
    """Forwards every request to the real server, after recording its body.

    `hook(n, request)` (n = 1 for the first request) may answer instead, or raise a transport
    error, to model a gateway that fails.
    """

    def __init__(self, hook: Hook | None = None) -> None:
        self.inner = httpx.HTTPTransport()
        self.hook = hook
        self.bodies: list[bytes] = []
        self.statuses: list[int] = []
        self._lock = threading.Lock()  # a shipper sends several batches at once

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        with self._lock:
            self.bodies.append(request.read())
            n = len(self.bodies)
        answer = self.hook(n, request) if self.hook else None
        if answer is None:
            answer = self.inner.handle_request(request)
        self.statuses.append(answer.status_code)
        return answer

    def close(self) -> None:
        self.inner.close()
