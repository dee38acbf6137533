"""A small typed client for the InfluxDB 1.x HTTP API (`/ping`, `/query`, `/write`).

One `httpx.Client` with explicit timeouts; an injectable transport for tests; every failure
becomes an `InfluxError` naming the URL and status. Query results are streamed in chunks so a
whole window of raw events is never held twice.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import httpx

from federation.config.models import Credentials
from federation.core.durations import NS_PER_UNIT
from federation.core.influxql import quote_ident, quote_string
from federation.errors import InfluxError

__all__ = [
    "InfluxClient",
    "RetentionPolicyInfo",
    "Series",
    "credentials_from_env",
    "parse_influx_duration",
    "quote_ident",
    "quote_string",
    "rows",
]


@dataclass(frozen=True)
class Series:
    """One series of a query result: name, tags (for GROUP BY queries), columns and rows."""

    name: str
    columns: list[str]
    values: list[list[Any]]
    tags: dict[str, str] = field(default_factory=dict)


def credentials_from_env(creds: Credentials | None) -> tuple[str, str] | None:
    """Read (username, password) from the environment variables a config names, if any.

    A named variable that is not set is an error: silently connecting without credentials would
    hide a deployment mistake.
    """
    if creds is None or (creds.username_env is None and creds.password_env is None):
        return None
    values = []
    for name in (creds.username_env, creds.password_env):
        if name is None:
            values.append("")
            continue
        value = os.environ.get(name)
        if value is None:
            raise InfluxError("-", f"environment variable {name} is not set")
        values.append(value)
    return values[0], values[1]


class InfluxClient:
    """A client for one InfluxDB 1.x server."""

    def __init__(
        self,
        url: str,
        *,
        auth: tuple[str, str] | None = None,
        timeout: float = 30.0,
        transport: httpx.BaseTransport | None = None,
    ) -> None:
        self.url = url.rstrip("/")
        self._client = httpx.Client(
            base_url=self.url,
            auth=auth,
            timeout=httpx.Timeout(timeout, connect=min(timeout, 5.0)),
            transport=transport,
        )

    def close(self) -> None:
        self._client.close()

    def __enter__(self) -> InfluxClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _request(self, method: str, path: str, **kwargs: Any) -> httpx.Response:
        try:
            response = self._client.request(method, path, **kwargs)
        except httpx.HTTPError as exc:
            raise InfluxError(
                self.url + path, f"request failed: {exc.__class__.__name__}: {exc}"
            ) from None
        if response.status_code >= 300:
            body = response.text[:500]
            try:
                message = str(response.json().get("error", body))
            except ValueError:
                message = body or response.reason_phrase
            raise InfluxError(self.url + path, message, response.status_code, body)
        return response

    def ping(self) -> str:
        """Check the server answers; return its version (header X-Influxdb-Version)."""
        response = self._request("GET", "/ping")
        return str(response.headers.get("X-Influxdb-Version", "unknown"))

    def query(self, q: str, *, database: str | None = None, epoch: str = "ns") -> list[Series]:
        """Run one or more InfluxQL statements; return the series of every statement.

        A statement-level error (`{"error": ...}` inside a 200 answer) is raised as InfluxError.
        """
        return list(self.iter_series(q, database=database, epoch=epoch, chunked=False))

    def execute(self, q: str, *, database: str | None = None) -> None:
        """Run statements that change state (CREATE, ALTER, DROP) with POST."""
        params = {"q": q}
        if database:
            params["db"] = database
        response = self._request("POST", "/query", data=params)
        self._check_results(response.json(), q)

    def iter_series(
        self,
        q: str,
        *,
        database: str | None = None,
        epoch: str = "ns",
        chunked: bool = True,
        chunk_size: int = 10_000,
    ) -> Iterator[Series]:
        """Stream a query's series chunk by chunk (a long series arrives as several pieces)."""
        params: dict[str, str] = {"q": q, "epoch": epoch}
        if database:
            params["db"] = database
        if chunked:
            params["chunked"] = "true"
            params["chunk_size"] = str(chunk_size)
        path = "/query"
        try:
            with self._client.stream("GET", path, params=params) as response:
                if response.status_code >= 300:
                    response.read()
                    raise InfluxError(
                        self.url + path,
                        response.text[:500],
                        response.status_code,
                        response.text[:500],
                    )
                for line in response.iter_lines():
                    if not line.strip():
                        continue
                    yield from self._series_of(json.loads(line), q)
        except httpx.HTTPError as exc:
            raise InfluxError(
                self.url + path, f"request failed: {exc.__class__.__name__}: {exc}"
            ) from None

    def _check_results(self, payload: Mapping[str, Any], q: str) -> None:
        list(self._series_of(payload, q))

    def _series_of(self, payload: Mapping[str, Any], q: str) -> Iterator[Series]:
        if "error" in payload:
            raise InfluxError(self.url + "/query", str(payload["error"]))
        for result in payload.get("results", []):
            if "error" in result:
                raise InfluxError(self.url + "/query", f"{result['error']} (in: {q[:200]})")
            for series in result.get("series", []):
                yield Series(
                    name=series.get("name", ""),
                    columns=series.get("columns", []),
                    values=series.get("values", []),
                    tags=series.get("tags", {}) or {},
                )

    def write(
        self,
        body: bytes,
        *,
        database: str,
        retention_policy: str | None = None,
        precision: str = "ns",
    ) -> None:
        """Write line protocol; succeeds only on 204 (InfluxDB stored every point)."""
        params = {"db": database, "precision": precision}
        if retention_policy:
            params["rp"] = retention_policy
        self._request("POST", "/write", params=params, content=body)

    def create_database(self, name: str) -> None:
        self.execute(f"CREATE DATABASE {quote_ident(name)}")

    def databases(self) -> list[str]:
        return [row[0] for s in self.query("SHOW DATABASES") for row in s.values]

    def retention_policies(self, database: str) -> list[RetentionPolicyInfo]:
        """The database's retention policies, as `SHOW RETENTION POLICIES` reports them."""
        result = []
        for series in self.query(f"SHOW RETENTION POLICIES ON {quote_ident(database)}"):
            index = {name: i for i, name in enumerate(series.columns)}
            for row in series.values:
                result.append(
                    RetentionPolicyInfo(
                        name=row[index["name"]],
                        duration_ns=parse_influx_duration(row[index["duration"]]),
                        shard_duration_ns=parse_influx_duration(row[index["shardGroupDuration"]]),
                        replication=int(row[index["replicaN"]]),
                        default=bool(row[index["default"]]),
                    )
                )
        return result

    def measurements(self, database: str) -> list[str]:
        return [
            row[0] for s in self.query("SHOW MEASUREMENTS", database=database) for row in s.values
        ]

    def tag_keys(self, database: str, measurement: str) -> list[str]:
        q = f"SHOW TAG KEYS FROM {quote_ident(measurement)}"
        return [row[0] for s in self.query(q, database=database) for row in s.values]

    def field_keys(self, database: str, measurement: str) -> dict[str, str]:
        q = f"SHOW FIELD KEYS FROM {quote_ident(measurement)}"
        return {row[0]: row[1] for s in self.query(q, database=database) for row in s.values}


@dataclass(frozen=True)
class RetentionPolicyInfo:
    name: str
    duration_ns: int
    shard_duration_ns: int
    replication: int
    default: bool


# The units of Go's time.Duration.String(), which InfluxDB reports durations in.
_GO_UNITS = {unit: NS_PER_UNIT[unit] for unit in ("h", "m", "s", "ms", "us", "µs", "ns")}


def parse_influx_duration(text: str) -> int:
    """Parse the Go-style durations InfluxDB reports (`720h0m0s`, `0s` for infinite)."""
    total = 0
    number = ""
    unit = ""
    for char in text + "#":
        if char.isdigit() or char == ".":
            if unit:
                total += int(float(number) * _GO_UNITS[unit])
                number, unit = "", ""
            number += char
        elif char == "#":
            if number:
                total += int(float(number) * _GO_UNITS[unit or "s"])
        else:
            unit += char
    return total


def rows(series: Sequence[Series]) -> Iterator[dict[str, Any]]:
    """Rows of series as dicts (column -> value), tags merged in."""
    for s in series:
        for values in s.values:
            row = dict(zip(s.columns, values, strict=False))
            row.update(s.tags)
            yield row
