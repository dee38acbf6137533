"""The agent's backfill work: nothing leased is dropped, no result is lost while the coordinator
is away."""

from __future__ import annotations

from federation.agent.backfill_work import BackfillOutcome, BackfillWork
from federation.agent.coordinator_client import BackfillRequest
from federation.core.retry import RetryPolicy
from federation.errors import CoordinatorError


class Coordinator:
    """Takes results, or fails like a coordinator that is down (no answer) or answers `status`."""

    def __init__(self) -> None:
        self.down: int | bool | None = False
        self.taken: list[tuple[str, str, int, str]] = []
        self.tries = 0

    def backfill_result(
        self, backfill_id: str, *, status: str, windows: int, error: str = ""
    ) -> None:
        self.tries += 1
        if self.down is not False:
            code = None if self.down is True else self.down
            raise CoordinatorError("http://coordinator", "request failed", code)
        self.taken.append((backfill_id, status, windows, error))


class Clock:
    def __init__(self) -> None:
        self.t = 0.0

    def __call__(self) -> float:
        return self.t


def request(n: int) -> BackfillRequest:
    return BackfillRequest(str(n), "delivery_latency", "v1", n * 10, n * 10 + 10)


def test_an_unsent_result_is_retried_with_backoff_without_time_limit() -> None:
    clock, coordinator = Clock(), Coordinator()
    work = BackfillWork(
        RetryPolicy(attempts=2, initial_s=1, multiplier=2, max_s=8), monotonic=clock
    )
    assert work.lease([request(1), request(2)]) == 2
    first = work.next()
    assert first == request(1)
    work.finished(first, BackfillOutcome("done", 3))
    coordinator.down = True  # the coordinator was SIGKILLed
    assert work.report(coordinator) == 0
    assert work.unsent == {"1": BackfillOutcome("done", 3)}
    # The second leased request is neither run nor dropped while the result waits.
    assert work.blocked and work.next() is None
    assert work.queued == [request(2)]
    # Back-off: 1, 2, 4, 8, 8, … seconds; tries before they are due send nothing; far more
    # tries than the policy's `attempts`, since the agent never gives up on a result.
    for wait in (1, 2, 4, 8, 8, 8):
        clock.t += wait - 0.01
        tries = coordinator.tries
        work.report(coordinator)
        assert coordinator.tries == tries
        clock.t += 0.01
        work.report(coordinator)
        assert coordinator.tries == tries + 1
    coordinator.down = 503
    clock.t += 8
    assert work.report(coordinator) == 0 and work.blocked
    coordinator.down = False
    clock.t += 8
    assert work.report(coordinator) == 1
    assert coordinator.taken == [("1", "done", 3, "")]
    assert not work.blocked and work.next() == request(2)


def test_a_result_refused_for_good_is_dropped_and_released_requests_are_not_run_twice() -> None:
    clock, coordinator = Clock(), Coordinator()
    work = BackfillWork(monotonic=clock)
    work.lease([request(1)])
    work.finished(request(1), BackfillOutcome("failed", 0, "boom"))
    # The lease ran out and the coordinator leased it again: the result waiting is for it.
    assert work.lease([request(1)]) == 0
    coordinator.down = 404
    assert work.report(coordinator) == 1
    assert work.unsent == {} and not work.blocked


def test_stopping_gives_back_what_was_not_finished() -> None:
    coordinator = Coordinator()
    work = BackfillWork(monotonic=Clock())
    work.lease([request(1), request(2)])
    work.finished(request(1), BackfillOutcome("done", 1))
    work.give_back(coordinator, "the agent stopped")
    assert coordinator.taken == [("1", "done", 1, ""), ("2", "failed", 0, "the agent stopped")]
    assert work.queued == [] and work.unsent == {}
