"""Coordinator clients fail over between replicas: a replica that is down or draining is
skipped, a POST is never sent twice once a replica may have taken it, and after a whole round
without an answer the client backs off before the next."""

from __future__ import annotations

from pathlib import Path

import httpx
import pytest

from federation.clients.coordinator_http import CoordinatorHttp
from federation.config import load_config
from federation.core.retry import RetryPolicy
from federation.errors import ConfigProblems, CoordinatorError

A, B = "http://replica-a", "http://replica-b"


def _client(handler: httpx.MockTransport, sleeps: list[float]) -> CoordinatorHttp:
    retry = RetryPolicy(attempts=3, initial_s=0.5)
    return CoordinatorHttp([A, B], "t", transport=handler, retry=retry, sleep=sleeps.append)


def test_a_replica_that_refuses_connections_or_drains_is_skipped() -> None:
    seen: list[str] = []

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(f"{request.method} {request.url.host}")
        if request.url.host == "replica-a":
            raise httpx.ConnectError("connection refused", request=request)
        if request.method == "POST" and len(seen) < 4:
            return httpx.Response(503, json={"error": "draining"})
        return httpx.Response(200, json={"ok": request.url.host})

    sleeps: list[float] = []
    client = _client(httpx.MockTransport(handler), sleeps)
    assert client._object("GET", "/x") == {"ok": "replica-b"}
    assert client.url == B  # the replica that answered is asked first next time
    assert client._object("POST", "/y", body={}) == {"ok": "replica-b"}
    assert seen == ["GET replica-a", "GET replica-b", "POST replica-b", "POST replica-a",
                    "POST replica-b"]  # fmt: skip
    assert sleeps == [0.5]


def test_a_post_whose_answer_was_lost_is_not_sent_again() -> None:
    seen: list[str] = []

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(f"{request.method} {request.url.host}")
        raise httpx.ReadTimeout("no answer", request=request)

    client = _client(httpx.MockTransport(handler), [])
    with pytest.raises(CoordinatorError, match="ReadTimeout"):
        client._object("POST", "/rollouts", body={})
    assert seen == ["POST replica-a"]


def test_when_every_replica_is_down_the_client_backs_off_then_fails() -> None:
    def handler(request: httpx.Request) -> httpx.Response:
        return httpx.Response(502, text="bad gateway")

    sleeps: list[float] = []
    with pytest.raises(CoordinatorError) as info:
        _client(httpx.MockTransport(handler), sleeps)._object("GET", "/x")
    assert info.value.status == 502
    assert sleeps == [0.5, 1.0]


def test_fleet_yaml_names_further_coordinator_replicas(config_dir: Path) -> None:
    fleet = config_dir / "fleet.yaml"
    text = fleet.read_text()
    line = next(x for x in text.splitlines() if "coordinator_url:" in x)
    indent = line[: len(line) - len(line.lstrip())]
    url = line.split("coordinator_url:")[1].strip()
    fleet.write_text(
        text.replace(line, f"{line}\n{indent}coordinator_replicas: [{url}, 'http://c2:8086']")
    )
    central = load_config(config_dir).fleet.central
    assert central.coordinator_urls == (url, "http://c2:8086")
    fleet.write_text(fleet.read_text().replace("'http://c2:8086'", "'c2:8086'"))
    with pytest.raises(ConfigProblems) as info:
        load_config(config_dir)
    assert "central.coordinator_replicas.1" in str(info.value.problems[0])
