"""A small federation for agent tests: the example config pointed at a DC influxd and a central
influxd, and the real coordinator (gateway + Agent API) served by uvicorn on loopback."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import uvicorn
import yaml

from federation.config import FederationConfig, load_config
from federation.coordinator.api import build_app
from federation.coordinator.app import ensure_central
from federation.coordinator.ledger import open_ledger
from federation.coordinator.service import Coordinator, CoordinatorSettings, Tokens
from federation.core.clock import Clock
from federation.devstack.processes import free_port
from federation.influx import InfluxClient

DC = "fra1"
READER = "reader-secret"


def token(dc: str) -> str:
    return f"agent-secret-{dc}"


def export_agent_tokens(config: FederationConfig, monkeypatch: pytest.MonkeyPatch) -> None:
    """Set every DC's agent token in the environment variable its fleet entry names."""
    for name, dc in config.fleet.dcs.items():
        monkeypatch.setenv(dc.agent_token_env, token(name))


def write_fleet(config_dir: Path, dc_url: str, central_url: str, coordinator_url: str) -> None:
    """Point fleet.yaml at the local servers, without credentials."""
    path = config_dir / "fleet.yaml"
    data = yaml.safe_load(path.read_text())
    data["central"]["influxdb"] = {"url": central_url}
    data["central"]["coordinator_url"] = coordinator_url
    data["central"]["ledger_url"] = f"sqlite:///{config_dir / 'ledger.sqlite'}"
    for name, dc in data["dcs"].items():
        dc["influxdb"] = {"url": dc_url if name == DC else dc["influxdb"]["url"]}
    path.write_text(yaml.safe_dump(data, sort_keys=False))


@dataclass
class Served:
    """A running coordinator: its URL, the Coordinator object and its ledger."""

    url: str
    coordinator: Coordinator
    server: uvicorn.Server
    thread: threading.Thread

    def stop(self) -> None:
        self.server.should_exit = True
        self.thread.join(10)


def serve_coordinator(
    config: FederationConfig,
    central_url: str,
    clock: Clock,
    port: int,
    track_from_ns: int,
    operator: str | None = None,
) -> Iterator[Served]:
    """Serve the coordinator's app for `config` on `port` until the generator is closed;
    `operator` is the operator token (None: the operator endpoints are disabled)."""
    with InfluxClient(central_url) as central:
        ensure_central(config, central)
    ledger = open_ledger(config.fleet.central.ledger_url)
    tokens = Tokens({dc: token(dc) for dc in config.fleet.dcs}, READER, operator)
    coordinator = Coordinator(
        config, ledger, tokens, clock=clock, settings=CoordinatorSettings(verify_settle_ns=0)
    )
    coordinator.sync(track_from_ns=track_from_ns)
    app = build_app(coordinator, central_url=central_url)
    server = uvicorn.Server(
        uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning", access_log=False)
    )
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 10
    while not server.started:
        if time.monotonic() > deadline:
            raise RuntimeError("coordinator did not start")
        time.sleep(0.02)
    served = Served(f"http://127.0.0.1:{port}", coordinator, server, thread)
    try:
        yield served
    finally:
        served.stop()
        ledger.close()


def federation_config(
    config_dir: Path, dc_url: str, central_url: str
) -> tuple[FederationConfig, int]:
    port = free_port()
    write_fleet(config_dir, dc_url, central_url, f"http://127.0.0.1:{port}")
    return load_config(config_dir), port
