"""The gateway: what it accepts lands in central; what it refuses is refused whole."""

from __future__ import annotations

import base64
import dataclasses
import gzip
from collections.abc import Callable

import httpx
import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from starlette.testclient import TestClient

from federation.config import FederationConfig
from federation.coordinator.api import build_app
from federation.coordinator.gateway.parse import parse_body
from federation.coordinator.gateway.refusal import Refusal
from federation.coordinator.gateway.rules import CheckedBatch, GatewayChecker, check_body
from federation.coordinator.gateway.wire import read_columns
from federation.coordinator.ledger import Ledger, WindowRow
from federation.coordinator.service import Coordinator
from federation.core.plan import MANIFEST_MEASUREMENT
from federation.core.points import Point
from federation.core.sketch import Sketch
from federation.devstack.localstack import InfluxServer
from federation.influx import InfluxClient

from .helpers import HOUR, body, central_params, plan_of, token, window_batch

DC = "dub1"


def basic(user: str, password: str) -> dict[str, str]:
    raw = base64.b64encode(f"{user}:{password}".encode()).decode()
    return {"Authorization": f"Basic {raw}"}


def stored(influx: InfluxClient, config: FederationConfig, dc: str = DC) -> int:
    """How many points central holds for `dc` (summaries and manifests)."""
    rp = config.policy_for(dc).central.retention_policy
    total = 0
    for measurement in ("delivery_direction", "delivery_latency", MANIFEST_MEASUREMENT):
        q = f'SELECT count("{"events" if measurement == MANIFEST_MEASUREMENT else "count"}") FROM "federation"."{rp}"."{measurement}"'
        for series in influx.query(q, database="federation"):
            total += sum(int(row[1]) for row in series.values)
    return total


def ledger_windows(ledger: Ledger) -> list[WindowRow]:
    from sqlalchemy import select

    with ledger.session() as session:
        return list(session.scalars(select(WindowRow)))


def write(
    client: TestClient, config: FederationConfig, payload: bytes, dc: str = DC, **kw: object
) -> object:
    headers = kw.pop("headers", None) or basic(dc, token(dc))
    params = kw.pop("params", None) or central_params(config, dc)
    return client.post("/write", params=params, content=payload, headers=headers)  # type: ignore[arg-type]


def with_fields(point: Point, **changes: object) -> Point:
    return dataclasses.replace(point, fields={**point.fields, **changes})


def with_tags(point: Point, **changes: str) -> Point:
    return dataclasses.replace(point, tags={**point.tags, **changes})


def test_ping_answers_like_influxdb(client: TestClient) -> None:
    response = client.get("/ping")
    assert response.status_code == 204
    assert response.headers["X-Influxdb-Version"]


def test_accepted_write_lands_in_central_and_marks_the_window_shipped(
    client: TestClient, config: FederationConfig, influx: InfluxClient, ledger: Ledger, hour0: int
) -> None:
    points = window_batch(plan_of(config, DC), hour0 - HOUR)
    response = write(client, config, body(points))
    assert response.status_code == 204, response.text  # type: ignore[attr-defined]
    assert stored(influx, config) == len(points)
    (row,) = ledger_windows(ledger)
    assert (row.dc, row.aggregation, row.start_ns, row.state) == (
        DC, "delivery_direction", hour0 - HOUR, "shipped",
    )  # fmt: skip
    assert row.events == 40 and row.run == 1


@pytest.mark.parametrize("how", ["bearer", "query", "gzip"])
def test_bearer_token_query_credentials_and_gzip_are_accepted(
    client: TestClient, config: FederationConfig, influx: InfluxClient, hour0: int, how: str
) -> None:
    points = window_batch(plan_of(config, DC), hour0 - HOUR)
    payload = body(points)
    params = central_params(config, DC)
    headers: dict[str, str] = {}
    if how == "bearer":
        headers["Authorization"] = f"Bearer {token(DC)}"
    elif how == "query":
        params.update(u=DC, p=token(DC))
    else:
        headers.update(basic(DC, token(DC)), **{"Content-Encoding": "gzip"})
        payload = gzip.compress(payload)
    response = client.post("/write", params=params, content=payload, headers=headers)
    assert response.status_code == 204, response.text
    assert stored(influx, config) == len(points)


@pytest.mark.parametrize(
    "headers",
    [{}, basic(DC, "wrong"), basic("fra1", token(DC)), {"Authorization": "Bearer nope"}],
    ids=["none", "wrong-password", "other-dcs-name", "bad-bearer"],
)
def test_missing_or_wrong_credentials_get_401(
    client: TestClient, config: FederationConfig, influx: InfluxClient, hour0: int,
    headers: dict[str, str],
) -> None:  # fmt: skip
    points = window_batch(plan_of(config, DC), hour0 - HOUR)
    response = client.post(
        "/write", params=central_params(config, DC), content=body(points), headers=headers
    )
    assert response.status_code == 401
    assert stored(influx, config) == 0


def test_dc_a_writing_as_dc_b_is_forbidden(
    client: TestClient, config: FederationConfig, influx: InfluxClient, ledger: Ledger, hour0: int
) -> None:
    # fra1 is in the same region, so db/rp match: only the identity differs.
    points = window_batch(plan_of(config, "fra1"), hour0 - HOUR)
    response = write(client, config, body(points), dc=DC)
    assert response.status_code == 403  # type: ignore[attr-defined]
    assert response.json()["rule"] == "dc-identity"  # type: ignore[attr-defined]
    assert stored(influx, config, "fra1") == 0
    assert ledger_windows(ledger) == []


def _refused(response: object, rule: str, status: int = 400) -> dict[str, object]:
    assert response.status_code == status, response.text  # type: ignore[attr-defined]
    data: dict[str, object] = response.json()  # type: ignore[attr-defined]
    assert data["rule"] == rule, data
    assert data["error"]
    return data


RULE_CHANGES = [
    "measurement", "tag-key", "field-key", "field-type", "email", "ipv4", "ipv6", "k-anonymity",
    "sketch-garbage", "sketch-accuracy", "sketch-count", "plan-version", "timestamp",
]  # fmt: skip


def _bad_batch(
    config: FederationConfig, hour0: int, change: str
) -> tuple[list[Point], str, str | None]:
    """A good window batch with one point broken: the points, the rule, the key named."""
    plan = plan_of(config, DC)
    points = window_batch(plan, hour0 - HOUR)
    summary = points[0]
    index = 0
    rule, key = change, None
    if change == "measurement":
        broken = dataclasses.replace(summary, measurement="raw_delivery")
    elif change == "tag-key":
        broken, key = with_tags(summary, mailer="mx1"), "mailer"
    elif change == "field-key":
        broken, key = with_fields(summary, recipient_count=3), "recipient_count"
    elif change == "field-type":
        broken, key = with_fields(summary, count=float(summary.fields["count"])), "count"
    elif change == "email":
        broken, key, rule = (
            with_tags(summary, direction="jane.doe@example.com"),
            "direction",
            "personal-data",
        )
    elif change == "ipv4":
        broken, key, rule = (
            with_tags(summary, direction="192.168.10.4"),
            "direction",
            "personal-data",
        )
    elif change == "ipv6":
        broken, key, rule = (
            with_tags(summary, direction="2001:db8::8a2e:370:7334"),
            "direction",
            "personal-data",
        )
    elif change == "k-anonymity":
        small = Sketch.from_values([1.0, 2.0], plan.accuracy).encode()
        broken, key = with_fields(summary, count=2, sketch=small), "count"
    elif change == "sketch-garbage":
        broken, key, rule = with_fields(summary, sketch="v1:a=0.01:n=zz"), "sketch", "sketch"
    elif change == "sketch-accuracy":
        n = int(summary.fields["count"])  # type: ignore[arg-type]
        foreign = Sketch.from_values([5.0] * n, 0.02).encode()
        broken, key, rule = with_fields(summary, sketch=foreign), "sketch", "sketch"
    elif change == "sketch-count":
        n = int(summary.fields["count"])  # type: ignore[arg-type]
        other = Sketch.from_values([5.0] * (n + 1), plan.accuracy).encode()
        broken, key, rule = with_fields(summary, sketch=other), "sketch", "sketch"
    elif change == "plan-version":
        index = len(points) - 1
        broken, key = with_fields(points[index], version="0123456789ab"), "version"
    elif change == "timestamp":
        broken = dataclasses.replace(summary, time_ns=summary.time_ns + 1)
    else:  # pragma: no cover
        raise AssertionError(change)
    points[index] = broken
    # The broken point comes after a good one: the whole batch must still be refused.
    points.insert(0, points.pop(index)) if index else points.append(points.pop(0))
    return points, rule, key


@pytest.mark.parametrize("change", RULE_CHANGES)
def test_each_content_rule_refuses_the_whole_batch(
    client: TestClient, config: FederationConfig, influx: InfluxClient, ledger: Ledger,
    hour0: int, change: str, caplog: pytest.LogCaptureFixture,
) -> None:  # fmt: skip
    points, rule, key = _bad_batch(config, hour0, change)
    data = _refused(write(client, config, body(points)), rule)
    if key is not None:
        assert data["key"] == key
    assert isinstance(data["line"], int)
    assert stored(influx, config) == 0
    assert ledger_windows(ledger) == []
    for value in ("jane.doe@example.com", "192.168.10.4", "2001:db8::8a2e:370:7334"):
        assert value not in caplog.text
        assert value not in str(data)


def test_a_body_that_does_not_parse_is_refused_with_line_and_column(
    client: TestClient, config: FederationConfig, influx: InfluxClient, hour0: int
) -> None:
    good = body(window_batch(plan_of(config, DC), hour0 - HOUR))
    data = _refused(
        write(client, config, good + b"delivery_direction,dc=dub1 count=\n"), "line-protocol"
    )
    assert data["line"] == good.count(b"\n") + 1
    assert "line " in str(data["error"]) and ":" in str(data["error"])
    assert stored(influx, config) == 0


@pytest.mark.parametrize("param", ["db", "rp"])
def test_writes_to_another_database_or_retention_policy_are_refused(
    client: TestClient, config: FederationConfig, influx: InfluxClient, hour0: int, param: str
) -> None:
    params = central_params(config, DC)
    params[param] = "agg_800d" if param == "rp" else "mail"
    points = window_batch(plan_of(config, DC), hour0 - HOUR)
    data = _refused(write(client, config, body(points), params=params), "database")
    assert data["key"] == param
    assert stored(influx, config) == 0


def test_an_oversized_body_gets_413(
    coordinator: Coordinator, client: TestClient, config: FederationConfig, hour0: int
) -> None:
    payload = body(window_batch(plan_of(config, DC), hour0 - HOUR)) * 50
    compressed = gzip.compress(payload)
    limit = len(compressed) + 10
    assert limit < len(payload)
    coordinator.settings = dataclasses.replace(coordinator.settings, max_body_bytes=limit)
    _refused(write(client, config, payload), "size", 413)
    # A small gzip body that inflates past the limit is refused as well.
    headers = {**basic(DC, token(DC)), "Content-Encoding": "gzip"}
    _refused(write(client, config, compressed, headers=headers), "size", 413)


def test_stale_reshipments_are_refused_and_equal_ones_accepted(
    client: TestClient, config: FederationConfig, influx: InfluxClient, ledger: Ledger, hour0: int
) -> None:
    plan = plan_of(config, DC)
    start = hour0 - HOUR
    assert (
        write(client, config, body(window_batch(plan, start, run=5, events=40))).status_code == 204
    )  # type: ignore[attr-defined]
    # The same shipment again (a sender retrying) is fine.
    assert (
        write(client, config, body(window_batch(plan, start, run=5, events=40))).status_code == 204
    )  # type: ignore[attr-defined]
    data = _refused(
        write(client, config, body(window_batch(plan, start, run=4, events=40))), "stale-reshipment"
    )
    assert data["key"] == "run"
    data = _refused(
        write(client, config, body(window_batch(plan, start, run=6, events=30))), "stale-reshipment"
    )
    assert data["key"] == "events"
    assert (
        write(client, config, body(window_batch(plan, start, run=6, events=50))).status_code == 204
    )  # type: ignore[attr-defined]
    (row,) = ledger_windows(ledger)
    assert (row.run, row.events) == (6, 50)


def test_previous_plan_version_is_accepted_during_a_rollout(
    coordinator: Coordinator, client: TestClient, config: FederationConfig, hour0: int
) -> None:
    from sqlalchemy import update

    from federation.coordinator.ledger import DeploymentRow

    plan = plan_of(config, DC)
    # Pretend the desired version moved on: the plan of the config is now only "previous".
    with coordinator.ledger.session(write=True) as session:
        session.execute(
            update(DeploymentRow)
            .where(DeploymentRow.dc == DC, DeploymentRow.aggregation == plan.aggregation)
            .values(previous_version=plan.version, desired_version="ffffffffffff")
        )
    coordinator.refresh_plans()
    assert write(client, config, body(window_batch(plan, hour0 - HOUR))).status_code == 204  # type: ignore[attr-defined]


def test_central_down_gives_503_and_records_nothing(
    client: TestClient, config: FederationConfig, influxd: InfluxServer, ledger: Ledger, hour0: int
) -> None:
    influxd.stop()
    try:
        points = window_batch(plan_of(config, DC), hour0 - HOUR)
        response = write(client, config, body(points))
        assert response.status_code == 503  # type: ignore[attr-defined]
        assert ledger_windows(ledger) == []
    finally:
        influxd.start()
    assert write(client, config, body(points)).status_code == 204  # type: ignore[attr-defined]
    assert [r.state for r in ledger_windows(ledger)] == ["shipped"]


def test_refusals_are_counted_in_metrics(
    client: TestClient, config: FederationConfig, hour0: int
) -> None:
    points, _, _ = _bad_batch(config, hour0, "email")
    write(client, config, body(points))
    text = client.get("/metrics", headers={"Authorization": "Bearer reader-secret"}).text
    assert 'federation_gateway_refusals_total{rule="personal-data"} 1' in text


# -- column-by-column checks agree with point-by-point checks ------------------------------------


def _verdict(run: Callable[[], CheckedBatch]) -> tuple[object, ...]:
    """What the gateway answers: the refusal's rule, key and line, or what it accepted."""
    try:
        batch = run()
    except Refusal as refusal:
        return ("refused", refusal.rule, refusal.status, refusal.key, refusal.line)
    return ("accepted", batch.points, batch.manifests)


def _verdicts(coordinator: Coordinator, raw: bytes) -> tuple[tuple[object, ...], ...]:
    """The verdict of `check_body` (column by column where it can) and of the point-by-point
    checks alone."""
    checker = coordinator.checker()
    now = coordinator.clock.now_ns()
    return (
        _verdict(lambda: check_body(checker, DC, raw, "ns", now)),
        _verdict(lambda: checker.check(DC, parse_body(raw, "ns", now), now_ns=now)),
    )


def _latency_batch(config: FederationConfig, hour0: int, seed: int = 3) -> list[Point]:
    """A window of the three-dimension aggregation with dozens of groups, as DCs ship it."""
    from federation.core.aggregate import window_points

    rng = np.random.default_rng(seed)
    n = 3000
    dims = [
        list(rng.choice(["in", "out"], n)),
        [f"mx{i}" for i in rng.integers(0, 3, n)],
        [f"c{i}" for i in rng.integers(0, 12, n)],
    ]
    plan = plan_of(config, DC, "delivery_latency")
    return window_points(plan, hour0 - HOUR, rng.lognormal(5.0, 1.0, n), dims, run=1)


def test_a_good_batch_is_checked_column_by_column_with_the_same_verdict(
    coordinator: Coordinator, config: FederationConfig, hour0: int
) -> None:
    points = _latency_batch(config, hour0)
    raw = body(points)
    columns = read_columns(raw.decode(), "ns", coordinator.clock.now_ns())
    assert columns is not None and columns.rows == len(points) - 1 > 50
    checked = coordinator.checker().check_columns(DC, columns, now_ns=coordinator.clock.now_ns())
    assert checked is not None and checked.points == len(points)
    fast, slow = _verdicts(coordinator, raw)
    assert fast == slow == ("accepted", len(points), checked.manifests)


@pytest.mark.parametrize("change", RULE_CHANGES)
def test_column_checks_pass_no_batch_that_breaks_a_rule(
    coordinator: Coordinator, config: FederationConfig, hour0: int, change: str
) -> None:
    points, rule, key = _bad_batch(config, hour0, change)
    raw = body(points)
    now = coordinator.clock.now_ns()
    columns = read_columns(raw.decode(), "ns", now)
    assert columns is None or coordinator.checker().check_columns(DC, columns, now_ns=now) is None
    fast, slow = _verdicts(coordinator, raw)
    assert fast == slow
    assert fast[:2] == ("refused", rule) and (key is None or fast[3] == key)


@pytest.mark.parametrize(
    "change",
    ["email", "ipv4", "dc", "count", "sketch", "time-unaligned", "time-future", "time-other"],
)
def test_a_rule_broken_by_one_line_amid_many_gets_the_same_verdict(
    coordinator: Coordinator, config: FederationConfig, hour0: int, change: str
) -> None:
    points = _latency_batch(config, hour0)
    k = len(points) // 3  # neither the first line nor the middle one, which is read whole
    p = points[k]
    if change == "email":
        points[k] = with_tags(p, customer="jane.doe@example.com")
    elif change == "ipv4":
        points[k] = with_tags(p, mailer="10.1.2.3")
    elif change == "dc":
        points[k] = with_tags(p, dc="ams1")
    elif change == "count":
        points[k] = with_fields(p, count=int(p.fields["count"]) + 1)  # type: ignore[call-overload]
    elif change == "sketch":
        points[k] = with_fields(p, sketch=points[k + 1].fields["sketch"])
    elif change == "time-unaligned":
        points[k] = dataclasses.replace(p, time_ns=p.time_ns + 10**9)
    elif change == "time-future":
        points[k] = dataclasses.replace(p, time_ns=hour0 + HOUR)
    else:  # a window earlier: a good point, of a window with no manifest in this batch
        points[k] = dataclasses.replace(p, time_ns=p.time_ns - HOUR)
    now = coordinator.clock.now_ns()
    columns = read_columns(body(points).decode(), "ns", now)
    assert columns is not None and not columns.others[:-1]  # only the manifest is read whole
    passed = coordinator.checker().check_columns(DC, columns, now_ns=now)
    assert (passed is not None) == (change == "time-other")
    fast, slow = _verdicts(coordinator, body(points))
    assert fast == slow
    expected = {
        "email": "personal-data", "ipv4": "personal-data", "dc": "dc-identity",
        "count": "sketch", "sketch": "sketch", "time-unaligned": "timestamp",
        "time-future": "timestamp",
    }  # fmt: skip
    if change in expected:
        assert fast[:2] == ("refused", expected[change]) and fast[4] == k + 1
    else:
        assert fast[0] == "accepted"


@given(
    st.lists(
        st.tuples(
            st.floats(0, 1),
            # Mostly edits that keep the line protocol valid: digits and letters in values.
            st.one_of(
                st.text(alphabet="0123456789", min_size=1, max_size=2),
                st.text(alphabet="azAZ@.:", min_size=1, max_size=2),
                st.text(alphabet=',= "-_i\n', min_size=1, max_size=2),
            ),
            st.integers(0, 2),
        ),
        min_size=1,
        max_size=2,
    )
)
@settings(
    max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
def test_a_damaged_batch_gets_the_same_verdict_column_by_column(
    coordinator: Coordinator,
    config: FederationConfig,
    hour0: int,
    edits: list[tuple[float, str, int]],
) -> None:
    text = body(_latency_batch(config, hour0)).decode()
    for where, junk, cut in edits:
        at = int(where * len(text))
        text = text[:at] + junk + text[at + cut :]
    fast, slow = _verdicts(coordinator, text.encode())
    assert fast == slow


def test_the_write_consistency_reaches_central_and_a_bad_one_is_refused(
    coordinator: Coordinator, config: FederationConfig, influx: InfluxClient, hour0: int
) -> None:
    forwarded: list[dict[str, str]] = []
    real = httpx.AsyncHTTPTransport()

    class Recording(httpx.AsyncBaseTransport):
        async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
            forwarded.append(dict(request.url.params))
            return await real.handle_async_request(request)

    app = build_app(coordinator, central_transport=Recording())
    points = window_batch(plan_of(config, DC), hour0 - HOUR)
    with TestClient(app) as client:
        params = central_params(config, DC)
        bad = write(client, config, body(points), params={**params, "consistency": "most"})
        assert _refused(bad, "database")["key"] == "consistency"
        assert forwarded == [] and stored(influx, config) == 0
        ok = write(client, config, body(points), params={**params, "consistency": "quorum"})
        assert ok.status_code == 204, ok.text  # type: ignore[attr-defined]
        # Kapacitor's influxDBOut sends the parameter empty unless .writeConsistency() is set.
        again = write(client, config, body(points), params={**params, "consistency": ""})
        assert again.status_code == 204, again.text  # type: ignore[attr-defined]
    assert [f.get("consistency") for f in forwarded] == ["quorum", None]
    assert stored(influx, config) == len(points)


def test_a_previous_versions_summaries_are_checked_at_the_accuracy_their_sketch_names(
    config: FederationConfig, hour0: int
) -> None:
    """A rollout that changes only the accuracy leaves two versions with the same keys; an
    agent ships a window's summaries before, and apart from, the manifest that names its
    version, so the sketch's own accuracy picks the version to check them against."""
    old = plan_of(config, DC)
    new = dataclasses.replace(old, accuracy=0.02)
    checker = GatewayChecker({(DC, old.aggregation): [new, old]})  # desired first
    now = hour0 + HOUR
    for plan in (old, new):
        raw = body(window_batch(plan, hour0 - HOUR)[:-1])
        for verdict in (
            _verdict(lambda: check_body(checker, DC, raw, "ns", now)),  # noqa: B023
            _verdict(lambda: checker.check(DC, parse_body(raw, "ns", now), now_ns=now)),  # noqa: B023
        ):
            assert verdict[:2] == ("accepted", len(window_batch(plan, hour0 - HOUR)) - 1)
    foreign = body(window_batch(dataclasses.replace(old, accuracy=0.05), hour0 - HOUR)[:-1])
    refused = _verdict(lambda: check_body(checker, DC, foreign, "ns", now))
    assert refused[:4] == ("refused", "sketch", 400, "sketch")
