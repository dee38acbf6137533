"""The coordinator: ledger, gateway, window tracking, backfill planner, agent API, status.

Public entry points (each takes the config or the ledger first):

- `open_ledger(url)`, `upgrade_ledger(url)`: the ledger, at the Alembic head.
- `sync_desired(ledger, config, now_ns)`, `desired_state(config, dc)`: desired state per DC.
- `reload_config(coordinator)`: reload the config directory, answer what changes per DC.
- `start_rollout` / `advance_rollout` / `rollback_rollout(ledger, config, now_ns)`: staged
  plan versions; `dc_overview(ledger, config, now_ns)`: each DC against its desired state.
- `plan_backfills(ledger, config, now_ns)`: one planner pass.
- `verify_shipped(ledger, config, central, now_ns)`: one verification pass.
- `status_report(ledger, config, now_ns)`: the DC × window grid.
- `request_backfill(ledger, config, dc, aggregation, start_ns, end_ns, now_ns)`.
- `Coordinator(config, ledger, tokens)` + `build_app(coordinator)`: the ASGI app.
- `run_coordinator(config)`: preflight, jobs and uvicorn.
"""

from __future__ import annotations

from federation.coordinator.api import build_app
from federation.coordinator.app import PreflightError, preflight, run_coordinator
from federation.coordinator.backfills import (
    lease_backfills,
    record_backfill_result,
    request_backfill,
)
from federation.coordinator.convergence import dc_overview
from federation.coordinator.desired import desired_state, known_plans, record_report, sync_desired
from federation.coordinator.gateway.rules import GatewayChecker, Refusal
from federation.coordinator.ledger import Ledger, LedgerError, open_ledger, upgrade_ledger
from federation.coordinator.planner import PlannerResult, PlannerSettings, plan_backfills
from federation.coordinator.reload import reload_config
from federation.coordinator.rollouts import advance_rollout, rollback_rollout, start_rollout
from federation.coordinator.service import Coordinator, CoordinatorSettings, Tokens, load_tokens
from federation.coordinator.status import StatusReport, status_report
from federation.coordinator.tracking import WindowState, verify_shipped

__all__ = [
    "Coordinator",
    "CoordinatorSettings",
    "GatewayChecker",
    "Ledger",
    "LedgerError",
    "PlannerResult",
    "PlannerSettings",
    "PreflightError",
    "Refusal",
    "StatusReport",
    "Tokens",
    "WindowState",
    "advance_rollout",
    "build_app",
    "dc_overview",
    "desired_state",
    "known_plans",
    "lease_backfills",
    "load_tokens",
    "open_ledger",
    "plan_backfills",
    "preflight",
    "record_backfill_result",
    "record_report",
    "reload_config",
    "request_backfill",
    "rollback_rollout",
    "run_coordinator",
    "start_rollout",
    "status_report",
    "sync_desired",
    "upgrade_ledger",
    "verify_shipped",
]
