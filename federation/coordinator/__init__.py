"""The coordinator: ledger, gateway, window tracking, backfill planner, agent API, status.

This package imports none of its modules: importing the ledger does not start the HTTP app.
Public entry points (each takes the config or the ledger first), by module:

- `ledger`: `open_ledger(url)`, `upgrade_ledger(url)`: the ledger, at the Alembic head.
- `desired`: `sync_desired(ledger, config, now_ns)`, `desired_state(config, dc)`: desired state
  per DC.
- `reload`: `reload_config(coordinator)`: reload the config directory, answer what changes.
- `rollouts`: `start_rollout` / `advance_rollout` / `rollback_rollout(ledger, config, now_ns)`:
  staged plan versions; `convergence.dc_overview(ledger, config, now_ns)`: each DC against its
  desired state.
- `planner`: `plan_backfills(ledger, config, now_ns)`: one planner pass.
- `tracking`: `verify_shipped(ledger, config, central, now_ns)`: one verification pass.
- `completeness`: `completeness(ledger, aggregation, dcs, start_ns, end_ns)`: what reports ask.
- `status`: `status_report(ledger, config, now_ns)`: the DC × window grid.
- `backfills`: `request_backfill(ledger, config, dc, aggregation, start_ns, end_ns, now_ns)`.
- `service`: `Coordinator(config, ledger, tokens)`; `api.build_app(coordinator)`: the ASGI app.
- `app`: `run_coordinator(config)`: preflight, jobs and uvicorn.
"""
