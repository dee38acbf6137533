"""One replica's gateway counters: batches by outcome, refusals by rule, points stored, and
how long each write request took. `/metrics` (`federation.coordinator.metrics`) reads them."""

from __future__ import annotations

import bisect
import threading
from collections import Counter

DURATION_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)
"""Upper bounds (seconds) of the gateway's request-duration histogram; +Inf is added."""


class GatewayMetrics:
    """One replica's gateway counters (thread-safe): batches by outcome, refusals by rule,
    points stored, and how long each write request took."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.refusals: Counter[str] = Counter()
        self.batches: Counter[str] = Counter()
        self.points = 0
        self._buckets = [0] * (len(DURATION_BUCKETS) + 1)
        self._duration_sum = 0.0

    def refused(self, rule: str) -> None:
        with self._lock:
            self.refusals[rule] += 1
            self.batches["refused"] += 1

    def outcome(self, outcome: str, points: int = 0) -> None:
        with self._lock:
            self.batches[outcome] += 1
            self.points += points

    def observe_request(self, seconds: float) -> None:
        """Count one write request that took `seconds`, whatever its answer."""
        with self._lock:
            self._buckets[bisect.bisect_left(DURATION_BUCKETS, seconds)] += 1
            self._duration_sum += seconds

    def snapshot(self) -> tuple[dict[str, int], dict[str, int], int]:
        with self._lock:
            return dict(self.refusals), dict(self.batches), self.points

    def durations(self) -> tuple[list[tuple[str, float]], float]:
        """Cumulative (upper bound, count) pairs ending with +Inf, and the sum of seconds."""
        with self._lock:
            counts, total = list(self._buckets), self._duration_sum
        cumulative: list[tuple[str, float]] = []
        running = 0
        for bound, n in zip([*map(str, DURATION_BUCKETS), "+Inf"], counts, strict=True):
            running += n
            cumulative.append((bound, float(running)))
        return cumulative, total
