"""The status report: a DC × window grid per aggregation, counts per state, and reasons; and
the DCs whose raw retention drifted from the config (a refused shrink) or failed to apply.

Windows without a ledger row are derived from the tracking rows: `expected` until their
deadline, `missing` after it (until a planner pass stores them), and only inside the range a
tracking row expects (from its start, until the aggregation was removed from the DC). A window
with a row is drawn and counted wherever it lies, as completeness counts it in reports. The
report is plain data with `to_dict`/`from_dict`, so the CLI renders the same thing read from
the ledger or the API.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

from sqlalchemy import case, func, or_, select
from sqlalchemy.orm import Session

from federation.config import FederationConfig
from federation.coordinator.backfills import RunningBackfill, running_backfills
from federation.coordinator.clocks import MAX_CLOCK_SKEW_NS, ClockSkew, clock_skews
from federation.coordinator.convergence import reported_retention
from federation.coordinator.ledger import (
    BackfillRow,
    DcRow,
    DeploymentRow,
    Ledger,
    TrackingRow,
    WindowRow,
    same_tracking,
    tracked_window,
)
from federation.coordinator.planner import DONE, FAILED
from federation.coordinator.replicas import ReplicaStatus, replica_statuses
from federation.coordinator.retired import with_retired
from federation.coordinator.tracking import DONE_STATES, WindowState
from federation.core.clock import format_rfc3339
from federation.core.windows import align
from federation.errors import InvalidInput

DEFAULT_WINDOWS = 24
MAX_GRID_WINDOWS = 168
MAX_PROBLEMS = 200
NOT_TRACKED = "-"


@dataclass
class Problem:
    """A window that is not (yet) verified or empty, and why; or, as a notice, a window whose
    data at central is not the whole story, or a backfill given up on."""

    start_ns: int
    state: str
    reason: str


@dataclass
class DcStatus:
    dc: str
    cells: list[str]
    """The state of each grid column ('-' where the DC was not tracked yet)."""
    counts: dict[str, int]
    """Windows per state over the whole requested range."""
    problems: list[Problem] = field(default_factory=list)
    more_problems: int = 0
    notices: list[Problem] = field(default_factory=list)
    """Windows of any state with events withheld for a personal-looking dimension value or a
    refused shipment, and backfills given up on (state `backfill-failed`), newest first."""
    findings: int | None = None
    """A detection's findings over the range's verified windows (central's counts; the
    findings themselves stay in the DC); None for an aggregation."""


@dataclass
class AggregationStatus:
    aggregation: str
    window_ns: int
    since_ns: int
    starts: list[int]
    """Grid columns: the newest complete windows of the range (at most MAX_GRID_WINDOWS)."""
    dcs: list[DcStatus]
    kind: str = "aggregation"
    """`aggregation`, or `detection`: its windows ship counts of local findings."""


@dataclass
class RetentionStatus:
    """A DC whose raw retention is not what the config declares, as its agent reported."""

    dc: str
    state: str
    """`drift` (a shrink refused: the DC keeps a longer retention) or `failed`."""
    detail: str


@dataclass
class UnhealthyPlan:
    """An aggregation whose DC's agent reports it unhealthy, with the agent's own words."""

    dc: str
    aggregation: str
    detail: str


@dataclass
class StatusReport:
    now_ns: int
    aggregations: list[AggregationStatus]
    backfills: list[RunningBackfill] = field(default_factory=list)
    """Requests leased to agents without a result yet; lease age = now - leased_ns."""
    clocks: list[ClockSkew] = field(default_factory=list)
    """Each DC agent's clock against the coordinator's, from its last report."""
    retention: list[RetentionStatus] = field(default_factory=list)
    replicas: list[ReplicaStatus] = field(default_factory=list)
    """Every coordinator replica's last heartbeat: the config generation it runs."""
    generation: int | None = None
    """The newest config generation in the ledger."""
    unhealthy: list[UnhealthyPlan] = field(default_factory=list)
    """What each DC's agent last reported wrong with the plans it runs (a task stopped, a
    stalled or failed UDF, failed queries or writes)."""

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON-able data (the body of `GET /api/v1/status`)."""
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> StatusReport:
        """The report `to_dict` produced; InvalidInput if the data is not one."""
        try:
            return cls(
                now_ns=int(data["now_ns"]),
                aggregations=[
                    AggregationStatus(
                        aggregation=a["aggregation"],
                        window_ns=int(a["window_ns"]),
                        since_ns=int(a["since_ns"]),
                        starts=[int(s) for s in a["starts"]],
                        dcs=[
                            DcStatus(
                                dc=d["dc"],
                                cells=list(d["cells"]),
                                counts={k: int(v) for k, v in d["counts"].items()},
                                problems=[Problem(**p) for p in d["problems"]],
                                more_problems=int(d["more_problems"]),
                                notices=[Problem(**p) for p in d.get("notices", [])],
                                findings=d.get("findings"),
                            )
                            for d in a["dcs"]
                        ],
                        kind=a.get("kind", "aggregation"),
                    )
                    for a in data["aggregations"]
                ],
                backfills=[RunningBackfill(**b) for b in data.get("backfills", [])],
                clocks=[ClockSkew(**c) for c in data.get("clocks", [])],
                retention=[RetentionStatus(**r) for r in data.get("retention", [])],
                replicas=[ReplicaStatus(**r) for r in data.get("replicas", [])],
                generation=data.get("generation"),
                unhealthy=[UnhealthyPlan(**u) for u in data.get("unhealthy", [])],
            )
        except (KeyError, TypeError, ValueError) as exc:
            raise InvalidInput(f"malformed status report: {exc!r}") from None

    @property
    def totals(self) -> dict[str, int]:
        """Windows per state over every aggregation and DC."""
        total: dict[str, int] = defaultdict(int)
        for a in self.aggregations:
            for d in a.dcs:
                for state, n in d.counts.items():
                    total[state] += n
        return dict(total)


_DERIVED_MISSING = "nothing shipped by the deadline (not yet classified by the planner)"
"""The reason of an overdue window the planner has not stored yet."""

STATE_MEANINGS: dict[str, str] = {
    WindowState.EXPECTED.value: "not due yet: its deadline has not passed",
    WindowState.SHIPPED.value: "manifest received; waiting for its summary points to be counted",
    WindowState.BACKFILLING.value: "a backfill of it is queued or running at the DC's agent",
    WindowState.MISSING.value: "nothing shipped by the deadline",
    WindowState.INCONSISTENT.value: "manifest events differ from the summary counts",
    WindowState.UNRECOVERABLE.value: "its raw data is past the DC's retention",
}
"""What a window's state means, said where the ledger stored no reason of its own."""


def state_reason(state: str, reason: str | None) -> str:
    """The ledger's reason for a window, or what its state means when it stored none."""
    return reason or STATE_MEANINGS.get(state, "")


def status_report(
    ledger: Ledger,
    config: FederationConfig,
    now_ns: int,
    *,
    aggregation: str | None = None,
    since_ns: int | None = None,
    dc: str | None = None,
    max_skew_ns: int = MAX_CLOCK_SKEW_NS,
) -> StatusReport:
    """The status of every (or one) aggregation's windows that ended in `[since, now)`, the
    backfills leased to agents without a result yet, and each agent's clock skew (`large`
    beyond `max_skew_ns`).

    Aggregations removed from the config are included while the ledger knows them, and every
    detection (`kind` detection, with each DC's findings over the range) after them.
    Default range: the last 24 windows of each aggregation. Counts cover the whole range; the
    grid shows its newest windows (at most 168); problems list every window of the range that
    is not verified or empty, newest first (at most 200 per DC, the rest counted).
    """
    # An aggregation removed from the config keeps its history: the ledger describes it.
    config = with_retired(config, ledger)
    declared = [*sorted(config.aggregations), *sorted(config.detections)]
    if aggregation is not None and aggregation not in declared:
        raise InvalidInput(f"unknown aggregation or detection {aggregation!r}")
    if dc is not None and dc not in config.fleet.dcs:
        known = ", ".join(sorted(config.fleet.dcs))
        raise InvalidInput(f"--dc: unknown DC {dc!r} (known: {known})")
    names = [aggregation] if aggregation else declared
    dcs = [dc] if dc else sorted(config.fleet.dcs)
    with ledger.session() as session:
        tracking = {
            (t.dc, t.aggregation): (t.start_ns, t.end_ns)
            for t in session.scalars(select(TrackingRow)).all()
        }
        reports = [
            _aggregation_status(session, config, name, dcs, tracking, now_ns, since_ns)
            for name in names
        ]
        running = [b for b in running_backfills(session, dc) if b.aggregation in names]
        skews = clock_skews(session, max_skew_ns, dc)
        retention = retention_problems(session, config, dcs)
        replicas, generation = replica_statuses(session)
        unhealthy = unhealthy_plans(session, dcs, names)
    return StatusReport(now_ns=now_ns, aggregations=reports, backfills=running, clocks=skews,
                        retention=retention, replicas=replicas,
                        generation=generation, unhealthy=unhealthy)  # fmt: skip


def unhealthy_plans(
    session: Session, dcs: Sequence[str], aggregations: Sequence[str]
) -> list[UnhealthyPlan]:
    """The (dc, aggregation) pairs whose agent last reported the plan unhealthy."""
    rows = session.scalars(
        select(DeploymentRow)
        .where(DeploymentRow.healthy.is_(False))
        .where(DeploymentRow.dc.in_(dcs), DeploymentRow.aggregation.in_(aggregations))
        .order_by(DeploymentRow.dc, DeploymentRow.aggregation)
    )
    return [UnhealthyPlan(r.dc, r.aggregation, r.detail or "unhealthy") for r in rows]


def retention_problems(
    session: Session, config: FederationConfig, dcs: Sequence[str] | None = None
) -> list[RetentionStatus]:
    """The DCs (of `dcs`, default all) whose agent reports retention drift or a failure."""
    names = sorted(config.fleet.dcs) if dcs is None else list(dcs)
    rows = {r.name: r for r in session.scalars(select(DcRow).where(DcRow.name.in_(names)))}
    found = []
    for dc in names:
        state, detail = reported_retention(rows.get(dc), config, dc)
        if state in ("drift", "failed"):
            found.append(RetentionStatus(dc, state, detail))
    return found


def _aggregation_status(
    session: Any,
    config: FederationConfig,
    name: str,
    dcs: list[str],
    tracking: dict[tuple[str, str], tuple[int, int | None]],
    now_ns: int,
    since_ns: int | None,
) -> AggregationStatus:
    detection = name in config.detections
    spec = config.detections[name] if detection else config.aggregations[name]
    w = spec.window
    end = align(now_ns, w)  # windows ending at or before now are complete
    since = end - DEFAULT_WINDOWS * w if since_ns is None else align(since_ns, w)
    since = min(since, end)
    deadline_limit = now_ns - spec.lookback - spec.grace_ns
    deadline_limit -= deadline_limit % w
    grid_from = max(since, end - MAX_GRID_WINDOWS * w)
    starts = list(range(grid_from, end, w))

    overdue = case((WindowRow.start_ns < deadline_limit, 1), else_=0)
    inside = case((tracked_window(), 1), else_=0)
    counted = session.execute(
        select(WindowRow.dc, WindowRow.state, overdue, inside, func.count())
        .outerjoin(TrackingRow, same_tracking())
        .where(
            WindowRow.aggregation == name,
            WindowRow.start_ns >= since,
            WindowRow.start_ns < end,
        )
        .group_by(WindowRow.dc, WindowRow.state, overdue, inside)
    ).all()
    stored: dict[str, dict[str, int]] = defaultdict(lambda: defaultdict(int))
    # Of the rows inside the tracked range: those overdue and those not (the derived windows
    # are the tracked ones without a row).
    stored_overdue: dict[str, int] = defaultdict(int)
    stored_due: dict[str, int] = defaultdict(int)
    for dc_name, state, is_overdue, is_inside, n in counted:
        stored[dc_name][state] += int(n)
        if not is_inside:
            continue
        if is_overdue:
            stored_overdue[dc_name] += int(n)
        else:
            stored_due[dc_name] += int(n)

    rows = session.execute(
        select(WindowRow.dc, WindowRow.start_ns, WindowRow.state, WindowRow.reason)
        .where(
            WindowRow.aggregation == name,
            WindowRow.start_ns >= since,
            WindowRow.start_ns < end,
            WindowRow.state.not_in([s.value for s in DONE_STATES]),
        )
        .order_by(WindowRow.start_ns.desc())
        .limit(MAX_PROBLEMS * max(len(dcs), 1) * 2)
    ).all()
    problem_rows: dict[str, list[Problem]] = defaultdict(list)
    for dc_name, start, state, reason in rows:
        problem_rows[dc_name].append(Problem(start, state, state_reason(state, reason)))
    grid_rows = session.execute(
        select(WindowRow.dc, WindowRow.start_ns, WindowRow.state).where(
            WindowRow.aggregation == name,
            WindowRow.start_ns >= grid_from,
            WindowRow.start_ns < end,
        )
    ).all()
    cells_by_dc: dict[str, dict[int, str]] = defaultdict(dict)
    for dc_name, start, state in grid_rows:
        cells_by_dc[dc_name][start] = state

    notices = _notices(session, name, since, end)
    findings: dict[str, int] = {}
    if detection:
        summed = session.execute(
            select(WindowRow.dc, func.sum(WindowRow.findings))
            .where(WindowRow.aggregation == name, WindowRow.start_ns >= since,
                   WindowRow.start_ns < end)
            .group_by(WindowRow.dc)
        ).all()  # fmt: skip
        findings = {dc_name: int(n or 0) for dc_name, n in summed}
    result = []
    for dc_name in dcs:
        found = tracking.get((dc_name, name))
        known = cells_by_dc.get(dc_name, {})
        if found is None:
            cells = [known.get(s, NOT_TRACKED) for s in starts]
            counts = dict(stored.get(dc_name, {}))
            result.append(
                DcStatus(
                    dc_name,
                    cells,
                    counts,
                    problem_rows.get(dc_name, []),
                    notices=notices[dc_name],
                    findings=findings.get(dc_name, 0) if detection else None,
                )
            )
            continue
        tracked_from, tracked_end = found
        until = end if tracked_end is None else max(min(end, tracked_end), since)
        lo = min(max(since, tracked_from), until)
        n_total = max(0, (until - lo) // w)
        n_overdue = min(max(0, (deadline_limit - lo) // w), n_total)
        counts = dict(stored.get(dc_name, {}))
        derived_missing = max(0, n_overdue - stored_overdue.get(dc_name, 0))
        derived_expected = max(0, n_total - n_overdue - stored_due.get(dc_name, 0))
        if derived_missing:
            counts[WindowState.MISSING.value] = counts.get(WindowState.MISSING.value, 0) + (
                derived_missing
            )
        if derived_expected:
            counts[WindowState.EXPECTED.value] = derived_expected
        cells = []
        derived_problems = []
        for s in starts:
            # A window shipped before tracking began (an agent's look-back reaching back past a
            # fresh coordinator), or after it ended, is drawn and counted alike.
            if s in known:
                cells.append(known[s])
            elif s < tracked_from or s >= until:
                cells.append(NOT_TRACKED)
            else:
                state = (
                    WindowState.MISSING.value if s < deadline_limit else WindowState.EXPECTED.value
                )
                cells.append(state)
                if state == WindowState.MISSING.value:
                    derived_problems.append(Problem(s, state, _DERIVED_MISSING))
        problems = sorted(
            problem_rows.get(dc_name, []) + derived_problems, key=lambda p: -p.start_ns
        )
        open_windows = sum(
            n for st, n in counts.items() if st not in DONE_STATES and st != WindowState.EXPECTED
        )
        result.append(
            DcStatus(
                dc=dc_name,
                cells=cells,
                counts=counts,
                problems=problems[:MAX_PROBLEMS],
                more_problems=max(0, open_windows - min(len(problems), MAX_PROBLEMS)),
                notices=notices[dc_name],
                findings=findings.get(dc_name, 0) if detection else None,
            )
        )
    return AggregationStatus(
        name, w, since, starts, result, "detection" if detection else "aggregation"
    )


def personal_value_notice(events: int) -> str:
    """Why a window's central data lacks `events` events: their group's dimension value
    looked like personal data (the same words in status and the page)."""
    return (
        f"{events} event(s) withheld: a dimension value looked like personal data "
        "(see `federation policy audit` for the raw series)"
    )


@dataclass(frozen=True)
class NoticeCounts:
    """Per (dc, aggregation): windows with a notice, and the start of the newest one."""

    windows: int
    latest_start_ns: int


def notice_counts(ledger: Ledger) -> dict[str, dict[tuple[str, str], NoticeCounts]]:
    """For `/metrics`: per kind (`personal_values`, `refused`), per (dc, aggregation), how many
    stored windows carry that notice and the start of the newest one."""
    kinds = {
        "personal_values": WindowRow.personal_value_events > 0,
        "refused": WindowRow.refusal.is_not(None),
    }
    found: dict[str, dict[tuple[str, str], NoticeCounts]] = {}
    with ledger.session() as session:
        for kind, condition in kinds.items():
            rows = session.execute(
                select(
                    WindowRow.dc,
                    WindowRow.aggregation,
                    func.count(),
                    func.max(WindowRow.start_ns),
                )
                .where(condition)
                .group_by(WindowRow.dc, WindowRow.aggregation)
            ).all()
            found[kind] = {
                (dc, aggregation): NoticeCounts(int(n), int(latest))
                for dc, aggregation, n, latest in rows
            }
    return found


def _notices(session: Any, name: str, since: int, end: int) -> dict[str, list[Problem]]:
    """Per DC, the notices of one aggregation's windows in `[since, end)` (see `DcStatus`)."""
    found: dict[str, list[Problem]] = defaultdict(list)
    rows = session.execute(
        select(
            WindowRow.dc,
            WindowRow.start_ns,
            WindowRow.state,
            WindowRow.personal_value_events,
            WindowRow.refusal,
            WindowRow.refused_ns,
        )
        .where(
            WindowRow.aggregation == name,
            WindowRow.start_ns >= since,
            WindowRow.start_ns < end,
            or_(WindowRow.personal_value_events > 0, WindowRow.refusal.is_not(None)),
        )
        .order_by(WindowRow.start_ns.desc())
        .limit(MAX_PROBLEMS)
    ).all()
    for dc_name, start, state, personal, refusal, refused_ns in rows:
        reasons = []
        if refusal:
            reasons.append(f"{refusal} (at {format_rfc3339(refused_ns or 0)})")
        if personal:
            reasons.append(personal_value_notice(int(personal)))
        found[dc_name].append(Problem(start, state, "; ".join(reasons)))
    backfills = session.execute(
        select(BackfillRow)
        .where(
            BackfillRow.aggregation == name,
            BackfillRow.state.in_([DONE, FAILED]),
            BackfillRow.end_ns > since,
            BackfillRow.start_ns < end,
        )
        .order_by(BackfillRow.id)
    ).scalars()
    done: dict[str, list[BackfillRow]] = defaultdict(list)
    given_up: list[BackfillRow] = []
    for row in backfills:
        if row.state == DONE:
            done[row.dc].append(row)
        elif row.next_attempt_ns is None:
            given_up.append(row)
    for row in given_up:
        # A later request that covered the same range and finished makes the failure history.
        if any(
            d.id > row.id and d.start_ns <= row.start_ns and d.end_ns >= row.end_ns
            for d in done[row.dc]
        ):
            continue
        found[row.dc].append(
            Problem(
                row.start_ns,
                "backfill-failed",
                f"backfill #{row.id} of {format_rfc3339(row.start_ns)} … "
                f"{format_rfc3339(row.end_ns)} given up after {row.attempts} attempt(s): "
                f"{row.error or 'no error reported'}",
            )
        )
    for notes in found.values():
        notes.sort(key=lambda p: -p.start_ns)
    return found


def status_from_api(
    url: str | Sequence[str],
    token: str,
    *,
    aggregation: str | None = None,
    since: str | None = None,
    dc: str | None = None,
    transport: Any = None,
    timeout: float = 30.0,
) -> StatusReport:
    """The status report as a coordinator serves it (`GET /api/v1/status`, reader token),
    failing over between the replicas `url` names.

    Raises CoordinatorError with the URL, status and body when the request fails.
    """
    from federation.clients.coordinator_http import CoordinatorHttp

    params = {k: v for k, v in (("aggregation", aggregation), ("since", since), ("dc", dc)) if v}
    with CoordinatorHttp(url, token, timeout=timeout, transport=transport) as client:
        return StatusReport.from_dict(client._object("GET", "/api/v1/status", params=params))
