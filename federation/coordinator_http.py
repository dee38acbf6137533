"""What every client of the coordinator's HTTP API shares: one httpx client with a bearer
token and explicit timeouts, and errors turned into CoordinatorError (or InvalidInput when the
coordinator refused a config, listing every problem)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Self

import httpx

from federation.errors import CoordinatorError, InvalidInput

Params = Mapping[str, str] | httpx.QueryParams


class CoordinatorHttp:
    """One coordinator, as one bearer of a token (a DC's agent, an operator, a reader)."""

    def __init__(
        self,
        url: str,
        token: str,
        *,
        timeout: float = 10.0,
        transport: httpx.BaseTransport | None = None,
    ) -> None:
        self.url = url.rstrip("/")
        self._client = httpx.Client(
            base_url=self.url,
            headers={"Authorization": f"Bearer {token}"},
            timeout=httpx.Timeout(timeout, connect=min(timeout, 5.0)),
            transport=transport,
        )

    def close(self) -> None:
        self._client.close()

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
        """Send one request; CoordinatorError with the URL, status and the coordinator's
        `error` text for anything but a 2xx answer."""
        url = self.url + path
        try:
            response = self._client.request(method, path, params=params, json=body)
        except httpx.HTTPError as exc:
            raise CoordinatorError(
                url, f"request failed: {exc.__class__.__name__}: {exc}"
            ) from None
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
