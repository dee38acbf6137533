"""How complete a period is: (verified + empty) (dc, window) pairs over the expected ones.

Read from the coordinator's ledger (reports ask it through `completeness`, never the tables): a tracking row per (dc, aggregation) says that every window
from its `start_ns` on (until its `end_ns`, once the aggregation was removed from the DC) is
expected, and a `windows` row holds the state of each window that has one. An expected window
without a row has not been classified yet (`expected`); a window with a row counts wherever it
lies.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field

from sqlalchemy import case, func, select
from sqlalchemy.engine import Engine
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.orm import Session

from federation.coordinator.ledger import TrackingRow, WindowRow, same_tracking, tracked_window
from federation.coordinator.tracking import DONE_STATES
from federation.errors import FederationError


@dataclass(frozen=True)
class Completeness:
    """Expected and done (dc, window) pairs of one range, with the states of the rest."""

    expected: int
    done: int
    states: dict[str, int] = field(default_factory=dict)
    per_dc: dict[str, tuple[int, int]] = field(default_factory=dict)

    @property
    def ratio(self) -> float | None:
        """done / expected; None when nothing is expected."""
        return self.done / self.expected if self.expected else None

    @property
    def complete(self) -> bool:
        """Every expected window is verified or empty (vacuously true when none is expected)."""
        return self.done >= self.expected

    def describe(self) -> str:
        """`712/720 (missing 6, expected 2)`: done/expected and the other states."""
        others = ", ".join(
            f"{state} {n}" for state, n in sorted(self.states.items()) if state not in DONE_STATES
        )
        return f"{self.done}/{self.expected}" + (f" ({others})" if others else "")


LedgerHandle = Session | Engine
"""What reads the ledger's database: a SQLAlchemy session, or the engine to open one on."""


@contextmanager
def _session(ledger: LedgerHandle) -> Iterator[Session]:
    if isinstance(ledger, Session):
        yield ledger
        return
    with Session(ledger) as session:
        yield session


def _count_windows(start_ns: int, end_ns: int, window_ns: int) -> int:
    first = -(-start_ns // window_ns) * window_ns
    return max(0, -(-(end_ns - first) // window_ns))


def completeness(
    ledger: LedgerHandle,
    aggregation: str,
    dcs: Sequence[str],
    start_ns: int,
    end_ns: int,
) -> Completeness:
    """Completeness of `aggregation` over `dcs` for the windows starting in [start, end).

    Guarantees: `expected` counts every window each DC's tracking row expects in the range
    (from its start, until the aggregation was removed from the DC) and every window that has a
    ledger row anyway (shipped before tracking began, or after it ended), as `federation
    status` counts them; `done` counts those whose ledger state is verified or empty;
    `states` counts every state, `expected` for tracked windows that have no row yet. Raises
    FederationError when the ledger cannot be read.
    """
    states: dict[str, int] = {}
    per_dc: dict[str, tuple[int, int]] = {}
    inside = case((tracked_window(), 1), else_=0)
    try:
        with _session(ledger) as session:
            tracking = {
                row.dc: row
                for row in session.execute(
                    select(TrackingRow).where(
                        TrackingRow.aggregation == aggregation, TrackingRow.dc.in_(list(dcs))
                    )
                ).scalars()
            }
            counted = session.execute(
                select(WindowRow.dc, WindowRow.state, inside, func.count())
                .outerjoin(TrackingRow, same_tracking())
                .where(
                    WindowRow.aggregation == aggregation,
                    WindowRow.dc.in_(list(dcs)),
                    WindowRow.start_ns >= start_ns,
                    WindowRow.start_ns < end_ns,
                )
                .group_by(WindowRow.dc, WindowRow.state, inside)
            ).all()
            rows_inside: dict[str, int] = {}
            done: dict[str, int] = {}
            expected: dict[str, int] = {}
            for dc, state, is_inside, n in counted:
                states[state] = states.get(state, 0) + int(n)
                if state in DONE_STATES:
                    done[dc] = done.get(dc, 0) + int(n)
                if is_inside:
                    rows_inside[dc] = rows_inside.get(dc, 0) + int(n)
                else:
                    expected[dc] = expected.get(dc, 0) + int(n)
            for dc, row in tracking.items():
                lo = max(start_ns, row.start_ns)
                hi = end_ns if row.end_ns is None else min(end_ns, row.end_ns)
                tracked = _count_windows(lo, hi, row.window_ns) if hi > lo else 0
                expected[dc] = expected.get(dc, 0) + max(tracked, rows_inside.get(dc, 0))
                if tracked > rows_inside.get(dc, 0):
                    states["expected"] = (
                        states.get("expected", 0) + tracked - rows_inside.get(dc, 0)
                    )
            per_dc = {dc: (done.get(dc, 0), n) for dc, n in sorted(expected.items())}
    except SQLAlchemyError as exc:
        raise FederationError(
            f"ledger: cannot read the windows of {aggregation}: {exc.__class__.__name__}: {exc}"
        ) from None
    return Completeness(
        expected=sum(e for _, e in per_dc.values()),
        done=sum(d for d, _ in per_dc.values()),
        states=states,
        per_dc=per_dc,
    )
