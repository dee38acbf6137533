"""The coordinator's HTTP surface: the gateway, the agent API, status, metrics and the page.

    GET  /ping                                  204, X-Influxdb-Version (no auth, as InfluxDB)
    POST /write?db=&rp=&precision=&consistency= gateway (see federation.coordinator.gateway.rules)
    GET  /api/v1/dcs/{dc}/desired               agent token of {dc}
    POST /api/v1/dcs/{dc}/report                agent token of {dc}; 204
    GET  /api/v1/dcs/{dc}/backfills             agent token of {dc}; leases queued requests
    POST /api/v1/backfills/{id}/result          agent token of the request's DC; 204
    GET  /api/v1/dcs/{dc}/windows?aggregation=&since=   agent token of {dc}
    POST /api/v1/dcs/{dc}/windows/raw-counts    agent token of {dc}; {"aggregation", "counts":
                                                [{"start_ns", "events"}]}: the DC's raw event
                                                counts; windows central holds less of become
                                                inconsistent (federation.coordinator.raw_counts)
    GET  /api/v1/status?aggregation=&since=&dc= reader token
    GET  /api/v1/dcs?dc=                        reader or operator token: each DC against its
                                                desired state (versions, health, retention)
    POST /api/v1/desired/reload                 operator token; {"dry_run": bool, "allow_shrink":
                                                [dc]}: reload the config directory, answer what
                                                changes per DC; let those DCs shrink retention
    POST /api/v1/rollouts                       operator token; {"aggregations", "canary",
                                                "dcs", "backfill_retention"}: pending versions
                                                desired in the canary (or the rollout waiting
                                                at its canary resumed)
    POST /api/v1/rollouts/advance               operator token; {"aggregations", "dcs"}
    POST /api/v1/rollouts/rollback              operator token; {"aggregations", "dcs"}: the
                                                last rollout undone
    GET  /metrics                               reader token (Prometheus text format)
    GET  /, /windows/…, /dcs/…, /reports        web pages (federation.coordinator.web): reader
                                                token as bearer, cookie, or once ?token=

Agent endpoints answer 401 without a valid agent token and 403 when the token is another DC's.
Read endpoints answer 401 without the reader token. Operator endpoints answer 403 when
fleet.yaml names no `central.operator_token_env`, 401 without a known token and 403 for a
reader or agent token. Bodies that do not parse get 400 with `{"error": ...}`; a reload of a
config with problems gets 400 with every problem in `problems`, and changes nothing; a rollout
that cannot start as asked gets 409.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import httpx
from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.routing import Route

from federation.coordinator.agent_api import (
    backfill_result,
    backfills,
    desired,
    raw_counts,
    report,
    windows,
)
from federation.coordinator.draining import RefuseWhileDraining
from federation.coordinator.endpoints import reader_denied
from federation.coordinator.gateway.http import INFLUXDB_VERSION, central_client, ping, write
from federation.coordinator.gateway.ordering import ShippingTurns
from federation.coordinator.operator_api import reload_desired, rollout_handler
from federation.coordinator.reader_api import dcs_overview, metrics, status
from federation.coordinator.retired import with_retired
from federation.coordinator.service import Coordinator
from federation.coordinator.web import web_routes
from federation.influx import InfluxClient, credentials_from_env
from federation.reporting.http import routes as reporting_routes


def build_app(
    coordinator: Coordinator,
    *,
    central_url: str | None = None,
    central_transport: httpx.AsyncBaseTransport | None = None,
) -> Starlette:
    """The coordinator's ASGI app (gateway, agent API, status, metrics, page).

    `central_url` overrides fleet.yaml's central InfluxDB URL (tests and the demo point it at
    a local influxd); `central_transport` replaces the network for the forwarding client.
    """

    central = coordinator.config.fleet.central.influxdb
    # Reports read central synchronously in worker threads; the gateway forwards asynchronously.
    reader = InfluxClient(
        (central_url or central.url).rstrip("/"), auth=credentials_from_env(central), timeout=60.0
    )

    async def authorize_reader(request: Request) -> None:
        if reader_denied(request) is not None:
            raise HTTPException(401, "the reader token is required")

    @asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        client = central_client(coordinator, central_url, central_transport)
        app.state.central = client
        app.state.shipping = ShippingTurns(
            coordinator.ledger, wait_s=coordinator.settings.central_timeout_s
        )
        try:
            yield
        finally:
            await client.aclose()
            app.state.shipping.close()
            reader.close()

    report_routes = reporting_routes(
        lambda: with_retired(coordinator.config, coordinator.ledger),
        central=reader,
        authorize=authorize_reader,
        ledger=coordinator.ledger.engine,
        clock=coordinator.clock,
    )

    app = Starlette(
        routes=[
            Route("/ping", ping, methods=["GET", "HEAD"]),
            Route("/write", write, methods=["POST"]),
            Route("/api/v1/dcs/{dc}/desired", desired, methods=["GET"]),
            Route("/api/v1/dcs/{dc}/report", report, methods=["POST"]),
            Route("/api/v1/dcs/{dc}/backfills", backfills, methods=["GET"]),
            Route("/api/v1/backfills/{id}/result", backfill_result, methods=["POST"]),
            Route("/api/v1/dcs/{dc}/windows", windows, methods=["GET"]),
            Route("/api/v1/dcs/{dc}/windows/raw-counts", raw_counts, methods=["POST"]),
            Route("/api/v1/status", status, methods=["GET"]),
            Route("/api/v1/dcs", dcs_overview, methods=["GET"]),
            Route("/api/v1/desired/reload", reload_desired, methods=["POST"]),
            Route("/api/v1/rollouts", rollout_handler("start"), methods=["POST"]),
            Route("/api/v1/rollouts/advance", rollout_handler("advance"), methods=["POST"]),
            Route("/api/v1/rollouts/rollback", rollout_handler("rollback"), methods=["POST"]),
            Route("/metrics", metrics, methods=["GET"]),
            *report_routes,
            *web_routes(coordinator, reader),
        ],
        lifespan=lifespan,
        middleware=[Middleware(RefuseWhileDraining, coordinator=coordinator)],
    )
    app.state.coordinator = coordinator
    return app


__all__ = ["INFLUXDB_VERSION", "build_app"]
