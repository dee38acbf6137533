"""A replica that is asked to stop (SIGTERM) drains: it finishes the requests it has and
answers every new one 503, which coordinator clients take as "try another replica"
(`federation.clients.coordinator_http`).

uvicorn already stops listening on SIGTERM and waits for the requests in flight; what it does
not do is refuse a request that arrives meanwhile on a connection kept alive. `draining_server`
marks the coordinator as draining before uvicorn's own handling (the heartbeat then says
`draining`), and `RefuseWhileDraining` refuses such requests.
"""

from __future__ import annotations

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
    """A uvicorn server for `app` that marks `coordinator` as draining when asked to stop.

    uvicorn is imported here: the coordinator's app is also built where nothing is served."""
    import uvicorn

    class DrainingServer(uvicorn.Server):
        def handle_exit(self, sig: int, frame: FrameType | None) -> None:
            coordinator.draining = True
            super().handle_exit(sig, frame)

    config = uvicorn.Config(app, host=host, port=port, log_level="warning", access_log=False)
    return DrainingServer(config)


def serve(app: Any, coordinator: Coordinator, *, host: str, port: int) -> None:
    """Serve `app` until SIGINT/SIGTERM, draining as above."""
    draining_server(app, coordinator, host=host, port=port).run()


__all__ = ["DRAINING_MESSAGE", "RefuseWhileDraining", "draining_server", "serve"]
