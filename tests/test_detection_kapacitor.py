"""A detection in Kapacitor mode keeps the same findings and ships the same counts as the
embedded executor, on the same raw data: against the emulator and against a real kapacitord.

The detection's task is rendered and deployed through `deploy.apply_tasks` (the rollout path),
then a past range is replayed. The real kapacitord runs the rendered script: its query reads
the personal keys inside the DC, `federation kapacitor-udf` computes each window twice (findings
mode, counts mode), and influxDBOut writes the findings to the DC's InfluxDB and the counts to
the gateway cluster, here a plain InfluxDB standing for central. The emulator runs no script;
its replay hook plays what Kapacitor does for a replay of this task shape (`play_replay`): one
batch per window that holds raw data, through the UDF's protocol with the options the deployed
script calls it with, each mode's points written where the script's influxDBOut says.
"""

from __future__ import annotations

import io
import random
import re
import time
from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest
from kapacitor_fixture import KapacitorFactory, KapacitorUnderTest
from test_kapacitor_udf import _CALL, _tick_option, init
from test_kapacitord import Key, central_state, expected_state

from federation.agent.detection_executor import read_detection_window
from federation.config import load_config
from federation.config.resolve import resolve_detection
from federation.core.detect import finding_points, shipped_points
from federation.core.detection_plan import (
    DETECTION_RUNS_MEASUREMENT,
    FINDINGS_MEASUREMENT,
    DetectionPlan,
)
from federation.core.influxql import quote_ident
from federation.core.lineprotocol import serialize
from federation.core.points import Point
from federation.core.windows import windows_between
from federation.devstack.localstack import LocalStack
from federation.errors import KapacitorError
from federation.influx import InfluxClient
from federation.kapacitor import _udf_pb2 as pb
from federation.kapacitor.deploy import TaskSnapshot, apply_tasks
from federation.kapacitor.udf import serve
from federation.kapacitor.udf_wire import frame, iter_frames, point_from_message
from federation.tickscript.render import render_detection

REPO = Path(__file__).resolve().parent.parent
SECOND = 10**9
WINDOW = 2 * SECOND
DC = "dub1"


def short_plan() -> DetectionPlan:
    """recipients_per_sender on 2 s windows, one branch, a threshold the data reaches."""
    plan = resolve_detection(load_config(REPO), "recipients_per_sender", DC)
    return replace(plan, window_ns=WINDOW, lookback_ns=WINDOW, at_least=4, factor=3.0)


def raw_points(plan: DetectionPlan, starts: Sequence[int]) -> list[Point]:
    """Per window: a dozen senders mailing one or two recipients, one mailing many, and events
    without a recipient; personal data in fields, as the policy wants."""
    rng = random.Random(5)
    points = []
    for w, start in enumerate(starts):
        for i in range(60):
            sender = f"burst{w}@example.test" if i % 4 == 0 else f"s{rng.randrange(12)}@ex.test"
            fields: dict[str, str | float] = {"latency_ms": 12.5, plan.key: sender}
            if i % 9:
                fields[plan.distinct or "recipient"] = f"r{i if i % 4 == 0 else i % 2}@ex.org"
            tags = {"direction": "out", "seq": str(i)}
            points.append(Point(plan.measurement, tags, fields, start + rng.randrange(WINDOW)))
    return points


_OUT = re.compile(r"\.(cluster|database|retentionPolicy)\('([^']*)'\)")
_ROUTE = re.compile(r"\|where\(lambda: \"(\w+)\" == '(\w+)'\)\s*\|delete\(\)\s*\.tag\('(\w+)'\)")


def play_replay(
    script: str, dc: InfluxClient, central: InfluxClient, plan: DetectionPlan, start: int, stop: int
) -> None:
    """What Kapacitor does when it replays this detection task over [start, stop): each
    window's query result (no batch for an empty one) to the branch's UDF node, and its points
    down each `|where(routing tag == route) |delete().tag(routing tag) |influxDBOut()` path to
    the InfluxDB that influxDBOut names."""
    (call,) = script.split("@fedagg()")[1:]  # a replay's task has one branch
    udf, *outputs = call.split("\nwindow0\n")
    options = [_tick_option(*m.groups()) for line in udf.splitlines() if (m := _CALL.match(line))]
    for window in windows_between(start, stop, plan.window_ns):
        rows = [
            row
            for series in dc.query(plan.query_between(window.start_ns, window.end_ns), database=plan.database)
            for row in series.values
        ]  # fmt: skip
        if not rows:
            continue
        columns = ["time", *plan.columns]
        batch = [pb.Request()]
        batch[0].begin.name = plan.measurement
        for row in rows:
            request = pb.Request()
            request.point.name = plan.measurement
            request.point.time = int(row[0])
            for name, value in zip(columns[1:], row[1:], strict=True):
                if value is not None:  # Kapacitor drops null columns
                    request.point.fieldsString[name] = str(value)
            batch.append(request)
        end = pb.Request()
        end.end.name = plan.measurement
        end.end.tmax = window.end_ns
        batch.append(end)
        stdout = io.BytesIO()
        stdin = io.BytesIO(b"".join(frame(r) for r in [init(options), *batch]))
        assert serve(stdin, stdout) == 0
        responses = [pb.Response.FromString(d) for d in iter_frames(io.BytesIO(stdout.getvalue()))]
        emitted = [
            point_from_message(r.point) for r in responses if r.WhichOneof("message") == "point"
        ]
        for out in outputs:
            match = _ROUTE.search(out)
            assert match is not None, out
            tag, route, deleted = match.groups()
            target = dict(_OUT.findall(out))
            tags = dict(re.findall(r"\.tag\('([^']*)', '([^']*)'\)", out))
            points = [
                Point(p.measurement, {**{k: v for k, v in p.tags.items() if k != deleted}, **tags}, p.fields, p.time_ns)
                for p in emitted
                if p.tags.get(tag) == route
            ]  # fmt: skip
            client = central if target.get("cluster") else dc
            client.write(
                serialize(points),
                database=target["database"],
                retention_policy=target["retentionPolicy"],
            )  # fmt: skip


def local_state(dc: InfluxClient, plan: DetectionPlan, start: int, end: int) -> dict[Key, Any]:
    state: dict[Key, Any] = {}
    for measurement in (FINDINGS_MEASUREMENT, DETECTION_RUNS_MEASUREMENT):
        state.update(
            central_state(dc, plan.database, plan.retention_policy, measurement, start, end)
        )
    return state


def test_kapacitor_keeps_the_findings_and_ships_the_counts_of_the_embedded_executor(
    kapacitors: KapacitorFactory, localstack: LocalStack
) -> None:
    plan = short_plan()
    suffix = f"{kapacitors.kind}-{time.monotonic_ns()}"
    dc_server = localstack.influxd(f"detect-dc-{suffix}")
    central_server = localstack.influxd(f"detect-central-{suffix}")
    now = time.time_ns()
    start = now - now % (60 * SECOND) - 3 * 60 * SECOND  # whole windows, all complete
    windows = windows_between(start, start + 4 * WINDOW, WINDOW)
    with InfluxClient(dc_server.url) as dc, InfluxClient(central_server.url) as central:
        dc.create_database(plan.database)
        dc.execute(
            f"CREATE RETENTION POLICY {quote_ident(plan.retention_policy)} ON "
            f"{quote_ident(plan.database)} DURATION 1d REPLICATION 1"
        )
        central.create_database(plan.central_database)
        central.execute(
            f"CREATE RETENTION POLICY {quote_ident(plan.central_retention_policy)} ON "
            f"{quote_ident(plan.central_database)} DURATION 400d REPLICATION 1"
        )
        # Raw data in windows 0, 1 and 3; window 2 is empty (no batch, nothing written).
        with_data = [windows[i] for i in (0, 1, 3)]
        raw = raw_points(plan, [w.start_ns for w in with_data])
        dc.write(serialize(raw), database=plan.database, retention_policy=plan.retention_policy)

        expected_local: dict[Key, Any] = {}
        expected_central: dict[Key, Any] = {}
        for window in with_data:
            detected = read_detection_window(dc, plan, window)
            assert detected.findings, "the data must find something in every window"
            expected_local.update(expected_state(finding_points(plan, detected, run=0)))
            expected_central.update(expected_state(shipped_points(plan, detected, run=0)))

        kapacitor = kapacitors.new(DC, influx_url=dc_server.url, gateway_url=central_server.url)
        task = render_detection(plan, REPO / "tickscripts")
        emulator = kapacitor.emulator
        if emulator is not None:
            emulator.on_replay = lambda task_id, s, e, _rec: play_replay(
                emulator.tasks[task_id].script, dc, central, plan, s, e
            )
        with kapacitor.client() as client:
            deployed = apply_tasks(client, DC, [TaskSnapshot.of_rendered(task)], settle_s=1.0)
            assert deployed.health[task.id].ok
            if emulator is None:
                # Kapacitor numbers the nodes in the order the script creates them: a branch's
                # query node, then its one UDF node, then both routes (what a stalled branch's
                # health names).
                running = client.get_task(task.id)
                assert running is not None
                assert sorted(running.stats["node-stats"]) == sorted(
                    ["batch0", "query1", "fedagg2", "where3", "delete4", "influxdb_out5",
                     "where6", "delete7", "influxdb_out8"]
                )  # fmt: skip
            replay = client.replay_batch(task.id, windows[0].start_ns, windows[-1].end_ns)
            finished = client.wait_replay(replay, timeout_s=60, poll_s=0.2)
            assert finished.status == "finished", finished.error

        first, last = windows[0].start_ns, windows[-1].end_ns
        deadline = time.monotonic() + 30  # influxDBOut flushes every window (2 s)
        while True:
            local = local_state(dc, plan, first, last)
            counts: dict[Key, Any] = {}
            for measurement in (plan.detection, "federation_manifest"):
                counts.update(
                    central_state(
                        central, plan.central_database, plan.central_retention_policy,
                        measurement, first, last,
                    )
                )  # fmt: skip
            if (local, counts) == (expected_local, expected_central):
                break
            if time.monotonic() > deadline:
                break
            time.sleep(0.5)
        assert local == expected_local
        assert counts == expected_central
        # Nothing at central names a key: the count points carry the tag `dc` alone.
        count_keys = [k for k in counts if k[0] == plan.detection]
        assert len(count_keys) == 3
        assert all(tags == (("dc", DC),) for _, _, tags in count_keys)


UDF_CALL_SCRIPT = """dbrp "mail"."raw"
batch
    |query('''SELECT "sender"::field FROM "mail"."raw"."delivery"''')
        .period(1h)
        .every(1h)
        .align()
    @fedagg()
        .{call}
    |influxDBOut()
        .database('mail')
        .retentionPolicy('raw')
"""


@pytest.mark.parametrize(
    ("call", "refusal"),
    [
        ("bogus('x')", 'line 8 char 10: no method or property "bogus" on *pipeline.UDFNode'),
        ("atLeast(1.5)", "line 8 char 10: unexpected arg to atLeast, got DOUBLE expected INT"),
        ("detection(2)", "line 8 char 10: unexpected arg to detection, got INT expected STRING"),
    ],
)
def test_a_udf_call_the_udf_does_not_declare_is_refused_when_the_task_is_defined(
    kapacitor: KapacitorUnderTest, call: str, refusal: str
) -> None:
    with kapacitor.client() as client, pytest.raises(KapacitorError) as info:
        client.create_task("fed-probe-dub1", UDF_CALL_SCRIPT.format(call=call), [])
    assert info.value.status == 400
    assert str(info.value).endswith(f"invalid TICKscript: {refusal}")
