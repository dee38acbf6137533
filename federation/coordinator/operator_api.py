"""The operator API: reload the desired state, start, advance and roll back rollouts.

403 when fleet.yaml names no `central.operator_token_env`, 401 without a known token and 403
for a reader or agent token. A reload of a config with problems gets 400 with every problem in
`problems`, and changes nothing; a rollout that cannot start as asked gets 409.
"""

from __future__ import annotations

import logging
from typing import Any

from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from federation.coordinator.endpoints import (
    Handler,
    bearer_token,
    coordinator_of,
    error,
    optional_body,
    refused,
)
from federation.coordinator.reload import reload_config
from federation.coordinator.rollouts import (
    RolloutConflict,
    advance_rollout,
    rollback_rollout,
    start_rollout,
)
from federation.errors import ConfigProblems, InvalidInput

log = logging.getLogger(__name__)


def _operator(request: Request) -> Response | None:
    """None when the request carries the operator token, else the 401/403 answer."""
    coordinator = coordinator_of(request)
    if coordinator.tokens.operator is None:
        return error(
            403,
            "operator endpoints are disabled: central.operator_token_env is not configured in fleet.yaml",
        )
    token = bearer_token(request)
    if token and coordinator.tokens.check_operator(token):
        return None
    if token and (coordinator.tokens.check_reader(token) or coordinator.tokens.dc_for_token(token)):
        return error(403, "this endpoint needs the operator token")
    return error(401, refused(token, "the operator token"))


def _names(data: dict[str, Any], key: str) -> list[str] | None:
    value = data.get(key)
    if value is None:
        return None
    if not isinstance(value, list) or not all(isinstance(v, str) and v for v in value):
        raise InvalidInput(f"{key}: expected a list of names or null")
    return list(value)


async def reload_desired(request: Request) -> Response:
    denied = _operator(request)
    if denied is not None:
        return denied
    coordinator = coordinator_of(request)
    try:
        data = await optional_body(request)
        dry_run = data.get("dry_run", False)
        if not isinstance(dry_run, bool):
            raise InvalidInput("dry_run: expected true or false")
        shrink = _names(data, "allow_shrink") or []
        result = await run_in_threadpool(
            lambda: reload_config(coordinator, dry_run=dry_run, allow_shrink=shrink)
        )
    except ConfigProblems as exc:
        return JSONResponse(
            {"error": "the config has problems; nothing was changed",
             "problems": [str(p) for p in exc.problems]},
            status_code=400,
        )  # fmt: skip
    except InvalidInput as exc:
        return error(400, str(exc))
    log.info("desired state reloaded%s", " (dry run)" if dry_run else "")
    return JSONResponse(result.as_dict())


def rollout_handler(step: str) -> Handler:
    async def handler(request: Request) -> Response:
        denied = _operator(request)
        if denied is not None:
            return denied
        coordinator = coordinator_of(request)
        try:
            data = await optional_body(request)
            aggregations, dcs = _names(data, "aggregations"), _names(data, "dcs")
            canary = data.get("canary")
            if canary is not None and (step != "start" or not isinstance(canary, str)):
                raise InvalidInput("canary: expected a DC name, only when a rollout starts")
            full = data.get("backfill_retention", False)
            if not isinstance(full, bool) or (full and step != "start"):
                raise InvalidInput(
                    "backfill_retention: expected true or false, when a rollout starts"
                )
            now = coordinator.clock.now_ns()
            config = coordinator.config

            def run() -> dict[str, Any]:
                if step == "start":
                    result = start_rollout(
                        coordinator.ledger, config, now,
                        aggregations=aggregations, canary=canary, dcs=dcs,
                        backfill_retention=full,
                    )  # fmt: skip
                elif step == "advance":
                    result = advance_rollout(
                        coordinator.ledger, config, now, aggregations=aggregations, dcs=dcs
                    )
                else:
                    result = rollback_rollout(
                        coordinator.ledger, config, now, aggregations=aggregations, dcs=dcs
                    )
                if result.moved:
                    coordinator.publish(f"rollout {step}")
                return result.as_dict()

            body = await run_in_threadpool(run)
        except InvalidInput as exc:
            return error(400, str(exc))
        except RolloutConflict as exc:
            return error(409, str(exc))
        log.info("rollout %s: %s", step, body["moved"])
        return JSONResponse(body)

    return handler
