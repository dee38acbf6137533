"""Scenarios 4, 5 and 7: what arrives twice, late, or from a DC whose clock is wrong.

Each starts the scenario federation (dub1 in eu, lon1 in uk, central), feeds it deterministic
traffic, injects its fault, lets the federation recover (scenario 5: with the operator's
`federation backfill`) and checks every invariant (`checks.check_invariants`).
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Sequence

import httpx
import numpy as np
import pytest
from sqlalchemy import select

from federation.config.resolve import resolve_plan
from federation.coordinator.ledger import BackfillRow
from federation.core.aggregate import window_points
from federation.core.clock import SkewedClock, format_rfc3339
from federation.core.lineprotocol import serialize
from federation.core.plan import AggregationPlan
from federation.core.points import Point

from .checks import Outcome, check_invariants, raw_windows
from .harness import (
    DCS,
    MINUTE,
    SECOND,
    LiveRun,
    ScenarioFederation,
    sleep_until,
    token_env,
    wait_for,
    window_row,
)

pytestmark = pytest.mark.slow


def _compute(
    fed: ScenarioFederation, plan: AggregationPlan, start_ns: int, run: int
) -> list[Point]:
    """The window's points from the raw data the DC holds now, as a run numbered `run`."""
    with fed.influx(plan.dc) as raw:
        values, dims = raw_windows(raw, plan, start_ns, start_ns + plan.window_ns).get(
            start_ns, ([], [[] for _ in plan.dimensions])
        )
    return window_points(plan, start_ns, np.array(values, dtype=np.float64), dims, run=run)


def _post(
    fed: ScenarioFederation, plan: AggregationPlan, points: Sequence[Point]
) -> httpx.Response:
    """POST points to the gateway as the plan's DC, as the agent's shipper does."""
    return httpx.post(
        f"http://127.0.0.1:{fed.port}/write",
        params={
            "db": plan.central_database,
            "rp": plan.central_retention_policy,
            "precision": "ns",
        },
        content=serialize(points),
        auth=(plan.dc, os.environ[token_env(plan.dc)]),
        timeout=10,
    )


def _open_backfills(fed: ScenarioFederation, dc: str, start_ns: int) -> list[int]:
    """The ids of open backfill requests of `dc` whose range holds `start_ns`."""
    assert fed.ledger is not None
    with fed.ledger.session() as session:
        return list(
            session.scalars(
                select(BackfillRow.id).where(
                    BackfillRow.dc == dc,
                    BackfillRow.state.in_(("queued", "running")),
                    BackfillRow.start_ns <= start_ns,
                    BackfillRow.end_ns > start_ns,
                )
            )
        )


def test_4_same_shipment_twice_and_out_of_order(
    federation: ScenarioFederation, record: Callable[[Outcome], None]
) -> None:
    run = LiveRun.begin(federation, history_windows=6, hold={"dub1": [-5]})
    for dc in DCS:
        federation.start_agent(dc)
    target = run.began_ns - 5 * federation.window_ns
    plans = [resolve_plan(federation.config, name, "dub1") for name in sorted(federation.config.aggregations)]  # fmt: skip
    # The agents are done with the window: verified, past every look-back, and no backfill
    # that could ship it again is open.
    sleep_until(federation.clock, target + 6 * federation.window_ns)
    wait_for(
        lambda: (
            all(
                (row := window_row(federation, ("dub1", p.aggregation, target))) is not None
                and row.state == "verified"
                for p in plans
            )
            and not _open_backfills(federation, "dub1", target)
        ),
        20,
        "dub1's window to be verified and its backfills done",
    )

    # A computation that started before the late events arrived, and a newer one that saw them.
    older: dict[str, list[Point]] = {}
    for plan in plans:
        held = window_row(federation, ("dub1", plan.aggregation, target))
        assert held is not None and held.run is not None
        older[plan.aggregation] = _compute(federation, plan, target, run=held.run + 1)
    assert federation.traffic["dub1"].write_held(target, target + federation.window_ns) > 0

    for plan in plans:
        stale = older[plan.aggregation]
        newer = _compute(federation, plan, target, run=time.time_ns())
        summaries, manifest = newer[:-1], newer[-1]
        assert len(summaries) >= 2
        assert int(manifest.fields["events"]) > int(stale[-1].fields["events"])
        half = len(summaries) // 2
        batches = [summaries[:half], summaries[half:], [manifest]]
        # Delivered, then delivered again in reverse order (a retry after a lost answer).
        for batch in [*batches, *reversed(batches)]:
            answer = _post(federation, plan, batch)
            assert answer.status_code == 204, answer.text
        # The older run arrives last: refused as a whole, nothing forwarded.
        answer = _post(federation, plan, stale)
        assert answer.status_code == 400, answer.text
        assert answer.json()["rule"] == "stale-reshipment" and answer.json()["key"] == "run"

        row = window_row(federation, ("dub1", plan.aggregation, target))
        assert row is not None and row.run == manifest.fields["run"]
        assert row.events == manifest.fields["events"]
        source = f'"{plan.central_database}"."{plan.central_retention_policy}"."{plan.aggregation}"'
        counted = federation.central.query(
            f'SELECT count("count") AS n, sum("count") AS total FROM {source} '
            f"WHERE \"dc\" = 'dub1' AND time = {target}",
            database=plan.central_database,
        )
        n, total = counted[0].values[0][1:]
        assert n == len(summaries), "one point per group: nothing doubled"
        assert total + manifest.fields["suppressed_events"] == manifest.fields["events"]

    run.finish()
    record(check_invariants(federation, run.start_ns, run.until_ns))


def test_5_late_events_inside_and_beyond_the_lookback(
    federation: ScenarioFederation, record: Callable[[Outcome], None]
) -> None:
    run = LiveRun.begin(federation, hold={"dub1": [2, 4]})
    for dc in DCS:
        federation.start_agent(dc)
    w = federation.window_ns
    inside, beyond = run.began_ns + 2 * w, run.began_ns + 4 * w
    names = sorted(federation.config.aggregations)
    dub1 = federation.traffic["dub1"]

    # Inside the look-back: the events arrive after the window's first shipment, and a later
    # run of the look-back picks them up.
    first: dict[str, int] = {}

    def shipped() -> bool:
        for name in names:
            row = window_row(federation, ("dub1", name, inside))
            if row is None or row.events is None:
                return False
            first[name] = row.events
        return True

    sleep_until(federation.clock, inside + w)
    wait_for(shipped, 5, "the first shipment of the window")
    late_inside = dub1.write_held(inside, inside + w)

    # Beyond the look-back: nothing recomputes the window until an operator asks.
    sleep_until(federation.clock, beyond + w + 5 * SECOND)
    before = {name: window_row(federation, ("dub1", name, beyond)) for name in names}
    assert all(r is not None and r.state == "verified" for r in before.values()), before
    late_beyond = dub1.write_held(beyond, beyond + w)
    time.sleep(1.5)
    for name in names:
        row, was = window_row(federation, ("dub1", name, beyond)), before[name]
        assert row is not None and was is not None and row.events == was.events, "not picked up"
    for name in names:
        result = federation.cli("backfill", "--dc", "dub1", "--aggregation", name,
                                "--from", format_rfc3339(beyond), "--to", format_rfc3339(beyond + w))  # fmt: skip
        assert "queued backfill #" in result.stdout, result.stdout
    wait_for(
        lambda: all(
            (row := window_row(federation, ("dub1", name, beyond))) is not None
            and row.events == (before[name].events or 0) + late_beyond  # type: ignore[union-attr]
            and row.state == "verified"
            for name in names
        ),
        15,
        "the operator's backfill to ship the late events",
    )
    run.finish()

    for name in names:
        row = window_row(federation, ("dub1", name, inside))
        assert row is not None and row.events == first[name] + late_inside, (name, first, row)
    record(check_invariants(federation, run.start_ns, run.until_ns))


def test_7_agent_clocks_skewed(
    federation: ScenarioFederation, record: Callable[[Outcome], None]
) -> None:
    # lon1 runs 5 windows behind: more than look-back and grace, so the coordinator finds its
    # windows missing and asks for them before lon1's clock says they have ended; lon1
    # computes each only once it has (and ships it then), so the run waits that much longer.
    run = LiveRun.begin(federation)
    federation.start_agent("dub1", clock=SkewedClock(federation.clock, 2 * MINUTE))
    federation.start_agent("lon1", clock=SkewedClock(federation.clock, -5 * SECOND))
    run.finish(timeout_s=40)
    record(check_invariants(federation, run.start_ns, run.until_ns))
