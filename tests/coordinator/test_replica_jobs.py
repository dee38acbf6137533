"""Two coordinator replicas over one ledger take shipments and run their verification and
rollup passes at the same instant: each window is classified once, and the daily rollups
equal what one replica alone writes (a pass is idempotent, so running it twice adds nothing)."""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import TypeVar

from starlette.testclient import TestClient

from federation.config import FederationConfig
from federation.coordinator.api import build_app
from federation.coordinator.app import RollupJob
from federation.coordinator.ledger import Ledger
from federation.coordinator.service import Coordinator, CoordinatorSettings, Tokens
from federation.coordinator.tracking import VerifyResult, verify_shipped
from federation.core.calendar import period_of
from federation.core.clock import FakeClock
from federation.influx import InfluxClient, rows

from .helpers import HOUR, READER, body, plan_of, token, window_batch
from .test_tracking import AGG, DC, ship, states

T = TypeVar("T")


def _at_once(*calls: Callable[[], T]) -> list[T]:
    """Run the calls in threads released together; their results in order."""
    barrier = threading.Barrier(len(calls))
    results: list[T | None] = [None] * len(calls)
    errors: list[BaseException] = []

    def run(i: int) -> None:
        barrier.wait()
        try:
            results[i] = calls[i]()
        except BaseException as exc:  # handed to the test below
            errors.append(exc)

    threads = [threading.Thread(target=run, args=(i,)) for i in range(len(calls))]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=120)
    assert not errors, errors
    return [r for r in results if r is not None]


def _daily(influx: InfluxClient, config: FederationConfig, day_start: int) -> list[object]:
    rp = config.policy_for(DC).central.retention_policy
    return sorted(
        (tuple(sorted(r.items())) for r in rows(influx.query(
            f'SELECT * FROM "{rp}"."{AGG}__daily" WHERE time = {day_start}',
            database=config.fleet.central.database,
        ))),
        key=repr,
    )  # fmt: skip


def test_two_replicas_verify_and_roll_up_the_same_windows_at_once(
    config: FederationConfig, ledger: Ledger, influx: InfluxClient, clock: FakeClock,
    hour0: int, coordinator: Coordinator,
) -> None:  # fmt: skip
    tokens = Tokens({dc: token(dc) for dc in config.fleet.dcs}, READER)
    other = Coordinator(config, ledger, tokens, clock=clock,
                        settings=CoordinatorSettings(verify_settle_ns=0), replica="b")  # fmt: skip
    other.sync()
    plan = plan_of(config, DC)
    windows = [hour0 + k * HOUR for k in range(4)]
    clock.set(hour0 + 4 * HOUR)
    with TestClient(build_app(coordinator)) as a, TestClient(build_app(other)) as b:
        for k, start in enumerate(windows):
            ship(a if k % 2 else b, config, body(window_batch(plan, start)))
    clock.set(hour0 + 5 * HOUR)
    now = clock.now_ns()

    results: list[VerifyResult] = _at_once(
        lambda: verify_shipped(ledger, config, influx, now),
        lambda: verify_shipped(ledger, other.config, influx, now),
    )
    assert sum(r.verified for r in results) == len(windows)
    assert sum(r.total for r in results) == len(windows)
    assert set(states(ledger).values()) == {"verified"}

    jobs = [RollupJob(coordinator, influx), RollupJob(other, influx)]
    assert _at_once(*jobs) == [len(windows), len(windows)]
    day = period_of(hour0, "day", "UTC").start_ns
    both = _daily(influx, config, day)
    assert both
    jobs[0].since_ns = 0  # once more, from one replica alone: nothing changes
    jobs[0]()
    assert _daily(influx, config, day) == both
