"""A TCP proxy on loopback in front of one HTTP server, for the scenarios: it delays requests,
drops a share of them, and tells when a write is in flight through it.

`LossyProxy(upstream_port, latency_s=…, drop_share=…)` listens on a random free port of
127.0.0.1 and forwards bytes both ways, in an asyncio loop of its own thread. It sees HTTP/1.1
only as far as it must: a client chunk that arrives while no request of that connection is
waiting for its answer starts a request (clients here never pipeline). Each request is delayed
by `latency_s` and, with probability `drop_share`, dropped — half of the drops before it
reaches the server (the client's connection is closed unanswered), half after it was sent
(the server did the work; its answer is never relayed and the connection is closed): the two
ways a network loses a request.

When the server refuses a connection (it died, or stopped listening), the proxy stops
listening too, so that clients then find a refused connection, as they would without it,
rather than a connection closed unanswered.
"""

from __future__ import annotations

import asyncio
import random
import threading
import time
from dataclasses import dataclass


@dataclass
class Exchange:
    """One request through the proxy: when it was sent on (monotonic seconds), its method and
    path (`POST /write`), and the status of its answer (None: never answered, or dropped)."""

    sent: float
    request: str
    status: int | None = None
    answered: float | None = None

    @property
    def write(self) -> bool:
        return self.request == "POST /write"

    def in_flight_at(self, t: float) -> bool:
        """Whether the request had been sent on, and not answered, at `t`."""
        return self.sent < t and (self.answered is None or self.answered > t)


@dataclass
class ProxyStats:
    requests: int = 0
    dropped_before: int = 0
    dropped_after: int = 0

    @property
    def dropped(self) -> int:
        return self.dropped_before + self.dropped_after


class LossyProxy:
    """See the module docstring. `start()` returns once it listens; `stop()` closes it."""

    def __init__(
        self,
        upstream_port: int,
        *,
        latency_s: float = 0.0,
        drop_share: float = 0.0,
        seed: int = 7,
    ) -> None:
        self.upstream_port = upstream_port
        self.latency_s = latency_s
        self.drop_share = drop_share
        self.stats = ProxyStats()
        self.port = 0
        self._random = random.Random(seed)
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, name="proxy", daemon=True)
        self._server: asyncio.Server | None = None
        self._writes_in_flight = 0
        self._lock = threading.Lock()
        self._connections: set[asyncio.StreamWriter] = set()
        self.exchanges: list[Exchange] = []
        """Every request sent on, in order."""

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def writes_in_flight(self) -> int:
        """`POST /write` requests sent on and not answered yet."""
        with self._lock:
            return self._writes_in_flight

    def start(self) -> LossyProxy:
        self._thread.start()
        self._server = asyncio.run_coroutine_threadsafe(
            asyncio.start_server(self._serve, "127.0.0.1", 0), self._loop
        ).result(10)
        self.port = self._server.sockets[0].getsockname()[1]
        return self

    def stop(self) -> None:
        async def close() -> None:
            if self._server is not None:
                self._server.close()
            for writer in list(self._connections):
                writer.close()

        if self._thread.is_alive():
            asyncio.run_coroutine_threadsafe(close(), self._loop).result(10)
            self._loop.call_soon_threadsafe(self._loop.stop)
            self._thread.join(10)

    def _in_flight(self, change: int) -> None:
        with self._lock:
            self._writes_in_flight += change

    async def _serve(self, client_r: asyncio.StreamReader, client_w: asyncio.StreamWriter) -> None:
        try:
            server_r, server_w = await asyncio.open_connection("127.0.0.1", self.upstream_port)
        except OSError:
            if self._server is not None:
                self._server.close()
            client_w.close()
            return
        self._connections.update((client_w, server_w))
        waiting = asyncio.Event()  # a request of this connection waits for its answer
        state = {"drop_answer": False, "write": False}
        current: list[Exchange] = []

        def close_both() -> None:
            client_w.close()
            server_w.close()

        async def requests() -> None:
            while chunk := await client_r.read(65536):
                if not waiting.is_set():  # a new request starts
                    self.stats.requests += 1
                    if self.latency_s:
                        await asyncio.sleep(self.latency_s)
                    roll = self._random.random()
                    if roll < self.drop_share / 2:
                        self.stats.dropped_before += 1
                        close_both()
                        return
                    state["drop_answer"] = roll < self.drop_share
                    state["write"] = chunk.startswith(b"POST /write")
                    if state["write"]:
                        self._in_flight(1)
                    method, _, rest = chunk.partition(b"\r\n")[0].decode("latin-1").partition(" ")
                    path = rest.partition(" ")[0].partition("?")[0]
                    current[:] = [Exchange(time.monotonic(), f"{method} {path}")]
                    with self._lock:
                        self.exchanges.append(current[0])
                    waiting.set()
                server_w.write(chunk)
                await server_w.drain()
            server_w.close()

        async def answers() -> None:
            while chunk := await server_r.read(65536):
                if waiting.is_set():  # the first bytes of the answer
                    waiting.clear()
                    if current:
                        current[0].answered = time.monotonic()
                        if not state["drop_answer"] and chunk[9:12].isdigit():
                            current[0].status = int(chunk[9:12])
                    if state["write"]:
                        self._in_flight(-1)
                        state["write"] = False
                    if state["drop_answer"]:
                        self.stats.dropped_after += 1
                        close_both()
                        return
                client_w.write(chunk)
                await client_w.drain()
            client_w.close()

        tasks = [asyncio.create_task(requests()), asyncio.create_task(answers())]
        try:
            await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
            # One side closed (the server died, or the client went away): the other direction
            # gets a moment to relay what it still has.
            await asyncio.wait(tasks, timeout=1.0)
        finally:
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            if state["write"]:
                self._in_flight(-1)
            close_both()
            self._connections.difference_update((client_w, server_w))
