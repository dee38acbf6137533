"""Overlapping the stages of a window: one stage produces in a worker thread while the next
consumes.

Reading a window waits on the local InfluxDB, shipping it waits on the gateway; the executor's
own work (turning chunks into columns, serializing points) fits in those waits. `read_ahead`
runs a producer (the InfluxDB chunk stream, the serialized batches of a window) in a worker
thread a bounded number of items ahead of its consumer, so memory stays bounded by `depth`
items and the order of items, and of errors, is the producer's.
"""

from __future__ import annotations

import queue
import threading
from collections.abc import Generator, Iterable
from typing import Final, TypeVar

__all__ = ["read_ahead"]

T = TypeVar("T")

_POLL_S: Final = 0.1
"""How often a worker blocked on a full queue checks whether its consumer is gone."""


class _End:
    """The producer finished: every item was handed over."""


_END: Final = _End()


def read_ahead(
    items: Iterable[T], depth: int = 2, *, name: str = "read-ahead"
) -> Generator[T, None, None]:
    """Yield `items` in order while a worker thread produces at most `depth` of them ahead.

    Guarantees: the items and their order are exactly the producer's; an exception the
    producer raises is raised here, after the items produced before it; when the consumer
    stops early (closes this generator, or raises while handling an item), the worker stops
    producing after its current item and the producer is closed before this generator
    returns, so a producer holding a connection releases it.
    """
    if depth < 1:
        raise ValueError("depth must be >= 1")
    handoff: queue.Queue[tuple[T] | _End | BaseException] = queue.Queue(maxsize=depth)
    gone = threading.Event()

    def put(entry: tuple[T] | _End | BaseException) -> bool:
        while not gone.is_set():
            try:
                handoff.put(entry, timeout=_POLL_S)
                return True
            except queue.Full:
                continue
        return False

    def produce() -> None:
        iterator = iter(items)
        try:
            for item in iterator:
                if not put((item,)):
                    return
            put(_END)
        except BaseException as exc:  # handed to the consumer, raised there
            put(exc)
        finally:
            close = getattr(iterator, "close", None)
            if close is not None:
                close()

    worker = threading.Thread(target=produce, name=name, daemon=True)
    worker.start()
    try:
        while True:
            entry = handoff.get()
            if isinstance(entry, tuple):
                yield entry[0]
            elif isinstance(entry, _End):
                return
            else:
                raise entry
    finally:
        gone.set()
        worker.join()
