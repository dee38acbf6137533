"""The per-DC agent: the embedded executor, the gateway shipper, the Agent API client, the daemon.

- `executor`: read whole windows of raw data with the plan's query, compute their points with
  `window_points`, hand them to a sink (`run_range`, `run_windows`, `WindowRunner`).
- `shipper`: write a window's points through the gateway in batches with retries, manifest last.
- `coordinator_client`: desired state, reports, backfills and central's windows.
- `daemon`: `Agent` (preflight, reconcile, catch-up, backfills, SIGTERM); `MODES` maps a mode's
  name to its factory.
- `modes`: the seam (`ExecutionMode`, `ModeContext`, `PlanHealth`); `embedded_mode` and
  `kapacitor_mode` are the two modes behind it.
- `once`: `run_once`, a range of windows of one DC, then exit.
"""

from __future__ import annotations

from federation.agent.coordinator_client import (
    BackfillRequest,
    CentralWindow,
    CoordinatorClient,
    DesiredRetentionState,
    DesiredState,
    WindowsView,
)
from federation.agent.daemon import MODES, Agent, build_agent, install_signal_handlers, mode_name
from federation.agent.embedded_mode import EmbeddedMode
from federation.agent.executor import (
    ComputedWindow,
    RangeResult,
    RunIds,
    WindowData,
    WindowResult,
    WindowSink,
    compute_window,
    read_window,
    run_range,
    run_windows,
)
from federation.agent.modes import AgentSettings, ExecutionMode, ModeContext, PlanHealth
from federation.agent.once import run_once
from federation.agent.shipper import ShipmentError, ShipmentRefused, Shipper, ShipStats
from federation.agent.window_choice import catch_up_windows
from federation.agent.window_runner import WindowRunner

__all__ = [
    "MODES",
    "Agent",
    "AgentSettings",
    "BackfillRequest",
    "CentralWindow",
    "ComputedWindow",
    "CoordinatorClient",
    "DesiredRetentionState",
    "DesiredState",
    "EmbeddedMode",
    "ExecutionMode",
    "ModeContext",
    "PlanHealth",
    "RangeResult",
    "RunIds",
    "ShipStats",
    "ShipmentError",
    "ShipmentRefused",
    "Shipper",
    "WindowData",
    "WindowResult",
    "WindowRunner",
    "WindowSink",
    "WindowsView",
    "build_agent",
    "catch_up_windows",
    "compute_window",
    "install_signal_handlers",
    "mode_name",
    "read_window",
    "run_once",
    "run_range",
    "run_windows",
]
