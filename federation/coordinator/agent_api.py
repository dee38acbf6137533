"""The agent API: what a DC's agent asks and tells the coordinator, behind its DC's token.

    GET  /api/v1/dcs/{dc}/desired               desired state (plans, retention)
    POST /api/v1/dcs/{dc}/report                what runs, health, clock; 204
    GET  /api/v1/dcs/{dc}/backfills             leases queued backfill requests
    POST /api/v1/backfills/{id}/result          a backfill's outcome; 204
    GET  /api/v1/dcs/{dc}/windows?aggregation=&since=   the DC's windows central holds
    POST /api/v1/dcs/{dc}/windows/raw-counts    {"aggregation", "counts": [{"start_ns",
                                                "events"}]}: the DC's raw event counts;
                                                windows central holds less of become
                                                inconsistent (federation.coordinator.raw_counts)

401 without a valid agent token, 403 when the token is another DC's.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable

from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from federation.coordinator.backfills import (
    BackfillNotFound,
    NotYourBackfill,
    lease_backfills,
    record_backfill_result,
)
from federation.coordinator.desired import record_report, served_desired_state
from federation.coordinator.endpoints import (
    Handler,
    bearer_token,
    coordinator_of,
    error,
    instant,
    json_body,
    refused,
)
from federation.coordinator.raw_counts import compare_raw_counts, parse_raw_counts
from federation.coordinator.service import Coordinator
from federation.coordinator.tracking import (
    dc_windows,
)
from federation.core.clock import TimeInputError
from federation.errors import InvalidInput


def _agent(request: Request, dc: str | None) -> str | Response:
    """The authenticated DC (which must be `dc` when given), or the 401/403 answer."""
    coordinator = coordinator_of(request)
    token = bearer_token(request)
    owner = coordinator.tokens.dc_for_token(token) if token else None
    if owner is None:
        return error(401, refused(token, "a DC agent token"))
    if dc is not None and owner != dc:
        return error(403, f"this token may act only for DC {owner}")
    return owner


AgentHandler = Callable[[Request, Coordinator, str], Awaitable[Response]]


def _agent_endpoint(handler: AgentHandler) -> Handler:
    """`handler` behind an agent token: the token of the path's `{dc}`, or of any DC when the
    path names none; the handler gets the authenticated DC."""

    async def endpoint(request: Request) -> Response:
        who = _agent(request, request.path_params.get("dc"))
        if isinstance(who, Response):
            return who
        return await handler(request, coordinator_of(request), who)

    return endpoint


@_agent_endpoint
async def desired(request: Request, coordinator: Coordinator, dc: str) -> Response:
    state = await run_in_threadpool(
        lambda: served_desired_state(
            coordinator.ledger,
            coordinator.config,
            dc,
            allow_shrink=coordinator.shrink_allowed(dc),
        )
    )
    return JSONResponse(state)


@_agent_endpoint
async def report(request: Request, coordinator: Coordinator, dc: str) -> Response:
    try:
        data = await json_body(request)
        now_ns = coordinator.clock.now_ns()
        await run_in_threadpool(
            record_report, coordinator.ledger, coordinator.config, dc, data, now_ns
        )
    except InvalidInput as exc:
        return error(400, str(exc))
    coordinator.clocks.update(dc, data, now_ns)
    return Response(status_code=204)


@_agent_endpoint
async def backfills(request: Request, coordinator: Coordinator, dc: str) -> Response:
    leased = await run_in_threadpool(
        lease_backfills,
        coordinator.ledger,
        dc,
        coordinator.clock.now_ns(),
        settings=coordinator.settings.planner,
    )
    return JSONResponse(
        {
            "backfills": [
                {
                    "id": b.id,
                    "aggregation": b.aggregation,
                    "version": b.version,
                    "start_ns": b.start_ns,
                    "end_ns": b.end_ns,
                }
                for b in leased
            ]
        }
    )


@_agent_endpoint
async def backfill_result(request: Request, coordinator: Coordinator, dc: str) -> Response:
    try:
        backfill_id = int(request.path_params["id"])
        data = await json_body(request)
        await run_in_threadpool(
            record_backfill_result,
            coordinator.ledger,
            dc,
            backfill_id,
            data,
            coordinator.clock.now_ns(),
            settings=coordinator.settings.planner,
        )
    except ValueError:
        return error(400, "backfill id must be an integer")
    except InvalidInput as exc:
        return error(400, str(exc))
    except BackfillNotFound as exc:
        return error(404, str(exc))
    except NotYourBackfill as exc:
        return error(403, str(exc))
    return Response(status_code=204)


@_agent_endpoint
async def windows(request: Request, coordinator: Coordinator, dc: str) -> Response:
    try:
        since = instant(request, "since")
    except TimeInputError as exc:
        return error(400, str(exc))
    result = await run_in_threadpool(
        dc_windows, coordinator.ledger, dc, request.query_params.get("aggregation"), since
    )
    return JSONResponse(result)


@_agent_endpoint
async def raw_counts(request: Request, coordinator: Coordinator, dc: str) -> Response:
    try:
        aggregation, counts = parse_raw_counts(await json_body(request))
    except InvalidInput as exc:
        return error(400, str(exc))
    result = await run_in_threadpool(
        compare_raw_counts, coordinator.ledger, dc, aggregation, counts, coordinator.clock.now_ns()
    )
    return JSONResponse(result)
