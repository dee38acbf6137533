"""What every client of the coordinator's HTTP API shares: one httpx client per coordinator
replica with a bearer token and explicit timeouts, fail-over between the replicas, and errors
turned into CoordinatorError (or InvalidInput when the coordinator refused a config, listing
every problem).

Fail-over (`failover.Replicas`, shared with the agent's gateway writes): a request goes to the
replica that answered last; when that replica cannot have handled it, the next one is tried,
and after a round over all of them the client waits the retry policy's next delay (0.5 s, then
1 s) and starts another, up to three rounds. "Cannot have handled it" means the connection was
never made, or the answer was 503 (a replica draining refuses new requests with it). A GET,
which changes nothing, also moves on after a read failure or a 502/504 from a proxy; a POST
does not, since the replica may have applied it.

    status / failure         GET          POST
    connect error, 503       next replica next replica
    read error, 502, 504     next replica CoordinatorError
    any other answer         returned or raised as is
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any, Self

import httpx

from federation.clients.failover import Replicas
from federation.core.retry import RetryPolicy
from federation.errors import CoordinatorError, InvalidInput

Params = Mapping[str, str] | httpx.QueryParams

UNAVAILABLE = 503
"""What a draining replica answers a new request with: it was not handled; try another."""

_GATEWAY_FAILURES = (502, 504)

DEFAULT_RETRY = RetryPolicy(attempts=3, initial_s=0.5, multiplier=2.0, max_s=30.0)
"""Three rounds over every replica, 0.5 s and 1 s apart."""


class CoordinatorHttp:
    """The coordinator (one or several replicas), as one bearer of a token (a DC's agent, an
    operator, a reader)."""

    def __init__(
        self,
        url: str | Sequence[str],
        token: str,
        *,
        timeout: float = 10.0,
        transport: httpx.BaseTransport | None = None,
        retry: RetryPolicy = DEFAULT_RETRY,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        self.replicas = Replicas(url, retry)
        self._sleep = sleep
        self._clients = [
            httpx.Client(
                base_url=u,
                headers={"Authorization": f"Bearer {token}"},
                timeout=httpx.Timeout(timeout, connect=min(timeout, 5.0)),
                transport=transport,
            )
            for u in self.replicas.urls
        ]

    @property
    def urls(self) -> tuple[str, ...]:
        """Every replica's URL, in the order they are tried."""
        return self.replicas.urls

    @property
    def url(self) -> str:
        """The replica the next request goes to first."""
        return self.replicas.url

    def close(self) -> None:
        for client in self._clients:
            client.close()

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _request(
        self,
        method: str,
        path: str,
        *,
        params: Params | None = None,
        body: Mapping[str, Any] | None = None,
    ) -> httpx.Response:
        """Send one request, failing over between replicas (the module's table);
        CoordinatorError with the URL, status and the coordinator's `error` text for anything
        but a 2xx answer."""
        safe = method.upper() in ("GET", "HEAD")
        failure: CoordinatorError | None = None
        for index in self.replicas.tries(self._sleep):
            url = self.replicas.urls[index] + path
            try:
                response = self._clients[index].request(method, path, params=params, json=body)
            except httpx.HTTPError as exc:
                failure = CoordinatorError(url, f"request failed: {exc.__class__.__name__}: {exc}")
                if not (safe or isinstance(exc, httpx.ConnectError | httpx.ConnectTimeout)):
                    raise failure from None
            else:
                status = response.status_code
                if status != UNAVAILABLE and not (safe and status in _GATEWAY_FAILURES):
                    return self._answer(url, response)
                failure = CoordinatorError(
                    url, f"unavailable: {response.text[:200]}", status, response.text[:500]
                )
        assert failure is not None
        raise failure

    def _answer(self, url: str, response: httpx.Response) -> httpx.Response:
        if response.status_code < 300:
            return response
        text = response.text[:500]
        try:
            data = response.json()
        except ValueError:
            data = None
        if isinstance(data, dict) and isinstance(data.get("problems"), list):
            raise InvalidInput(
                "the coordinator refused the config, nothing changed:\n"
                + "\n".join(str(p) for p in data["problems"])
            )
        message = data.get("error") if isinstance(data, dict) else None
        raise CoordinatorError(
            url, str(message or text or response.reason_phrase), response.status_code, text
        )

    def _object(
        self,
        method: str,
        path: str,
        *,
        params: Params | None = None,
        body: Mapping[str, Any] | None = None,
    ) -> dict[str, Any]:
        """`_request`, and the answer as a JSON object (CoordinatorError if it is not one)."""
        response = self._request(method, path, params=params, body=body)
        try:
            data = response.json()
        except ValueError:
            data = None
        if not isinstance(data, dict):
            raise CoordinatorError(
                self.url + path, "answer is not a JSON object", response.status_code
            )
        return data
