"""The coordinator's web pages: the reader token, the grid, a window, a DC, the reports page.

The browser test drives Debian's real Chromium (headless) through chromium-driver and Selenium
against the coordinator served by uvicorn, with a ledger whose states are known.
"""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Iterator
from datetime import UTC, datetime

import pytest
from starlette.testclient import TestClient

from federation.coordinator.api import build_app
from federation.coordinator.ledger import Ledger, WindowRow
from federation.coordinator.service import Coordinator
from federation.coordinator.status import status_report
from federation.coordinator.tracking import verify_shipped
from federation.core.clock import FakeClock, format_rfc3339
from federation.devstack.processes import free_port
from federation.influx import InfluxClient
from federation.reporting.chart import line_chart

from .helpers import HOUR, READER, body, central_params, plan_of, token, window_batch

DAY = 24 * HOUR
GRID_AGG = "delivery_direction"
REPORT_AGG = "delivery_latency"
# The states written straight into the ledger for dub1's first windows (hour0 + i hours).
FIELDS = ("p50", "p95", "p99")
"""The percentiles the reports page plots unless asked for others: one chart series each."""
KNOWN = ("verified", "verified", "empty", "shipped", "backfilling", "inconsistent", "unrecoverable")


@pytest.fixture
def ledger_backend() -> str:
    """The pages read the ledger through the same queries on both backends: SQLite suffices."""
    return "sqlite"


def _day(ns: int) -> str:
    return datetime.fromtimestamp(ns / 1e9, UTC).date().isoformat()


@pytest.fixture
def known(
    coordinator: Coordinator, ledger: Ledger, clock: FakeClock, hour0: int, influx: InfluxClient
) -> Iterator[Coordinator]:
    """dub1's grid windows in known states, and shipped delivery_latency windows on three of
    four days (the third day has none) for the reports page."""
    clock.set(hour0 + 10 * HOUR)
    day0 = hour0 - hour0 % DAY
    plan = plan_of(coordinator.config, "dub1", REPORT_AGG)
    with TestClient(build_app(coordinator)) as client:
        for day in (day0 - 3 * DAY, day0 - 2 * DAY, day0):
            for hour in (1, 2):
                points = window_batch(plan, day + hour * HOUR, events=60, seed=hour)
                response = client.post(
                    "/write", params=central_params(coordinator.config, "dub1"),
                    content=body(points), headers={"Authorization": f"Bearer {token('dub1')}"},
                )  # fmt: skip
                assert response.status_code == 204, response.text
    verify_shipped(ledger, coordinator.config, influx, clock.now_ns())
    # Written after verification, which would otherwise judge the shipped one.
    with ledger.session(write=True) as session:
        for i, state in enumerate(KNOWN):
            session.add(
                WindowRow(
                    dc="dub1", aggregation=GRID_AGG, start_ns=hour0 + i * HOUR, state=state,
                    run=i + 1, events=40 if state != "empty" else 0, groups=2,
                    suppressed_events=3, version="v-known", shipped_ns=hour0 + (i + 1) * HOUR,
                    reason="test reason" if state == "inconsistent" else None,
                    updated_ns=hour0 + (i + 1) * HOUR,
                )
            )  # fmt: skip
    yield coordinator


def _report_query(hour0: int) -> dict[str, str]:
    day0 = hour0 - hour0 % DAY
    return {"aggregation": REPORT_AGG, "period": "day", "from": _day(day0 - 3 * DAY),
            "to": _day(day0)}  # fmt: skip


def test_a_token_in_the_url_goes_into_a_cookie_and_out_of_the_address(
    known: Coordinator,
) -> None:
    with TestClient(build_app(known)) as client:
        refused = client.get("/", params={"token": "wrong"})
        assert refused.status_code == 401 and "that token was refused" in refused.text
        first = client.get("/", params={"token": READER, "dc": "dub1"}, follow_redirects=False)
        assert first.status_code == 303 and first.headers["location"] == "/?dc=dub1"
        cookie = first.headers["set-cookie"]
        assert "HttpOnly" in cookie and "SameSite=strict" in cookie
        page = client.get("/?dc=dub1")
        assert page.status_code == 200 and 'data-dc="dub1"' in page.text
        assert '<meta http-equiv="refresh" content="30">' in page.text
        client.cookies.clear()
        logged = client.post(
            "/login", content=f"token={READER}&next=/reports",
            headers={"content-type": "application/x-www-form-urlencoded"},
            follow_redirects=False,
        )  # fmt: skip
        assert logged.status_code == 303 and logged.headers["location"] == "/reports"
        away = client.post("/login", data={"token": READER, "next": "//evil.example/"},
                           follow_redirects=False)  # fmt: skip
        assert away.headers["location"] == "/"


def test_window_dc_and_report_pages_say_what_the_ledger_and_central_hold(
    known: Coordinator, hour0: int
) -> None:
    with TestClient(build_app(known)) as client:
        client.get("/", params={"token": READER})
        start = format_rfc3339(hour0 + 5 * HOUR)
        window = client.get(f"/windows/{GRID_AGG}/dub1/{start}")
        assert window.status_code == 200
        text = re.sub(r"<[^>]+>", " ", window.text)
        assert re.search(r"state\s+\S*\s*inconsistent", text)
        assert "test reason" in text and "v-known" in text
        assert re.search(r"run\s+6\b", text) and re.search(r"suppressed events\s+3\b", text)
        shipped = client.get(f"/windows/{GRID_AGG}/dub1/{format_rfc3339(hour0 + 3 * HOUR)}")
        assert "manifest received" in shipped.text  # a state's meaning where no reason is stored
        assert client.get(f"/windows/{GRID_AGG}/xxx/{start}").status_code == 404

        dc = client.get("/dcs/tor1")
        assert dc.status_code == 200 and "no agent has ever reported" in dc.text

        query = _report_query(hour0)
        reports = client.get("/reports", params=query)
        assert reports.status_code == 200, reports.text
        points = re.findall(r'<circle class="point"[^>]*data-series="(p[0-9_]+)"', reports.text)
        assert Counter(points) == dict.fromkeys(FIELDS, 3)
        other = client.get("/reports", params={**query, "percentiles": "90,99.9"})
        assert set(re.findall(r'data-series="(p[0-9_]+)"', other.text)) == {"p90", "p99_9"}
        bad = client.get("/reports", params={**query, "percentiles": "high"})
        assert bad.status_code == 400 and "write numbers like 50,95,99" in bad.text
        csv = client.get("/reports.csv", params=query)
        assert csv.headers["content-type"].startswith("text/csv")
        lines = csv.text.splitlines()
        assert lines[0].startswith(f"period,version,events,{','.join(FIELDS)},error,")
        assert len(lines) == 5 and "no data" in lines[3]


def test_a_detections_grid_and_window_show_its_findings_count(
    known: Coordinator, ledger: Ledger, hour0: int
) -> None:
    with ledger.session(write=True) as session:
        session.add(
            WindowRow(
                dc="dub1", aggregation="recipients_per_sender", start_ns=hour0 + HOUR,
                state="verified", run=1, events=620, groups=1, suppressed_events=0,
                summary_count=620, findings=2, version="v-det", updated_ns=hour0 + 2 * HOUR,
            )
        )  # fmt: skip
    with TestClient(build_app(known)) as client:
        client.get("/", params={"token": READER})
        page = client.get("/")
        assert page.status_code == 200
        grid = page.text.split('id="agg-recipients_per_sender"', 1)[1].split("<h2", 1)[0]
        assert "detection: central holds counts only" in grid
        assert re.search(r'<tr data-dc="dub1">.*?data-findings="2"', grid, re.S)
        assert re.search(r'<tr data-dc="tor1">.*?data-findings="0"', grid, re.S)
        aggregation = page.text.split(f'id="agg-{GRID_AGG}"', 1)[1].split("<h2", 1)[0]
        assert "data-findings" not in aggregation
        start = format_rfc3339(hour0 + HOUR)
        window = client.get(f"/windows/recipients_per_sender/dub1/{start}")
        assert window.status_code == 200
        text = re.sub(r"<[^>]+>", " ", window.text)
        assert re.search(r"findings\s+2\b", text) and "stay in dub1" in text


def test_the_chart_leaves_a_gap_for_a_period_without_data() -> None:
    svg = line_chart(["a", "b", "c"], {"p50": [1.0, None, 3.0]}, unit="ms", title="<x>")
    assert svg.count('class="point"') == 2 and "<title>&lt;x&gt;</title>" in svg
    assert "<polyline" not in svg  # no segment joins across the gap


@pytest.mark.slow
def test_the_pages_in_a_real_browser(known: Coordinator, hour0: int, browser: object) -> None:
    from selenium.webdriver.common.by import By
    from selenium.webdriver.remote.webdriver import WebDriver
    from selenium.webdriver.support.ui import WebDriverWait

    from federation.devstack.asgi_server import ThreadedServer

    assert isinstance(browser, WebDriver)
    server = ThreadedServer(lambda: build_app(known), free_port())
    server.start()
    try:
        # The login form, as a person uses it.
        browser.get(f"{server.url}/")
        assert browser.current_url.startswith(f"{server.url}/login")
        browser.find_element(By.ID, "token").send_keys(READER)
        browser.find_element(By.ID, "login").click()
        # A click returns before the browser has followed the form's redirect.
        WebDriverWait(browser, 30).until(lambda b: b.current_url == f"{server.url}/")

        # The grid draws every window of the known ledger, each in its state's colour.
        report = status_report(known.ledger, known.config, known.clock.now_ns(),
                               aggregation=GRID_AGG, dc="dub1")  # fmt: skip
        expected = Counter(report.aggregations[0].dcs[0].cells)
        row = f'table[data-aggregation="{GRID_AGG}"] tr[data-dc="dub1"] a.cell'
        cells = browser.find_elements(By.CSS_SELECTOR, row)
        drawn = Counter(c.get_attribute("data-state") for c in cells)
        assert drawn == expected
        assert {s: drawn[s] for s in set(KNOWN)} == Counter(KNOWN)
        empty = next(c for c in cells if c.get_attribute("data-state") == "empty")
        assert empty.size["width"] > 5 and empty.value_of_css_property("background-color") in (
            "rgba(165, 214, 167, 1)", "rgb(165, 214, 167)",
        )  # fmt: skip

        # A window opens to its state, reason, run and figures.
        inconsistent = next(c for c in cells if c.get_attribute("data-state") == "inconsistent")
        inconsistent.click()
        WebDriverWait(browser, 30).until(lambda b: "/windows/" in b.current_url)
        assert browser.find_element(By.ID, "state").text.strip() == "inconsistent"
        assert browser.find_element(By.ID, "reason").text == "test reason"
        assert browser.find_element(By.ID, "run").text == "6"
        assert browser.find_element(By.ID, "events").text == "40"

        # The reports page: one point per period with data, the table and the CSV link.
        query = "&".join(f"{k}={v}" for k, v in _report_query(hour0).items())
        browser.get(f"{server.url}/reports?{query}")
        points = browser.find_elements(By.CSS_SELECTOR, "#chart svg circle.point")
        assert Counter(p.get_attribute("data-series") for p in points) == dict.fromkeys(FIELDS, 3)
        labels = {p.get_attribute("data-label") for p in points}
        assert len(labels) == 3
        rows = browser.find_elements(By.CSS_SELECTOR, "#report-table tr")
        assert len(rows) == 1 + 4
        assert (
            browser.find_element(By.ID, "csv")
            .get_attribute("href")
            .startswith(f"{server.url}/reports.csv?")
        )
        browser.get(f"{server.url}/dcs/dub1")
        assert browser.find_element(By.ID, "versions").is_displayed()

        errors = [e for e in browser.get_log("browser") if e["level"] == "SEVERE"]  # type: ignore[attr-defined]
        assert errors == []
    finally:
        server.stop()
