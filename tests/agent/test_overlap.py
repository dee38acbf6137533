"""read_ahead: the producer's items, order and errors, a bounded distance ahead, and an early
stop that closes the producer."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator

import pytest

from federation.agent.overlap import read_ahead


def test_items_and_order_are_the_producers() -> None:
    assert list(read_ahead(iter(range(1000)), 3)) == list(range(1000))
    assert list(read_ahead([], 1)) == []


def test_an_error_arrives_after_the_items_before_it() -> None:
    def producer() -> Iterator[int]:
        yield 1
        yield 2
        raise ValueError("third chunk is broken")

    seen: list[int] = []
    with pytest.raises(ValueError, match="third chunk"):
        for item in read_ahead(producer(), 2):
            seen.append(item)
    assert seen == [1, 2]


def test_the_producer_runs_at_most_depth_ahead_and_is_closed_on_an_early_stop() -> None:
    produced: list[int] = []
    closed = threading.Event()

    def producer() -> Iterator[int]:
        try:
            for i in range(100):
                produced.append(i)
                yield i
        finally:
            closed.set()

    items = read_ahead(producer(), 2)
    assert next(items) == 0
    time.sleep(0.5)  # give the worker time to run ahead as far as it may
    # Item 0 handed over, two queued, one more produced and waiting for room.
    assert len(produced) <= 4
    items.close()
    assert closed.is_set()
    assert len(produced) <= 4


def test_a_consumer_error_stops_the_worker() -> None:
    closed = threading.Event()

    def producer() -> Iterator[int]:
        try:
            yield from range(10**9)
        finally:
            closed.set()

    with pytest.raises(RuntimeError):
        for item in read_ahead(producer(), 2):
            if item == 5:
                raise RuntimeError("consumer failed")
    assert closed.is_set()
    assert not [t for t in threading.enumerate() if t.name == "read-ahead"]
