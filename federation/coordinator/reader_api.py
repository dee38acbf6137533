"""The reader API: status, each DC against its desired state, and `/metrics`.

401 without the reader token (`/api/v1/dcs` also takes the operator's).
"""

from __future__ import annotations

from collections.abc import Callable

from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from federation.coordinator.convergence import dc_overview
from federation.coordinator.endpoints import (
    bearer_token,
    coordinator_of,
    error,
    instant,
    reader_denied,
)
from federation.coordinator.metrics import CONTENT_TYPE as METRICS_CONTENT_TYPE
from federation.coordinator.metrics import metrics_text
from federation.coordinator.status import StatusReport, status_report
from federation.errors import FederationError, InvalidInput


async def _status(request: Request, render: Callable[[StatusReport], Response]) -> Response:
    """The status report the query asks for (`aggregation`, `since`, `dc`), rendered; 401
    without the reader token, 400 for a query the report cannot answer."""
    denied = reader_denied(request)
    if denied is not None:
        return denied
    coordinator = coordinator_of(request)
    try:
        since = instant(request, "since")
        result = await run_in_threadpool(
            lambda: status_report(
                coordinator.ledger,
                coordinator.config,
                coordinator.clock.now_ns(),
                aggregation=request.query_params.get("aggregation") or None,
                since_ns=since,
                dc=request.query_params.get("dc") or None,
                max_skew_ns=coordinator.settings.max_clock_skew_ns,
            )
        )
    except FederationError as exc:
        return error(400, str(exc))
    return render(result)


async def status(request: Request) -> Response:
    return await _status(request, lambda result: JSONResponse(result.to_dict()))


async def metrics(request: Request) -> Response:
    denied = reader_denied(request)
    if denied is not None:
        return denied
    text = await run_in_threadpool(metrics_text, coordinator_of(request))
    return Response(text, media_type=METRICS_CONTENT_TYPE)


async def dcs_overview(request: Request) -> Response:
    coordinator = coordinator_of(request)
    token = bearer_token(request)
    if not (token and coordinator.tokens.check_operator(token)):
        denied = reader_denied(request)
        if denied is not None:
            return denied
    try:
        result = await run_in_threadpool(
            dc_overview,
            coordinator.ledger,
            coordinator.config,
            coordinator.clock.now_ns(),
            request.query_params.getlist("dc") or None,
        )
    except InvalidInput as exc:
        return error(400, str(exc))
    return JSONResponse(result)
