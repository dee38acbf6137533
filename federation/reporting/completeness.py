"""How complete a period is: (verified + empty) (dc, window) pairs over the expected ones.

Read from the coordinator's ledger: a tracking row per (dc, aggregation) says that every window
from its `start_ns` on is expected, and a `windows` row holds the state of each window that has
one. An expected window without a row has not been classified yet (`expected`).
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field

from sqlalchemy import func, select
from sqlalchemy.engine import Engine
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.orm import Session

from federation.coordinator.ledger import TrackingRow, WindowRow
from federation.errors import FederationError

DONE_STATES = ("verified", "empty")
"""States that count as complete."""


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


@contextmanager
def _session(ledger: Session | Engine) -> Iterator[Session]:
    if isinstance(ledger, Session):
        yield ledger
        return
    with Session(ledger) as session:
        yield session


def _count_windows(start_ns: int, end_ns: int, window_ns: int) -> int:
    first = -(-start_ns // window_ns) * window_ns
    return max(0, -(-(end_ns - first) // window_ns))


def completeness(
    ledger: Session | Engine,
    aggregation: str,
    dcs: Sequence[str],
    start_ns: int,
    end_ns: int,
) -> Completeness:
    """Completeness of `aggregation` over `dcs` for the windows starting in [start, end).

    Guarantees: `expected` counts every window each DC's tracking row expects in the range
    (none for a DC without one); `done` counts those whose ledger state is verified or empty;
    `states` counts every state, `expected` for windows that have no row yet. Raises
    FederationError when the ledger cannot be read.
    """
    states: dict[str, int] = {}
    per_dc: dict[str, tuple[int, int]] = {}
    try:
        with _session(ledger) as session:
            tracking = session.execute(
                select(TrackingRow).where(
                    TrackingRow.aggregation == aggregation, TrackingRow.dc.in_(list(dcs))
                )
            ).scalars()
            for row in tracking:
                lo = max(start_ns, row.start_ns)
                expected = _count_windows(lo, end_ns, row.window_ns)
                counted = session.execute(
                    select(WindowRow.state, func.count())
                    .where(
                        WindowRow.dc == row.dc,
                        WindowRow.aggregation == aggregation,
                        WindowRow.start_ns >= lo,
                        WindowRow.start_ns < end_ns,
                    )
                    .group_by(WindowRow.state)
                ).all()
                with_row = 0
                done = 0
                for state, n in counted:
                    states[state] = states.get(state, 0) + int(n)
                    with_row += int(n)
                    if state in DONE_STATES:
                        done += int(n)
                if expected > with_row:
                    states["expected"] = states.get("expected", 0) + expected - with_row
                per_dc[row.dc] = (done, expected)
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
