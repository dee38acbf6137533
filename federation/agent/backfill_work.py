"""The backfill requests leased to one DC's agent, and the results it has not reported yet.

A leased request is never dropped: it stays queued here until it has run, and its result stays
here until the coordinator has taken it. A result the coordinator cannot take now (it is down,
or answers 5xx, 408 or 429) is retried with exponential back-off for as long as the agent runs;
one it refuses for good (another 4xx: the request is gone or not this DC's) has been answered,
and is logged and dropped. While a result waits for the coordinator, no further request is run:
its shipments would go through the same coordinator, and its result would only wait too.

When the agent stops, every request it has not finished is given back as failed, and every
result not sent yet gets one last try, so the coordinator hands the work out again without
waiting for the lease to run out. What cannot be given back is logged by id: the coordinator
requeues it when its lease expires.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Protocol

from federation.agent.coordinator_client import BackfillRequest
from federation.core.retry import RetryPolicy
from federation.errors import CoordinatorError, FederationError

log = logging.getLogger(__name__)

__all__ = ["RESULT_RETRY", "BackfillOutcome", "BackfillWork", "ResultSink"]

RESULT_RETRY = RetryPolicy(initial_s=1.0, multiplier=2.0, max_s=60.0)
"""Back-off between tries of one unsent result; only its delays are used (no last attempt)."""

_RETRIED_STATUSES = frozenset({408, 429})


@dataclass(frozen=True)
class BackfillOutcome:
    """How one request went: `status` "done" or "failed", windows shipped, and why."""

    status: str
    windows: int
    error: str = ""


class ResultSink(Protocol):
    """Where results go: the coordinator's Agent API (`CoordinatorClient`)."""

    def backfill_result(
        self, backfill_id: str, *, status: str, windows: int, error: str = ""
    ) -> None: ...


@dataclass
class _Unsent:
    outcome: BackfillOutcome
    tries: int = 0
    due: float = 0.0


def _retryable(exc: FederationError) -> bool:
    """Whether the coordinator may take the result later: it did not answer, or answered
    with a server error, a timeout or "too many requests"."""
    if not isinstance(exc, CoordinatorError) or exc.status is None:
        return isinstance(exc, CoordinatorError)
    return exc.status >= 500 or exc.status in _RETRIED_STATUSES


class BackfillWork:
    """The leased requests not finished yet (oldest first) and the results not reported yet.

    Not thread-safe: the agent's loop is its only user.
    """

    def __init__(
        self,
        retry: RetryPolicy = RESULT_RETRY,
        *,
        monotonic: Callable[[], float] = time.monotonic,
    ) -> None:
        self.retry = retry
        self._monotonic = monotonic
        self._queued: dict[str, BackfillRequest] = {}
        self._unsent: dict[str, _Unsent] = {}
        self._blocked = False

    @property
    def queued(self) -> list[BackfillRequest]:
        """The leased requests not finished yet, oldest first."""
        return list(self._queued.values())

    @property
    def unsent(self) -> dict[str, BackfillOutcome]:
        """The results the coordinator has not taken yet, by request id."""
        return {key: entry.outcome for key, entry in self._unsent.items()}

    @property
    def blocked(self) -> bool:
        """Whether the last try of a result failed: the coordinator does not take results now."""
        return self._blocked

    def lease(self, requests: Iterable[BackfillRequest]) -> int:
        """Queue newly leased requests; one already queued or with a result waiting (its lease
        ran out and it was leased again) is not queued twice. Returns how many were new."""
        added = 0
        for request in requests:
            if request.id not in self._queued and request.id not in self._unsent:
                self._queued[request.id] = request
                added += 1
        return added

    def next(self) -> BackfillRequest | None:
        """The oldest request to run now, or None (none left, or results wait to be sent)."""
        if self._blocked:
            return None
        return next(iter(self._queued.values()), None)

    def finished(self, request: BackfillRequest, outcome: BackfillOutcome) -> None:
        """Record a request's outcome: it leaves the queue and waits to be reported."""
        self._queued.pop(request.id, None)
        self._unsent[request.id] = _Unsent(outcome)

    def report(self, sink: ResultSink) -> int:
        """Send every result whose back-off has run out; return how many the coordinator took.

        A result the coordinator cannot take now is kept and retried later (see the module
        docstring); this never raises for a failed report."""
        sent = 0
        now = self._monotonic()
        for backfill_id, entry in list(self._unsent.items()):
            if entry.due > now:
                continue
            try:
                self._send(sink, backfill_id, entry.outcome)
            except FederationError as exc:
                if _retryable(exc):
                    entry.due = now + self.retry.delay(entry.tries)
                    entry.tries += 1
                    log.warning(
                        "result of backfill %s not reported (try %d, next in %.1fs): %s",
                        backfill_id,
                        entry.tries,
                        entry.due - now,
                        exc,
                    )
                    continue
                log.warning("result of backfill %s refused, dropped: %s", backfill_id, exc)
            del self._unsent[backfill_id]
            sent += 1
        self._blocked = any(entry.tries and entry.due > now for entry in self._unsent.values())
        return sent

    def give_back(self, sink: ResultSink, reason: str) -> None:
        """On stop: report every unfinished request as failed with `reason`, and try every
        unsent result once more; log the ids of what could not be handed back."""
        for request in self.queued:
            self.finished(request, BackfillOutcome("failed", 0, reason))
        lost = []
        for backfill_id, entry in list(self._unsent.items()):
            try:
                self._send(sink, backfill_id, entry.outcome)
            except FederationError as exc:
                if _retryable(exc):
                    lost.append(backfill_id)
                    continue
            del self._unsent[backfill_id]
        if lost:
            log.warning(
                "stopping with the results of backfill(s) %s unreported: the coordinator "
                "hands them out again when their lease runs out",
                ", ".join(lost),
            )

    @staticmethod
    def _send(sink: ResultSink, backfill_id: str, outcome: BackfillOutcome) -> None:
        sink.backfill_result(
            backfill_id, status=outcome.status, windows=outcome.windows, error=outcome.error
        )
