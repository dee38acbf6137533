"""Helpers shared by the policy tests: a small federation on real influxd servers."""

from __future__ import annotations

import shutil
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import yaml

from federation.config import FederationConfig, load_config
from federation.devstack.localstack import InfluxServer, LocalStack
from federation.devstack.processes import free_port
from federation.influx import InfluxClient


@dataclass
class Federation:
    """A config directory whose DCs and central point at running influxd servers."""

    root: Path
    config: FederationConfig
    servers: dict[str, InfluxServer]

    def client(self, name: str) -> InfluxClient:
        return InfluxClient(self.servers[name].url)

    def reload(self) -> None:
        self.config = load_config(self.root)


def _remover(server: InfluxServer) -> Callable[[], None]:
    def remove() -> None:
        server.stop()
        shutil.rmtree(server.root, ignore_errors=True)

    return remove


def start_federation(
    localstack: LocalStack,
    request: pytest.FixtureRequest,
    config_dir: Path,
    *,
    dcs: tuple[str, ...] = ("dub1", "lon1"),
    unreachable: tuple[str, ...] = (),
) -> Federation:
    """Start one influxd per DC in `dcs` and one for central; rewrite fleet.yaml to use them.

    DCs in `unreachable` point at a port nothing listens on. Other DCs of the example fleet are
    left out.
    """
    prefix = request.node.name.replace("[", "-").replace("]", "")[:40]
    servers: dict[str, InfluxServer] = {}
    for name in (*dcs, "central"):
        server = InfluxServer(f"{prefix}-{name}", localstack.root / f"{prefix}-{name}", free_port())
        server.start()
        request.addfinalizer(_remover(server))
        servers[name] = server
    path = config_dir / "fleet.yaml"
    fleet: dict[str, Any] = yaml.safe_load(path.read_text())
    chosen: dict[str, Any] = {}
    for name in (*dcs, *unreachable):
        dc = dict(fleet["dcs"][name])
        url = servers[name].url if name in servers else f"http://127.0.0.1:{free_port()}"
        dc["influxdb"] = {"url": url}
        dc.pop("kapacitor", None)
        chosen[name] = dc
    fleet["dcs"] = chosen
    fleet["central"]["influxdb"] = {"url": servers["central"].url}
    path.write_text(yaml.safe_dump(fleet, sort_keys=False))
    return Federation(config_dir, load_config(config_dir), servers)
