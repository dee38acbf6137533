"""The seam between the agent and how a DC executes its plans.

An `ExecutionMode` runs plans on their schedule and on demand (catch-up, backfill) and says how
each runs (`PlanHealth`); a mode factory builds one from a `ModeContext`. The embedded executor
(`federation.agent.embedded_mode`) and Kapacitor (`federation.agent.kapacitor_mode`) are the two
modes; the daemon picks one by name and never looks behind the seam.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

from federation.agent.coordinator_client import (
    CoordinatorClient,
)
from federation.agent.executor import (
    DEFAULT_CHUNK_SIZE,
    RangeResult,
    WindowSink,
)
from federation.config import FederationConfig
from federation.core.clock import Clock
from federation.core.detection_plan import TrackedPlan
from federation.core.windows import (
    Window,
)
from federation.influx import InfluxClient


@dataclass(frozen=True)
class PlanHealth:
    """How one plan runs on the DC, as reported to the coordinator."""

    aggregation: str
    version: str
    healthy: bool
    detail: str

    def as_dict(self) -> dict[str, Any]:
        return {
            "aggregation": self.aggregation,
            "version": self.version,
            "healthy": self.healthy,
            "detail": self.detail,
        }


class ExecutionMode(Protocol):
    """How a DC executes its plans: the embedded executor here, Kapacitor tasks elsewhere."""

    @property
    def name(self) -> str:
        """What the report's `mode` says: "embedded" or "kapacitor"."""
        ...

    def apply(self, plans: Sequence[TrackedPlan]) -> None:
        """Run exactly these plans on their schedule from now on (start, replace, remove)."""
        ...

    def run_windows(
        self, plan: TrackedPlan, windows: Sequence[Window], stop: threading.Event
    ) -> RangeResult:
        """Compute and ship these windows now (catch-up, backfill), oldest first."""
        ...

    def health(self) -> list[PlanHealth]:
        """The health of every plan applied."""
        ...

    def close(self) -> None:
        """Stop scheduling; wait for the window in progress to finish or be abandoned."""
        ...


@dataclass(frozen=True)
class AgentSettings:
    """Timing and sizing of one agent; defaults suit hourly windows in production."""

    poll_interval_s: float = 30.0
    reconcile_interval_s: float = 300.0
    max_jitter_s: float = 10.0
    settle_s: float = 2.0
    chunk_size: int = DEFAULT_CHUNK_SIZE
    mode: str = "auto"


@dataclass
class ModeContext:
    """What a mode factory gets to build an `ExecutionMode` for one DC."""

    dc: str
    config: FederationConfig | None
    source: InfluxClient
    sink: WindowSink
    clock: Clock
    stop: threading.Event
    settings: AgentSettings
    coordinator: CoordinatorClient | None = None
    """The coordinator's Agent API (the Kapacitor mode checks what central holds)."""


ModeFactory = Callable[[ModeContext], ExecutionMode]
"""Builds a DC's execution mode."""
