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

import asyncio
import json
import logging
import threading
import time
import weakref
import zlib
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from typing import Any

import httpx
from starlette.applications import Starlette
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from federation.coordinator.backfills import (
    BackfillNotFound,
    NotYourBackfill,
    lease_backfills,
    record_backfill_result,
)
from federation.coordinator.convergence import dc_overview
from federation.coordinator.desired import record_report, served_desired_state
from federation.coordinator.draining import RefuseWhileDraining
from federation.coordinator.gateway.rules import CheckedBatch, Refusal, check_body, log_refusal
from federation.coordinator.metrics import CONTENT_TYPE as METRICS_CONTENT_TYPE
from federation.coordinator.metrics import metrics_text
from federation.coordinator.raw_counts import compare_raw_counts, parse_raw_counts
from federation.coordinator.refusals import note_refusal
from federation.coordinator.reload import reload_config
from federation.coordinator.retired import with_retired
from federation.coordinator.rollouts import (
    RolloutConflict,
    advance_rollout,
    rollback_rollout,
    start_rollout,
)
from federation.coordinator.service import Coordinator, parse_basic
from federation.coordinator.status import StatusReport, status_report
from federation.coordinator.tracking import (
    dc_windows,
    find_stale,
    record_manifests,
)
from federation.core.clock import TimeInputError, parse_instant
from federation.errors import ConfigProblems, FederationError, InvalidInput
from federation.influx import InfluxClient, credentials_from_env

log = logging.getLogger(__name__)

INFLUXDB_VERSION = "1.6.7"
"""What `/ping` reports in X-Influxdb-Version: the InfluxDB 1.x API the gateway speaks."""

Handler = Callable[[Request], Awaitable[Response]]


def _error(status: int, message: str) -> JSONResponse:
    return JSONResponse({"error": message}, status_code=status)


def _coordinator(request: Request) -> Coordinator:
    coordinator: Coordinator = request.app.state.coordinator
    return coordinator


def _refused(token: str | None, needed: str) -> str:
    """Why a request was not authorized: no token at all, or one this coordinator refuses."""
    if token:
        return f"the token given was refused: {needed} is required"
    return f"no token given: {needed} is required"


def _bearer(request: Request) -> str | None:
    header = request.headers.get("authorization", "")
    scheme, _, value = header.partition(" ")
    if scheme.lower() == "bearer" and value.strip():
        return value.strip()
    return None


# --- gateway --------------------------------------------------------------------------------


async def ping(request: Request) -> Response:
    return Response(status_code=204, headers={"X-Influxdb-Version": INFLUXDB_VERSION})


def _gateway_dc(request: Request, coordinator: Coordinator) -> str | None:
    """The DC a write authenticates as: basic auth, bearer token, or u/p query parameters."""
    tokens = coordinator.tokens
    header = request.headers.get("authorization", "")
    scheme, _, value = header.partition(" ")
    if scheme.lower() == "basic":
        creds = parse_basic(value)
        if creds and tokens.check_dc(creds[0], creds[1]):
            return creds[0]
        return None
    if scheme.lower() in ("bearer", "token") and value.strip():
        return tokens.dc_for_token(value.strip())
    user, password = request.query_params.get("u"), request.query_params.get("p")
    if user and password and tokens.check_dc(user, password):
        return user
    return None


async def _read_body(request: Request, limit: int) -> bytes:
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > limit:
        raise Refusal("size", f"body larger than {limit} bytes", status=413)
    chunks = []
    size = 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise Refusal("size", f"body larger than {limit} bytes", status=413)
        chunks.append(chunk)
    return b"".join(chunks)


def _gunzip(raw: bytes, limit: int) -> bytes:
    decompressor = zlib.decompressobj(wbits=16 + zlib.MAX_WBITS)
    try:
        body = decompressor.decompress(raw, limit + 1)
    except zlib.error:
        raise Refusal("line-protocol", "body is not valid gzip") from None
    if len(body) > limit or decompressor.unconsumed_tail:
        raise Refusal("size", f"uncompressed body larger than {limit} bytes", status=413)
    # Central reads every member of a multi-member gzip body; only what was checked may go there.
    if not decompressor.eof or decompressor.unused_data:
        raise Refusal("line-protocol", "body is not exactly one complete gzip member")
    return body


async def _forward(
    request: Request, coordinator: Coordinator, raw: bytes, encoding: str, rp: str, precision: str
) -> Refusal | None:
    """Write the batch to central; None when central answered 204, else why not."""
    central = coordinator.config.fleet.central
    params = {"db": central.database, "rp": rp}
    if precision:
        params["precision"] = precision
    consistency = request.query_params.get("consistency")
    if consistency:  # a cluster (InfluxDB Enterprise) honours it; a single node ignores it
        params["consistency"] = consistency
    headers = {"Content-Type": "text/plain; charset=utf-8"}
    if encoding:
        headers["Content-Encoding"] = encoding
    client: httpx.AsyncClient = request.app.state.central
    try:
        response = await client.post("/write", params=params, content=raw, headers=headers)
    except httpx.HTTPError as exc:
        log.error("central InfluxDB unreachable: %s", exc.__class__.__name__)
        return Refusal("central", "central InfluxDB is unavailable; retry later", status=503)
    if response.status_code == 204:
        return None
    if response.status_code == 400:
        # InfluxDB's message names series keys and field types, not values.
        try:
            message = str(response.json().get("error", ""))
        except ValueError:
            message = response.text[:300]
        log.error("central InfluxDB refused a batch: HTTP 400")
        return Refusal("central", f"central InfluxDB refused the batch: {message[:300]}")
    log.error("central InfluxDB failed a write: HTTP %d", response.status_code)
    return Refusal(
        "central",
        f"central InfluxDB answered HTTP {response.status_code}; retry later",
        status=503,
    )


async def write(request: Request) -> Response:
    started = time.perf_counter()
    try:
        return await _write(request)
    finally:
        _coordinator(request).metrics.observe_request(time.perf_counter() - started)


async def _write(request: Request) -> Response:
    coordinator = _coordinator(request)
    dc = _gateway_dc(request, coordinator)
    if dc is None:
        coordinator.metrics.refused("auth")
        return JSONResponse(
            {"error": "authorization failed", "rule": "auth"},
            status_code=401,
            headers={"WWW-Authenticate": 'Basic realm="federation"'},
        )
    try:
        batch = await _accept(request, coordinator, dc)
    except Refusal as refusal:
        if refusal.status == 503:
            coordinator.metrics.outcome("unavailable")
        else:
            coordinator.metrics.refused(refusal.rule)
            log_refusal(dc, refusal)
        return JSONResponse(refusal.body(), status_code=refusal.status)
    coordinator.metrics.outcome("accepted", batch.points)
    return Response(status_code=204, headers={"X-Influxdb-Version": INFLUXDB_VERSION})


# One DC's batches are checked, forwarded and recorded one at a time: two shipments of the same
# window (a Kapacitor task's look-back branch and a replay, say) that both passed the stale check
# could otherwise reach central in one order and the ledger in the other, leaving central with
# an older run than the ledger holds.
_SHIPPING: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, dict[str, asyncio.Lock]] = (
    weakref.WeakKeyDictionary()
)


WRITE_CONSISTENCIES = ("any", "one", "quorum", "all")
"""The `consistency` values of the v1 write API; the gateway passes the one asked through."""


# One batch is parsed and checked at a time. The work holds the GIL, so batches checked side by
# side would all finish late, together; one at a time, each finishes as early as it can and is
# forwarded to central while the next one is checked.
_CHECKING = threading.Lock()


async def _accept(request: Request, coordinator: Coordinator, dc: str) -> CheckedBatch:
    limit = coordinator.settings.max_body_bytes
    central = coordinator.config.fleet.central
    expected_rp = coordinator.central_rp(dc)
    db = request.query_params.get("db", "")
    rp = request.query_params.get("rp") or expected_rp
    if db != central.database or rp != expected_rp:
        raise Refusal(
            "database",
            f"write to db {central.database!r} and rp {expected_rp!r} (this DC's region)",
            key="db" if db != central.database else "rp",
        )
    precision = request.query_params.get("precision", "")
    # Kapacitor's influxDBOut always sends the parameter, empty unless .writeConsistency() is set.
    consistency = request.query_params.get("consistency")
    if consistency and consistency not in WRITE_CONSISTENCIES:
        raise Refusal(
            "database",
            f"consistency must be one of {', '.join(WRITE_CONSISTENCIES)}, not {consistency!r}",
            key="consistency",
        )
    raw = await _read_body(request, limit)
    encoding = request.headers.get("content-encoding", "").strip().lower()
    if encoding not in ("", "identity", "gzip"):
        raise Refusal("line-protocol", f"unsupported Content-Encoding {encoding!r}", status=415)
    locks = _SHIPPING.setdefault(asyncio.get_running_loop(), {})
    lock = locks.setdefault(dc, asyncio.Lock())
    async with lock:
        return await _check_forward_record(request, coordinator, dc, raw, encoding, precision, rp)


async def _check_forward_record(
    request: Request,
    coordinator: Coordinator,
    dc: str,
    raw: bytes,
    encoding: str,
    precision: str,
    rp: str,
) -> CheckedBatch:
    limit = coordinator.settings.max_body_bytes
    now_ns = coordinator.clock.now_ns()

    def check() -> CheckedBatch:
        # A window must have ended by the DC agent's clock too (`clocks`): a coordinator whose
        # clock runs ahead would otherwise take a window still running at the DC as whole.
        ended_ns = coordinator.clocks.ended_by(dc, now_ns)
        with _CHECKING:
            body = _gunzip(raw, limit) if encoding == "gzip" else raw
            checker = coordinator.checker()
            try:
                batch = check_body(checker, dc, body, precision or "ns", ended_ns)
            except Refusal as refusal:
                if refusal.status != 503:
                    ledger = coordinator.ledger
                    note_refusal(ledger, checker, dc, body, precision or "ns", refusal, now_ns)
                raise
        stale = find_stale(coordinator.ledger, batch.manifests)
        if stale is not None:
            raise Refusal(
                "stale-reshipment",
                stale.message,
                measurement="federation_manifest",
                key="run" if stale.manifest.run < stale.held_run else "events",
                line=next(
                    (
                        ln.line
                        for ln in batch.lines
                        if ln.point.measurement == "federation_manifest"
                        and ln.point.tags.get("aggregation") == stale.manifest.aggregation
                        and ln.point.time_ns == stale.manifest.start_ns
                    ),
                    None,
                ),
            )
        return batch

    batch = await run_in_threadpool(check)
    if not batch.points:
        return batch
    failure = await _forward(
        request, coordinator, raw, "gzip" if encoding == "gzip" else "", rp, precision
    )
    if failure is not None:
        raise failure
    if batch.manifests:
        try:
            await run_in_threadpool(
                record_manifests, coordinator.ledger, batch.manifests, coordinator.clock.now_ns()
            )
        except Exception as exc:  # the data is in central; the sender's retry is idempotent
            log.error("ledger update after a stored batch failed: %s", exc.__class__.__name__)
            raise Refusal("ledger", "ledger unavailable; retry later", status=503) from None
    return batch


# --- agent API ------------------------------------------------------------------------------


def _agent(request: Request, dc: str | None) -> str | Response:
    """The authenticated DC (which must be `dc` when given), or the 401/403 answer."""
    coordinator = _coordinator(request)
    token = _bearer(request)
    owner = coordinator.tokens.dc_for_token(token) if token else None
    if owner is None:
        return _error(401, _refused(token, "a DC agent token"))
    if dc is not None and owner != dc:
        return _error(403, f"this token may act only for DC {owner}")
    return owner


AgentHandler = Callable[[Request, Coordinator, str], Awaitable[Response]]


def _agent_endpoint(handler: AgentHandler) -> Handler:
    """`handler` behind an agent token: the token of the path's `{dc}`, or of any DC when the
    path names none; the handler gets the authenticated DC."""

    async def endpoint(request: Request) -> Response:
        who = _agent(request, request.path_params.get("dc"))
        if isinstance(who, Response):
            return who
        return await handler(request, _coordinator(request), who)

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


async def _json_body(request: Request) -> dict[str, Any]:
    try:
        data = json.loads(await request.body())
    except (ValueError, UnicodeDecodeError):
        raise InvalidInput("body is not JSON") from None
    if not isinstance(data, dict):
        raise InvalidInput("body must be a JSON object")
    return data


@_agent_endpoint
async def report(request: Request, coordinator: Coordinator, dc: str) -> Response:
    try:
        data = await _json_body(request)
        now_ns = coordinator.clock.now_ns()
        await run_in_threadpool(
            record_report, coordinator.ledger, coordinator.config, dc, data, now_ns
        )
    except InvalidInput as exc:
        return _error(400, str(exc))
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
        data = await _json_body(request)
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
        return _error(400, "backfill id must be an integer")
    except InvalidInput as exc:
        return _error(400, str(exc))
    except BackfillNotFound as exc:
        return _error(404, str(exc))
    except NotYourBackfill as exc:
        return _error(403, str(exc))
    return Response(status_code=204)


def _instant(request: Request, name: str) -> int | None:
    text = request.query_params.get(name)
    if not text:
        return None
    if text.lstrip("-").isdigit():
        return int(text)
    return parse_instant(text, _coordinator(request).clock)


@_agent_endpoint
async def windows(request: Request, coordinator: Coordinator, dc: str) -> Response:
    try:
        since = _instant(request, "since")
    except TimeInputError as exc:
        return _error(400, str(exc))
    result = await run_in_threadpool(
        dc_windows, coordinator.ledger, dc, request.query_params.get("aggregation"), since
    )
    return JSONResponse(result)


@_agent_endpoint
async def raw_counts(request: Request, coordinator: Coordinator, dc: str) -> Response:
    try:
        aggregation, counts = parse_raw_counts(await _json_body(request))
    except InvalidInput as exc:
        return _error(400, str(exc))
    result = await run_in_threadpool(
        compare_raw_counts, coordinator.ledger, dc, aggregation, counts, coordinator.clock.now_ns()
    )
    return JSONResponse(result)


# --- readers --------------------------------------------------------------------------------


def _reader(request: Request) -> Response | None:
    token = _bearer(request) or request.query_params.get("token")
    if token and _coordinator(request).tokens.check_reader(token):
        return None
    return _error(401, _refused(token, "the reader token"))


async def _status(request: Request, render: Callable[[StatusReport], Response]) -> Response:
    """The status report the query asks for (`aggregation`, `since`, `dc`), rendered; 401
    without the reader token, 400 for a query the report cannot answer."""
    denied = _reader(request)
    if denied is not None:
        return denied
    coordinator = _coordinator(request)
    try:
        since = _instant(request, "since")
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
        return _error(400, str(exc))
    return render(result)


async def status(request: Request) -> Response:
    return await _status(request, lambda result: JSONResponse(result.to_dict()))


async def metrics(request: Request) -> Response:
    denied = _reader(request)
    if denied is not None:
        return denied
    text = await run_in_threadpool(metrics_text, _coordinator(request))
    return Response(text, media_type=METRICS_CONTENT_TYPE)


# --- operators ------------------------------------------------------------------------------


def _operator(request: Request) -> Response | None:
    """None when the request carries the operator token, else the 401/403 answer."""
    coordinator = _coordinator(request)
    if coordinator.tokens.operator is None:
        return _error(
            403,
            "operator endpoints are disabled: central.operator_token_env is not configured in fleet.yaml",
        )
    token = _bearer(request)
    if token and coordinator.tokens.check_operator(token):
        return None
    if token and (coordinator.tokens.check_reader(token) or coordinator.tokens.dc_for_token(token)):
        return _error(403, "this endpoint needs the operator token")
    return _error(401, _refused(token, "the operator token"))


def _names(data: dict[str, Any], key: str) -> list[str] | None:
    value = data.get(key)
    if value is None:
        return None
    if not isinstance(value, list) or not all(isinstance(v, str) and v for v in value):
        raise InvalidInput(f"{key}: expected a list of names or null")
    return list(value)


async def dcs_overview(request: Request) -> Response:
    coordinator = _coordinator(request)
    token = _bearer(request)
    if not (token and coordinator.tokens.check_operator(token)):
        denied = _reader(request)
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
        return _error(400, str(exc))
    return JSONResponse(result)


async def _optional_body(request: Request) -> dict[str, Any]:
    if not (await request.body()).strip():
        return {}
    return await _json_body(request)


async def reload_desired(request: Request) -> Response:
    denied = _operator(request)
    if denied is not None:
        return denied
    coordinator = _coordinator(request)
    try:
        data = await _optional_body(request)
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
        return _error(400, str(exc))
    log.info("desired state reloaded%s", " (dry run)" if dry_run else "")
    return JSONResponse(result.as_dict())


def _rollout_handler(step: str) -> Handler:
    async def handler(request: Request) -> Response:
        denied = _operator(request)
        if denied is not None:
            return denied
        coordinator = _coordinator(request)
        try:
            data = await _optional_body(request)
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
            return _error(400, str(exc))
        except RolloutConflict as exc:
            return _error(409, str(exc))
        log.info("rollout %s: %s", step, body["moved"])
        return JSONResponse(body)

    return handler


def _central_client(
    coordinator: Coordinator, url: str | None, transport: httpx.AsyncBaseTransport | None
) -> httpx.AsyncClient:
    """The gateway's client for central InfluxDB (at `url`, else fleet.yaml's)."""
    central = coordinator.config.fleet.central.influxdb
    timeout = coordinator.settings.central_timeout_s
    return httpx.AsyncClient(
        base_url=(url or central.url).rstrip("/"),
        auth=credentials_from_env(central),
        timeout=httpx.Timeout(timeout, connect=min(timeout, 5.0)),
        transport=transport,
    )


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
        if _reader(request) is not None:
            raise HTTPException(401, "the reader token is required")

    @asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        client = _central_client(coordinator, central_url, central_transport)
        app.state.central = client
        try:
            yield
        finally:
            await client.aclose()
            reader.close()

    # Imported here: the reports read the ledger through federation.coordinator, so a module-level
    # import would make the two packages import each other.
    from federation.coordinator.web import web_routes
    from federation.reporting.http import routes as reporting_routes

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
            Route("/api/v1/rollouts", _rollout_handler("start"), methods=["POST"]),
            Route("/api/v1/rollouts/advance", _rollout_handler("advance"), methods=["POST"]),
            Route("/api/v1/rollouts/rollback", _rollout_handler("rollback"), methods=["POST"]),
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
