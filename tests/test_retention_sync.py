"""Before a direct retention apply, the coordinator the agents pull from is asked what it
desires; with only a reader token it can be checked, not changed (the operator token path runs
against a real coordinator in tests/agent/test_retention_path.py)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml

from federation.config import load_config
from federation.policy import desired_retention
from federation.policy.retention_sync import RetentionConflict, sync_coordinator_retention

ENV = {"FEDERATION_READER_TOKEN": "reader"}


def _serving(duration_ns: int | None) -> httpx.MockTransport:
    """A coordinator whose `GET /api/v1/dcs` desires `duration_ns` for dub1 (None: down)."""

    def handle(request: httpx.Request) -> httpx.Response:
        if duration_ns is None:
            raise httpx.ConnectError("connection refused", request=request)
        assert request.url.path == "/api/v1/dcs"
        assert request.headers["Authorization"] == "Bearer reader"
        spec: dict[str, Any] = {"name": "raw", "duration_ns": duration_ns,
                                "shard_duration_ns": 86_400 * 10**9, "default": True}  # fmt: skip
        return httpx.Response(200, json={"dcs": [{"dc": "dub1", "retention": {"desired": [spec]}}]})

    return httpx.MockTransport(handle)


def test_reader_token_checks_what_the_coordinator_desires(config_dir: Path) -> None:
    config = load_config(config_dir)
    assert config.fleet.central.operator_token_env is None
    same = desired_retention(config, "dub1").policies[0].duration_ns
    sync = sync_coordinator_retention(config, ["dub1"], environ=ENV, transport=_serving(same))
    assert sync.state == "matches"

    with pytest.raises(RetentionConflict) as refused:
        sync_coordinator_retention(
            config, ["dub1"], environ=ENV, transport=_serving(31 * 86_400 * 10**9)
        )
    assert "dub1: the coordinator desires raw 31d (shards 1d), this config raw 30d" in str(
        refused.value
    )

    down = sync_coordinator_retention(config, ["dub1"], environ=ENV, transport=_serving(None))
    assert down.state == "unchecked" and "connection refused" in down.detail
    assert sync_coordinator_retention(config, ["dub1"], environ={}).state == "unchecked"


def test_operator_token_with_an_unreachable_coordinator_refuses(config_dir: Path) -> None:
    path = config_dir / "fleet.yaml"
    fleet = yaml.safe_load(path.read_text())
    fleet["central"]["operator_token_env"] = "FEDERATION_OPERATOR_TOKEN"
    path.write_text(yaml.safe_dump(fleet, sort_keys=False))
    config = load_config(config_dir)
    with pytest.raises(RetentionConflict) as refused:
        sync_coordinator_retention(
            config, ["dub1"], environ={"FEDERATION_OPERATOR_TOKEN": "op"}, transport=_serving(None)
        )
    assert "cannot make the coordinator desire this retention too" in str(refused.value)
    assert "Nothing was changed" in str(refused.value)
