"""The invariants every scenario ends with, checked the same way each time.

`check_invariants` over a range of windows `[since, until)`:

1. every (dc, aggregation, window) has a ledger row that is `verified` or `empty`, except
   windows the scenario expects to lose, which are `unrecoverable`; and `federation status`
   (the real CLI) lists exactly those lost windows as problems, with a reason;
2. central holds exactly what a from-scratch recomputation gives: the raw values are read
   straight from each DC's influxd and put through `window_points`; summary points (tags and
   every field, the sketch string included) must be equal, and the manifests too except `run`;
3. no personal-data key or value anywhere in the central database (`scan_central` with every
   personal value the traffic held);
4. the ledger is consistent: one row per (dc, aggregation, start); no window claimed by a
   backfill that is no longer open, and no two open requests that are the same; no window
   was recorded shipped before it ended (by the coordinator's clock); verified rows add up
   (events = Σ count + suppressed), empty rows hold no event, and every row with a run
   matches the manifest central holds (and no manifest where the ledger has none).
"""

from __future__ import annotations

import json
from collections import Counter, defaultdict
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from sqlalchemy import func, select

from federation.config import FederationConfig
from federation.config.resolve import resolve_all, resolve_plan
from federation.coordinator.ledger import BackfillRow, WindowRow
from federation.coordinator.planner import FAILED, QUEUED, RUNNING
from federation.core.aggregate import window_points
from federation.core.clock import format_rfc3339
from federation.core.influxql import quote_ident, quote_string
from federation.core.plan import MANIFEST_MEASUREMENT, AggregationPlan
from federation.core.points import Point
from federation.devstack.pii_scan import scan_central
from federation.influx import InfluxClient

from .harness import (
    DCS,
    DONE,
    LOST,
    Key,
    ScenarioFederation,
    expected_keys,
    ledger_states,
    may_be_lost,
    personal_keys,
)


@dataclass
class Outcome:
    """What the checks covered: the figures `docs/scenarios.md` reports."""

    windows_checked: int = 0
    windows_lost: int = 0
    states: Counter[str] = field(default_factory=Counter)
    events: int = 0
    summaries: int = 0


def check_invariants(
    fed: ScenarioFederation,
    since_ns: int,
    until_ns: int,
    *,
    lost: Mapping[str, tuple[int, int]] | None = None,
    status_via: str = "ledger",
    earlier: Sequence[FederationConfig] = (),
) -> Outcome:
    """Check every invariant over `[since, until)` (see the module docstring); AssertionError
    naming the first broken one. `lost` maps a DC to the range in which its windows may end
    `unrecoverable`. Windows the ledger holds at a version of one of the `earlier` configs (a
    rollout changed it since) are recomputed with that version's plan."""
    outcome = Outcome()
    states = _check_states(fed, since_ns, until_ns, lost, outcome)
    _check_status_cli(fed, since_ns, until_ns, states, status_via)
    _check_recomputation(fed, since_ns, until_ns, states, outcome, earlier)
    _check_no_personal_data(fed)
    _check_ledger(fed)
    return outcome


def _check_states(
    fed: ScenarioFederation,
    since_ns: int,
    until_ns: int,
    lost: Mapping[str, tuple[int, int]] | None,
    outcome: Outcome,
) -> dict[Key, str]:
    states = ledger_states(fed, since_ns, until_ns)
    wrong = []
    for key in expected_keys(fed, since_ns, until_ns):
        state = states.get(key, "expected (no row)")
        outcome.windows_checked += 1
        outcome.states[state] += 1
        if state == LOST and may_be_lost(key, lost):
            outcome.windows_lost += 1
        elif state not in DONE:
            wrong.append(f"{key[0]}/{key[1]} {format_rfc3339(key[2])}: {state}")
    assert not wrong, f"{len(wrong)} window(s) not verified or empty: {wrong[:10]}"
    return states


def _check_status_cli(
    fed: ScenarioFederation, since_ns: int, until_ns: int, states: Mapping[Key, str], via: str
) -> None:
    """`federation status` shows the range as the ledger holds it, lost windows with a reason."""
    result = fed.cli(
        "status", "--format", "json", "--since", format_rfc3339(since_ns), "--via", via
    )
    report = json.loads(result.stdout)
    listed: dict[Key, dict[str, Any]] = {}
    for aggregation in report["aggregations"]:
        for dc in aggregation["dcs"]:
            for problem in dc["problems"]:
                if since_ns <= problem["start_ns"] < until_ns:
                    key = (dc["dc"], aggregation["aggregation"], problem["start_ns"])
                    listed[key] = problem
            for start, cell in zip(aggregation["starts"], dc["cells"], strict=True):
                key = (dc["dc"], aggregation["aggregation"], start)
                if since_ns <= start < until_ns:
                    assert cell == states[key], f"status shows {key} as {cell}, not {states[key]}"
    lost = {key for key, state in states.items() if state == LOST}
    assert set(listed) == lost, (
        f"status lists {sorted(set(listed) - lost)[:5]} as problems and misses "
        f"{sorted(lost - set(listed))[:5]}"
    )
    for key, problem in listed.items():
        assert problem["state"] == LOST and "retention" in problem["reason"], (key, problem)


def raw_windows(
    client: InfluxClient, plan: AggregationPlan, since_ns: int, until_ns: int
) -> dict[int, tuple[list[float], list[list[str | None]]]]:
    """The raw values and dimension columns of each window, read straight from the DC."""
    columns = [quote_ident(plan.value_field), *(f"{quote_ident(d)}::tag" for d in plan.dimensions)]
    source = ".".join(quote_ident(p) for p in (plan.database, plan.retention_policy, plan.measurement))  # fmt: skip
    q = f"SELECT {', '.join(columns)} FROM {source} WHERE time >= {since_ns} AND time < {until_ns}"
    windows: dict[int, tuple[list[float], list[list[str | None]]]] = {}
    for series in client.iter_series(q, database=plan.database):
        at = {name: i for i, name in enumerate(series.columns)}
        for row in series.values:
            value = row[at[plan.value_field]]
            if value is None:
                continue
            start = row[0] - row[0] % plan.window_ns
            values, dims = windows.setdefault(start, ([], [[] for _ in plan.dimensions]))
            values.append(float(value))
            for d, name in enumerate(plan.dimensions):
                dims[d].append(row[at[name]] if name in at else None)
    return windows


def _central_points(
    fed: ScenarioFederation, measurement: str, dc: str, since_ns: int, until_ns: int
) -> dict[tuple[int, tuple[tuple[str, str], ...]], dict[str, Any]]:
    """Central's points of `measurement` for `dc` in the range, by (time, sorted tags)."""
    database = fed.config.fleet.central.database
    rp = fed.config.policy_for(dc).central.retention_policy
    source = ".".join(quote_ident(p) for p in (database, rp, measurement))
    q = (
        f'SELECT * FROM {source} WHERE "dc" = {quote_string(dc)} '
        f"AND time >= {since_ns} AND time < {until_ns} GROUP BY *"
    )
    points: dict[tuple[int, tuple[tuple[str, str], ...]], dict[str, Any]] = {}
    for series in fed.central.query(q, database=database):
        tags = tuple(sorted((k, v) for k, v in series.tags.items() if v != ""))
        for row in series.values:
            fields = {
                c: v for c, v in zip(series.columns[1:], row[1:], strict=True) if v is not None
            }
            points[(int(row[0]), tags)] = fields
    return points


def _key_of(point: Point) -> tuple[int, tuple[tuple[str, str], ...]]:
    return point.time_ns, tuple(sorted(point.tags.items()))


def _check_recomputation(
    fed: ScenarioFederation,
    since_ns: int,
    until_ns: int,
    states: Mapping[Key, str],
    outcome: Outcome,
    earlier: Sequence[FederationConfig],
) -> None:
    assert fed.ledger is not None
    with fed.ledger.session() as session:
        rows = session.execute(
            select(WindowRow.dc, WindowRow.aggregation, WindowRow.start_ns, WindowRow.run,
                   WindowRow.version)
        ).all()  # fmt: skip
    ledger_runs = {(dc, agg, start): run for dc, agg, start, run, _ in rows}
    versions = {(dc, agg, start): version for dc, agg, start, _, version in rows}
    for dc in DCS:
        manifests = _central_points(fed, MANIFEST_MEASUREMENT, dc, since_ns, until_ns)
        with fed.influx(dc) as raw:
            for plan in resolve_all(fed.config, dc):
                plans = {plan.version: plan}
                for config in earlier:
                    old = resolve_plan(config, plan.aggregation, dc)
                    plans.setdefault(old.version, old)
                windows = raw_windows(raw, plan, since_ns, until_ns)
                central = _central_points(fed, plan.aggregation, dc, since_ns, until_ns)
                expected: dict[tuple[int, tuple[tuple[str, str], ...]], dict[str, Any]] = {}
                for start in range(since_ns, until_ns, plan.window_ns):
                    key = (dc, plan.aggregation, start)
                    manifest_key = (start, (("aggregation", plan.aggregation), ("dc", dc)))
                    held = manifests.get(manifest_key)
                    if states[key] == LOST:
                        assert held is None, f"{key} is unrecoverable but central holds a manifest"
                        central = {k: v for k, v in central.items() if k[0] != start}
                        continue
                    values, dims = windows.get(start, ([], [[] for _ in plan.dimensions]))
                    at = plans.get(versions.get(key) or plan.version, plan)
                    points = window_points(at, start, np.array(values, dtype=np.float64), dims, run=0)  # fmt: skip
                    for point in points[:-1]:
                        expected[_key_of(point)] = dict(point.fields)
                    want = dict(points[-1].fields)
                    assert held is not None, f"{key}: central holds no manifest"
                    assert held.pop("run") == ledger_runs[key], f"{key}: central's run is not the ledger's"  # fmt: skip
                    want.pop("run")
                    assert held == want, f"{key}: manifest {held} != recomputed {want}"
                    outcome.events += int(want["events"])
                missing = sorted(set(expected) - set(central))[:3]
                extra = sorted(set(central) - set(expected))[:3]
                assert not missing and not extra, (
                    f"{dc}/{plan.aggregation}: central lacks {missing}, holds extra {extra}"
                )
                for key_, fields in expected.items():
                    assert central[key_] == fields, (
                        f"{dc}/{plan.aggregation} {key_}: central {central[key_]} != "
                        f"recomputed {fields}"
                    )
                outcome.summaries += len(expected)


def _check_no_personal_data(fed: ScenarioFederation) -> None:
    personal = fed.personal()
    assert personal, "the traffic holds personal values"
    scan = scan_central(
        fed.central,
        fed.config.fleet.central.database,
        personal_keys=personal_keys(fed.config),
        personal_values=personal,
    )
    assert scan.clean, scan.findings[:10]
    assert scan.values_checked > 0 and scan.measurements >= 3, scan


def _check_ledger(fed: ScenarioFederation) -> None:
    assert fed.ledger is not None
    open_states = (QUEUED, RUNNING)
    with fed.ledger.session() as session:
        duplicates = session.execute(
            select(WindowRow.dc, WindowRow.aggregation, WindowRow.start_ns, func.count())
            .group_by(WindowRow.dc, WindowRow.aggregation, WindowRow.start_ns)
            .having(func.count() > 1)
        ).all()
        assert not duplicates, f"duplicate window rows: {duplicates[:5]}"
        backfills = {b.id: b for b in session.scalars(select(BackfillRow))}
        open_requests: Counter[tuple[str, str, int, int]] = Counter(
            (b.dc, b.aggregation, b.start_ns, b.end_ns)
            for b in backfills.values()
            if b.state in open_states or (b.state == FAILED and b.next_attempt_ns is not None)
        )
        twice = [request for request, n in open_requests.items() if n > 1]
        assert not twice, f"the same backfill is open twice: {twice[:5]}"
        rows = session.scalars(select(WindowRow)).all()
        claims: dict[int, list[int]] = defaultdict(list)
        for row in rows:
            if row.state == "backfilling":
                request = backfills.get(row.backfill_id or -1)
                assert request is not None and request.dc == row.dc, row.id
                assert request.start_ns <= row.start_ns < request.end_ns, (
                    f"window {row.start_ns} is claimed by backfill #{request.id}, which does not "
                    "cover it"
                )
                assert request.state in open_states or request.state == FAILED, (
                    f"window {row.start_ns} is claimed by finished backfill #{request.id}"
                )
                claims[request.id].append(row.start_ns)
            if row.state == "verified":
                assert row.events == (row.summary_count or 0) + (row.suppressed_events or 0), row.id
            if row.state == "empty":
                assert row.events == 0 and not row.summary_count, row.id
            if row.shipped_ns is not None:
                end = row.start_ns + fed.config.aggregations[row.aggregation].window
                assert row.shipped_ns >= end, (
                    f"{row.dc}/{row.aggregation} {format_rfc3339(row.start_ns)} was recorded "
                    "shipped before the window ended"
                )
            if row.state in ("missing", LOST):
                assert row.run is None, f"{row.dc}/{row.aggregation} {row.start_ns}: {row.state} with a run"  # fmt: skip
    by_dc_manifests: dict[tuple[str, str, int], int] = {}
    for dc in DCS:
        for (time_ns, tags), fields in _central_points(fed, MANIFEST_MEASUREMENT, dc, 0, 2**62).items():  # fmt: skip
            by_dc_manifests[(dc, dict(tags)["aggregation"], time_ns)] = int(fields["run"])
    ledger_runs = {(r.dc, r.aggregation, r.start_ns): r.run for r in rows if r.run is not None}
    assert set(by_dc_manifests) == set(ledger_runs), (
        f"manifests without a ledger run: {sorted(set(by_dc_manifests) - set(ledger_runs))[:3]}; "
        f"ledger runs without a manifest: {sorted(set(ledger_runs) - set(by_dc_manifests))[:3]}"
    )
    differing = [k for k, run in ledger_runs.items() if by_dc_manifests[k] != run]
    assert not differing, f"ledger and central disagree on the run of {differing[:5]}"
