"""The reports as JSON over HTTP, for Grafana's JSON/Infinity data sources and scripts.

`routes(...)` returns Starlette routes that an application mounts (the coordinator's app does):

    GET /api/v1/reports/{aggregation}/percentiles?period=&from=&to=&tz=&by=&dcs=&percentiles=
    GET /api/v1/reports/{aggregation}/sla?threshold=&period=&from=&to=&tz=&by=&dcs=
    GET /api/v1/reports/{aggregation}/worst?last=&by=&top=&metric=&dcs=

Each answers the report's `to_json()`; with `shape=rows` only its list of rows (what a table or
time series in Infinity reads). `rollups=false` reads windows only. Every request first passes
the `authorize` dependency (the coordinator's reader-token check), which raises Starlette's
`HTTPException` to refuse. Bad parameters answer 400 and a failing central or ledger 502, with
`{"error": message}`.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

from sqlalchemy.engine import Engine
from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

from federation.config import FederationConfig
from federation.core.clock import Clock, SystemClock
from federation.errors import FederationError, InvalidInput
from federation.reporting._central import CentralReader
from federation.reporting.arguments import parse_last, parse_threshold
from federation.reporting.reports import percentile_report, sla_report, worst_report

Authorize = Callable[[Request], Awaitable[None]]
"""Checks a request's credentials; raises `starlette.exceptions.HTTPException` to refuse."""

PREFIX = "/api/v1/reports"


def _list(request: Request, name: str) -> list[str]:
    return [p.strip() for p in request.query_params.get(name, "").split(",") if p.strip()]


def _required(request: Request, name: str) -> str:
    value = request.query_params.get(name)
    if not value:
        raise InvalidInput(f"query parameter {name!r} is required")
    return value


def _flag(request: Request, name: str, default: bool) -> bool:
    value = request.query_params.get(name)
    if value is None:
        return default
    if value.lower() in ("1", "true", "yes"):
        return True
    if value.lower() in ("0", "false", "no"):
        return False
    raise InvalidInput(f"query parameter {name!r} must be true or false")


def _int(request: Request, name: str, default: int) -> int:
    value = request.query_params.get(name)
    if value is None:
        return default
    try:
        return int(value)
    except ValueError:
        raise InvalidInput(f"query parameter {name!r} must be an integer") from None


def routes(
    config: FederationConfig | Callable[[], FederationConfig],
    *,
    central: CentralReader,
    authorize: Authorize,
    ledger: Engine | None = None,
    clock: Clock | None = None,
) -> list[Route]:
    """Routes serving the percentile, SLA and worst-N reports as JSON under `/api/v1/reports`.

    `config` is the config, or a function returning the one in force at each request (a
    coordinator reloads its config, and describes aggregations removed from it by their last
    stored plan).

    Guarantees: each route answers exactly what the library function of the same report
    returns for the same parameters (the CLI prints the same figures); nothing is served before
    `authorize` accepted the request; reports run in a worker thread, never blocking the loop.
    """
    time_source: Clock = clock or SystemClock()

    def in_force() -> FederationConfig:
        return config() if callable(config) else config

    def percentiles(request: Request, aggregation: str) -> dict[str, Any]:
        q = request.query_params
        try:
            ps = [float(p) for p in _list(request, "percentiles")] or None
        except ValueError:
            raise InvalidInput("query parameter 'percentiles' must be numbers") from None
        from_date = _required(request, "from")
        return percentile_report(
            in_force(), central, aggregation, period=q.get("period", "month"), from_date=from_date,
            to_date=q.get("to", from_date), tz=q.get("tz", "UTC"), by=_list(request, "by"),
            dcs=_list(request, "dcs"), percentiles=ps, ledger=ledger,
            use_rollups=_flag(request, "rollups", True),
        ).to_json()  # fmt: skip

    def sla(request: Request, aggregation: str) -> dict[str, Any]:
        q = request.query_params
        current = in_force()
        spec = current.aggregations.get(aggregation)
        unit = spec.source.unit if spec else "ms"
        from_date = _required(request, "from")
        return sla_report(
            current, central, aggregation,
            threshold=parse_threshold(_required(request, "threshold"), unit),
            period=q.get("period", "month"), from_date=from_date, to_date=q.get("to", from_date),
            tz=q.get("tz", "UTC"), by=_list(request, "by"), dcs=_list(request, "dcs"),
            ledger=ledger, use_rollups=_flag(request, "rollups", True),
        ).to_json()  # fmt: skip

    def worst(request: Request, aggregation: str) -> dict[str, Any]:
        q = request.query_params
        return worst_report(
            in_force(), central, aggregation, last_ns=parse_last(q.get("last", "24h")),
            now_ns=time_source.now_ns(), by=_list(request, "by") or ["customer"],
            top=_int(request, "top", 20), metric=q.get("metric", "p99"),
            dcs=_list(request, "dcs"), ledger=ledger,
            use_rollups=_flag(request, "rollups", True),
        ).to_json()  # fmt: skip

    def endpoint(
        build: Callable[[Request, str], dict[str, Any]],
    ) -> Callable[[Request], Awaitable[JSONResponse]]:
        async def handle(request: Request) -> JSONResponse:
            await authorize(request)
            aggregation = str(request.path_params["aggregation"])
            try:
                body = await run_in_threadpool(build, request, aggregation)
            except InvalidInput as exc:
                return JSONResponse({"error": str(exc)}, status_code=400)
            except FederationError as exc:
                return JSONResponse({"error": str(exc)}, status_code=502)
            if request.query_params.get("shape") == "rows":
                return JSONResponse(body["rows"])
            return JSONResponse(body)

        return handle

    return [
        Route(f"{PREFIX}/{{aggregation}}/percentiles", endpoint(percentiles), methods=["GET"]),
        Route(f"{PREFIX}/{{aggregation}}/sla", endpoint(sla), methods=["GET"]),
        Route(f"{PREFIX}/{{aggregation}}/worst", endpoint(worst), methods=["GET"]),
    ]
