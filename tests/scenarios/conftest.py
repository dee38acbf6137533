"""Fixtures of the scenario tests: a federation per scenario, and the run's figures.

Every scenario records what its checks covered (`record`); at the end of the session the
figures of the scenarios that ran go to pytest's cache, `.pytest_cache/v/federation/scenarios`
(JSON), which `docs/scenarios.md` quotes.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Generator, Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from .checks import Outcome
from .harness import ScenarioFederation

CACHE_KEY = "federation/scenarios"
_results: dict[str, dict[str, Any]] = {}


@pytest.fixture
def federation(tmp_path: Path) -> Iterator[ScenarioFederation]:
    """A scenario federation under the test's temporary directory (not started yet)."""
    fed = ScenarioFederation(tmp_path)
    try:
        yield fed
    finally:
        fed.close()


@pytest.fixture
def record(request: pytest.FixtureRequest) -> Callable[[Outcome], None]:
    """Record the outcome of a scenario's checks for the run's figures."""
    started = time.monotonic()

    def save(outcome: Outcome) -> None:
        _results[request.node.nodeid] = {
            "windows_checked": outcome.windows_checked,
            "windows_lost": outcome.windows_lost,
            "events": outcome.events,
            "summaries": outcome.summaries,
            "states": dict(outcome.states),
            "seconds": round(time.monotonic() - started, 1),
        }

    return save


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(
    item: pytest.Item, call: pytest.CallInfo[None]
) -> Generator[None, Any, None]:
    report = (yield).get_result()
    if report.when == "call" and "record" in getattr(item, "fixturenames", ()):
        entry = _results.setdefault(item.nodeid, {})
        entry["passed"] = report.passed
        entry["duration_s"] = round(report.duration, 1)


def pytest_sessionfinish(session: pytest.Session) -> None:
    cache = getattr(session.config, "cache", None)  # None with -p no:cacheprovider
    if not _results or cache is None:
        return
    entries = dict(sorted(_results.items()))
    cache.set(
        CACHE_KEY,
        {
            "finished": datetime.now(UTC).isoformat(timespec="seconds"),
            "scenarios": entries,
            "passed": sum(1 for e in entries.values() if e.get("passed")),
            "ran": len(entries),
            "windows_checked": sum(e.get("windows_checked", 0) for e in entries.values()),
            "windows_lost": sum(e.get("windows_lost", 0) for e in entries.values()),
        },
    )
