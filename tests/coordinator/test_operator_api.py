"""The operator endpoints: reload the config directory, staged rollouts in the ledger, and the
per-DC view agents converge against; with the tokens each of them accepts and refuses."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml
from sqlalchemy import select
from starlette.testclient import TestClient

from federation.config import FederationConfig
from federation.config.resolve import resolve_plan
from federation.coordinator.api import build_app
from federation.coordinator.app import ensure_central
from federation.coordinator.backfills import request_backfill
from federation.coordinator.completeness import completeness
from federation.coordinator.desired import known_plans
from federation.coordinator.ledger import DeploymentRow, Ledger, TrackingRow, WindowRow
from federation.coordinator.planner import plan_backfills
from federation.coordinator.retired import with_retired
from federation.coordinator.service import Coordinator, CoordinatorSettings, Tokens
from federation.coordinator.status import status_report
from federation.core.clock import FakeClock, format_rfc3339
from federation.influx import InfluxClient

from .helpers import HOUR, READER, token

OPERATOR = "operator-secret"
AGG = "delivery_latency"
OP = {"Authorization": f"Bearer {OPERATOR}"}
READ = {"Authorization": f"Bearer {READER}"}


@pytest.fixture
def operator_app(
    config: FederationConfig, ledger: Ledger, clock: FakeClock
) -> Iterator[tuple[TestClient, Coordinator]]:
    tokens = Tokens({dc: token(dc) for dc in config.fleet.dcs}, READER, OPERATOR)
    coordinator = Coordinator(
        config, ledger, tokens, clock=clock, settings=CoordinatorSettings(verify_settle_ns=0)
    )
    coordinator.sync()
    with TestClient(build_app(coordinator)) as client:
        yield client, coordinator


def edit(path: Path, change: dict[str, object]) -> None:
    data = yaml.safe_load(path.read_text())
    for dotted, value in change.items():
        *parents, last = dotted.split(".")
        node = data
        for key in parents:
            node = node[key]
        node[last] = value
    path.write_text(yaml.safe_dump(data, sort_keys=False))


def versions(ledger: Ledger) -> dict[str, tuple[str, str | None]]:
    with ledger.session() as session:
        return {
            d.dc: (d.desired_version, d.previous_version)
            for d in session.query(DeploymentRow).filter(DeploymentRow.aggregation == AGG)
        }


def served_version(client: TestClient, dc: str) -> str:
    data = client.get(
        f"/api/v1/dcs/{dc}/desired", headers={"Authorization": f"Bearer {token(dc)}"}
    ).json()
    return next(str(p["version"]) for p in data["plans"] if p["aggregation"] == AGG)


def test_operator_endpoints_refuse_every_other_token(
    operator_app: tuple[TestClient, Coordinator], client: TestClient
) -> None:
    app, _ = operator_app
    for path in ("/api/v1/desired/reload", "/api/v1/rollouts", "/api/v1/rollouts/advance",
                 "/api/v1/rollouts/rollback"):  # fmt: skip
        assert app.post(path).status_code == 401
        assert app.post(path, headers={"Authorization": "Bearer nope"}).status_code == 401
        assert app.post(path, headers=READ).status_code == 403
        agent = app.post(path, headers={"Authorization": f"Bearer {token('fra1')}"})
        assert agent.status_code == 403 and "operator token" in agent.json()["error"]
        # A coordinator whose fleet names no operator token takes no operator request at all.
        disabled = client.post(path, headers=OP)
        assert disabled.status_code == 403 and "not configured" in disabled.json()["error"]
    assert app.get("/api/v1/dcs", headers=READ).status_code == 200
    assert app.get("/api/v1/dcs", headers=OP).status_code == 200
    assert app.get("/api/v1/dcs").status_code == 401
    assert (
        app.get("/api/v1/dcs", headers={"Authorization": f"Bearer {token('fra1')}"}).status_code
        == 401
    )


def test_reload_of_a_bad_config_lists_every_problem_and_changes_nothing(
    operator_app: tuple[TestClient, Coordinator], config_dir: Path, ledger: Ledger
) -> None:
    app, coordinator = operator_app
    before = versions(ledger)
    edit(config_dir / "policies" / "eu.yaml", {"raw.retention": "40d"})
    edit(
        config_dir / "tickscripts" / "delivery_latency.yaml",
        {"dimensions": ["direction", "sender"]},
    )
    response = app.post("/api/v1/desired/reload", headers=OP)
    assert response.status_code == 400
    problems = response.json()["problems"]
    assert any(p.startswith("policies/eu.yaml") and "retention 40d" in p for p in problems), (
        problems
    )
    assert any(p.startswith("tickscripts/delivery_latency.yaml") for p in problems)
    assert coordinator.config.policy_for("fra1").raw.retention == 30 * 86_400 * 10**9
    assert versions(ledger) == before

    bad_body = app.post("/api/v1/desired/reload", headers=OP, content=b'{"dry_run": "yes"}')
    assert bad_body.status_code == 400


def test_reload_diff_then_canary_advance_rollback(
    operator_app: tuple[TestClient, Coordinator], config_dir: Path, ledger: Ledger
) -> None:
    app, coordinator = operator_app
    old = {dc: v for dc, (v, _) in versions(ledger).items()}
    edit(config_dir / "policies" / "eu.yaml", {"raw.shard_duration": "12h"})
    edit(config_dir / "tickscripts" / "delivery_latency.yaml", {"accuracy": 0.02})

    dry = app.post("/api/v1/desired/reload", headers=OP, json={"dry_run": True})
    assert dry.status_code == 200 and dry.json()["dry_run"] is True
    by_dc = {d["dc"]: d for d in dry.json()["dcs"]}
    assert by_dc["fra1"]["retention"] == ["shard duration 1d -> 12h"]
    assert by_dc["tor1"]["retention"] == []
    (change,) = [p for p in by_dc["fra1"]["plans"] if p["aggregation"] == AGG]
    assert change["change"] == "changed" and change["desired_version"] == old["fra1"]
    assert change["fields"]["accuracy"] == [0.01, 0.02]
    assert coordinator.config.policy_for("fra1").raw.shard_duration == 86_400 * 10**9

    applied = app.post("/api/v1/desired/reload", headers=OP)
    assert applied.status_code == 200 and applied.json()["dry_run"] is False
    assert coordinator.config.policy_for("fra1").raw.shard_duration == 12 * 3600 * 10**9
    # The new versions are stored but not desired: agents keep running the old ones.
    assert {dc: v for dc, (v, _) in versions(ledger).items()} == old
    assert served_version(app, "fra1") == old["fra1"]
    new = {dc: resolve_plan(coordinator.config, AGG, dc).version for dc in old}

    started = app.post(
        "/api/v1/rollouts", headers=OP, json={"aggregations": [AGG], "canary": "fra1"}
    )
    assert started.status_code == 200, started.text
    body = started.json()
    assert body["canary"] == "fra1"
    assert body["moved"] == [
        {"dc": "fra1", "aggregation": AGG, "from": old["fra1"], "to": new["fra1"],
         "change": "changed"}
    ]  # fmt: skip
    assert "tor1" in body["waiting"]
    assert versions(ledger)["fra1"] == (new["fra1"], old["fra1"])
    assert versions(ledger)["tor1"] == (old["tor1"], None)
    assert served_version(app, "fra1") == new["fra1"]
    assert served_version(app, "tor1") == old["tor1"]
    # The gateway accepts both versions from the canary while it switches.
    accepted = {p.version for p in known_plans(ledger)[("fra1", AGG)]}
    assert accepted == {old["fra1"], new["fra1"]}

    # Starting again resumes the rollout waiting at its canary (a client interrupted there);
    # asking for another canary is refused with the way forward.
    resumed = app.post("/api/v1/rollouts", headers=OP, json={"canary": "fra1"})
    assert resumed.status_code == 200, resumed.text
    assert resumed.json()["resumed"] is True and resumed.json()["moved"] == []
    assert resumed.json()["canary_moves"] == body["moved"]
    assert resumed.json()["scope"] == {"aggregations": [AGG], "dcs": None}
    conflict = app.post("/api/v1/rollouts", headers=OP, json={"canary": "tor1"})
    assert conflict.status_code == 409
    assert "federation rollout apply" in conflict.json()["error"]
    assert "federation rollout rollback" in conflict.json()["error"]
    # A config changed again for the waiting canary is never advanced without a canary.
    edit(config_dir / "tickscripts" / "delivery_latency.yaml", {"accuracy": 0.03})
    assert app.post("/api/v1/desired/reload", headers=OP).status_code == 200
    changed = app.post("/api/v1/rollouts", headers=OP, json={})
    assert changed.status_code == 409 and "the config changed since" in changed.json()["error"]
    edit(config_dir / "tickscripts" / "delivery_latency.yaml", {"accuracy": 0.02})
    assert app.post("/api/v1/desired/reload", headers=OP).status_code == 200
    unknown = app.post("/api/v1/rollouts", headers=OP, json={"aggregations": ["nope"]})
    assert unknown.status_code == 400

    advanced = app.post("/api/v1/rollouts/advance", headers=OP, json={"aggregations": [AGG]})
    assert advanced.status_code == 200
    assert {m["dc"] for m in advanced.json()["moved"]} == set(old) - {"fra1"}
    assert all(versions(ledger)[dc][0] == new[dc] for dc in old)

    rolled = app.post("/api/v1/rollouts/rollback", headers=OP, json={})
    assert rolled.status_code == 200
    assert {m["dc"] for m in rolled.json()["moved"]} == set(old)
    assert all(versions(ledger)[dc] == (old[dc], new[dc]) for dc in old)
    assert served_version(app, "tor1") == old["tor1"]
    again = app.post("/api/v1/rollouts/rollback", headers=OP)
    assert again.json()["moved"] == []

    overview = app.get("/api/v1/dcs", headers=READ, params={"dc": "fra1"}).json()["dcs"]
    (fra1,) = overview
    (latency,) = [a for a in fra1["aggregations"] if a["aggregation"] == AGG]
    assert latency["desired_version"] == old["fra1"]
    assert latency["config_version"] == new["fra1"]
    assert latency["state"] == "unknown, rollout pending"
    assert fra1["retention"]["state"] == "unknown"


def test_reload_refuses_what_needs_a_restart(
    operator_app: tuple[TestClient, Coordinator], config_dir: Path
) -> None:
    app, _ = operator_app
    edit(config_dir / "fleet.yaml", {"central.database": "elsewhere"})
    response = app.post("/api/v1/desired/reload", headers=OP, json={"dry_run": True})
    assert response.status_code == 400
    assert "restart" in response.json()["problems"][0]


def test_overview_reads_retention_from_the_agent_report(
    operator_app: tuple[TestClient, Coordinator], config: FederationConfig
) -> None:
    app, _ = operator_app
    headers = {"Authorization": f"Bearer {token('fra1')}"}
    desired = app.get("/api/v1/dcs/fra1/desired", headers=headers).json()["retention"]
    plans = [{"aggregation": AGG, "version": resolve_plan(config, AGG, "fra1").version,
              "healthy": True, "detail": "scheduled"}]  # fmt: skip

    def report(retention: dict[str, object]) -> str:
        sent = app.post("/api/v1/dcs/fra1/report", headers=headers,
                        json={"mode": "embedded", "plans": plans, "retention": retention})  # fmt: skip
        assert sent.status_code == 204
        (entry,) = app.get("/api/v1/dcs?dc=fra1", headers=READ).json()["dcs"]
        return str(entry["retention"]["state"])

    applied = {"database": "mail", "desired": desired["policies"]}
    assert report({"converged": True, **applied}) == "converged"
    assert report({"converged": False, "refused": ["SHRINK"], **applied}) == "drift"
    assert report({"converged": False, "error": "InfluxDB down", **applied}) == "failed"
    stale = [{**desired["policies"][0], "shard_duration_ns": 1}]
    assert report({"converged": True, "database": "mail", "desired": stale}) == "pending"
    (entry,) = app.get("/api/v1/dcs?dc=fra1", headers=READ).json()["dcs"]
    (latency,) = [a for a in entry["aggregations"] if a["aggregation"] == AGG]
    assert latency["state"] == "current"
    assert entry["mode"] == "embedded"


NEW = "delivery_size"
DAY = 24 * HOUR


def add_aggregation(config_dir: Path) -> None:
    (config_dir / "tickscripts" / f"{NEW}.yaml").write_text(
        f"name: {NEW}\n"
        "source: {measurement: delivery, field: latency_ms, unit: ms}\n"
        "dimensions: [mailer]\nwindow: 1h\nlookback: 2h\npercentiles: [50, 99]\n"
        "accuracy: 0.01\n"
    )


def tracked(ledger: Ledger, dc: str) -> tuple[int, int | None] | None:
    with ledger.session() as session:
        row = session.get(TrackingRow, (dc, NEW))
        return None if row is None else (row.start_ns, row.end_ns)


def mark_verified(ledger: Ledger, dc: str, starts: range) -> None:
    with ledger.session(write=True) as session:
        for start in starts:
            row = WindowRow(dc=dc, aggregation=NEW, start_ns=start, state="verified")
            row.version, row.run, row.events, row.updated_ns = "v", 1, 10, start
            row.groups, row.suppressed_events, row.summary_count = 1, 0, 10
            session.add(row)


def test_an_added_aggregation_is_backfilled_over_its_lookback_and_counted_alike(
    operator_app: tuple[TestClient, Coordinator], config_dir: Path, ledger: Ledger,
    clock: FakeClock,
) -> None:  # fmt: skip
    app, coordinator = operator_app
    add_aggregation(config_dir)
    assert app.post("/api/v1/desired/reload", headers=OP).status_code == 200
    assert tracked(ledger, "fra1") is None, "nothing of it is expected before a rollout"
    now = clock.now_ns()
    started = app.post("/api/v1/rollouts", headers=OP, json={"aggregations": [NEW],
                                                             "canary": "fra1"})  # fmt: skip
    assert started.status_code == 200, started.text
    lookback_start = now - now % HOUR - 2 * HOUR
    assert tracked(ledger, "fra1") == (lookback_start, None)
    assert tracked(ledger, "tor1") is None

    # Once their deadline passed, the planner asks fra1 (and only fra1) for its look-back.
    later = now + 4 * HOUR
    planned = plan_backfills(ledger, coordinator.config, later)
    mine = [r for r in planned.requested if r.aggregation == NEW]
    assert {r.dc for r in mine} == {"fra1"}
    # (each request starts one look-back earlier, as a live run would recompute)
    assert min(r.start_ns for r in mine) == lookback_start - 2 * HOUR
    with ledger.session() as session:
        asked = session.scalars(
            select(WindowRow.start_ns).where(WindowRow.aggregation == NEW,
                                             WindowRow.state == "backfilling")
        ).all()  # fmt: skip
    assert min(asked) == lookback_start

    # An operator backfill over windows before the tracking start makes them expected: status
    # and reports count the same windows.
    since = now - now % HOUR - 8 * HOUR
    request_backfill(ledger, coordinator.config, "fra1", NEW, since, now, now)
    assert tracked(ledger, "fra1") == (since, None)
    mark_verified(ledger, "fra1", range(since, since + 6 * HOUR, HOUR))
    status = status_report(
        ledger, coordinator.config, now, aggregation=NEW, since_ns=since, dc="fra1"
    )
    (fra1,) = status.aggregations[0].dcs
    done = completeness(ledger.engine, NEW, ["fra1"], since, now - now % HOUR)
    assert fra1.counts["verified"] == 6 == done.done
    assert sum(fra1.counts.values()) == done.expected == 8
    assert fra1.cells.count("verified") == 6
    # A window shipped before tracking began (an agent's look-back) counts in both alike.
    mark_verified(ledger, "fra1", range(since - HOUR, since, HOUR))
    status = status_report(
        ledger, coordinator.config, now, aggregation=NEW, since_ns=since - HOUR, dc="fra1"
    )
    (fra1,) = status.aggregations[0].dcs
    done = completeness(ledger.engine, NEW, ["fra1"], since - HOUR, now - now % HOUR)
    assert fra1.counts["verified"] == 7 == done.done
    assert sum(fra1.counts.values()) == done.expected == 9

    # With the explicit flag, a DC the rollout adds it to is tracked over its raw retention.
    assert app.post("/api/v1/rollouts/rollback", headers=OP).status_code == 200
    full = app.post("/api/v1/rollouts", headers=OP, json={"aggregations": [NEW], "canary": "tor1",
                                                          "backfill_retention": True})  # fmt: skip
    assert full.status_code == 200, full.text
    raw = coordinator.config.policy_for("tor1").raw
    oldest = now - (raw.retention - raw.shard_duration) + HOUR
    assert tracked(ledger, "tor1") == (oldest - oldest % HOUR, None)


def test_a_removed_aggregation_keeps_its_history_reportable(
    operator_app: tuple[TestClient, Coordinator], config_dir: Path, ledger: Ledger,
    clock: FakeClock, influx: InfluxClient,
) -> None:  # fmt: skip
    app, coordinator = operator_app
    add_aggregation(config_dir)
    app.post("/api/v1/desired/reload", headers=OP)
    app.post("/api/v1/rollouts", headers=OP, json={"aggregations": [NEW]})
    app.post("/api/v1/rollouts/advance", headers=OP, json={"aggregations": [NEW]})
    now = clock.now_ns()
    start = tracked(ledger, "fra1")
    assert start is not None
    mark_verified(ledger, "fra1", range(start[0], start[0] + 2 * HOUR, HOUR))

    (config_dir / "tickscripts" / f"{NEW}.yaml").unlink()
    dry = app.post("/api/v1/desired/reload", headers=OP).json()
    fra1_plans = next(d["plans"] for d in dry["dcs"] if d["dc"] == "fra1")
    assert [p["change"] for p in fra1_plans if p["aggregation"] == NEW] == ["removed"]
    removed = app.post("/api/v1/rollouts", headers=OP, json={"canary": "fra1"}).json()
    assert [(m["aggregation"], m["change"]) for m in removed["moved"]] == [(NEW, "removed")]
    assert "tor1" in removed["waiting"], "the removal waits for the canary like any change"
    assert NEW in {p["aggregation"] for p in served_plans(app, "tor1")}
    assert NEW not in {p["aggregation"] for p in served_plans(app, "fra1")}
    app.post("/api/v1/rollouts/advance", headers=OP, json={})
    assert NEW not in {p["aggregation"] for p in served_plans(app, "tor1")}

    later = now + 5 * HOUR
    status = status_report(ledger, coordinator.config, later, aggregation=NEW, since_ns=start[0])
    (fra1,) = [d for d in status.aggregations[0].dcs if d.dc == "fra1"]
    assert fra1.counts == {"verified": 2}, "no window is expected after the removal"
    assert with_retired(coordinator.config, ledger).aggregations[NEW].window == HOUR
    report = app.get("/api/v1/status", headers=READ, params={"aggregation": NEW})
    assert report.status_code == 200, report.text
    ensure_central(coordinator.config, influx)  # central's database, for the report to read
    day = format_rfc3339(start[0])[:10]
    served = app.get(
        f"/api/v1/reports/{NEW}/percentiles", headers=READ, params={"from": day, "period": "day"}
    )
    assert served.status_code == 200, served.text


def served_plans(client: TestClient, dc: str) -> list[dict[str, object]]:
    data = client.get(
        f"/api/v1/dcs/{dc}/desired", headers={"Authorization": f"Bearer {token(dc)}"}
    ).json()
    return list(data["plans"])


def test_a_window_confirmed_empty_on_the_new_version_satisfies_the_canary(
    operator_app: tuple[TestClient, Coordinator], config_dir: Path, ledger: Ledger,
    clock: FakeClock,
) -> None:  # fmt: skip
    app, coordinator = operator_app
    edit(config_dir / "tickscripts" / "delivery_latency.yaml", {"accuracy": 0.02})
    app.post("/api/v1/desired/reload", headers=OP)
    app.post("/api/v1/rollouts", headers=OP, json={"canary": "fra1"})
    new = resolve_plan(coordinator.config, AGG, "fra1").version
    changed = clock.now_ns()
    start = changed - changed % HOUR + HOUR
    with ledger.session(write=True) as session:
        before = WindowRow(dc="fra1", aggregation=AGG, start_ns=start - 2 * HOUR, state="verified")
        before.version, before.updated_ns = "old", changed
        empty = WindowRow(dc="fra1", aggregation=AGG, start_ns=start, state="empty")
        empty.version, empty.events, empty.updated_ns = new, 0, changed
        session.add_all([before, empty])

    def latency() -> dict[str, object]:
        (fra1,) = app.get("/api/v1/dcs", headers=READ, params={"dc": "fra1"}).json()["dcs"]
        return next(a for a in fra1["aggregations"] if a["aggregation"] == AGG)

    assert latency()["last_verified_ns"] == start
    assert latency()["verified_since_change_ns"] == start
