"""Fail-over between coordinator replicas: which replica a request goes to, and when to wait.

One implementation for every client of the coordinator: the Agent and operator APIs
(`coordinator_http`) and the agent's gateway writes (`federation.agent.shipper`). What counts
as "this replica cannot have handled it, try another" is the caller's to decide; the order
and the waiting are decided here:

- a request goes first to the replica that answered last (`url`);
- each failed try moves on to the next replica, round robin, without waiting;
- after a round over every replica the caller waits the retry policy's next delay
  (`RetryPolicy.delay`: 0.5 s, 1 s, … by default), and after `RetryPolicy.attempts` rounds it
  gives up.

With one URL a round is one try, so this is plain retrying with back-off.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence

from federation.core.retry import RetryPolicy


class Replicas:
    """The URLs of the coordinator's replicas and the one to ask first.

    Shared by the threads of one client: each request goes round the replicas from the one
    that was current when it started, whatever other threads do meanwhile, and a failure moves
    `current` past the replica that failed (never back onto it).
    """

    def __init__(self, urls: str | Sequence[str], retry: RetryPolicy | None = None) -> None:
        listed = [urls] if isinstance(urls, str) else list(urls)
        if not listed:
            raise ValueError("at least one coordinator URL is needed")
        self.urls = tuple(dict.fromkeys(u.rstrip("/") for u in listed))
        self.retry = retry or RetryPolicy()
        self.current = 0

    @property
    def url(self) -> str:
        """The replica the next request goes to first."""
        return self.urls[self.current]

    @property
    def rounds(self) -> int:
        """How many rounds over every replica a request gets."""
        return max(self.retry.attempts, 1)

    def tries(self, wait: Callable[[float], None]) -> Iterator[int]:
        """The index of the replica for each try of one request.

        The caller stops iterating once a try succeeded or failed for good; resuming the
        iteration means the try failed, and moves `current` on. Between rounds `wait` gets the
        retry policy's delay (it may raise to abandon the request).
        """
        count = len(self.urls)
        first = self.current
        for round_ in range(self.rounds):
            if round_:
                wait(self.retry.delay(round_ - 1))
            for step in range(count):
                index = (first + step) % count
                yield index
                if self.current == index:
                    self.current = (index + 1) % count

    def gave_up(self) -> str:
        """What a request that exhausted its tries says about them."""
        if len(self.urls) == 1:
            return f"gave up after {self.rounds} attempts"
        return f"gave up after {self.rounds} rounds over {len(self.urls)} replicas"


__all__ = ["Replicas"]
