"""How long to wait between attempts: one retry policy for every client that retries.

The agent's shipper and its backfill results, and ingest's writes, all back off the same way;
what differs is what they bound: the shipper bounds the tries of one request (`attempts`),
ingest the seconds of failing in a row (`give_up_after_s`).
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass


@dataclass(frozen=True)
class RetryPolicy:
    """Exponential backoff: `initial_s`, times `multiplier` per retry, capped at `max_s`.

    `attempts` bounds the tries of one request (the first one included), for callers that
    count them; `give_up_after_s` (seconds of failing in a row) for callers that count time,
    `None` waiting as long as it takes.
    """

    attempts: int = 6
    initial_s: float = 0.5
    multiplier: float = 2.0
    max_s: float = 30.0
    give_up_after_s: float | None = None

    def delays(self) -> Iterator[float]:
        """The waits before the 2nd, 3rd, … attempt: `attempts - 1` of them."""
        for retry in range(max(self.attempts - 1, 0)):
            yield self.delay(retry)

    def delay(self, retry: int) -> float:
        """The wait before retry number `retry` (0 for the first), whatever `attempts` says:
        for callers that retry for as long as they run."""
        return min(self.initial_s * self.multiplier ** min(retry, 64), self.max_s)
