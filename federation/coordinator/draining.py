"""A replica that is asked to stop (SIGTERM) drains: it finishes the requests it has and
answers every new one 503, which coordinator clients take as "try another replica"
(`federation.clients.failover`).

`draining_server` marks the coordinator as draining at once (the heartbeat then says
`draining`, and `RefuseWhileDraining` answers every request that starts from then on 503), and
hands the signal to uvicorn only `drain_grace_s` later: for that long the replica still
listens and refuses, so a load balancer's health check and every client, on a new connection or
one kept alive, hear "not handled, ask another" instead of finding a closed port or a closed
connection. uvicorn then stops listening, waits for the requests in flight and shuts down. Once
drained, uvicorn would raise the signal again with its default action, killing the process
before the coordinator's own clean-up (its jobs, its heartbeat row) runs; a drained replica's
server returns instead. A second signal during the grace stops at once.
"""

from __future__ import annotations

import contextlib
import signal
import threading
from collections.abc import Iterator
from types import FrameType
from typing import Any

from starlette.responses import JSONResponse
from starlette.types import ASGIApp, Receive, Scope, Send

from federation.coordinator.service import Coordinator

DRAINING_MESSAGE = "this coordinator replica is draining (stopping); ask another replica"


class RefuseWhileDraining:
    """ASGI middleware: 503 with `Retry-After` for every HTTP request started while draining."""

    def __init__(self, app: ASGIApp, coordinator: Coordinator) -> None:
        self.app = app
        self.coordinator = coordinator

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and self.coordinator.draining:
            response = JSONResponse(
                {"error": DRAINING_MESSAGE},
                status_code=503,
                headers={"Retry-After": "1", "Connection": "close"},
            )
            await response(scope, receive, send)
            return
        await self.app(scope, receive, send)


def draining_server(app: Any, coordinator: Coordinator, *, host: str, port: int) -> Any:
    """A uvicorn server for `app` that marks `coordinator` as draining when asked to stop, and
    stops `coordinator.settings.drain_grace_s` later.

    uvicorn is imported here: the coordinator's app is also built where nothing is served."""
    import uvicorn
    from uvicorn.server import HANDLED_SIGNALS

    grace_s = coordinator.settings.drain_grace_s

    class DrainingServer(uvicorn.Server):
        def handle_exit(self, sig: int, frame: FrameType | None) -> None:
            if coordinator.draining or grace_s <= 0:
                coordinator.draining = True
                super().handle_exit(sig, frame)
                return
            coordinator.draining = True
            later = threading.Timer(grace_s, super().handle_exit, (sig, frame))
            later.daemon = True
            later.start()

        @contextlib.contextmanager
        def capture_signals(self) -> Iterator[None]:
            if threading.current_thread() is not threading.main_thread():
                yield
                return
            previous = {sig: signal.signal(sig, self.handle_exit) for sig in HANDLED_SIGNALS}
            try:
                yield
            finally:
                for sig, handler in previous.items():
                    signal.signal(sig, handler)

    config = uvicorn.Config(app, host=host, port=port, log_level="warning", access_log=False)
    return DrainingServer(config)


def serve(app: Any, coordinator: Coordinator, *, host: str, port: int) -> None:
    """Serve `app` until SIGINT/SIGTERM, draining as above."""
    draining_server(app, coordinator, host=host, port=port).run()


__all__ = ["DRAINING_MESSAGE", "RefuseWhileDraining", "draining_server", "serve"]
