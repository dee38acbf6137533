"""Fixtures for the coordinator: a config pointing at a real central influxd, a ledger on each
backend (a SQLite file, and a fresh database on PostgreSQL), a fake clock near real time
(central retention policies drop points older than their duration), and the coordinator's app
driven by Starlette's TestClient.

Every test that uses `ledger_url` (directly or through `ledger`, `config`, `coordinator`,
`client`) runs once per backend; the PostgreSQL runs carry the `postgres` mark. PostgreSQL is
the server that `FEDERATION_TEST_POSTGRES_URL` names (its role needs CREATEDB), or else one
`PostgresServer` that the session starts from the local PostgreSQL binaries. Without either the
PostgreSQL runs are skipped, saying why, except under CI=true, where they fail.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml
from postgres_fixture import PostgresDatabases
from starlette.testclient import TestClient

from federation.config import FederationConfig, load_config
from federation.coordinator.api import build_app
from federation.coordinator.app import ensure_central
from federation.coordinator.ledger import Ledger, open_ledger
from federation.coordinator.service import Coordinator, CoordinatorSettings, Tokens
from federation.core.clock import FakeClock
from federation.devstack.localstack import InfluxServer
from federation.influx import InfluxClient

from .helpers import HOUR, READER, token


@pytest.fixture
def hour0() -> int:
    """A whole hour a day before real now: recent enough for central's retention."""
    now = time.time_ns()
    return now - now % HOUR - 24 * HOUR


@pytest.fixture
def clock(hour0: int) -> FakeClock:
    return FakeClock(hour0)


def _rewrite_fleet(config_dir: Path, central_url: str, ledger_url: str) -> None:
    path = config_dir / "fleet.yaml"
    data = yaml.safe_load(path.read_text())
    data["central"]["influxdb"] = {"url": central_url}
    data["central"]["ledger_url"] = ledger_url
    for dc in data["dcs"].values():
        dc["influxdb"] = {"url": dc["influxdb"]["url"]}
    path.write_text(yaml.safe_dump(data, sort_keys=False))


@pytest.fixture(
    params=[
        pytest.param("sqlite", id="sqlite"),
        pytest.param("postgresql", id="postgresql", marks=pytest.mark.postgres),
    ]
)
def ledger_backend(request: pytest.FixtureRequest) -> str:
    """`sqlite` or `postgresql`: every test using a ledger runs on both."""
    return str(request.param)


@pytest.fixture
def ledger_url(
    ledger_backend: str, tmp_path: Path, request: pytest.FixtureRequest
) -> Iterator[str]:
    """The URL of an empty ledger database of `ledger_backend`, for this test alone."""
    if ledger_backend == "sqlite":
        yield f"sqlite:///{tmp_path / 'ledger.sqlite'}"
        return
    databases: PostgresDatabases = request.getfixturevalue("postgres_databases")
    name, url = databases.create()
    yield url
    databases.drop(name)


@pytest.fixture
def config(config_dir: Path, influxd: InfluxServer, ledger_url: str) -> FederationConfig:
    _rewrite_fleet(config_dir, influxd.url, ledger_url)
    return load_config(config_dir)


@pytest.fixture
def ledger(ledger_url: str) -> Iterator[Ledger]:
    with open_ledger(ledger_url) as opened:
        yield opened


@pytest.fixture
def tokens(config: FederationConfig) -> Tokens:
    return Tokens({dc: token(dc) for dc in config.fleet.dcs}, READER)


@pytest.fixture
def coordinator(
    config: FederationConfig, ledger: Ledger, tokens: Tokens, clock: FakeClock, influx: InfluxClient
) -> Coordinator:
    ensure_central(config, influx)
    coordinator = Coordinator(
        config, ledger, tokens, clock=clock, settings=CoordinatorSettings(verify_settle_ns=0)
    )
    coordinator.sync()
    return coordinator


@pytest.fixture
def client(coordinator: Coordinator) -> Iterator[TestClient]:
    with TestClient(build_app(coordinator)) as test_client:
        yield test_client
