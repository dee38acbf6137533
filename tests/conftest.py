"""Shared fixtures: real influxd servers on loopback, a copy of the example config, and Kapacitor
(a real kapacitord, or the emulator and a real kapacitord in turn: see `kapacitor_fixture`)."""

from __future__ import annotations

import contextlib
import os
import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest
from kapacitor_fixture import (
    KapacitorFactory,
    KapacitorUnderTest,
    StartKapacitord,
    kapacitord_starter,
    require_kapacitord,
)
from postgres_fixture import PostgresDatabases
from postgres_fixture import postgres_databases as _postgres_databases

from federation.devstack.localstack import InfluxServer, LocalStack
from federation.influx import InfluxClient

REPO = Path(__file__).resolve().parent.parent

if os.environ.get("PYTEST_XDIST_WORKER"):
    # An xdist worker starts with COLUMNS=80 and LINES=24 set: the CLI's console (built when
    # `federation.cli` is first imported) would take them for a terminal's and cut its tables,
    # as it never does in a plain run, where the tests that care set COLUMNS themselves.
    for _name in ("COLUMNS", "LINES"):
        os.environ.pop(_name, None)

KAPACITOR_GROUP = "real-kapacitor"
SCENARIO_GROUP = "scenarios"
"""The pytest-xdist groups (`make test` runs `-n 2 --dist loadgroup`) of the tests that run
against the wall clock: the real-Kapacitor tests (`kapacitor`) in one, the other scenarios
(`slow`) in the other. Each group runs on one worker, one test after another, so no two
real-Kapacitor tests (whose UDF keepalives are timed) ever compete for the machine, and the two
long groups run side by side while the short tests fill in around them."""


@pytest.hookimpl(tryfirst=True)  # before xdist reads the groups
def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        if item.get_closest_marker("kapacitor"):
            item.add_marker(pytest.mark.xdist_group(KAPACITOR_GROUP))
        elif item.get_closest_marker("slow"):
            item.add_marker(pytest.mark.xdist_group(SCENARIO_GROUP))


_GROUP_LOST = pytest.StashKey[str]()


@pytest.hookimpl(trylast=True)  # after xdist has named the groups
def pytest_collection_finish(session: pytest.Session) -> None:
    """On an xdist worker under `--dist loadgroup`, a grouped test that did not get its group
    fails, saying why: xdist 3.8 tells the scheduler a test's group in its node id
    (`…@scenarios`), which pytest 9.2 no longer lets it change, so the group would silently not
    hold (hence the pytest 9.1 pin in constraints.txt)."""
    if not getattr(session.config.option, "loadgroup", False):
        return
    for item in session.items:
        if item.get_closest_marker("xdist_group") and "@" not in item.nodeid:
            item.stash[_GROUP_LOST] = (
                "pytest-xdist lost this test's group: this pytest ignores "
                "xdist's group suffix; install the pytest that constraints.txt pins"
            )


def pytest_runtest_setup(item: pytest.Item) -> None:
    if _GROUP_LOST in item.stash:
        pytest.fail(item.stash[_GROUP_LOST], pytrace=False)


@pytest.fixture(scope="session")
def localstack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalStack]:
    """One LocalStack for the whole session; servers are started on first use."""
    with LocalStack(tmp_path_factory.mktemp("influxd")) as stack:
        yield stack


@pytest.fixture
def influxd(localstack: LocalStack, request: pytest.FixtureRequest) -> InfluxServer:
    """A fresh, empty influxd for one test (each test gets its own server)."""
    name = "t-" + request.node.name.replace("[", "-").replace("]", "").replace("/", "-")[:60]
    server = InfluxServer(name, localstack.root / name, _port())
    server.start()
    request.addfinalizer(lambda: (server.stop(), shutil.rmtree(server.root, ignore_errors=True)))
    return server


def _port() -> int:
    from federation.devstack.processes import free_port

    return free_port()


@pytest.fixture
def influx(influxd: InfluxServer) -> Iterator[InfluxClient]:
    """A client for a fresh influxd."""
    with InfluxClient(influxd.url) as client:
        yield client


@pytest.fixture
def config_dir(tmp_path: Path) -> Path:
    """A writable copy of the example federation's config (fleet, policies, tickscripts)."""
    target = tmp_path / "config"
    target.mkdir()
    shutil.copy(REPO / "fleet.yaml", target / "fleet.yaml")
    shutil.copytree(REPO / "policies", target / "policies")
    shutil.copytree(REPO / "tickscripts", target / "tickscripts")
    return target


def system_binary(name: str, package: str) -> str:
    """The path of a binary a Debian package installs (`bash .ci/run` installs it). Without it
    the test is skipped saying so, except under CI=true, where it fails."""
    found = shutil.which(name)
    if found is None:
        reason = f"{name} not found: install the Debian package {package}"
        if os.environ.get("CI") == "true":
            pytest.fail(f"{reason} (CI=true: this test must run)", pytrace=False)
        pytest.skip(reason)
    return found


@pytest.fixture(scope="session")
def promtool() -> str:
    """Prometheus' `promtool` (Debian package `prometheus`)."""
    return system_binary("promtool", "prometheus")


@pytest.fixture(scope="session")
def postgres_databases() -> Iterator[PostgresDatabases]:
    """The PostgreSQL server of this session: started on first use, stopped at the end."""
    yield from _postgres_databases()


@pytest.fixture(scope="session")
def kapacitord_binary() -> str:
    """The kapacitord FEDERATION_KAPACITORD names; skipped without one (failed under CI=true)."""
    return require_kapacitord()


@pytest.fixture(scope="session")
def quiet_dc_influxd(localstack: LocalStack) -> str:
    """The URL of an influxd holding the example DCs' raw database and retention policy, empty:
    the InfluxDB of a test's kapacitord when the test gives it no DC of its own. The example's
    tasks run their queries at every full hour; against no InfluxDB at all they would fail
    there, and a test that asserts a task healthy would fail with them."""
    server = localstack.influxd("quiet-dc")
    with InfluxClient(server.url) as client:
        client.create_database("mail")
        client.execute('CREATE RETENTION POLICY "raw" ON "mail" DURATION 1d REPLICATION 1')
    return server.url


@pytest.fixture
def start_kapacitord(
    kapacitord_binary: str, tmp_path: Path, quiet_dc_influxd: str
) -> Iterator[StartKapacitord]:
    """A factory of real kapacitords, each stopped when the test ends (`kapacitor_fixture`)."""
    with kapacitord_starter(kapacitord_binary, tmp_path / "kapacitord", quiet_dc_influxd) as start:
        yield start


@pytest.fixture(
    params=[
        pytest.param("emulator", id="emulator"),
        pytest.param("kapacitord", id="kapacitord", marks=pytest.mark.kapacitor),
    ]
)
def kapacitors(request: pytest.FixtureRequest) -> Iterator[KapacitorFactory]:
    """Kapacitors per DC, emulated in one run of the test and real in the other."""
    with contextlib.ExitStack() as stack:
        if request.param == "emulator":
            yield KapacitorFactory("emulator", stack)
            return
        start: StartKapacitord = request.getfixturevalue("start_kapacitord")
        yield KapacitorFactory("kapacitord", stack, start)


@pytest.fixture
def kapacitor(kapacitors: KapacitorFactory) -> KapacitorUnderTest:
    """DC dub1's Kapacitor: the emulator, then a real kapacitord."""
    return kapacitors.new("dub1")


CHROMIUM_FLAGS = (
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
)
"""Headless Chromium that reaches nothing but the pages under test."""


@pytest.fixture
def browser() -> Iterator[object]:
    """Debian's Chromium (headless) driven through chromium-driver by Selenium, collecting the
    browser console's messages (`get_log("browser")`)."""
    chromium = system_binary("chromium", "chromium")
    driver_path = system_binary("chromedriver", "chromium-driver")
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = chromium
    for flag in CHROMIUM_FLAGS:
        options.add_argument(flag)
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    driver = webdriver.Chrome(service=Service(driver_path), options=options)
    driver.set_page_load_timeout(60)
    try:
        yield driver
    finally:
        driver.quit()
