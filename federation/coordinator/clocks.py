"""How far each DC agent's clock is from the coordinator's, from the agents' own reports.

An agent puts its clock (`clock_ns`) in every report; the coordinator stores the report with
the instant it arrived by its own clock (`last_seen_ns`), so the skew is
`clock_ns - last_seen_ns` (the request's transit makes an agent look a few milliseconds
behind). Neither clock is known to be the right one, so both bound what counts as ended:

- an agent computes only windows that have ended by its own clock (`agent.window_choice`);
- the gateway refuses a window that has not ended by the coordinator's clock, nor by the
  agent's clock as estimated from its last report (coordinator now + skew) plus
  `max_clock_skew_ns`: a coordinator running hours ahead would otherwise take a window still
  running at the DC as whole;
- a skew beyond `max_clock_skew_ns` either way is shown in `federation status` and `/metrics`.
"""

from __future__ import annotations

import threading
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from federation.coordinator.ledger import DcRow, Ledger

__all__ = ["MAX_CLOCK_SKEW_NS", "AgentClocks", "ClockSkew", "clock_skews", "skew_from_report"]

MAX_CLOCK_SKEW_NS = 10 * 10**9
"""The skew between an agent's clock and the coordinator's beyond which it is reported."""


@dataclass(frozen=True)
class ClockSkew:
    """One DC agent's clock against the coordinator's, as of its last report."""

    dc: str
    skew_ns: int
    """Agent clock minus coordinator clock: positive when the agent runs ahead."""
    reported_ns: int
    """When the report arrived, by the coordinator's clock."""
    large: bool
    """Whether |skew| exceeds the tolerance."""


def skew_from_report(report: Mapping[str, Any] | None, received_ns: int | None) -> int | None:
    """The skew a stored report shows, or None when it carries no clock (an older agent)."""
    if report is None or received_ns is None:
        return None
    clock = report.get("clock_ns")
    if not isinstance(clock, int) or isinstance(clock, bool):
        return None
    return clock - received_ns


def clock_skews(
    session: Session, max_skew_ns: int = MAX_CLOCK_SKEW_NS, dc: str | None = None
) -> list[ClockSkew]:
    """Every (or one) DC's clock skew from its agent's last report, by DC name."""
    query = select(DcRow.name, DcRow.last_report, DcRow.last_seen_ns).order_by(DcRow.name)
    if dc is not None:
        query = query.where(DcRow.name == dc)
    skews = []
    for name, report, seen in session.execute(query).all():
        skew = skew_from_report(report, seen)
        if skew is not None:
            skews.append(ClockSkew(name, skew, seen, abs(skew) > max_skew_ns))
    return skews


class AgentClocks:
    """Each DC's last known skew, for the gateway: read from the ledger once per DC, then
    kept current by the reports this replica receives."""

    def __init__(self, ledger: Ledger, max_skew_ns: int = MAX_CLOCK_SKEW_NS) -> None:
        self.ledger = ledger
        self.max_skew_ns = max_skew_ns
        self._skews: dict[str, int | None] = {}
        self._lock = threading.Lock()

    def update(self, dc: str, report: Mapping[str, Any], received_ns: int) -> None:
        """Take the skew of a report just stored."""
        skew = skew_from_report(report, received_ns)
        with self._lock:
            self._skews[dc] = skew

    def skew(self, dc: str) -> int | None:
        """The DC's last known skew (None before its agent reported a clock); reads the
        ledger the first time a DC is asked for."""
        with self._lock:
            if dc in self._skews:
                return self._skews[dc]
        with self.ledger.session() as session:
            found = clock_skews(session, self.max_skew_ns, dc)
        skew = found[0].skew_ns if found else None
        with self._lock:
            self._skews.setdefault(dc, skew)
            return self._skews[dc]

    def ended_by(self, dc: str, now_ns: int) -> int:
        """The instant up to which a window of `dc` may have ended: the coordinator's `now_ns`,
        or earlier when the DC's agent reported a clock behind it by more than the tolerance."""
        skew = self.skew(dc)
        if skew is None:
            return now_ns
        return min(now_ns, now_ns + skew + self.max_skew_ns)
