"""KapacitorClient against the Kapacitor emulator: every call and every error path."""

from __future__ import annotations

import json
import socket
from collections.abc import Iterator

import httpx
import pytest

from federation.devstack.kapacitor_emulator import KapacitorEmulator
from federation.errors import KapacitorError, TickScriptError
from federation.kapacitor.client import (
    KapacitorClient,
    Task,
    TaskHealth,
    TaskSavedNotRunning,
    format_time,
)

URL = "http://kapacitor.test:9092"
SCRIPT = '// v1\nbatch|query(\'SELECT value FROM "raw"."autogen"."m"\')\n'
SCRIPT_V2 = '// v2\nbatch|query(\'SELECT value FROM "raw"."autogen"."m"\')\n'
DBRPS = [("raw", "autogen")]
T0 = 1_764_324_000_000_000_000  # 2025-11-28T10:00:00Z


def strict_validator(script: str) -> None:
    if "BROKEN" in script:
        raise TickScriptError("unexpected identifier", 2, 7)


@pytest.fixture
def emulator() -> KapacitorEmulator:
    return KapacitorEmulator(validator=strict_validator)


@pytest.fixture
def client(emulator: KapacitorEmulator) -> Iterator[KapacitorClient]:
    with KapacitorClient(URL, transport=emulator.transport()) as kapacitor:
        yield kapacitor


def raw(emulator: KapacitorEmulator, method: str, path: str, body: object = None) -> httpx.Response:
    with httpx.Client(transport=emulator.transport(), base_url=URL) as http:
        return http.request(method, path, json=body)


# --- ping, errors, transport ----------------------------------------------------------------


def test_ping_returns_version(client: KapacitorClient) -> None:
    assert client.ping() == "1.5.7-emulated"


def test_error_body_and_headers_follow_kapacitor(emulator: KapacitorEmulator) -> None:
    response = raw(emulator, "GET", "/kapacitor/v1/tasks/nope")
    assert response.status_code == 404
    assert response.headers["content-type"] == "application/json; charset=utf-8"
    assert response.headers["x-kapacitor-version"] == "1.5.7-emulated"
    assert response.json() == {"error": "no task exists", "message": "no task exists"}
    assert "\n    " in response.text  # pretty-printed
    assert raw(emulator, "POST", "/kapacitor/v1/tasks", None).status_code == 400


def test_invalid_json_is_400(emulator: KapacitorEmulator) -> None:
    with httpx.Client(transport=emulator.transport(), base_url=URL) as http:
        response = http.post("/kapacitor/v1/tasks", content=b"{not json")
    assert response.status_code == 400
    assert response.json()["error"] == "invalid JSON"


def test_connection_refused_names_the_url() -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    base = f"http://127.0.0.1:{port}"
    with KapacitorClient(base, timeout=2) as client, pytest.raises(KapacitorError) as caught:
        client.ping()
    assert caught.value.status is None
    assert caught.value.url == f"{base}/kapacitor/v1/ping"
    assert base in str(caught.value)


def test_timeout_is_a_kapacitor_error() -> None:
    def slow(request: httpx.Request) -> httpx.Response:
        raise httpx.ReadTimeout("timed out", request=request)

    client = KapacitorClient(URL, transport=httpx.MockTransport(slow))
    with client, pytest.raises(KapacitorError) as caught:
        client.get_task("x")
    assert caught.value.status is None
    assert "ReadTimeout" in caught.value.message


def test_non_json_error_body_is_surfaced() -> None:
    def proxy(request: httpx.Request) -> httpx.Response:
        return httpx.Response(502, text="bad gateway from proxy")

    client = KapacitorClient(URL, transport=httpx.MockTransport(proxy))
    with client, pytest.raises(KapacitorError) as caught:
        client.ping()
    assert (caught.value.status, caught.value.message) == (502, "bad gateway from proxy")


# --- tasks ----------------------------------------------------------------------------------


def test_create_get_and_raw_script(client: KapacitorClient) -> None:
    created = client.create_task("fed-lat-fra1", SCRIPT, DBRPS, vars={"x": {"type": "int"}})
    assert created.id == "fed-lat-fra1"
    assert (created.type, created.status, created.executing) == ("batch", "disabled", False)
    assert created.dbrps == (("raw", "autogen"),)
    task = client.get_task("fed-lat-fra1")
    assert task is not None
    assert task.script == SCRIPT  # raw: the exact bytes sent
    assert task.vars == {"x": {"type": "int"}}
    assert task.stats == {}


def test_get_missing_task_is_none(client: KapacitorClient) -> None:
    assert client.get_task("absent") is None


def test_create_enabled_runs(client: KapacitorClient, emulator: KapacitorEmulator) -> None:
    task = client.create_task("t1", SCRIPT, DBRPS, status="enabled")
    assert (task.status, task.executing, task.error) == ("enabled", True, "")
    assert "node-stats" in task.stats
    assert emulator.running_script("t1") == SCRIPT


@pytest.mark.parametrize(
    ("task_id", "script", "dbrps", "message"),
    [
        ("bad id", SCRIPT, DBRPS, "task ID must contain only letters, numbers, '-', '.' and '_'"),
        ("a/b", SCRIPT, DBRPS, "task ID must contain only letters"),
        ("t", SCRIPT, [], "must specify dbrp"),
        ("t", 'dbrp "raw"."autogen"\n' + SCRIPT, DBRPS, "cannot specify dbrp in both"),
        ("t", "// BROKEN\n", DBRPS, "invalid TICKscript: <script>:2:7: unexpected identifier"),
    ],
)
def test_create_refusals_surface_kapacitors_message(
    client: KapacitorClient, task_id: str, script: str, dbrps: list[tuple[str, str]], message: str
) -> None:
    with pytest.raises(KapacitorError) as caught:
        client.create_task(task_id, script, dbrps)
    assert caught.value.status == 400
    assert caught.value.message.startswith(message)
    assert not isinstance(caught.value, TaskSavedNotRunning)
    assert client.get_task("t") is None


def test_unicode_letters_are_valid_ids(client: KapacitorClient) -> None:
    assert client.create_task("fed-münchen_1.x", SCRIPT, DBRPS).id == "fed-münchen_1.x"


def test_implicit_dbrp_from_script(client: KapacitorClient) -> None:
    task = client.create_task("t", 'dbrp "raw"."autogen"\n' + SCRIPT, [])
    assert task.dbrps == (("raw", "autogen"),)


def test_create_existing_is_400(client: KapacitorClient) -> None:
    client.create_task("t", SCRIPT, DBRPS)
    with pytest.raises(KapacitorError) as caught:
        client.create_task("t", SCRIPT, DBRPS)
    assert (caught.value.status, caught.value.message) == (400, "task t already exists")


def test_create_enabled_that_cannot_start_is_saved_not_running(
    client: KapacitorClient, emulator: KapacitorEmulator
) -> None:
    emulator.fail_enable("t", 'unknown InfluxDB cluster "central"')
    with pytest.raises(TaskSavedNotRunning) as caught:
        client.create_task("t", SCRIPT, DBRPS, status="enabled")
    assert caught.value.status == 500
    assert caught.value.task_id == "t"
    assert "unknown InfluxDB cluster" in caught.value.message
    task = client.get_task("t")
    assert task is not None
    assert (task.status, task.executing) == ("enabled", False)
    assert "unknown InfluxDB cluster" in task.error
    emulator.clear_enable_failure("t")
    assert client.reload_task("t").executing


def test_enable_failure_is_saved_not_running(
    client: KapacitorClient, emulator: KapacitorEmulator
) -> None:
    client.create_task("t", SCRIPT, DBRPS)
    emulator.fail_enable("t")
    with pytest.raises(TaskSavedNotRunning):
        client.enable_task("t")


def test_update_missing_task_is_404(client: KapacitorClient) -> None:
    with pytest.raises(KapacitorError) as caught:
        client.update_task("nope", script=SCRIPT)
    assert (caught.value.status, caught.value.message) == (
        404,
        "task does not exist, cannot update",
    )


def test_update_with_invalid_script_is_400_and_changes_nothing(client: KapacitorClient) -> None:
    client.create_task("t", SCRIPT, DBRPS)
    with pytest.raises(KapacitorError, match="invalid TICKscript"):
        client.update_task("t", script="BROKEN")
    task = client.get_task("t")
    assert task is not None and task.script == SCRIPT


def test_patch_keeps_running_script_until_reload(
    client: KapacitorClient, emulator: KapacitorEmulator
) -> None:
    client.create_task("t", SCRIPT, DBRPS, status="enabled")
    updated = client.update_task("t", script=SCRIPT_V2, dbrps=[("raw", "week")])
    assert updated.dbrps == (("raw", "week"),)
    # Kapacitor answers with the script re-formatted; the stored bytes are what was sent.
    assert updated.script != SCRIPT_V2
    stored = client.get_task("t", script_format="raw")
    assert stored is not None and stored.script == SCRIPT_V2
    assert emulator.running_script("t") == SCRIPT  # stored changed, running did not
    reloaded = client.reload_task("t")
    assert reloaded.executing
    assert emulator.running_script("t") == SCRIPT_V2


def test_enable_disable(client: KapacitorClient, emulator: KapacitorEmulator) -> None:
    client.create_task("t", SCRIPT, DBRPS)
    assert client.enable_task("t").executing
    disabled = client.disable_task("t")
    assert (disabled.status, disabled.executing) == ("disabled", False)
    assert emulator.running_script("t") is None


def test_delete_is_idempotent(client: KapacitorClient) -> None:
    client.create_task("t", SCRIPT, DBRPS)
    client.delete_task("t")
    client.delete_task("t")
    assert client.get_task("t") is None


def test_list_paginates_past_the_server_default(
    client: KapacitorClient, emulator: KapacitorEmulator
) -> None:
    for i in range(250):
        client.create_task(f"fed-agg-{i:03d}", SCRIPT, DBRPS)
    client.create_task("other", SCRIPT, DBRPS)
    # The server alone stops at 100: a client that does not paginate would miss tasks.
    assert len(raw(emulator, "GET", "/kapacitor/v1/tasks").json()["tasks"]) == 100
    emulator.requests.clear()
    tasks = client.list_tasks("fed-agg-*")
    assert [t.id for t in tasks] == [f"fed-agg-{i:03d}" for i in range(250)]
    assert [m for m, p in emulator.requests if p.endswith("/tasks")] == ["GET"] * 3
    assert {t.status for t in tasks} == {"disabled"}
    assert all(t.script == "" for t in tasks)  # not among the fields asked for
    small = client.list_tasks(page_size=7, fields=("script",))
    assert len(small) == 251 and small[0].script == SCRIPT


def test_list_exact_multiple_of_page_size(client: KapacitorClient) -> None:
    for i in range(4):
        client.create_task(f"t{i}", SCRIPT, DBRPS)
    assert len(client.list_tasks(page_size=2)) == 4


def test_list_unknown_field_is_400(client: KapacitorClient) -> None:
    with pytest.raises(KapacitorError) as caught:
        client.list_tasks(fields=("bogus",))
    assert caught.value.status == 400


# --- health ---------------------------------------------------------------------------------


def test_task_health_sums_node_errors(client: KapacitorClient, emulator: KapacitorEmulator) -> None:
    client.create_task("t", SCRIPT, DBRPS, status="enabled")
    assert client.task_health("t").ok
    emulator.set_node_stats("t", "query1", errors=2)
    emulator.set_node_stats("t", "query2", errors=1)
    emulator.set_node_stats("t", "influxdb_out3", write_errors=5)
    health = client.task_health("t")
    assert (health.errors, health.write_errors) == (3, 5)
    assert health.nodes["influxdb_out3"].write_errors == 5
    assert health.nodes["query1"].errors == 2
    assert health.executing and not health.ok


def test_task_health_reports_a_dead_task(
    client: KapacitorClient, emulator: KapacitorEmulator
) -> None:
    client.create_task("t", SCRIPT, DBRPS, status="enabled")
    emulator.fail_task("t")
    health = client.task_health("t")
    assert (health.executing, health.error) == (False, "task finished with error")
    assert health.nodes == {} and not health.ok
    with pytest.raises(KapacitorError) as caught:
        client.task_health("absent")
    assert caught.value.status == 404


def test_a_stalled_branch_is_unhealthy_without_any_error_counted() -> None:
    # node-stats of a real kapacitord 1.5.7 some runs after the UDF process of fedagg5 was
    # SIGKILLed: query4 queries on schedule, took one batch it cannot pass on, the rest wait.
    def node(c: int, e: int, **more: int) -> dict[str, int]:
        return {"collected": c, "emitted": e, "errors": 0, **more}

    stats = {
        "batch0": node(26, 0),
        "query1": node(10, 10, batches_queried=10),
        "fedagg2": node(10, 30),
        "influxdb_out3": node(30, 0),
        "query4": node(6, 5, batches_queried=10),
        "fedagg5": node(5, 9),
        "influxdb_out6": node(9, 0),
        "query7": node(10, 10, batches_queried=10),
        "fedagg8": node(10, 30),
        "influxdb_out9": node(30, 0),
    }
    task = Task("t", executing=True, stats={"node-stats": stats})
    health = TaskHealth.of(task)
    assert (health.errors, health.write_errors) == (0, 0)
    assert health.stalled == {"query4": 4}
    assert health.branch("query4") == ["fedagg5", "influxdb_out6"]
    assert not health.ok
    assert health.problem == (
        "branch query4 -> fedagg5 -> influxdb_out6 stalled: 4 queried batch(es) never reached fedagg5"
    )
    # One batch on its way is no stall.
    stats["query4"] = node(10, 9, batches_queried=11)
    assert TaskHealth.of(task).ok


# --- replays --------------------------------------------------------------------------------


def test_replay_lifecycle(client: KapacitorClient, emulator: KapacitorEmulator) -> None:
    seen: list[tuple[str, int, int, bool]] = []
    emulator.on_replay = lambda *args: seen.append(args)
    emulator.replay_polls = 2
    client.create_task("t", SCRIPT, DBRPS)
    replay_id = client.replay_batch("t", T0, T0 + 3_600_000_000_123)
    first = client.get_replay(replay_id)
    assert (first.status, first.progress, first.recording_time) == ("running", 0.0, True)
    statuses = [raw(emulator, "GET", f"/kapacitor/v1/replays/{replay_id}").status_code]
    finished = client.wait_replay(replay_id, timeout_s=5, poll_s=0)
    assert statuses == [202]
    assert (finished.status, finished.progress, finished.error) == ("finished", 1.0, "")
    assert seen == [("t", T0, T0 + 3_600_000_000_123, True)]
    client.delete_replay(replay_id)
    with pytest.raises(KapacitorError) as caught:
        client.get_replay(replay_id)
    assert caught.value.status == 404


def test_replay_request_body(emulator: KapacitorEmulator) -> None:
    bodies: list[dict[str, object]] = []

    def spy(request: httpx.Request) -> httpx.Response:
        if request.url.path.endswith("/replays/batch"):
            bodies.append(json.loads(request.content))
        return emulator.transport().handle_request(request)

    with KapacitorClient(URL, transport=httpx.MockTransport(spy)) as client:
        client.create_task("t", SCRIPT, DBRPS)
        client.replay_batch("t", T0, T0 + 500, clock="real")
    assert bodies == [
        {
            "task": "t",
            "start": "2025-11-28T10:00:00Z",
            "stop": "2025-11-28T10:00:00.0000005Z",
            "recording-time": True,
            "clock": "real",
        }
    ]


def test_format_time() -> None:
    assert format_time(T0) == "2025-11-28T10:00:00Z"
    assert format_time(T0 + 1) == "2025-11-28T10:00:00.000000001Z"
    assert format_time(0) == "1970-01-01T00:00:00Z"


def test_failed_replay_raises_with_kapacitors_error(
    client: KapacitorClient, emulator: KapacitorEmulator
) -> None:
    client.create_task("t", SCRIPT, DBRPS)
    emulator.fail_replays("query returned 500: database not found")
    replay_id = client.replay_batch("t", T0, T0 + 1)
    with pytest.raises(KapacitorError) as caught:
        client.wait_replay(replay_id, timeout_s=5, poll_s=0)
    assert caught.value.message == "query returned 500: database not found"
    assert client.get_replay(replay_id).status == "failed"


def test_replay_hook_failure_fails_the_replay(
    client: KapacitorClient, emulator: KapacitorEmulator
) -> None:
    def explode(task: str, start: int, stop: int, recording_time: bool) -> None:
        raise RuntimeError("write failed")

    emulator.on_replay = explode
    client.create_task("t", SCRIPT, DBRPS)
    with pytest.raises(KapacitorError, match="write failed"):
        client.wait_replay(client.replay_batch("t", T0, T0 + 1), poll_s=0)


def test_wait_replay_polls_soon_then_less_and_less_often(
    client: KapacitorClient, emulator: KapacitorEmulator
) -> None:
    emulator.replay_polls = 8
    client.create_task("t", SCRIPT, DBRPS)
    replay_id = client.replay_batch("t", T0, T0 + 1)
    pauses: list[float] = []
    finished = client.wait_replay(replay_id, poll_s=1.0, sleep=pauses.append)
    assert finished.status == "finished"
    assert pauses == [0.05, 0.1, 0.2, 0.4, 0.8, 1.0, 1.0, 1.0]


def test_wait_replay_times_out(client: KapacitorClient, emulator: KapacitorEmulator) -> None:
    emulator.replay_polls = 1000
    client.create_task("t", SCRIPT, DBRPS)
    replay_id = client.replay_batch("t", T0, T0 + 1)
    now = [0.0]

    def tick(seconds: float) -> None:
        now[0] += seconds

    with pytest.raises(KapacitorError, match="still running") as caught:
        client.wait_replay(replay_id, timeout_s=3, poll_s=1, clock=lambda: now[0], sleep=tick)
    assert caught.value.status is None


@pytest.mark.parametrize(
    ("body", "message"),
    [
        ({"task": "t"}, "must provide start time"),
        ({"task": "absent", "start": "2025-11-28T10:00:00Z"}, "task absent does not exist"),
        ({"task": "s", "start": "2025-11-28T10:00:00Z"}, "cannot replay batch against stream"),
        ({"task": "t", "start": "yesterday"}, "invalid time"),
    ],
)
def test_replay_refusals(
    client: KapacitorClient, emulator: KapacitorEmulator, body: dict[str, str], message: str
) -> None:
    client.create_task("t", SCRIPT, DBRPS)
    client.create_task("s", "stream|from()\n", DBRPS, type="stream")
    response = raw(emulator, "POST", "/kapacitor/v1/replays/batch", body)
    assert response.status_code == 400
    assert response.json()["error"].startswith(message)


def test_replay_of_stream_task_via_client(client: KapacitorClient) -> None:
    client.create_task("s", "stream|from()\n", DBRPS, type="stream")
    with pytest.raises(KapacitorError) as caught:
        client.replay_batch("s", T0, T0 + 1)
    assert caught.value.status == 400
    assert caught.value.message == "cannot replay batch against stream task"


# --- over real HTTP -------------------------------------------------------------------------


def test_served_over_http_with_uvicorn() -> None:
    emulator = KapacitorEmulator(validator=strict_validator)
    with emulator.serve() as base_url, KapacitorClient(base_url, timeout=5) as client:
        assert client.ping() == "1.5.7-emulated"
        client.create_task("t", SCRIPT, DBRPS, status="enabled")
        assert client.get_task("missing") is None
        with pytest.raises(KapacitorError, match="already exists"):
            client.create_task("t", SCRIPT, DBRPS)
        client.delete_task("t")
        assert client.list_tasks() == []


def test_default_validator_uses_the_project_parser_when_present() -> None:
    client = KapacitorClient(URL, transport=KapacitorEmulator().transport())
    with client, pytest.raises(KapacitorError) as caught:
        client.create_task("t", "batch|||((( '", DBRPS)
    assert caught.value.status == 400
    assert caught.value.message.startswith("invalid TICKscript: ")
