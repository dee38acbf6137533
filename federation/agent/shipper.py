"""The gateway write client: ships a window's points to the coordinator's gateway.

The gateway speaks InfluxDB 1.x's `POST /write` and authenticates the DC (HTTP basic auth, user
= DC name, password = the DC's agent token). What each answer means here:

    204            stored
    400, 403       refused (a point breaks a rule): `ShipmentRefused`, never retried
    401            bad credentials: `ShipmentError`, never retried
    413            too big: the batch is split in halves and each half sent
    429, 5xx,      tried at the next coordinator replica; after a round over every replica,
    network errors retried with exponential backoff, a bounded number of rounds, then
                   `ShipmentError`

Several replicas serve the gateway over one ledger (fleet.yaml's `coordinator_url` and
`coordinator_replicas`); the shipper fails over between them as every coordinator client does
(`federation.clients.failover`). Unlike an Agent API POST, a write is sent again after a lost
answer too: re-writing a batch writes the same points (same measurement, tags and time) and a
manifest the ledger already holds is recorded again unchanged.

A window is shipped in batches of summaries and then, alone and last, its manifest, only once
every summary batch was stored, whichever replica stored it: a manifest at central therefore
means all of its window's summaries are there too. The summaries are made and serialized in a
worker thread while the gateway stores the batches before; `connections` summary batches are
in flight at once (a gateway, or central, parses one while it receives the next), and after a
failed one no further batch is sent. The first batch is small and each next one twice as large,
up to `batch_points`: the gateway starts on a window's first summaries as soon as they are
made, and a large window still goes in few requests.

    ShipmentError (CoordinatorError)   a write failed: URL, status, body
    └── ShipmentRefused                the gateway refused the batch: rule, measurement, key
"""

from __future__ import annotations

import itertools
import json
import logging
import threading
import time
from collections import deque
from collections.abc import Callable, Iterable, Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

import httpx

from federation.agent.overlap import read_ahead
from federation.clients.failover import Replicas
from federation.core.lineprotocol import serialize
from federation.core.plan import MANIFEST_MEASUREMENT, ShippedPlan
from federation.core.points import Point
from federation.core.retry import RetryPolicy
from federation.errors import CoordinatorError

log = logging.getLogger(__name__)

DEFAULT_BATCH_POINTS = 2_000
"""The most points in one batch. A window's last batch is stored after every point was made,
by one connection alone: the smaller it is, the sooner the manifest follows."""
DEFAULT_BATCH_BYTES = 4 * 1024 * 1024
FIRST_BATCH_POINTS = 500
"""Points in a window's first batch; each next batch is twice as large, up to `batch_points`."""
DEFAULT_CONNECTIONS = 2
"""Summary batches of one window in flight at once."""
SHIP_AHEAD_BATCHES = 2
"""Batches made and serialized ahead of the one the gateway is storing."""
SERIALIZE_POINTS = 1_000
"""Points serialized at a time."""


class ShipmentError(CoordinatorError):
    """A write to the gateway failed (after retries, where retrying made sense)."""

    service = "gateway"


class ShipmentRefused(ShipmentError):
    """The gateway refused a batch: nothing of it was stored, and resending will not help.

    `rule`, `measurement` and `key` are what the gateway named (never a data value).
    """

    def __init__(
        self,
        url: str,
        message: str,
        status: int,
        body: str,
        *,
        rule: str = "",
        measurement: str = "",
        key: str = "",
    ) -> None:
        self.rule = rule
        self.measurement = measurement
        self.key = key
        super().__init__(url, message, status, body)


@dataclass
class ShipStats:
    """Counters of what a shipper did, for logs and the bench."""

    points: int = 0
    requests: int = 0
    retries: int = 0
    splits: int = 0


class _Stopped(Exception):
    """A stop request arrived while waiting to retry."""


class Shipper:
    """Writes windows to the gateway (one URL, or every coordinator replica's) as one DC; safe
    to share between threads.

    `database` and `retention_policy`, when given (the coordinator's desired state names
    them), override the plan's central database and retention policy. `sleep`, when given,
    replaces the real wait between retries (tests pass a recorder); by default the wait ends
    early when the window's stop event is set.
    """

    def __init__(
        self,
        url: str | Sequence[str],
        *,
        dc: str,
        token: str,
        database: str | None = None,
        retention_policy: str | None = None,
        batch_points: int = DEFAULT_BATCH_POINTS,
        batch_bytes: int = DEFAULT_BATCH_BYTES,
        first_batch_points: int = FIRST_BATCH_POINTS,
        connections: int = DEFAULT_CONNECTIONS,
        retry: RetryPolicy | None = None,
        sleep: Callable[[float], None] | None = None,
        timeout: float = 30.0,
        transport: httpx.BaseTransport | None = None,
    ) -> None:
        if min(batch_points, batch_bytes, first_batch_points) < 1:
            raise ValueError("batch sizes must be positive")
        if connections < 1:
            raise ValueError("connections must be >= 1")
        self.replicas = Replicas(url, retry)
        self.dc = dc
        self.database = database
        self.retention_policy = retention_policy
        self.batch_points = batch_points
        self.batch_bytes = batch_bytes
        self.first_batch_points = first_batch_points
        self.connections = connections
        self._sleep = sleep
        self._clients = [
            httpx.Client(
                base_url=u,
                auth=(dc, token),
                timeout=httpx.Timeout(timeout, connect=min(timeout, 5.0)),
                transport=transport,
            )
            for u in self.replicas.urls
        ]
        self._stats_lock = threading.Lock()
        self.stats = ShipStats()

    @property
    def url(self) -> str:
        """The gateway the next batch goes to first."""
        return self.replicas.url

    @property
    def retry(self) -> RetryPolicy:
        """The back-off between rounds over the gateways, and how many rounds."""
        return self.replicas.retry

    @retry.setter
    def retry(self, policy: RetryPolicy) -> None:
        self.replicas.retry = policy

    def close(self) -> None:
        for client in self._clients:
            client.close()

    def __enter__(self) -> Shipper:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def ping(self) -> None:
        """Check a gateway answers `/ping` (the first that does, in fail-over order, becomes
        the one written to first); ShipmentError naming the last one tried otherwise."""
        failure: ShipmentError | None = None
        one_round = itertools.islice(self.replicas.tries(time.sleep), len(self.replicas.urls))
        for index in one_round:
            url = self.replicas.urls[index] + "/ping"
            try:
                response = self._clients[index].get("/ping")
            except httpx.HTTPError as exc:
                failure = ShipmentError(url, _describe(exc))
                continue
            if response.status_code < 300:
                return
            failure = ShipmentError(
                url, "unexpected answer", response.status_code, response.text[:500]
            )
        assert failure is not None
        raise failure

    def ship_window(
        self,
        plan: ShippedPlan,
        points: Iterable[Point],
        *,
        stop: threading.Event | None = None,
    ) -> bool:
        """Ship one window: its summaries in batches, then its manifest (the last point) alone,
        once every summary batch was accepted.

        `points` may be made while they are shipped (`WindowPoints`): a worker thread takes
        them, serialized into batches, a bounded number ahead of the batches the gateway is
        storing; `connections` batches are sent at once. Returns True when every point was
        accepted; False when `stop` was set before the manifest was sent (summaries already
        sent stay at central, harmlessly: without the manifest the window is not shipped, and
        the next computation overwrites them). Raises ShipmentRefused when the gateway refuses
        a batch, ShipmentError when it cannot be reached after the retries or refuses the
        credentials, ValueError when the last point is not a manifest; in each case no batch
        is sent after the failure is seen, and the manifest is not sent.
        """
        if isinstance(points, Sequence) and (
            not points or points[-1].measurement != MANIFEST_MEASUREMENT
        ):
            raise ValueError("a window's points must end with its manifest")
        database = self.database or plan.central_database
        rp = self.retention_policy or plan.central_retention_policy
        manifest: list[Point] = []
        batches = read_ahead(
            self._batches(_holding_back_the_last(points, manifest), ramp=True),
            SHIP_AHEAD_BATCHES,
            name=f"ship {plan.aggregation}",
        )
        in_flight: deque[Future[None]] = deque()
        try:
            with ThreadPoolExecutor(
                self.connections, thread_name_prefix=f"ship {plan.aggregation} write"
            ) as senders:
                try:
                    for batch in batches:
                        if stop is not None and stop.is_set():
                            return False
                        while len(in_flight) >= self.connections:
                            in_flight.popleft().result()
                        in_flight.append(senders.submit(self._write, batch, database, rp, stop))
                    while in_flight:
                        in_flight.popleft().result()
                finally:
                    # A failure seen: what is already in flight finishes, nothing more is sent.
                    for sending in in_flight:
                        sending.cancel()
            if not manifest or manifest[0].measurement != MANIFEST_MEASUREMENT:
                raise ValueError("a window's points must end with its manifest")
            if stop is not None and stop.is_set():
                return False
            self._write([serialize(manifest)], database, rp, stop)
        except _Stopped:
            return False
        finally:
            batches.close()
        return True

    def write_points(
        self, points: Sequence[Point], *, database: str, retention_policy: str
    ) -> None:
        """Write points in batches, with the same retries and errors as `ship_window`."""
        for batch in self._batches(points):
            self._write(batch, database, retention_policy, None)

    def _batches(self, points: Iterable[Point], *, ramp: bool = False) -> Iterator[list[bytes]]:
        """Serialized points grouped into batches of at most batch_points and ~batch_bytes;
        with `ramp`, the first of at most first_batch_points, each next one twice as large."""
        limit = min(self.first_batch_points, self.batch_points) if ramp else self.batch_points
        batch: list[bytes] = []
        size = 0
        for chunk in _chunks(points, min(SERIALIZE_POINTS, limit)):
            for line in serialize(chunk).splitlines(keepends=True):
                if batch and (len(batch) >= limit or size + len(line) > self.batch_bytes):
                    yield batch
                    batch, size = [], 0
                    limit = min(2 * limit, self.batch_points)
                batch.append(line)
                size += len(line)
        if batch:
            yield batch

    def _write(
        self, lines: list[bytes], database: str, rp: str, stop: threading.Event | None
    ) -> None:
        """Write one batch, failing over between the gateways with back-off between rounds;
        a 413 splits it in halves, each written the same way."""
        params = {"db": database, "rp": rp, "precision": "ns"}
        body = b"".join(lines)
        url, status, message, response_body = self.url + "/write", None, "", ""
        for attempt, index in enumerate(self.replicas.tries(lambda d: self._backoff(d, stop))):
            if attempt:
                with self._stats_lock:
                    self.stats.retries += 1
            url = self.replicas.urls[index] + "/write"
            failure = self._post(index, params, body)
            if failure is None:
                with self._stats_lock:
                    self.stats.points += len(lines)
                return
            status, message, response_body = failure
            if status == 413 and len(lines) > 1:
                with self._stats_lock:
                    self.stats.splits += 1
                half = len(lines) // 2
                self._write(lines[:half], database, rp, stop)
                self._write(lines[half:], database, rp, stop)
                return
            if status in (400, 403):
                raise _refusal(url, status, message, response_body)
            if status is not None and status < 500 and status != 429:
                raise ShipmentError(url, message, status, response_body)
            if len(self.replicas.urls) > 1:
                log.warning(
                    "gateway write to %s failed (%s), trying the next coordinator replica",
                    url,
                    message if status is None else f"HTTP {status}",
                )
        raise ShipmentError(url, f"{message} ({self.replicas.gave_up()})", status, response_body)

    def _post(
        self, index: int, params: dict[str, str], body: bytes
    ) -> tuple[int | None, str, str] | None:
        """None when gateway `index` stored the batch (204/200); otherwise (status or None,
        message, body excerpt)."""
        with self._stats_lock:
            self.stats.requests += 1
        try:
            response = self._clients[index].post("/write", params=params, content=body)
        except httpx.HTTPError as exc:
            return None, _describe(exc), ""
        if response.status_code in (200, 204):
            return None
        text = response.text[:1000]
        return response.status_code, _message(response) or response.reason_phrase, text

    def _backoff(self, delay: float, stop: threading.Event | None) -> None:
        log.warning("gateway write failed at every gateway tried, retrying in %.2fs", delay)
        self._wait(delay, stop)

    def _wait(self, delay: float, stop: threading.Event | None) -> None:
        if self._sleep is not None:
            self._sleep(delay)
            if stop is not None and stop.is_set():
                raise _Stopped
        elif stop is not None:
            if stop.wait(delay):
                raise _Stopped
        else:
            time.sleep(delay)


def _holding_back_the_last(points: Iterable[Point], last: list[Point]) -> Iterator[Point]:
    """Every point but the last, which is put in `last` once `points` is exhausted."""
    iterator = iter(points)
    held = next(iterator, None)
    if held is None:
        return
    for point in iterator:
        yield held
        held = point
    last.append(held)


def _chunks(points: Iterable[Point], size: int) -> Iterator[list[Point]]:
    chunk: list[Point] = []
    for point in points:
        chunk.append(point)
        if len(chunk) == size:
            yield chunk
            chunk = []
    if chunk:
        yield chunk


def _describe(exc: httpx.HTTPError) -> str:
    return f"request failed: {exc.__class__.__name__}: {exc}"


def _json_object(text: str | bytes) -> dict[str, Any]:
    """`text` parsed as a JSON object; empty when it is not one."""
    try:
        data = json.loads(text)
    except ValueError:
        return {}
    return data if isinstance(data, dict) else {}


def _message(response: httpx.Response) -> str:
    return str(_json_object(response.content).get("error") or response.text[:200]).strip()


def _refusal(url: str, status: int, message: str, body: str) -> ShipmentRefused:
    data = _json_object(body)
    return ShipmentRefused(
        url,
        message,
        status,
        body,
        rule=str(data.get("rule") or ""),
        measurement=str(data.get("measurement") or ""),
        key=str(data.get("key") or ""),
    )
