"""One DC's shipments pass the gateway one at a time: in a replica, and across replicas.

Why: two shipments of the same window (a Kapacitor task's look-back branch and a replay, or an
agent's write and its retry at another replica) that both passed the stale check could
otherwise reach central in one order and the ledger in the other, leaving central with an older
run than the ledger holds. A batch is therefore checked, forwarded and recorded while its DC's
turn is held (`ShippingTurns.hold`):

- in one replica, an `asyncio.Lock` per DC (and event loop) queues its batches;
- over a PostgreSQL ledger, the batch that holds that lock then takes a transaction-level
  advisory lock keyed by the DC, `pg_advisory_xact_lock(NAMESPACE, crc32(dc))`, on a
  connection of a pool of its own, and keeps the transaction open until the batch is recorded.
  Replicas behind a load balancer thereby take one DC's batches one at a time between them.
  The lock goes with the transaction: commit, rollback, or the connection closing when a
  replica dies (PostgreSQL ends the session of a closed connection), so a killed replica never
  leaves a DC locked. A batch that waits longer than `wait_s` is answered 503 (rule
  `ordering`), which its sender takes as "try again, maybe at another replica". The pool is
  separate so that a batch holding its DC's lock always finds a ledger connection for its
  stale check and its record: with one pool, as many DCs shipping at once as it has
  connections would each hold one and wait for another;
- over a SQLite ledger the in-process lock is all there is. SQLite is a file on one host, so
  its replicas are processes of one machine; the process lock does not order batches of one
  DC taken by two such processes at once. Where one DC's writes may reach several replicas,
  the ledger must be PostgreSQL.

Different DCs never wait for each other (two DCs whose crc32 collide do, harmlessly).
"""

from __future__ import annotations

import asyncio
import logging
import weakref
import zlib
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from sqlalchemy import Connection, text
from sqlalchemy.exc import SQLAlchemyError
from starlette.concurrency import run_in_threadpool

from federation.coordinator.gateway.refusal import Refusal
from federation.coordinator.ledger import Ledger, create_ledger_engine

log = logging.getLogger(__name__)

NAMESPACE = 0x66647368
"""The first key of every shipping advisory lock (the bytes of "fdsh"): the second is the DC's.
The migrations' lock is a single-key one, which PostgreSQL keeps apart from two-key locks."""


def dc_lock_key(dc: str) -> int:
    """The second advisory-lock key of `dc`: its crc32 as a signed 32-bit integer."""
    key = zlib.crc32(dc.encode())
    return key - (1 << 32) if key >= 1 << 31 else key


class ShippingTurns:
    """Whose turn it is to ship, per DC (the module's docstring); one per served app."""

    def __init__(self, ledger: Ledger, *, wait_s: float = 30.0) -> None:
        self.wait_s = wait_s
        self._locks: weakref.WeakKeyDictionary[
            asyncio.AbstractEventLoop, dict[str, asyncio.Lock]
        ] = weakref.WeakKeyDictionary()
        # Unbounded overflow: at most one connection per DC shipping at once (the process lock).
        self._engine = (
            create_ledger_engine(ledger.url, pool_size=4, max_overflow=-1)
            if ledger.dialect == "postgresql"
            else None
        )

    @property
    def across_replicas(self) -> bool:
        """Whether turns hold across replicas (a PostgreSQL ledger), not only in this one."""
        return self._engine is not None

    @asynccontextmanager
    async def hold(self, dc: str) -> AsyncIterator[None]:
        """Hold `dc`'s turn for the body; Refusal (503, rule `ordering`) when another replica
        holds it for longer than `wait_s` or the ledger cannot be reached."""
        locks = self._locks.setdefault(asyncio.get_running_loop(), {})
        async with locks.setdefault(dc, asyncio.Lock()):
            if self._engine is None:
                yield
                return
            conn = await run_in_threadpool(self._acquire, dc)
            try:
                yield
            finally:
                await run_in_threadpool(self._release, conn)

    def _acquire(self, dc: str) -> Connection:
        assert self._engine is not None
        try:
            conn = self._engine.connect()
        except SQLAlchemyError as exc:
            log.error("ledger unreachable for the shipping lock: %s", exc.__class__.__name__)
            raise Refusal("ordering", "ledger unavailable; retry later", status=503) from None
        try:
            conn.execute(
                text("SELECT set_config('lock_timeout', :ms, true)"),
                {"ms": f"{max(int(self.wait_s * 1000), 1)}ms"},
            )
            conn.execute(
                text("SELECT pg_advisory_xact_lock(:namespace, :key)"),
                {"namespace": NAMESPACE, "key": dc_lock_key(dc)},
            )
        except SQLAlchemyError as exc:
            conn.close()
            log.warning("no shipping turn for %s: %s", dc, exc.__class__.__name__)
            raise Refusal(
                "ordering",
                f"another coordinator replica has been storing this DC's batch for over "
                f"{self.wait_s:g}s; retry later",
                status=503,
            ) from None
        return conn

    @staticmethod
    def _release(conn: Connection) -> None:
        try:
            conn.rollback()  # ends the transaction, and the lock with it
        except SQLAlchemyError as exc:  # the connection broke: PostgreSQL ended the lock itself
            log.warning("releasing a shipping lock failed: %s", exc.__class__.__name__)
        finally:
            conn.close()

    def close(self) -> None:
        """Release the lock pool's connections."""
        if self._engine is not None:
            self._engine.dispose()


__all__ = ["NAMESPACE", "ShippingTurns", "dc_lock_key"]
