"""The gateway's HTTP face: `GET /ping` and `POST /write`, as InfluxDB 1.x answers them.

A write is authenticated as a DC (basic auth, bearer token, or `u`/`p`), its target database
and retention policy checked, its body read within the size limit (gunzipped when sent so),
then parsed and checked (`parse`, `rules`), refused as a whole (`refusal`) or forwarded byte for
byte to central; the manifests it carries update the ledger only after central answered 204.
All of that happens in the DC's shipping turn (`ordering`), which one replica holds at a time.
"""

from __future__ import annotations

import logging
import threading
import time
import zlib

import httpx
from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from federation.coordinator.endpoints import (
    coordinator_of,
)
from federation.coordinator.gateway.ordering import ShippingTurns
from federation.coordinator.gateway.refusal import Refusal, log_refusal
from federation.coordinator.gateway.rules import CheckedBatch, check_body
from federation.coordinator.refusals import note_refusal
from federation.coordinator.reload import follow_generation
from federation.coordinator.service import Coordinator, parse_basic
from federation.coordinator.tracking import (
    find_stale,
    record_manifests,
)
from federation.influx import credentials_from_env

log = logging.getLogger(__name__)


INFLUXDB_VERSION = "1.6.7"
"""What `/ping` reports in X-Influxdb-Version: the InfluxDB 1.x API the gateway speaks."""


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
        coordinator_of(request).metrics.observe_request(time.perf_counter() - started)


async def _write(request: Request) -> Response:
    coordinator = coordinator_of(request)
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
    turns: ShippingTurns = request.app.state.shipping
    async with turns.hold(dc):
        return await _check_forward_record(request, coordinator, dc, raw, encoding, precision, rp)


def _checked(
    coordinator: Coordinator, dc: str, body: bytes, precision: str, ended_ns: int, now_ns: int
) -> CheckedBatch:
    """`check_body` against the rules this replica runs; before a batch is refused, against
    the config generation and the plan versions the ledger holds now. A reload or rollout
    taken through another replica reaches this one at its next look at the ledger (every few
    seconds), but an agent may already run, and ship, the version it brought: refusing that
    would fail the rollout's canary for a replica's delay."""
    try:
        return check_body(coordinator.checker(), dc, body, precision, ended_ns)
    except Refusal as refusal:
        if refusal.status == 503:
            raise
    follow_generation(coordinator)
    checker = coordinator.refresh_plans()
    try:
        return check_body(checker, dc, body, precision, ended_ns)
    except Refusal as refusal:
        if refusal.status == 503:
            raise
        refused = refusal
    note_refusal(coordinator.ledger, checker, dc, body, precision, refused, now_ns)
    raise refused


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
            batch = _checked(coordinator, dc, body, precision or "ns", ended_ns, now_ns)
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


def central_client(
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
