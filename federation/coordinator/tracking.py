"""Window tracking: states, manifests recorded from the gateway, and verification against central.

A window of one (dc, aggregation) moves through these states:

    expected ──manifest──▶ shipped ──verify──▶ verified | empty | inconsistent
        │                                                        │
        └─deadline passed─▶ missing ──planner──▶ backfilling ◀───┘
                              └─past raw retention─▶ unrecoverable

`expected` is never stored: it is derived from the (dc, aggregation) tracking row. A manifest
always moves a window to `shipped` (also from `backfilling`, `missing` or `verified`), and
`verify_shipped` compares the manifest's event count with what central actually holds.
"""

from __future__ import annotations

import logging
from collections import defaultdict
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from enum import StrEnum
from typing import Any, Protocol

from sqlalchemy import and_, func, or_, select, tuple_, update

from federation.config import FederationConfig
from federation.coordinator.ledger import Ledger, WindowRow, upsert, windows_table
from federation.core.influxql import quote_ident, quote_string
from federation.core.plan import MANIFEST_MEASUREMENT
from federation.core.points import Point
from federation.influx import Series

log = logging.getLogger(__name__)


class WindowState(StrEnum):
    EXPECTED = "expected"
    SHIPPED = "shipped"
    VERIFIED = "verified"
    INCONSISTENT = "inconsistent"
    MISSING = "missing"
    BACKFILLING = "backfilling"
    EMPTY = "empty"
    UNRECOVERABLE = "unrecoverable"


DONE_STATES = frozenset({WindowState.VERIFIED, WindowState.EMPTY})
"""States a window should end in (invariant 2)."""

NEEDS_BACKFILL = (WindowState.MISSING.value, WindowState.INCONSISTENT.value)


@dataclass(frozen=True)
class Manifest:
    """What a `federation_manifest` point says about one window of one DC."""

    dc: str
    aggregation: str
    start_ns: int
    version: str
    run: int
    events: int
    groups: int
    suppressed_events: int
    personal_value_events: int = 0

    @classmethod
    def from_point(cls, point: Point) -> Manifest:
        """Read a manifest point whose types the gateway has already checked."""
        f = point.fields
        return cls(
            dc=point.tags["dc"],
            aggregation=point.tags["aggregation"],
            start_ns=point.time_ns,
            version=str(f["version"]),
            run=int(f["run"]),
            events=int(f["events"]),
            groups=int(f["groups"]),
            suppressed_events=int(f["suppressed_events"]),
            personal_value_events=int(f.get("personal_value_events", 0)),
        )

    @property
    def key(self) -> tuple[str, str, int]:
        return self.dc, self.aggregation, self.start_ns


@dataclass(frozen=True)
class StaleShipment:
    """A manifest that would replace a window's data with less complete data."""

    manifest: Manifest
    held_run: int
    held_events: int

    @property
    def message(self) -> str:
        m = self.manifest
        if m.run < self.held_run:
            return (
                f"window {m.start_ns} of {m.aggregation} already holds run {self.held_run}; "
                f"run {m.run} is older"
            )
        return (
            f"window {m.start_ns} of {m.aggregation} already holds {self.held_events} events; "
            f"a re-shipment with {m.events} would replace it with less"
        )


def _latest_per_window(manifests: Iterable[Manifest]) -> list[Manifest]:
    """One manifest per window: the highest (run, events) in a batch wins."""
    best: dict[tuple[str, str, int], Manifest] = {}
    for m in manifests:
        held = best.get(m.key)
        if held is None or (m.run, m.events) >= (held.run, held.events):
            best[m.key] = m
    return list(best.values())


def find_stale(ledger: Ledger, manifests: Sequence[Manifest]) -> StaleShipment | None:
    """The first manifest with an older run or fewer events than the ledger holds, if any.

    Re-sending the same manifest (same run, same events) is not stale: a sender retrying after
    a lost answer must be accepted again.
    """
    if not manifests:
        return None
    keys = [m.key for m in manifests]
    held: dict[tuple[str, str, int], tuple[int, int]] = {}
    with ledger.session() as session:
        for chunk_start in range(0, len(keys), 500):
            chunk = keys[chunk_start : chunk_start + 500]
            rows = session.execute(
                select(
                    WindowRow.dc,
                    WindowRow.aggregation,
                    WindowRow.start_ns,
                    WindowRow.run,
                    WindowRow.events,
                ).where(
                    tuple_(WindowRow.dc, WindowRow.aggregation, WindowRow.start_ns).in_(chunk),
                    WindowRow.run.is_not(None),
                )
            )
            for dc, aggregation, start_ns, run, events in rows:
                held[(dc, aggregation, start_ns)] = (int(run or 0), int(events or 0))
    for m in manifests:
        if m.key in held:
            held_run, held_events = held[m.key]
            if m.run < held_run or m.events < held_events:
                return StaleShipment(m, held_run, held_events)
    return None


def record_manifests(ledger: Ledger, manifests: Sequence[Manifest], now_ns: int) -> int:
    """Mark each manifest's window `shipped` with its counts; return how many rows changed.

    Called only after central stored the batch; an accepted shipment clears the window's
    recorded refusal (`record_refusal`). The update is monotonic: a row that already
    holds a newer run or more events (another gateway replica won a race) is left alone.
    """
    rows = [
        {
            "dc": m.dc,
            "aggregation": m.aggregation,
            "start_ns": m.start_ns,
            "state": WindowState.SHIPPED.value,
            "version": m.version,
            "run": m.run,
            "events": m.events,
            "groups": m.groups,
            "suppressed_events": m.suppressed_events,
            "personal_value_events": m.personal_value_events,
            "summary_count": None,
            "findings": None,
            "reason": None,
            "shipped_ns": now_ns,
            "verified_ns": None,
            "updated_ns": now_ns,
            "refusal": None,
            "refused_ns": None,
        }
        for m in _latest_per_window(manifests)
    ]
    if not rows:
        return 0
    table = windows_table()

    def newer(stmt: Any) -> Any:
        return or_(
            table.c.run.is_(None),
            and_(stmt.excluded.run >= table.c.run, stmt.excluded.events >= table.c.events),
        )

    with ledger.session(write=True) as session:
        upsert(
            session,
            table,
            rows,
            key=("dc", "aggregation", "start_ns"),
            update=(
                "state",
                "version",
                "run",
                "events",
                "groups",
                "suppressed_events",
                "personal_value_events",
                "summary_count",
                "findings",
                "reason",
                "shipped_ns",
                "verified_ns",
                "updated_ns",
                "refusal",
                "refused_ns",
            ),
            where=newer,
        )
    return len(rows)


MAX_REFUSED_WINDOWS = 100
"""At most this many windows of one refused batch are marked (a batch is a few windows)."""


def record_refusal(
    ledger: Ledger,
    dc: str,
    windows: Iterable[tuple[str, int]],
    message: str,
    now_ns: int,
) -> int:
    """Note the gateway's refusal of a shipment on each already stored (aggregation, start)
    window of `dc`; return how many rows were marked.

    The window keeps its state (a `verified` window still holds its older, complete data), but
    `federation status` and `/metrics` show the refusal until a shipment of the window is
    accepted. Windows without a row are not inserted: they go `missing` at their deadline and
    are backfilled like any other. `message` names the rule and key, never a value.
    """
    keys = sorted(set(windows))[:MAX_REFUSED_WINDOWS]
    if not keys:
        return 0
    with ledger.session(write=True) as session:
        result = session.execute(
            update(WindowRow)
            .where(
                WindowRow.dc == dc,
                tuple_(WindowRow.aggregation, WindowRow.start_ns).in_(keys),
            )
            .values(refusal=message, refused_ns=now_ns, updated_ns=now_ns)
            .execution_options(synchronize_session=False)
        )
    return int(getattr(result, "rowcount", 0) or 0)


class CentralReader(Protocol):
    """What verification needs from central: InfluxQL queries (an `InfluxClient` fits)."""

    def query(self, q: str, *, database: str | None = None, epoch: str = "ns") -> list[Series]:
        """Run InfluxQL; return every series of every statement."""
        ...


@dataclass(frozen=True)
class VerifyResult:
    """What one verification pass decided."""

    verified: int = 0
    empty: int = 0
    inconsistent: int = 0

    @property
    def total(self) -> int:
        return self.verified + self.empty + self.inconsistent


def _central_sums(
    central: CentralReader,
    config: FederationConfig,
    dc: str,
    aggregation: str,
    window_ns: int,
    starts: Sequence[int],
    *,
    detection: bool = False,
) -> dict[int, tuple[int, int | None]]:
    """Σ `count` that central holds for each window start of one (dc, aggregation), and for a
    detection Σ `findings` (None for an aggregation)."""
    database = config.fleet.central.database
    rp = config.policy_for(dc).central.retention_policy
    source = ".".join(quote_ident(p) for p in (database, rp, aggregation))
    sums_of = 'sum("count"), sum("findings")' if detection else 'sum("count")'
    q = (
        f'SELECT {sums_of} FROM {source} WHERE "dc" = {quote_string(dc)} '
        f"AND time >= {min(starts)} AND time <= {max(starts)} "
        f"GROUP BY time({window_ns}ns) fill(none)"
    )
    sums: dict[int, tuple[int, int | None]] = {}
    for series in central.query(q, database=database):
        for time_ns, total, *found in series.values:
            if total is not None:
                sums[int(time_ns)] = (int(total), int(found[0] or 0) if found else None)
    return sums


def _spans(starts: Sequence[int], window_ns: int, max_windows: int = 1_000) -> list[list[int]]:
    """Sorted starts cut into runs spanning at most `max_windows` windows each, so that one
    GROUP BY time query never walks a long stretch of empty buckets."""
    spans: list[list[int]] = []
    for start in sorted(starts):
        if spans and start - spans[-1][0] < max_windows * window_ns:
            spans[-1].append(start)
        else:
            spans.append([start])
    return spans


def verify_shipped(
    ledger: Ledger,
    config: FederationConfig,
    central: CentralReader,
    now_ns: int,
    *,
    settle_ns: int = 0,
    limit: int = 2_000,
) -> VerifyResult:
    """Compare shipped windows' manifests with what central holds; classify each.

    A window shipped at least `settle_ns` ago becomes `verified` when its manifest's events
    equal Σ summary `count` in central plus `suppressed_events`, `empty` when it has no events
    and central holds no summary, and `inconsistent` (with the two figures as the reason)
    otherwise; the planner re-requests inconsistent windows as backfills. A window whose
    manifest changed meanwhile (a newer run arrived) is left for the next pass.
    """
    with ledger.session() as session:
        pending = session.execute(
            select(
                WindowRow.id,
                WindowRow.dc,
                WindowRow.aggregation,
                WindowRow.start_ns,
                WindowRow.run,
                WindowRow.events,
                WindowRow.suppressed_events,
            )
            .where(
                WindowRow.state == WindowState.SHIPPED.value,
                WindowRow.shipped_ns <= now_ns - settle_ns,
            )
            .order_by(WindowRow.dc, WindowRow.aggregation, WindowRow.start_ns)
            .limit(limit)
        ).all()
    groups: dict[tuple[str, str], list[Any]] = defaultdict(list)
    for row in pending:
        groups[(row.dc, row.aggregation)].append(row)
    decisions: list[dict[str, Any]] = []
    for (dc, aggregation), rows in groups.items():
        # A detection's count point carries the window's events as `count`, as a summary does.
        detection = aggregation in config.detections
        spec = config.detections[aggregation] if detection else config.aggregations.get(aggregation)
        if spec is None or dc not in config.fleet.dcs:
            continue
        sums: dict[int, tuple[int, int | None]] = {}
        for chunk in _spans([r.start_ns for r in rows], spec.window):
            sums.update(
                _central_sums(central, config, dc, aggregation, spec.window, chunk,
                              detection=detection)
            )  # fmt: skip
        for r in rows:
            stored, findings = sums.get(r.start_ns, (0, 0 if detection else None))
            events = int(r.events or 0)
            suppressed = int(r.suppressed_events or 0)
            if events == stored + suppressed:
                state = WindowState.EMPTY if events == 0 else WindowState.VERIFIED
                reason = None
            else:
                state = WindowState.INCONSISTENT
                reason = (
                    f"manifest (run {r.run}) says {events} events; central holds "
                    f"{stored} in summaries + {suppressed} suppressed"
                )
            decisions.append(
                {"id": r.id, "run": r.run, "state": state, "count": stored, "reason": reason,
                 "findings": findings}
            )  # fmt: skip
    counts: dict[WindowState, int] = defaultdict(int)
    if decisions:
        with ledger.session(write=True) as session:
            for d in decisions:
                result = session.execute(
                    update(WindowRow)
                    .where(
                        WindowRow.id == d["id"],
                        WindowRow.state == WindowState.SHIPPED.value,
                        WindowRow.run == d["run"],
                    )
                    .values(
                        state=d["state"].value,
                        summary_count=d["count"],
                        findings=d["findings"],
                        reason=d["reason"],
                        verified_ns=now_ns,
                        updated_ns=now_ns,
                    )
                    .execution_options(synchronize_session=False)
                )
                if getattr(result, "rowcount", 0):
                    counts[d["state"]] += 1
    outcome = VerifyResult(
        verified=counts[WindowState.VERIFIED],
        empty=counts[WindowState.EMPTY],
        inconsistent=counts[WindowState.INCONSISTENT],
    )
    if outcome.inconsistent:
        log.warning("verification found %d inconsistent windows", outcome.inconsistent)
    return outcome


def dc_windows(
    ledger: Ledger, dc: str, aggregation: str | None, since_ns: int | None, limit: int = 10_000
) -> dict[str, Any]:
    """What the ledger holds for one DC (for an agent catching up after downtime).

    `{"windows": [{"aggregation", "start_ns", "state", "run", "events"}], "latest_shipped_ns"}`,
    oldest first, at most `limit` windows; `latest_shipped_ns` is the newest window start with a
    manifest (None when there is none).
    """
    conditions = [WindowRow.dc == dc]
    if aggregation:
        conditions.append(WindowRow.aggregation == aggregation)
    with ledger.session() as session:
        query = select(
            WindowRow.aggregation,
            WindowRow.start_ns,
            WindowRow.state,
            WindowRow.run,
            WindowRow.events,
        ).where(*conditions)
        if since_ns is not None:
            query = query.where(WindowRow.start_ns >= since_ns)
        rows = session.execute(
            query.order_by(WindowRow.start_ns, WindowRow.aggregation).limit(limit)
        ).all()
        latest = session.execute(
            select(WindowRow.start_ns)
            .where(*conditions, WindowRow.run.is_not(None))
            .order_by(WindowRow.start_ns.desc())
            .limit(1)
        ).scalar()
    return {
        "windows": [
            {
                "aggregation": r.aggregation,
                "start_ns": r.start_ns,
                "state": r.state,
                "run": r.run,
                "events": r.events,
            }
            for r in rows
        ],
        "latest_shipped_ns": latest,
    }


def window_state_counts(ledger: Ledger) -> Mapping[str, int]:
    """How many stored windows are in each state (the `expected` ones are not stored)."""
    with ledger.session() as session:
        rows = session.execute(
            select(WindowRow.state, func.count()).group_by(WindowRow.state)
        ).all()
    counts = {state.value: 0 for state in WindowState if state is not WindowState.EXPECTED}
    counts.update({state: int(n) for state, n in rows})
    return counts


__all__ = [
    "DONE_STATES",
    "MANIFEST_MEASUREMENT",
    "CentralReader",
    "Manifest",
    "StaleShipment",
    "VerifyResult",
    "WindowState",
    "dc_windows",
    "find_stale",
    "record_manifests",
    "record_refusal",
    "verify_shipped",
    "window_state_counts",
]
