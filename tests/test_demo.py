"""A smaller `federation demo` end to end: the outcome a newcomer is promised."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pytest

from federation.coordinator.status import StatusReport
from federation.demo import DemoOptions, run_demo

REPO = Path(__file__).resolve().parent.parent


class RecordingView:
    def __init__(self) -> None:
        self.steps: list[str] = []
        self.notes: list[str] = []
        self.grids: list[tuple[str, StatusReport]] = []
        self.tables: dict[str, list[dict[str, Any]]] = {}

    def step(self, message: str) -> None:
        self.steps.append(message)

    def note(self, message: str) -> None:
        self.notes.append(message)

    def status(self, title: str, report: StatusReport) -> None:
        self.grids.append((title, report))

    def table(self, title: str, columns: Sequence[str], rows: Sequence[dict[str, Any]]) -> None:
        self.tables[title] = list(rows)


@pytest.mark.slow
def test_small_demo_ends_verified_clean_and_without_personal_data() -> None:
    view = RecordingView()
    options = DemoOptions(dcs=2, hours=6, events_per_hour=1500, outage_s=1.0, config_source=REPO)
    outcome, fed = run_demo(options, view)
    windows_expected = 6 * 2 * 2  # hours x aggregations x DCs
    assert outcome.all_done, outcome.windows
    assert sum(outcome.windows.values()) == windows_expected
    assert outcome.audit is not None and outcome.audit.ok, outcome.audit.violations
    assert outcome.scan is not None and outcome.scan.clean, outcome.scan.findings
    assert outcome.scan.values_checked > 0 and outcome.scan.measurements >= 3
    # The outage left windows to backfill: the grid taken during it shows them open.
    during = dict(view.grids)["windows during the outage"]
    open_states = {
        state
        for agg in during.aggregations
        for dc in agg.dcs
        for state, n in dc.counts.items()
        if n and state not in ("verified", "empty")
    }
    assert open_states & {"missing", "backfilling", "expected"}
    assert outcome.late_events > 0
    daily = next(rows for title, rows in view.tables.items() if title.startswith("daily latency"))
    assert {row["dc"] for row in daily} == {"dub1", "lon1"}
    assert sum(int(row["events"]) for row in daily) > 0
    assert not fed.root.exists(), "the demo removes its temporary directory"
