"""Scenario 8: hostile input at the gateway.

Whatever reaches `POST /write` — fuzzed line protocol, personal data in any position and under
any escaping, oversized or bombing bodies, wrong credentials, another DC's identity, plan or
database — is refused with the status the gateway documents (never 500, never 204), nothing
reaches central or the ledger, no personal value is echoed in the answer or written to the log,
and the coordinator goes on serving every other DC.

One coordinator on a real central influxd serves the whole module; each check compares a full
dump of central (and the ledger's windows) before and after the hostile write.
"""

from __future__ import annotations

import base64
import dataclasses
import gzip
import logging
import re
import shutil
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
import yaml
from hypothesis import HealthCheck, event, given, note, settings
from hypothesis import strategies as st
from sqlalchemy import select
from starlette.testclient import TestClient

from federation.config import FederationConfig, load_config
from federation.config.resolve import resolve_plan
from federation.coordinator.api import build_app
from federation.coordinator.app import ensure_central
from federation.coordinator.ledger import Ledger, WindowRow, open_ledger
from federation.coordinator.service import Coordinator, CoordinatorSettings, Tokens
from federation.core.aggregate import window_points
from federation.core.clock import FakeClock
from federation.core.influxql import quote_ident
from federation.core.lineprotocol import parse
from federation.core.pii import personal_data_kind
from federation.core.plan import MANIFEST_MEASUREMENT, AggregationPlan
from federation.core.points import FieldValue, Point
from federation.devstack.localstack import InfluxServer, LocalStack
from federation.devstack.pii_scan import scan_central
from federation.devstack.processes import free_port
from federation.influx import InfluxClient

pytestmark = pytest.mark.slow

REPO = Path(__file__).resolve().parents[2]
HOUR = 3600 * 10**9
DC = "dub1"
SAME_REGION = "fra1"  # eu, like dub1: same central database and retention policy
OTHER = "lon1"  # the DC whose valid writes must keep succeeding
AGGREGATION = "delivery_direction"
READER = "reader-token"
REFUSED = frozenset({400, 401, 403, 413})
FUZZ = settings(
    max_examples=150,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)


def agent_token(dc: str) -> str:
    return f"agent-token-{dc}"


def basic(user: str, password: str) -> dict[str, str]:
    raw = base64.b64encode(f"{user}:{password}".encode()).decode()
    return {"Authorization": f"Basic {raw}"}


def window_batch(plan: AggregationPlan, start_ns: int, *, seed: int = 11) -> list[Point]:
    """The real points a DC ships for one window of `plan` (two groups, then the manifest)."""
    rng = np.random.default_rng(seed)
    values = rng.lognormal(5.0, 1.0, 40)
    dims = [[("in", "out")[i % 2] for i in range(40)] for _ in plan.dimensions]
    return window_points(plan, start_ns, values, dims, run=1)


# --- writing line protocol by hand, so that every escape is under the test's control ---------


def esc_key(text: str) -> str:
    """A tag key, tag value or field key: `,`, `=` and blanks are escaped."""
    return re.sub(r"([,= ])", r"\\\1", text)


def esc_measurement(text: str) -> str:
    return re.sub(r"([, ])", r"\\\1", text)


def quoted(text: str) -> str:
    """A string field value: backslashes and double quotes are escaped."""
    return '"' + text.replace("\\", "\\\\").replace('"', '\\"') + '"'


def written(value: FieldValue) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return f"{value}i"
    if isinstance(value, float):
        return repr(value)
    return quoted(value)


@dataclasses.dataclass
class Line:
    """One point as written text: measurement, tag and field tokens, timestamp."""

    measurement: str
    tags: list[tuple[str, str]]
    fields: list[tuple[str, str]]
    time_ns: int

    @classmethod
    def of(cls, point: Point) -> Line:
        return cls(
            esc_measurement(point.measurement),
            [(esc_key(k), esc_key(v)) for k, v in sorted(point.tags.items())],
            [(esc_key(k), written(v)) for k, v in sorted(point.fields.items())],
            point.time_ns,
        )

    def text(self) -> str:
        tags = "".join(f",{k}={v}" for k, v in self.tags)
        fields = ",".join(f"{k}={v}" for k, v in self.fields)
        return f"{self.measurement}{tags} {fields} {self.time_ns}"

    def set_tag(self, key: str, value: str) -> None:
        self.tags = [(k, value if k == key else v) for k, v in self.tags]

    def set_field(self, key: str, value: str) -> None:
        self.fields = [(k, value if k == key else v) for k, v in self.fields]


def lines_body(lines: list[Line]) -> bytes:
    return "".join(line.text() + "\n" for line in lines).encode()


# --- the coordinator under attack ------------------------------------------------------------


Dump = list[tuple[Any, ...]]


@dataclasses.dataclass
class Gateway:
    config: FederationConfig
    coordinator: Coordinator
    ledger: Ledger
    client: TestClient
    influx: InfluxClient
    hour0: int
    other_body: bytes

    @property
    def database(self) -> str:
        return self.config.fleet.central.database

    def plan(self, dc: str = DC) -> AggregationPlan:
        return resolve_plan(self.config, AGGREGATION, dc)

    def batch(self, dc: str = DC) -> list[Point]:
        """The points of a valid shipment of `dc` for the window the hostile writes aim at."""
        return window_batch(self.plan(dc), self.hour0 - HOUR)

    def params(self, dc: str = DC) -> dict[str, str]:
        rp = self.config.policy_for(dc).central.retention_policy
        return {"db": self.database, "rp": rp}

    def post(
        self,
        payload: bytes,
        *,
        dc: str = DC,
        headers: dict[str, str] | None = None,
        params: dict[str, str] | None = None,
    ) -> httpx.Response:
        response: httpx.Response = self.client.post(
            "/write",
            params=self.params(dc) if params is None else params,
            content=payload,
            headers=basic(dc, agent_token(dc)) if headers is None else headers,
        )
        return response

    def dump(self) -> Dump:
        """Everything central holds (every point of every measurement and RP, every series,
        every database) and every window the ledger knows."""
        rows: Dump = [("databases", tuple(sorted(self.influx.databases())))]
        for rp in sorted(r.name for r in self.influx.retention_policies(self.database)):
            q = f"SELECT * FROM {quote_ident(rp)}./.*/"
            for series in self.influx.query(q, database=self.database):
                values = tuple(tuple(row) for row in series.values)
                rows.append((rp, series.name, tuple(series.columns), values))
        q = "SHOW SERIES"
        rows.append(
            ("series", tuple(tuple(r) for s in self.influx.query(q, database=self.database)
                             for r in s.values))
        )  # fmt: skip
        with self.ledger.session() as session:
            windows = session.scalars(select(WindowRow).order_by(WindowRow.id))
            rows.append(("ledger", tuple((w.dc, w.start_ns, w.state, w.run, w.events)
                                         for w in windows)))  # fmt: skip
        return rows

    def scan(self, personal_values: set[str]) -> None:
        keys: set[str] = set()
        for policy in self.config.policies.values():
            for measurement in policy.measurements.values():
                keys |= measurement.personal_keys
        result = scan_central(
            self.influx, self.database, personal_keys=keys, personal_values=personal_values
        )
        assert result.clean, result.findings
        assert result.values_checked > 0

    def assert_still_serving(self) -> None:
        """`/ping` answers and another DC's valid (re-)shipment is stored."""
        assert self.client.get("/ping").status_code == 204
        response = self.post(self.other_body, dc=OTHER)
        assert response.status_code == 204, response.text

    def assert_refused(
        self,
        response: httpx.Response,
        before: Dump,
        caplog: pytest.LogCaptureFixture,
        *,
        statuses: frozenset[int] = REFUSED,
        secrets: tuple[str, ...] = (),
        rule: str | None = None,
    ) -> dict[str, Any]:
        """Refused with one of `statuses`, central and ledger unchanged, no secret echoed or
        logged, and the coordinator still serving."""
        assert response.status_code in statuses, (response.status_code, response.text)
        data: dict[str, Any] = response.json()
        assert data["error"]
        if rule is not None:
            assert data["rule"] == rule, data
        assert self.dump() == before
        texts = [response.text, *(v for v in data.values() if isinstance(v, str))]
        own_logs = [r.getMessage() for r in caplog.records if r.name.startswith("federation")]
        for secret in secrets:
            for text in [*texts, caplog.text]:
                assert secret not in text, (secret, text)
        for text in [*texts[1:], *own_logs]:
            assert personal_data_kind(text) is None, text
        self.assert_still_serving()
        return data


def _config_dir(root: Path, central_url: str, ledger_url: str) -> Path:
    target = root / "config"
    target.mkdir()
    shutil.copy(REPO / "fleet.yaml", target / "fleet.yaml")
    shutil.copytree(REPO / "policies", target / "policies")
    shutil.copytree(REPO / "tickscripts", target / "tickscripts")
    data = yaml.safe_load((target / "fleet.yaml").read_text())
    data["central"]["influxdb"] = {"url": central_url}
    data["central"]["ledger_url"] = ledger_url
    for dc in data["dcs"].values():
        dc["influxdb"] = {"url": dc["influxdb"]["url"]}
    (target / "fleet.yaml").write_text(yaml.safe_dump(data, sort_keys=False))
    return target


@pytest.fixture(scope="module")
def gateway(localstack: LocalStack, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Gateway]:
    """A coordinator with a SQLite ledger on its own central influxd, already holding a
    valid window from dub1 and from lon1."""
    root = tmp_path_factory.mktemp("hostile-gateway")
    server = InfluxServer("hostile-gateway", localstack.root / root.name, free_port())
    server.start()
    ledger_url = f"sqlite:///{root / 'ledger.sqlite'}"
    config = load_config(_config_dir(root, server.url, ledger_url))
    now = time.time_ns()
    hour0 = now - now % HOUR - 24 * HOUR
    try:
        with InfluxClient(server.url) as influx, open_ledger(ledger_url) as ledger:
            ensure_central(config, influx)
            tokens = Tokens({dc: agent_token(dc) for dc in config.fleet.dcs}, READER)
            # Not on a window start: a point that loses its timestamp is misaligned.
            clock = FakeClock(hour0 + 7 * 10**9)
            settings_ = CoordinatorSettings(verify_settle_ns=0)
            coordinator = Coordinator(config, ledger, tokens, clock=clock, settings=settings_)
            coordinator.sync()
            with TestClient(build_app(coordinator)) as client:
                other = resolve_plan(config, AGGREGATION, OTHER)
                gw = Gateway(
                    config, coordinator, ledger, client, influx, hour0,
                    other_body=lines_body([Line.of(p) for p in window_batch(other, hour0 - HOUR)]),
                )  # fmt: skip
                seed = window_batch(gw.plan(), hour0 - 2 * HOUR)
                assert gw.post(lines_body([Line.of(p) for p in seed])).status_code == 204
                gw.assert_still_serving()
                yield gw
    finally:
        server.stop()
        shutil.rmtree(server.root, ignore_errors=True)


@pytest.fixture
def logs(caplog: pytest.LogCaptureFixture) -> pytest.LogCaptureFixture:
    caplog.set_level(logging.DEBUG)
    return caplog


# --- fuzzed line protocol -------------------------------------------------------------------

_LP_ALPHABET = ' ,="\\\n\r#=abcdeinstu_0123456789.-+iTfF\t'


@FUZZ
@given(
    payload=st.one_of(
        st.binary(max_size=600),
        st.text(alphabet=_LP_ALPHABET, max_size=300).map(str.encode),
        st.text(max_size=120).map(str.encode),
    )
)
def test_random_bytes_are_refused_and_change_nothing(
    gateway: Gateway, logs: pytest.LogCaptureFixture, payload: bytes
) -> None:
    before = gateway.dump()
    response = gateway.post(payload)
    if response.status_code == 204:
        # Only a body without a single point (blank lines, comments) is answered like InfluxDB.
        assert parse(payload, "ns", 0) == []
        assert gateway.dump() == before
        gateway.assert_still_serving()
    else:
        gateway.assert_refused(response, before, logs, statuses=frozenset({400}))


_HOSTILE_NUMBERS = (
    "NaN", "nan", "inf", "-Inf", "+Infinity", "1e309", "-1e400", "1e-400", "9223372036854775808i",
    "-9223372036854775809i", "99999999999999999999999", "0x10", "1_000", ".e5", "00017i", "17u",
    "1.0.0", "--1", "17I", '"17"', "t", "",
)  # fmt: skip
_INJECTIONS = ('"', "\\", "\n", "\\ ", " ", ",", "=", "\r", "\x00", "#", "\\\n", '\\"', "'", "é")
_NUMBER = re.compile(rb"=(-?[0-9][0-9.e+-]*i?)(?=[, ])")
_TAG = re.compile(rb",([a-z_]+)=([^, ]+)")
_FIELD = re.compile(rb"[ ,]([a-z_0-9]+)=([^, \"]+)")

mutation = st.one_of(
    st.tuples(st.just("truncate"), st.integers(0, 10**6)),
    st.tuples(st.just("flip"), st.integers(0, 10**6), st.integers(1, 255)),
    st.tuples(st.just("inject"), st.integers(0, 10**6), st.sampled_from(_INJECTIONS)),
    st.tuples(st.just("number"), st.integers(0, 10**6), st.sampled_from(_HOSTILE_NUMBERS)),
    st.tuples(
        st.just("duplicate"),
        st.integers(0, 10**6),
        st.sampled_from(["tag", "same-type", "other-type", "string"]),
    ),
)


def mutate(body: bytes, op: tuple[Any, ...]) -> bytes:
    kind, at = str(op[0]), int(op[1])
    arg: Any = op[2] if len(op) > 2 else 0
    if not body:
        return body
    if kind == "truncate":
        return body[: at % max(len(body), 1)]
    if kind == "flip":
        i = at % len(body)
        return body[:i] + bytes([body[i] ^ int(arg)]) + body[i + 1 :]
    if kind == "inject":
        i = at % (len(body) + 1)
        return body[:i] + str(arg).encode() + body[i:]
    if kind == "number":
        numbers = list(_NUMBER.finditer(body))
        if not numbers:
            return body
        m = numbers[at % len(numbers)]
        return body[: m.start(1)] + str(arg).encode() + body[m.end(1) :]
    # duplicate a key inside one point, with another value
    pattern = _TAG if arg == "tag" else _FIELD
    found = list(pattern.finditer(body))
    if not found:
        return body
    m = found[at % len(found)]
    key, value = bytes(m.group(1)), bytes(m.group(2))
    other = {
        "tag": b"other",
        "same-type": b"3i" if value.endswith(b"i") else b"3.5",
        "other-type": b"3.5" if value.endswith(b"i") else b"3i",
        "string": b'"v1:a=0.01:n=3:z=3"',
    }[str(arg)]
    return body[: m.end()] + b"," + key + b"=" + other + body[m.end() :]


def assert_central_holds(gateway: Gateway, payload: bytes) -> None:
    """Every point of an accepted body is in central exactly as the gateway read it."""
    rp = gateway.params()["rp"]
    for point in parse(payload, "ns", gateway.coordinator.clock.now_ns()):
        q = f"SELECT * FROM {quote_ident(rp)}.{quote_ident(point.measurement)} "
        q += f"WHERE time = {point.time_ns}"
        series = gateway.influx.query(q, database=gateway.database)
        rows = [dict(zip(s.columns, row, strict=True)) for s in series for row in s.values]
        mine = [r for r in rows if all(r.get(k) == v for k, v in point.tags.items())]
        assert len(mine) == 1, (point, rows)
        assert {k: mine[0][k] for k in point.fields} == dict(point.fields)


@FUZZ
@given(ops=st.lists(mutation, min_size=1, max_size=3), gzipped=st.booleans())
def test_mutated_shipments_are_refused_or_stored_exactly_as_checked(
    gateway: Gateway, logs: pytest.LogCaptureFixture, ops: list[tuple[Any, ...]], gzipped: bool
) -> None:
    payload = lines_body([Line.of(p) for p in gateway.batch()])
    for op in ops:
        payload = mutate(payload, op)
    note(repr(payload))
    before = gateway.dump()
    headers = basic(DC, agent_token(DC))
    if gzipped:
        headers["Content-Encoding"] = "gzip"
    response = gateway.post(gzip.compress(payload) if gzipped else payload, headers=headers)
    event(f"HTTP {response.status_code} {response.json()['rule'] if response.content else ''}")
    if response.status_code == 204:
        # Some mutations leave a valid shipment (a dropped line, a changed percentile): what
        # was accepted must be what central now holds, and nothing personal.
        assert_central_holds(gateway, payload)
        gateway.scan(set())
        gateway.assert_still_serving()
    else:
        gateway.assert_refused(response, before, logs, statuses=frozenset({400, 403}))


# --- personal data in every position ------------------------------------------------------

emails = st.builds(
    "{}@{}".format,
    st.from_regex(r"[a-z][a-z0-9]{1,7}([._+-][a-z0-9]{1,6})?", fullmatch=True),
    st.sampled_from(["example.com", "mail.example.org", "example.net"]),
)
ipv4s = st.ip_addresses(v=4, network="10.0.0.0/8").map(str)
ipv6s = st.ip_addresses(v=6, network="2001:db8::/32").map(str)


@st.composite
def disguised(draw: st.DrawFn) -> tuple[str, str]:
    """A personal value and the string a DC could try to pass it off as."""
    value = draw(st.one_of(emails, ipv4s, ipv6s))
    trick = draw(st.sampled_from(["plain", "embedded", "blank", "backslash", "quoted", "percent"]))
    if trick == "embedded":
        return value, f"rcpt=<{value}>, from {value}"
    if trick == "blank":
        i = draw(st.integers(1, len(value) - 1))
        return value, value[:i] + " " + value[i:]
    if trick == "backslash":
        marks = [i for i, c in enumerate(value) if c in "@.:"]
        i = draw(st.sampled_from(marks))
        return value, value[:i] + "\\" + value[i:]
    if trick == "quoted":
        if "@" in value:
            local, _, domain = value.partition("@")
            return value, f'"{local}"@{domain}'
        return value, f'"{value}"'
    if trick == "percent" and "@" in value:
        return value, value.replace("@", "%40")
    return value, value


POSITIONS = (
    "tag-value", "dc-tag", "aggregation-tag", "extra-tag", "tag-key", "field-key",
    "version-field", "sketch-field", "extra-string-field", "measurement", "numeric-field",
)  # fmt: skip


def hostile_lines(gateway: Gateway, position: str, text: str) -> tuple[list[Line], str]:
    """The valid batch with `text` in `position` of one point, placed after a good point;
    and the token as it is written in the body."""
    lines = [Line.of(p) for p in gateway.batch()]
    summary, manifest = lines[0], lines[-1]
    assert manifest.measurement == MANIFEST_MEASUREMENT
    token = esc_key(text)
    target = summary
    if position == "tag-value":
        summary.set_tag("direction", token)
    elif position == "dc-tag":
        summary.set_tag("dc", token)
    elif position == "aggregation-tag":
        manifest.set_tag("aggregation", token)
        target = manifest
    elif position == "extra-tag":
        summary.tags.append(("rcpt", token))
    elif position == "tag-key":
        summary.tags.append((token, "in"))
    elif position == "field-key":
        summary.fields.append((token, "1i"))
    elif position == "version-field":
        token = quoted(text)
        manifest.set_field("version", token)
        target = manifest
    elif position == "sketch-field":
        token = quoted(text)
        summary.set_field("sketch", token)
    elif position == "extra-string-field":
        token = quoted(text)
        summary.fields.append(("note", token))
    elif position == "measurement":
        token = esc_measurement(text)
        summary.measurement = token
    else:
        token = text
        summary.set_field("count", token)
    lines.remove(target)
    lines.insert(1, target)
    return lines, token


@FUZZ
@given(pii=disguised(), position=st.sampled_from(POSITIONS))
def test_personal_data_in_any_position_is_refused_and_never_repeated(
    gateway: Gateway, logs: pytest.LogCaptureFixture, pii: tuple[str, str], position: str
) -> None:
    value, text = pii
    assert personal_data_kind(text) is not None, "the gateway's own test for personal data"
    lines, token = hostile_lines(gateway, position, text)
    before = gateway.dump()
    response = gateway.post(lines_body(lines))
    secrets = tuple({value, text, token})
    gateway.assert_refused(response, before, logs, statuses=frozenset({400, 403}), secrets=secrets)
    if position == "dc-tag":
        assert response.status_code == 403
    gateway.scan({value, text})


# --- bodies, credentials, identity, plan versions, databases ------------------------------


def test_oversized_bodies_and_gzip_bombs_get_413(
    gateway: Gateway, logs: pytest.LogCaptureFixture
) -> None:
    coordinator = gateway.coordinator
    original = coordinator.settings
    limit = 64 * 1024
    coordinator.settings = dataclasses.replace(original, max_body_bytes=limit)
    try:
        valid = lines_body([Line.of(p) for p in gateway.batch()])
        big = valid * (limit // len(valid) + 2)
        gzip_headers = {**basic(DC, agent_token(DC)), "Content-Encoding": "gzip"}
        bomb = gzip.compress(b"\n" * (64 * 1024 * 1024), compresslevel=9)
        assert len(bomb) < limit
        cases: list[tuple[bytes, dict[str, str] | None]] = [
            (big, None),
            (gzip.compress(big), gzip_headers),
            (bomb, gzip_headers),
            (gzip.compress(b"x" * limit + b"jane.doe@example.com"), gzip_headers),
        ]
        for payload, headers in cases:
            before = gateway.dump()
            response = gateway.post(payload, headers=headers)
            gateway.assert_refused(
                response, before, logs, statuses=frozenset({413}), rule="size",
                secrets=("jane.doe@example.com",),
            )  # fmt: skip
    finally:
        coordinator.settings = original
    # Just over the limit; the other DC's shipment is just within it.
    limit = len(gateway.other_body)
    coordinator.settings = dataclasses.replace(original, max_body_bytes=limit)
    try:
        before = gateway.dump()
        response = gateway.post(b"x" * (limit + 1))
        gateway.assert_refused(response, before, logs, statuses=frozenset({413}), rule="size")
    finally:
        coordinator.settings = original


def test_gzip_bodies_that_central_would_read_differently_are_refused(
    gateway: Gateway, logs: pytest.LogCaptureFixture
) -> None:
    """InfluxDB reads every member of a gzip body; the gateway must not check only the first."""
    valid = lines_body([Line.of(p) for p in gateway.batch()])
    hidden = Line.of(gateway.batch()[0])
    hidden.set_tag("direction", "jane.doe@example.com")
    headers = {**basic(DC, agent_token(DC)), "Content-Encoding": "gzip"}
    whole = gzip.compress(valid)
    cases = [
        whole + gzip.compress(lines_body([hidden])),  # a second member with personal data
        whole + b"trailing garbage",
        whole[: len(whole) // 2],  # truncated
        b"\x1f\x8b not gzip at all",
    ]
    for payload in cases:
        before = gateway.dump()
        gateway.assert_refused(
            gateway.post(payload, headers=headers), before, logs,
            statuses=frozenset({400}), secrets=("jane.doe@example.com",),
        )  # fmt: skip
    gateway.scan({"jane.doe@example.com"})


@pytest.mark.parametrize(
    "credentials",
    [
        "none", "wrong-password", "other-dcs-token", "other-dcs-name", "bad-bearer",
        "empty-bearer", "malformed-basic", "no-password", "query-wrong", "query-no-password",
        "reader-token",
    ],
)  # fmt: skip
def test_missing_or_wrong_credentials_get_401(
    gateway: Gateway, logs: pytest.LogCaptureFixture, credentials: str
) -> None:
    params = gateway.params()
    headers = {
        "none": {},
        "wrong-password": basic(DC, "wrong"),
        "other-dcs-token": basic(DC, agent_token(OTHER)),
        "other-dcs-name": basic(SAME_REGION, agent_token(DC)),
        "bad-bearer": {"Authorization": "Bearer not-a-token"},
        "empty-bearer": {"Authorization": "Bearer "},
        "malformed-basic": {"Authorization": "Basic !!!not base64"},
        "no-password": {"Authorization": "Basic " + base64.b64encode(DC.encode()).decode()},
        "query-wrong": {},
        "query-no-password": {},
        "reader-token": {"Authorization": f"Bearer {READER}"},
    }[credentials]
    if credentials == "query-wrong":
        params.update(u=DC, p="wrong")
    if credentials == "query-no-password":
        params.update(u=DC)
    before = gateway.dump()
    payload = lines_body([Line.of(p) for p in gateway.batch()])
    response = gateway.post(payload, headers=headers, params=params)
    gateway.assert_refused(response, before, logs, statuses=frozenset({401}), rule="auth")


def test_a_dc_writing_points_tagged_as_another_dc_is_forbidden(
    gateway: Gateway, logs: pytest.LogCaptureFixture
) -> None:
    for victim in (SAME_REGION, OTHER):
        # The victim's own, valid shipment, sent with dub1's credentials.
        payload = lines_body([Line.of(p) for p in gateway.batch(victim)])
        before = gateway.dump()
        response = gateway.post(payload, params=gateway.params(DC))
        gateway.assert_refused(response, before, logs, statuses=frozenset({403, 400}))
    # One point of another DC hidden among dub1's own.
    lines = [Line.of(p) for p in gateway.batch()]
    lines[1].set_tag("dc", SAME_REGION)
    before = gateway.dump()
    gateway.assert_refused(
        gateway.post(lines_body(lines)), before, logs, statuses=frozenset({403}),
        rule="dc-identity",
    )  # fmt: skip


def test_a_dc_writing_another_dcs_aggregation_version_is_refused(
    gateway: Gateway, logs: pytest.LogCaptureFixture
) -> None:
    ours = gateway.plan().version
    # A plan's version is its content: DCs of one region share it, other regions differ.
    victims = [dc for dc in sorted(gateway.config.fleet.dcs) if gateway.plan(dc).version != ours]
    assert victims
    for victim in victims:
        theirs = gateway.plan(victim)
        points = [
            dataclasses.replace(p, tags={**p.tags, "dc": DC})
            for p in window_batch(theirs, gateway.hour0 - HOUR)
        ]
        before = gateway.dump()
        data = gateway.assert_refused(
            gateway.post(lines_body([Line.of(p) for p in points])), before, logs,
            statuses=frozenset({400}),
        )  # fmt: skip
        assert data["rule"] in ("plan-version", "k-anonymity"), data


@pytest.mark.parametrize(
    "target",
    [
        {"db": "mail"}, {"db": "_internal"}, {"db": ""}, {"db": "federation", "rp": "agg_800d"},
        {"db": "federation", "rp": "autogen"}, {"db": "FEDERATION"}, {"rp": "agg_400d"},
        {"db": "federation", "rp": "agg_400d; DROP DATABASE federation"},
    ],
    ids=lambda t: ",".join(f"{k}={v}" for k, v in t.items()) or "none",
)  # fmt: skip
def test_a_valid_dc_writing_to_the_wrong_database_or_rp_is_refused(
    gateway: Gateway, logs: pytest.LogCaptureFixture, target: dict[str, str]
) -> None:
    payload = lines_body([Line.of(p) for p in gateway.batch()])
    before = gateway.dump()
    response = gateway.post(payload, params=dict(target))
    gateway.assert_refused(response, before, logs, statuses=frozenset({400}), rule="database")


@pytest.mark.parametrize(
    "field,value",
    [
        ("count", "NaN"), ("sum", "inf"), ("sum", "-Infinity"), ("max", "1e309"),
        ("count", "9223372036854775808i"), ("count", "-5i"), ("count", "40"),
        ("p50", '"1.5"'), ("min", "true"),
    ],
)  # fmt: skip
def test_impossible_numbers_are_refused(
    gateway: Gateway, logs: pytest.LogCaptureFixture, field: str, value: str
) -> None:
    lines = [Line.of(p) for p in gateway.batch()]
    lines[0].set_field(field, value)
    before = gateway.dump()
    gateway.assert_refused(gateway.post(lines_body(lines)), before, logs, statuses=frozenset({400}))
