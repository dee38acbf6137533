"""Fixtures for the report tests."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from federation.devstack.localstack import LocalStack
from federation.influx import InfluxClient


@pytest.fixture(scope="module")
def module_central(
    localstack: LocalStack, request: pytest.FixtureRequest
) -> Iterator[InfluxClient]:
    """A central influxd shared by one test module (data written once, read by many tests)."""
    name = "reporting-" + request.module.__name__.rsplit(".", 1)[-1]
    server = localstack.influxd(name)
    with InfluxClient(server.url) as client:
        yield client
