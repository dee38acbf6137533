"""PostgreSQL for the tests that need a ledger on it: one server per session (started from the
local PostgreSQL binaries, or the one `FEDERATION_TEST_POSTGRES_URL` names) and a fresh database
per test. Without either the tests are skipped, saying why, except under CI=true, where they
fail. `tests/conftest.py` makes `postgres_databases` a fixture of every test directory."""

from __future__ import annotations

import itertools
import os
import secrets
from collections.abc import Iterator

import pytest

from federation.devstack.postgres import (
    PostgresServer,
    create_postgres_database,
    drop_postgres_database,
    find_postgres_bin,
)
from federation.errors import FederationError

POSTGRES_URL_ENV = "FEDERATION_TEST_POSTGRES_URL"
"""A SQLAlchemy URL of a PostgreSQL database whose role may create databases; when set, the
PostgreSQL runs use that server instead of starting one."""


class PostgresDatabases:
    """Creates a fresh database per test on one PostgreSQL server, and drops it afterwards."""

    def __init__(self, admin_url: str) -> None:
        self.admin_url = admin_url
        # Unique across sessions that share one external server.
        self._prefix = f"ledger_{secrets.token_hex(3)}_"
        self._counter = itertools.count(1)

    def create(self) -> tuple[str, str]:
        """(name, URL) of a new, empty database."""
        name = f"{self._prefix}{next(self._counter)}"
        return name, create_postgres_database(self.admin_url, name)

    def drop(self, name: str) -> None:
        drop_postgres_database(self.admin_url, name)


def _postgres_unavailable(reason: str) -> None:
    if os.environ.get("CI") == "true":
        pytest.fail(f"{reason} (CI=true: the PostgreSQL ledger tests must run)", pytrace=False)
    pytest.skip(reason)


def postgres_databases() -> Iterator[PostgresDatabases]:
    """The session's PostgreSQL databases (the body of the `postgres_databases` fixture)."""
    url = os.environ.get(POSTGRES_URL_ENV)
    if url:
        yield PostgresDatabases(url)
        return
    try:
        find_postgres_bin()
    except FederationError as exc:
        _postgres_unavailable(
            f"no PostgreSQL for the ledger tests ({POSTGRES_URL_ENV} unset): {exc}"
        )
    with PostgresServer() as server:
        yield PostgresDatabases(server.url)
