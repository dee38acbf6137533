"""The agent's raw event counts against the ledger: a window central holds less of is re-run."""

from __future__ import annotations

from starlette.testclient import TestClient

from federation.config import FederationConfig
from federation.coordinator.ledger import Ledger, WindowRow
from federation.coordinator.planner import plan_backfills
from federation.core.clock import FakeClock

from .helpers import HOUR, token

AGG = "delivery_direction"
URL = "/api/v1/dcs/dub1/windows/raw-counts"


def agent(dc: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token(dc)}"}


def add_window(ledger: Ledger, start: int, state: str, events: int | None, run: int | None) -> None:
    with ledger.session(write=True) as session:
        session.add(
            WindowRow(dc="dub1", aggregation=AGG, start_ns=start, state=state, events=events,
                      run=run, summary_count=events, updated_ns=start)
        )  # fmt: skip


def row(ledger: Ledger, start: int) -> tuple[str, str | None]:
    with ledger.session() as session:
        found = session.query(WindowRow).filter_by(dc="dub1", aggregation=AGG, start_ns=start).one()
        return found.state, found.reason


def test_a_verified_window_central_holds_less_of_becomes_inconsistent_and_is_rerun(
    client: TestClient,
    ledger: Ledger,
    config: FederationConfig,
    clock: FakeClock,
    hour0: int,
) -> None:
    clock.set(hour0 + 12 * HOUR)
    h = [hour0 + k * HOUR for k in range(6)]
    add_window(ledger, h[0], "verified", 490, 7)  # a partial first run, verified
    add_window(ledger, h[1], "verified", 505, 8)  # complete
    add_window(ledger, h[2], "empty", 0, 9)  # confirmed empty, events arrived since
    add_window(ledger, h[3], "backfilling", None, None)  # already the planner's
    add_window(ledger, h[4], "shipped", 600, 10)  # holds more than counted: fine
    counts = {h[0]: 505, h[1]: 505, h[2]: 3, h[3]: 50, h[4]: 500, h[5]: 12}
    body = {"aggregation": AGG, "counts": [{"start_ns": s, "events": n} for s, n in counts.items()]}

    response = client.post(URL, json=body, headers=agent("dub1"))

    assert response.status_code == 200, response.text
    answer = {w["start_ns"]: w for w in response.json()["windows"]}
    assert [answer[s]["short"] for s in h] == [True, False, True, False, False, False]
    assert [answer[s]["state"] for s in h] == [
        "inconsistent", "verified", "inconsistent", "backfilling", "shipped", "expected"
    ]  # fmt: skip
    assert (answer[h[0]]["events"], answer[h[0]]["raw_events"]) == (490, 505)
    assert answer[h[5]]["events"] is None
    assert row(ledger, h[0]) == (
        "inconsistent",
        "the DC's raw data holds 505 events, central 490 (run 7): a later run of the window did "
        "not reach central",
    )
    assert row(ledger, h[1]) == ("verified", None)
    # The planner has the window re-run.
    plan_backfills(ledger, config, clock.now_ns())
    assert row(ledger, h[0])[0] == "backfilling"
    # Asked again, a window already marked is left to the planner.
    again = client.post(URL, json=body, headers=agent("dub1")).json()["windows"]
    assert not any(w["short"] for w in again)


def test_raw_counts_are_per_dc_and_bad_bodies_name_the_field(client: TestClient) -> None:
    good = {"aggregation": AGG, "counts": [{"start_ns": 0, "events": 1}]}
    assert client.post(URL, json=good, headers=agent("lon1")).status_code == 403
    assert client.post(URL, json=good).status_code == 401
    for body, where in [
        ({"counts": []}, "aggregation"),
        ({"aggregation": AGG, "counts": {}}, "counts"),
        ({"aggregation": AGG, "counts": [3]}, "counts[0]"),
        ({"aggregation": AGG, "counts": [{"start_ns": 0, "events": -1}]}, "counts[0].events"),
        ({"aggregation": AGG, "counts": [{"start_ns": "x", "events": 1}]}, "counts[0].start_ns"),
    ]:
        response = client.post(URL, json=body, headers=agent("dub1"))
        assert response.status_code == 400, body
        assert f"raw counts: {where}:" in response.json()["error"]
    assert client.post(URL, content=b"[", headers=agent("dub1")).status_code == 400
