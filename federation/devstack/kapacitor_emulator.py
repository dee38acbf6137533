"""An emulation of Kapacitor 1.5+'s HTTP API (tasks, ping, live batch replays) for tests.

It answers as `services/httpd` and `services/task_store` do: base path `/kapacitor/v1`,
`X-Kapacitor-Version` on every response, errors as a pretty-printed `{"error", "message"}`
object, the same status codes and the same error texts. Tasks are stored and "run" by state
only: a PATCH of an enabled task's script changes the stored script while the running one stays
the old script until a disable and enable (`running_script`).

Serve it three ways: `transport()` for an in-process `httpx.Client`, `app` (a Starlette ASGI
app) and `serve()` (uvicorn on loopback, for a separate process such as a real agent).

Fault injection for tests: `fail_enable` (enabling answers 500, the task stays saved and enabled
but not executing, as when a node cannot be created), `fail_udf_start` (the enable is accepted,
then the task stops with its UDF node's init error, as Kapacitor does), `kill_udf` (a UDF
process killed: the task still reads executing with no error, as in Kapacitor 1.5.7, while its
branch stalls, batches piling up at its query node, and its node and the query node feeding it
count an error, or, as often, no error at all), `set_node_stats` (any counter, e.g. `errors`,
`write_errors`, `collected`, `batches_queried`), `fail_task` (the task stops with an error, as when the node it waits on last
fails), `fail_replays`, `replay_polls` (how many GETs
a replay answers 202 before finishing) and `on_replay` (a callback doing the replay's work).

A task's script is checked as Kapacitor checks it when a task is defined: it must parse, and
every property call on a UDF node must be an option the UDF declares (`udfs`, by default the
project's `fedagg` as its Info answer declares it) with literal arguments of the declared
types; the refusals carry Kapacitor's texts (`no method or property "x" on *pipeline.UDFNode`,
`unexpected arg to x, got STRING expected INT`).

Node stats start again from zero whenever a task starts, as a started task's do in Kapacitor;
the emulator lists only the nodes a fault touched, where Kapacitor lists every node.

Not emulated: running TICKscripts (no queries, no data flow, no alerts, no UDF processes, so
no schedule: a fault shows in the stats at once, not at the next run or keepalive),
stream writes (`/write`), recordings and replays of recordings, `/replays/query`, templates
(a `template-id` is refused as an unknown template), `dot` graphs (always empty), Kapacitor's
exact `formatted` output (scripts are re-printed with federation's own TICKscript printer, so
they differ from the raw bytes as Kapacitor's do, but not byte for byte like Kapacitor's), `replay-id` on
task GETs, task renames via PATCH `id`, listing replays, alert topics/handlers, config
overrides, storage, service tests, `:routes`, `debug/vars`, log sessions
(`/kapacitor/v1preview/logs` answers 404: no error text follows a fault's counters),
authentication. A replay's writes are the `on_replay` hook's: a hook that ships nothing is a
replay whose `influxDBOut` writes were all dropped, which Kapacitor too reports `finished`.
"""

from __future__ import annotations

import contextlib
import fnmatch
import json
import re
import socket
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import parse_qsl

import httpx
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from federation.devstack.kapacitor_requests import (
    HttpError,
    dbrp_list,
    default_validator,
    first_udf_node,
    formatted,
    int_param,
    json_body,
    now_text,
    parse_time,
    valid_id,
)
from federation.devstack.kapacitor_udfs import UdfOptions, project_udfs, udf_option_problem
from federation.errors import TickScriptError

__all__ = ["EmulatorTransport", "KapacitorEmulator", "ReplayHook", "Validator"]

BASE = "/kapacitor/v1"
VERSION = "1.5.7-emulated"
Validator = Callable[[str], None]
ReplayHook = Callable[[str, int, int, bool], None]

_DBRP_STATEMENT = re.compile(r'^\s*dbrp\s+"((?:[^"\\]|\\.)*)"\s*\.\s*"((?:[^"\\]|\\.)*)"', re.M)
_TASK_FIELDS = frozenset(
    {"link", "id", "template-id", "type", "dbrps", "script", "dot", "status", "executing"}
    | {"error", "stats", "created", "modified", "last-enabled", "vars"}
)


@dataclass
class _Task:
    id: str
    type: str
    dbrps: list[dict[str, str]]
    script: str
    vars: dict[str, Any]
    status: str
    created: str
    modified: str
    last_enabled: str = "0001-01-01T00:00:00Z"
    executing: bool = False
    error: str = ""
    running_script: str | None = None
    node_stats: dict[str, dict[str, int]] = field(default_factory=dict)


@dataclass
class _Replay:
    id: str
    task: str
    start_ns: int
    stop_ns: int
    recording_time: bool
    clock: str
    date: str
    polls_left: int
    status: str = "running"
    progress: float = 0.0
    error: str = ""


class KapacitorEmulator:
    """In-memory Kapacitor: state, fault hooks and a `handle` method every front end calls."""

    def __init__(
        self,
        validator: Validator | None = None,
        *,
        version: str = VERSION,
        replay_polls: int = 1,
        on_replay: ReplayHook | None = None,
        udfs: UdfOptions | None = None,
    ) -> None:
        self.validator: Validator = validator or default_validator
        self.udfs: UdfOptions = project_udfs() if udfs is None else udfs
        self.version = version
        self.replay_polls = replay_polls
        self.on_replay = on_replay
        self.tasks: dict[str, _Task] = {}
        self.replays: dict[str, _Replay] = {}
        self.requests: list[tuple[str, str]] = []
        self._enable_failures: dict[str, str] = {}
        self._replay_failure: str | None = None
        self._exit_on_replay = False
        self.exited = False
        """The emulated kapacitord has exited: the in-process transport refuses to connect."""
        self._udf_failure: str | None = None
        self._lock = threading.Lock()

    # --- fault injection and inspection -----------------------------------------------------

    def fail_enable(self, task_id: str, message: str = "failed to start task") -> None:
        """Make every start of `task_id` fail: 500, saved and enabled, executing false."""
        self._enable_failures[task_id] = message

    def fail_udf_start(self, message: str | None = "refused") -> None:
        """Make every later start of a task that calls a UDF fail as Kapacitor's does when the
        UDF refuses its init request with `message`: the enable is accepted (200: Kapacitor
        starts UDF processes after answering), then the task stops with a UDF node's error
        (`fedagg2: failed to initialize processes <message>`). None: UDFs start again."""
        self._udf_failure = message

    def clear_enable_failure(self, task_id: str) -> None:
        """Let `task_id` start again."""
        self._enable_failures.pop(task_id, None)

    def set_node_stats(self, task_id: str, node: str, **counters: int) -> None:
        """Set one node's counters, as named in Kapacitor's `node-stats` (`errors`,
        `write_errors`, `collected`, `emitted`, `batches_queried`...; `errors` and
        `write_errors` are 0 unless given), visible while the task executes."""
        self.tasks[task_id].node_stats[node] = {"errors": 0, "write_errors": 0, **counters}

    def kill_udf(self, task_id: str, *, node_fails: bool = True) -> str:
        """Kill the process of the task's first UDF node, as `kill -9` would, and return the
        node's name. Kapacitor 1.5.7 keeps the task executing with no error, and the branch
        computes nothing more: its query node goes on querying on schedule, takes one batch
        it cannot pass on, and the next ones pile up behind it (`batches_queried` runs ahead
        of `collected`; shown after two runs). When a batch reaches the UDF node after the
        process was aborted (`node_fails`), the node fails (`errors` + 1), and the query node
        feeding it fails at its next run (+ 1); when none does, no counter of errors moves."""
        task = self.tasks[task_id]
        node = first_udf_node(task.script)
        if node is None or not task.executing:
            raise ValueError(f"task {task_id} runs no UDF process")
        node_id = int(node[len(node.rstrip("0123456789")) :])
        query = f"query{node_id - 1}"  # the node before it in its branch
        counters = task.node_stats.setdefault(query, {"errors": 0, "write_errors": 0})
        taken = counters.get("collected", 0) + 1
        counters.update(collected=taken, emitted=taken - 1, batches_queried=taken + 2)
        task.node_stats.setdefault(node, {"errors": 0, "write_errors": 0})
        for name in (node, query) if node_fails else ():
            task.node_stats[name]["errors"] += 1
        return node

    def fail_task(self, task_id: str, message: str = "task finished with error") -> None:
        """Stop a running task with an error, as Kapacitor does when the node it waits on
        fails (a dead UDF in a task's last branch, for one)."""
        task = self.tasks[task_id]
        task.executing = False
        task.running_script = None
        task.error = message

    def fail_replays(self, message: str | None = "query failed") -> None:
        """Make every replay that finishes from now on fail with `message` (None: succeed)."""
        self._replay_failure = message

    def exit_when_a_replay_starts(self) -> None:
        """Exit once the next replay has started, as kapacitord 1.5.7 does when a replay's
        query fails while batches of its earlier queries still wait to enter the task (`panic:
        send on closed channel`): from then on the in-process transport refuses every
        connection."""
        self._exit_on_replay = True

    def running_script(self, task_id: str) -> str | None:
        """The script the task is running now (None when not executing)."""
        task = self.tasks.get(task_id)
        return None if task is None else task.running_script

    # --- front ends ---------------------------------------------------------------------------

    def transport(self) -> EmulatorTransport:
        """A sync httpx transport answering from this emulator, in process."""
        return EmulatorTransport(self)

    @property
    def app(self) -> Starlette:
        """A Starlette ASGI app answering from this emulator."""

        async def endpoint(request: Request) -> Response:
            body = await request.body()
            status, headers, content = self.handle(
                request.method, request.url.path, request.url.query, body
            )
            return Response(content, status_code=status, headers=headers)

        methods = ["GET", "HEAD", "POST", "PATCH", "DELETE", "PUT"]
        return Starlette(routes=[Route("/{path:path}", endpoint, methods=methods)])

    @contextlib.contextmanager
    def serve(self, host: str = "127.0.0.1", port: int = 0) -> Iterator[str]:
        """Serve over real HTTP with uvicorn in a thread; yield the base URL; stop on exit."""
        import uvicorn

        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((host, port))
        bound_port = sock.getsockname()[1]
        config = uvicorn.Config(self.app, log_level="warning", lifespan="off")
        server = uvicorn.Server(config)
        thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
        thread.start()
        deadline = time.monotonic() + 10
        while not server.started and time.monotonic() < deadline:
            time.sleep(0.01)
        try:
            yield f"http://{host}:{bound_port}"
        finally:
            server.should_exit = True
            thread.join(timeout=10)
            sock.close()

    def handle(
        self, method: str, path: str, query: str, body: bytes
    ) -> tuple[int, dict[str, str], bytes]:
        """Answer one request: (status, headers, body). Never raises for a bad request."""
        headers = {"X-Kapacitor-Version": self.version}
        with self._lock:
            self.requests.append((method, path))
            try:
                status, payload = self._route(method, path, parse_qsl(query), body)
            except HttpError as exc:
                headers["Content-Type"] = "application/json; charset=utf-8"
                error = {"error": exc.message, "message": exc.message}
                return exc.status, headers, json.dumps(error, indent=4).encode()
        if payload is None:
            return status, headers, b""
        headers["Content-Type"] = "application/json; charset=utf-8"
        return status, headers, json.dumps(payload).encode()

    # --- routing ----------------------------------------------------------------------------

    def _route(
        self, method: str, path: str, query: list[tuple[str, str]], body: bytes
    ) -> tuple[int, Any]:
        if not path.startswith(BASE + "/"):
            raise HttpError(404, "not found")
        parts = path[len(BASE) + 1 :].rstrip("/").split("/")
        params = dict(query)
        if parts == ["ping"] and method in ("GET", "HEAD"):
            return 204, None
        if parts == ["tasks"]:
            if method == "GET":
                return 200, self._list_tasks(query)
            if method == "POST":
                return self._create_task(json_body(body))
        if len(parts) == 2 and parts[0] == "tasks":
            task_id = parts[1]
            if method == "GET":
                return 200, self._get_task(task_id, params.get("script-format", "formatted"))
            if method == "PATCH":
                return self._patch_task(task_id, json_body(body))
            if method == "DELETE":
                self.tasks.pop(task_id, None)
                return 204, None
        if parts == ["replays", "batch"] and method == "POST":
            return 201, self._replay_batch(json_body(body))
        if len(parts) == 2 and parts[0] == "replays":
            if method == "GET":
                return self._get_replay(parts[1])
            if method == "DELETE":
                self.replays.pop(parts[1], None)
                return 204, None
        raise HttpError(404, "not found")

    # --- tasks --------------------------------------------------------------------------------

    def _task_json(self, task: _Task, script_format: str = "formatted") -> dict[str, Any]:
        stats: dict[str, Any] = {}
        if task.executing:
            stats = {
                "task-stats": {"throughput": 0.0},
                "node-stats": {name: dict(v) for name, v in task.node_stats.items()},
            }
        return {
            "link": {"rel": "self", "href": f"{BASE}/tasks/{task.id}"},
            "id": task.id,
            "template-id": "",
            "type": task.type,
            "dbrps": [dict(d) for d in task.dbrps],
            "script": task.script if script_format == "raw" else formatted(task.script),
            "vars": task.vars,
            "dot": "",
            "status": task.status,
            "executing": task.executing,
            "error": task.error,
            "stats": stats,
            "created": task.created,
            "modified": task.modified,
            "last-enabled": task.last_enabled,
        }

    def _list_tasks(self, query: list[tuple[str, str]]) -> dict[str, Any]:
        params = dict(query)
        pattern = params.get("pattern", "")
        fields = [value for key, value in query if key == "fields"]
        for name in fields:
            if name not in _TASK_FIELDS:
                raise HttpError(400, f"unknown field {name!r}")
        offset = int_param(params, "offset", 0)
        limit = int_param(params, "limit", 100)
        script_format = params.get("script-format", "formatted")
        if script_format not in ("formatted", "raw"):
            raise HttpError(400, f"invalid script-format parameter {script_format!r}")
        ids = sorted(i for i in self.tasks if not pattern or fnmatch.fnmatchcase(i, pattern))
        result = []
        for task_id in ids[offset : offset + limit]:
            full = self._task_json(self.tasks[task_id], script_format)
            if fields:
                full = {k: v for k, v in full.items() if k in fields or k in ("id", "link")}
            result.append(full)
        return {"tasks": result}

    def _get_task(self, task_id: str, script_format: str) -> dict[str, Any]:
        if script_format not in ("formatted", "raw"):
            raise HttpError(400, f"invalid script-format parameter {script_format!r}")
        task = self.tasks.get(task_id)
        if task is None:
            raise HttpError(404, "no task exists")
        return self._task_json(task, script_format)

    def _check_script(self, script: str) -> None:
        try:
            self.validator(script)
        except TickScriptError as exc:
            raise HttpError(400, f"invalid TICKscript: {exc}") from None
        problem = udf_option_problem(script, self.udfs)
        if problem is not None:
            raise HttpError(400, f"invalid TICKscript: {problem}")

    def _dbrps(self, script: str, given: Any) -> list[dict[str, str]] | None:
        """The dbrps a script and a request declare together, or None when neither does."""
        implicit = [{"db": db, "rp": rp} for db, rp in _DBRP_STATEMENT.findall(script)]
        explicit = dbrp_list(given)
        if implicit and explicit:
            raise HttpError(400, "cannot specify dbrp in both implicitly and explicitly")
        return implicit or explicit or None

    def _create_task(self, data: dict[str, Any]) -> tuple[int, Any]:
        task_id = str(data.get("id") or uuid.uuid4())
        if not valid_id(task_id):
            raise HttpError(400, "task ID must contain only letters, numbers, '-', '.' and '_'")
        if task_id in self.tasks:
            raise HttpError(400, f"task {task_id} already exists")
        if data.get("template-id"):
            raise HttpError(400, f"unknown template {data['template-id']}")
        task_type = data.get("type", "")
        if task_type not in ("stream", "batch"):
            raise HttpError(400, f"unknown type {task_type!r}")
        script = data.get("script")
        if not isinstance(script, str) or not script:
            raise HttpError(400, "must provide TICKscript")
        dbrps = self._dbrps(script, data.get("dbrps"))
        if dbrps is None:
            raise HttpError(400, "must specify dbrp")
        status = data.get("status") or "disabled"
        if status not in ("enabled", "disabled"):
            raise HttpError(400, f"invalid status {status!r}")
        self._check_script(script)
        now = now_text()
        variables = data.get("vars") or {}
        task = _Task(task_id, task_type, dbrps, script, variables, status, now, now)
        self.tasks[task_id] = task
        if status == "enabled":
            self._start(task)
        return 200, self._task_json(task)

    def _patch_task(self, task_id: str, data: dict[str, Any]) -> tuple[int, Any]:
        task = self.tasks.get(task_id)
        if task is None:
            raise HttpError(404, "task does not exist, cannot update")
        if data.get("id") and data["id"] != task_id:
            raise HttpError(400, "renaming tasks is not supported by the emulator")
        script = data.get("script") or task.script
        if data.get("script"):
            self._check_script(script)
        dbrps = self._dbrps(data["script"], data.get("dbrps")) if data.get("script") else None
        if dbrps is None:
            dbrps = dbrp_list(data.get("dbrps"))
        status = data.get("status") or task.status
        if status not in ("enabled", "disabled"):
            raise HttpError(400, f"invalid status {status!r}")
        task.script = script
        if dbrps:
            task.dbrps = dbrps
        if data.get("vars"):
            task.vars = data["vars"]
        if data.get("type") in ("stream", "batch"):
            task.type = data["type"]
        task.modified = now_text()
        # Only a change of status starts or stops the task: a PATCH of an enabled task's
        # script leaves the running copy on the old script.
        if status != task.status:
            task.status = status
            if status == "enabled":
                self._start(task)
            else:
                task.executing = False
                task.running_script = None
        return 200, self._task_json(task)

    def _start(self, task: _Task) -> None:
        task.last_enabled = now_text()
        failure = self._enable_failures.get(task.id)
        if failure is not None:
            task.executing = False
            task.running_script = None
            task.error = failure
            raise HttpError(500, failure)
        udf_node = first_udf_node(task.script)
        if self._udf_failure is not None and udf_node is not None:
            task.executing = False
            task.running_script = None
            task.error = f"{udf_node}: failed to initialize processes {self._udf_failure}"
            return
        task.executing = True
        task.error = ""
        task.running_script = task.script
        task.node_stats = {}  # a started task counts from zero again

    # --- replays ------------------------------------------------------------------------------

    def _replay_json(self, replay: _Replay) -> dict[str, Any]:
        return {
            "link": {"rel": "self", "href": f"{BASE}/replays/{replay.id}"},
            "id": replay.id,
            "task": replay.task,
            "recording": "",
            "recording-time": replay.recording_time,
            "clock": replay.clock,
            "date": replay.date,
            "status": replay.status,
            "progress": replay.progress,
            "error": replay.error,
            "stats": {} if replay.status == "running" else {"task-stats": {}, "node-stats": {}},
        }

    def _replay_batch(self, data: dict[str, Any]) -> dict[str, Any]:
        replay_id = str(data.get("id") or uuid.uuid4())
        if not valid_id(replay_id):
            raise HttpError(400, "replay ID must contain only letters, numbers, '-', '.' and '_'")
        task = self.tasks.get(str(data.get("task", "")))
        if task is None:
            raise HttpError(400, f"task {data.get('task', '')} does not exist")
        if task.type != "batch":
            raise HttpError(400, "cannot replay batch against stream task")
        if not data.get("start"):
            raise HttpError(400, "must provide start time")
        try:
            start_ns = parse_time(str(data["start"]))
            stop_ns = parse_time(str(data["stop"])) if data.get("stop") else time.time_ns()
        except ValueError:
            raise HttpError(400, "invalid time: use RFC3339Nano") from None
        clock = data.get("clock") or "fast"
        if clock not in ("fast", "real"):
            raise HttpError(400, f"invalid clock type {clock!r}")
        replay = _Replay(
            replay_id,
            task.id,
            start_ns,
            stop_ns,
            bool(data.get("recording-time", False)),
            clock,
            now_text(),
            self.replay_polls,
        )
        self.replays[replay_id] = replay
        self.exited = self._exit_on_replay
        return self._replay_json(replay)

    def _get_replay(self, replay_id: str) -> tuple[int, Any]:
        replay = self.replays.get(replay_id)
        if replay is None:
            raise HttpError(404, "no replay exists")
        if replay.status == "running":
            if replay.polls_left > 0:
                replay.polls_left -= 1
                return 202, self._replay_json(replay)
            self._finish(replay)
        return 200, self._replay_json(replay)

    def _finish(self, replay: _Replay) -> None:
        try:
            if self.on_replay is not None:
                self.on_replay(replay.task, replay.start_ns, replay.stop_ns, replay.recording_time)
            if self._replay_failure is not None:
                raise RuntimeError(self._replay_failure)
        except Exception as exc:  # a hook's failure is the replay's failure, as in Kapacitor
            replay.status = "failed"
            replay.error = str(exc)
        else:
            replay.status = "finished"
        replay.progress = 1.0


class EmulatorTransport(httpx.BaseTransport):
    """An httpx transport that answers every request from a `KapacitorEmulator`."""

    def __init__(self, emulator: KapacitorEmulator) -> None:
        self.emulator = emulator

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        """Answer `request` in process, exactly as the served emulator would."""
        if self.emulator.exited:
            raise httpx.ConnectError("[Errno 111] Connection refused", request=request)
        body = request.read()
        status, headers, content = self.emulator.handle(
            request.method, request.url.path, request.url.query.decode(), body
        )
        return httpx.Response(status, headers=headers, content=content, request=request)
