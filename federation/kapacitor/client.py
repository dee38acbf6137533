"""A typed client for Kapacitor 1.5+'s HTTP API (base path `/kapacitor/v1`): tasks and replays.

Every non-2xx answer raises `KapacitorError` with the URL, the status, Kapacitor's own `error`
text and the body; a transport failure (refused, timeout) raises it with status None. A task
that was saved but failed to start (500 on create or enable) raises `TaskSavedNotRunning`, so a
caller knows the definition is stored even though nothing runs.
"""

from __future__ import annotations

import datetime as dt
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from types import TracebackType
from typing import Any

import httpx

from federation.core.clock import TimeInputError, parse_rfc3339
from federation.errors import KapacitorError

__all__ = [
    "STALLED_BATCHES",
    "KapacitorClient",
    "NodeHealth",
    "Replay",
    "Task",
    "TaskHealth",
    "TaskSavedNotRunning",
    "format_time",
]

BASE_PATH = "/kapacitor/v1"
PAGE_SIZE = 100
FIRST_REPLAY_POLL_S = 0.05
"""The first pause of `wait_replay`; each next one is twice as long, up to its `poll_s`: a
replay of a few windows is done within tens of milliseconds, a long one is asked about
once every `poll_s`."""
DbRp = tuple[str, str]


class TaskSavedNotRunning(KapacitorError):
    """Kapacitor saved the task (enabled) but could not start it: it answered 500."""

    def __init__(self, url: str, message: str, status: int | None, body: str, task_id: str) -> None:
        super().__init__(url, message, status, body)
        self.task_id = task_id


@dataclass(frozen=True)
class Task:
    """A task as Kapacitor reports it; fields not asked for (`fields=`) keep their defaults."""

    id: str
    type: str = ""
    dbrps: tuple[DbRp, ...] = ()
    script: str = ""
    status: str = ""
    executing: bool = False
    error: str = ""
    stats: dict[str, Any] = field(default_factory=dict)
    vars: dict[str, Any] = field(default_factory=dict)
    modified: str = ""
    last_enabled: str = ""

    @property
    def reload_pending(self) -> bool:
        """Whether the stored definition changed after the task last started: a PATCH does not
        reload a running task, so it still runs the older script."""
        try:
            return parse_rfc3339(self.modified) > parse_rfc3339(self.last_enabled)
        except TimeInputError:  # absent, or Go's zero time: the task never started
            return False

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> Task:
        """Build from Kapacitor's task object, tolerating missing keys."""
        return cls(
            id=str(data["id"]),
            type=str(data.get("type") or ""),
            dbrps=tuple((str(d["db"]), str(d["rp"])) for d in data.get("dbrps") or ()),
            script=str(data.get("script") or ""),
            status=str(data.get("status") or ""),
            executing=bool(data.get("executing", False)),
            error=str(data.get("error") or ""),
            stats=dict(data.get("stats") or {}),
            vars=dict(data.get("vars") or {}),
            modified=str(data.get("modified") or ""),
            last_enabled=str(data.get("last-enabled") or ""),
        )


STALLED_BATCHES = 2
"""Batches a query node queried that its branch never took, from which the branch is stalled.

A healthy branch takes each batch at once (the UDF reads its input while it computes), so at
most one is ever waiting; two means the UDF node has not taken a batch for a whole scheduled run.
"""


@dataclass(frozen=True)
class NodeHealth:
    """One node's counters: skipped queries and dropped writes (`errors`, `write_errors`), the
    messages it took from its parents and passed on (`collected`, `emitted`), and for a query
    node the batches its queries returned (`batches_queried`)."""

    errors: int = 0
    write_errors: int = 0
    collected: int = 0
    emitted: int = 0
    batches_queried: int = 0

    @property
    def backlog(self) -> int:
        """Batches a query node queried but could not pass on yet: its children did not take
        them (0 for other nodes)."""
        return max(self.batches_queried - self.collected, 0)


def _node_number(name: str) -> int:
    """Kapacitor names a node after its type and its position in the script: `query4` is 4."""
    digits = name[len(name.rstrip("0123456789")) :]
    return int(digits) if digits else -1


@dataclass(frozen=True)
class TaskHealth:
    """Whether a task runs, its last error, and its nodes' counters (summed and each)."""

    id: str
    executing: bool
    error: str
    errors: int
    write_errors: int
    nodes: dict[str, NodeHealth]

    @classmethod
    def of(cls, task: Task) -> TaskHealth:
        """The health a task fetched with its stats reports (`node-stats` counters summed)."""
        nodes: dict[str, NodeHealth] = {}
        node_stats = task.stats.get("node-stats") or {}
        for name, counters in sorted(node_stats.items()):

            def count(key: str, counters: Mapping[str, Any] = counters) -> int:
                return int(counters.get(key, 0) or 0)

            nodes[name] = NodeHealth(
                errors=count("errors"),
                write_errors=count("write_errors"),
                collected=count("collected"),
                emitted=count("emitted"),
                batches_queried=count("batches_queried"),
            )
        return cls(
            id=task.id,
            executing=task.executing,
            error=task.error,
            errors=sum(n.errors for n in nodes.values()),
            write_errors=sum(n.write_errors for n in nodes.values()),
            nodes=nodes,
        )

    def branch(self, query: str) -> list[str]:
        """The nodes a query node feeds, in script order: those numbered after it, up to the
        next query node (each branch of a rendered script is one chain)."""
        start = _node_number(query)
        later = sorted((n for n in self.nodes if _node_number(n) > start), key=_node_number)
        chain = []
        for name in later:
            if name.rstrip("0123456789") == "query":
                break
            chain.append(name)
        return chain

    @property
    def stalled(self) -> dict[str, int]:
        """Query nodes whose branch stopped taking batches, with how many are waiting.

        Kapacitor 1.5.7 does not always fail the UDF node of a dead UDF process: its
        keepalive watchdog or a write to the closed pipe aborts the process, and the node
        then waits for its next batch before it fails. When that never happens, the query
        node keeps querying on schedule while its batches pile up, no counter of errors
        grows, and the task reads executing with no error.
        """
        return {
            name: node.backlog
            for name, node in self.nodes.items()
            if node.backlog >= STALLED_BATCHES
        }

    @property
    def ok(self) -> bool:
        """Executing, no error, no node reported a failed query or write, no branch stalled."""
        return (
            self.executing
            and not self.error
            and not self.errors
            and not self.write_errors
            and not self.stalled
        )

    def stall_text(self, query: str, waiting: int) -> str:
        """A stalled branch for a person: the query node, what it feeds, the batches waiting."""
        chain = self.branch(query) or ["its children"]
        return (
            f"branch {' -> '.join([query, *chain])} stalled: "
            f"{waiting} queried batch(es) never reached {chain[0]}"
        )

    @property
    def problem(self) -> str:
        """What is wrong, for a person ("" when `ok`): Kapacitor's error, the branches that
        stalled, or the nodes whose counters say something failed since the task started (a
        failed node may have stopped its branch while the task still reads executing without
        error)."""
        if not self.executing or self.error:
            return self.error or "not executing"
        parts = [self.stall_text(query, waiting) for query, waiting in self.stalled.items()]
        failing = [
            f"{name} {node.errors} error(s)"
            + (f", {node.write_errors} failed write(s)" if node.write_errors else "")
            for name, node in self.nodes.items()
            if node.errors or node.write_errors
        ]
        if failing:
            parts.append("node errors since the task started: " + "; ".join(failing))
        return "; ".join(parts)


@dataclass(frozen=True)
class Replay:
    """A replay's state: `status` is running, finished or failed."""

    id: str
    task: str
    status: str
    progress: float
    error: str
    recording_time: bool
    clock: str

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> Replay:
        """Build from Kapacitor's replay object."""
        return cls(
            id=str(data["id"]),
            task=str(data.get("task") or ""),
            status=str(data.get("status") or ""),
            progress=float(data.get("progress") or 0.0),
            error=str(data.get("error") or ""),
            recording_time=bool(data.get("recording-time", False)),
            clock=str(data.get("clock") or ""),
        )


def format_time(time_ns: int) -> str:
    """Nanoseconds since the epoch as RFC 3339 in UTC, fraction only when non-zero."""
    seconds, nanos = divmod(time_ns, 1_000_000_000)
    base = dt.datetime.fromtimestamp(seconds, dt.UTC).strftime("%Y-%m-%dT%H:%M:%S")
    if nanos:
        base += "." + f"{nanos:09d}".rstrip("0")
    return base + "Z"


class KapacitorClient:
    """One Kapacitor: one `httpx.Client` with explicit timeouts; use as a context manager.

    The default timeout is generous: Kapacitor answers a PATCH or DELETE that stops a task only
    once the task's UDF processes have stopped, which takes seconds on a busy host.
    """

    def __init__(
        self,
        base_url: str,
        *,
        timeout: float = 30.0,
        transport: httpx.BaseTransport | None = None,
        auth: httpx.Auth | tuple[str, str] | None = None,
    ) -> None:
        self.base_url = base_url.rstrip("/")
        self._http = httpx.Client(
            base_url=self.base_url + BASE_PATH,
            timeout=timeout,
            transport=transport,
            auth=auth,
        )

    def __enter__(self) -> KapacitorClient:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.close()

    def close(self) -> None:
        """Close the connection pool; the client is unusable afterwards."""
        self._http.close()

    # --- plumbing -----------------------------------------------------------------------------

    def _request(
        self,
        method: str,
        path: str,
        *,
        params: list[tuple[str, str | int | float | bool | None]] | None = None,
        json: Mapping[str, Any] | None = None,
        ok: tuple[int, ...] = (200,),
    ) -> httpx.Response:
        url = f"{self.base_url}{BASE_PATH}{path}"
        try:
            response = self._http.request(method, path, params=params, json=json)
        except httpx.TransportError as exc:
            raise KapacitorError(url, f"{type(exc).__name__}: {exc}", None) from exc
        if response.status_code not in ok:
            raise KapacitorError(url, _error_text(response), response.status_code, response.text)
        return response

    @staticmethod
    def _object(response: httpx.Response) -> dict[str, Any]:
        try:
            data = response.json()
        except ValueError:
            data = None
        if not isinstance(data, dict):
            raise KapacitorError(
                str(response.request.url), "answer is not a JSON object",
                response.status_code, response.text,
            )  # fmt: skip
        return data

    # --- ping and tasks -----------------------------------------------------------------------

    def ping(self) -> str:
        """Check that Kapacitor answers 204; return its version (X-Kapacitor-Version)."""
        response = self._request("GET", "/ping", ok=(204,))
        return str(response.headers.get("X-Kapacitor-Version", ""))

    def iter_tasks(
        self,
        pattern: str | None = None,
        fields: Sequence[str] = (),
        *,
        page_size: int = PAGE_SIZE,
    ) -> Iterator[Task]:
        """Every task whose id matches the glob `pattern`, in id order, fetched page by page.

        Pages are requested with an explicit offset and limit until a page comes back short,
        because the server's default limit differs between versions and documents.
        """
        offset = 0
        while True:
            # Kapacitor reformats listed scripts unless asked for the stored bytes, and a
            # reformatted script never equals the rendered one: every deployment would look
            # changed and reload its tasks.
            params: list[tuple[str, str | int | float | bool | None]] = [
                ("offset", offset),
                ("limit", page_size),
                ("script-format", "raw"),
            ]
            if pattern:
                params.append(("pattern", pattern))
            params.extend(("fields", name) for name in fields)
            page = self._object(self._request("GET", "/tasks", params=params)).get("tasks")
            page = page or []
            for item in page:
                yield Task.from_json(item)
            if len(page) < page_size:
                return
            offset += len(page)

    def list_tasks(
        self,
        pattern: str | None = None,
        fields: Sequence[str] = ("type", "status", "executing", "error"),
        *,
        page_size: int = PAGE_SIZE,
    ) -> list[Task]:
        """All tasks matching `pattern` (every page); only `fields` (plus id) are filled."""
        return list(self.iter_tasks(pattern, fields, page_size=page_size))

    def get_task(self, task_id: str, script_format: str = "raw") -> Task | None:
        """The task, or None when Kapacitor has none by that id (404)."""
        try:
            response = self._request(
                "GET", f"/tasks/{task_id}", params=[("script-format", script_format)]
            )
        except KapacitorError as exc:
            if exc.status == 404:
                return None
            raise
        return Task.from_json(self._object(response))

    def create_task(
        self,
        task_id: str,
        script: str,
        dbrps: Sequence[DbRp],
        status: str = "disabled",
        type: str = "batch",
        vars: Mapping[str, Any] | None = None,
    ) -> Task:
        """Define a task and return it as stored.

        Raises `TaskSavedNotRunning` when `status="enabled"` and Kapacitor saved the task but
        could not start it (500), `KapacitorError` for any other refusal (nothing saved).
        """
        body: dict[str, Any] = {
            "id": task_id,
            "type": type,
            "dbrps": [{"db": db, "rp": rp} for db, rp in dbrps],
            "script": script,
            "status": status,
        }
        if vars:
            body["vars"] = dict(vars)
        try:
            return Task.from_json(self._object(self._request("POST", "/tasks", json=body)))
        except KapacitorError as exc:
            if exc.status == 500:
                raise TaskSavedNotRunning(exc.url, exc.message, 500, exc.body, task_id) from exc
            raise

    def update_task(
        self,
        task_id: str,
        *,
        script: str | None = None,
        dbrps: Sequence[DbRp] | None = None,
        vars: Mapping[str, Any] | None = None,
    ) -> Task:
        """PATCH the stored definition. A running task keeps its old script: see reload_task."""
        body: dict[str, Any] = {}
        if script is not None:
            body["script"] = script
        if dbrps is not None:
            body["dbrps"] = [{"db": db, "rp": rp} for db, rp in dbrps]
        if vars is not None:
            body["vars"] = dict(vars)
        return self._patch(task_id, body)

    def delete_task(self, task_id: str) -> None:
        """Delete the task; succeeds also when there is none (Kapacitor answers 204 either way)."""
        self._request("DELETE", f"/tasks/{task_id}", ok=(204,))

    def enable_task(self, task_id: str) -> Task:
        """Enable and start; `TaskSavedNotRunning` when it is enabled but failed to start."""
        try:
            return self._patch(task_id, {"status": "enabled"})
        except KapacitorError as exc:
            if exc.status == 500:
                raise TaskSavedNotRunning(exc.url, exc.message, 500, exc.body, task_id) from exc
            raise

    def disable_task(self, task_id: str) -> Task:
        """Disable and stop the task."""
        return self._patch(task_id, {"status": "disabled"})

    def reload_task(self, task_id: str) -> Task:
        """Restart the task on its stored script: disable then enable.

        Needed after update_task, because a PATCH does not reload a running task.
        """
        self.disable_task(task_id)
        return self.enable_task(task_id)

    def task_health(self, task_id: str) -> TaskHealth:
        """Executing, last error, and `errors`/`write_errors` per node and summed.

        Failed queries and writes never change `executing` or `error`; only node stats show
        them. Raises `KapacitorError` (404) when the task does not exist.
        """
        response = self._request("GET", f"/tasks/{task_id}", params=[("script-format", "raw")])
        return TaskHealth.of(Task.from_json(self._object(response)))

    def _patch(self, task_id: str, body: Mapping[str, Any]) -> Task:
        return Task.from_json(self._object(self._request("PATCH", f"/tasks/{task_id}", json=body)))

    # --- replays ------------------------------------------------------------------------------

    def replay_batch(
        self, task_id: str, start_ns: int, stop_ns: int, *, clock: str = "fast"
    ) -> str:
        """Start a live batch replay of [start, stop] with the recorded times; return its id.

        Always sends `recording-time: true`: without it Kapacitor shifts the points to "now"
        and a backfill would write them at the wrong time.
        """
        body = {
            "task": task_id,
            "start": format_time(start_ns),
            "stop": format_time(stop_ns),
            "recording-time": True,
            "clock": clock,
        }
        response = self._request("POST", "/replays/batch", json=body, ok=(201,))
        return str(self._object(response)["id"])

    def get_replay(self, replay_id: str) -> Replay:
        """The replay's current state (running while Kapacitor answers 202)."""
        return Replay.from_json(
            self._object(self._request("GET", f"/replays/{replay_id}", ok=(200, 202)))
        )

    def wait_replay(
        self,
        replay_id: str,
        timeout_s: float = 600.0,
        poll_s: float = 1.0,
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], None] = time.sleep,
    ) -> Replay:
        """Poll until the replay is done; return it when finished. The pauses between polls
        grow from `FIRST_REPLAY_POLL_S` to `poll_s`, doubling.

        Raises `KapacitorError` carrying Kapacitor's error when it failed, and one with status
        None when it is still running after `timeout_s` (measured with `clock`).
        """
        deadline = clock() + timeout_s
        url = f"{self.base_url}{BASE_PATH}/replays/{replay_id}"
        pause = min(FIRST_REPLAY_POLL_S, poll_s)
        while True:
            response = self._request("GET", f"/replays/{replay_id}", ok=(200, 202))
            replay = Replay.from_json(self._object(response))
            if response.status_code == 200 and replay.status != "running":
                if replay.status == "failed":
                    message = replay.error or "replay failed"
                    raise KapacitorError(url, message, response.status_code, response.text)
                return replay
            if clock() >= deadline:
                raise KapacitorError(url, f"replay still running after {timeout_s:g}s", None)
            sleep(pause)
            pause = min(2 * pause, poll_s)

    def delete_replay(self, replay_id: str) -> None:
        """Forget the replay's record (a running replay is not cancelled by Kapacitor)."""
        self._request("DELETE", f"/replays/{replay_id}", ok=(204,))


def _error_text(response: httpx.Response) -> str:
    """Kapacitor's `error` text, or the raw body when the answer is not its error JSON."""
    try:
        data = response.json()
    except ValueError:
        data = None
    if isinstance(data, dict) and isinstance(data.get("error"), str):
        return str(data["error"])
    return response.text.strip()[:500] or response.reason_phrase
