"""Serve an ASGI app (the coordinator) with uvicorn in a background thread on loopback.

The demo and the scenario tests run a whole federation in one process; taking the gateway down
and bringing it back on the same port is how they inject a coordinator outage.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from typing import Any

import uvicorn

from federation.errors import FederationError


class ThreadedServer:
    """One ASGI app served by uvicorn on `host:port` in a daemon thread; restartable."""

    def __init__(self, app_factory: Callable[[], Any], port: int, host: str = "127.0.0.1") -> None:
        self.app_factory = app_factory
        self.host = host
        self.port = port
        self._server: uvicorn.Server | None = None
        self._thread: threading.Thread | None = None

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    @property
    def running(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    def start(self, timeout: float = 15.0) -> None:
        """Start serving and wait until the socket accepts connections."""
        if self.running:
            return
        config = uvicorn.Config(
            self.app_factory(), host=self.host, port=self.port, log_level="error", access_log=False
        )
        server = uvicorn.Server(config)
        thread = threading.Thread(target=server.run, name=f"asgi-{self.port}", daemon=True)
        thread.start()
        deadline = time.monotonic() + timeout
        while not server.started:
            if not thread.is_alive() or time.monotonic() > deadline:
                server.should_exit = True
                raise FederationError(f"server on {self.url} did not start within {timeout}s")
            time.sleep(0.02)
        self._server, self._thread = server, thread

    def stop(self, timeout: float = 15.0) -> None:
        """Stop serving (connections are refused afterwards); wait for the thread to end."""
        server, thread = self._server, self._thread
        self._server = self._thread = None
        if server is None or thread is None:
            return
        server.should_exit = True
        thread.join(timeout)

    def __enter__(self) -> ThreadedServer:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()
