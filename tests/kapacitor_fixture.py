"""Kapacitor for tests: a real kapacitord, or the emulator, behind one shape.

The fixtures built from this module live in `tests/conftest.py`, so every test directory can use
them by name:

`kapacitord_binary` (session)
    The kapacitord that `FEDERATION_KAPACITORD` names. Without one the test is skipped, saying
    why, except under `CI=true`, where it fails: CI must run the real-Kapacitor tests.

`start_kapacitord` (function)
    A factory: `start_kapacitord(dc="dub1", *, influx_url=None, gateway_url=None, token=None)`
    starts a real kapacitord for one DC (its own temporary directory, a free loopback port, the
    `fedagg` UDF running this installation's `federation kapacitor-udf`) and returns the running
    `federation.devstack.localstack.KapacitorServer`; every server it started is killed when the test
    ends. `influx_url` is the DC's InfluxDB (its default cluster) and `gateway_url` the
    coordinator's gateway (the `federation_gateway` cluster, authenticated as the DC with
    `token`, default `agent-secret-<dc>`); both default to addresses nothing listens on, which
    is all that deploying and health checks need. `udf_timeout` (default `UDF_TIMEOUT`) is
    the UDF's keepalive deadline. The UDF goes through `udf_wrapper`, so
    `RealKapacitor.break_udf` can make it fail to start, and `stall_udf(server)` make it
    never answer.

`kapacitors` (function, parametrised `emulator` | `kapacitord`)
    A `KapacitorFactory`: `kapacitors.new(dc, influx_url=…, gateway_url=…, token=…)` gives a
    `KapacitorUnderTest` for that DC, the emulator in one run of the test and a real kapacitord
    (marked `kapacitor`) in the other. Use it for tests that need several DCs.

`kapacitor` (function, same parametrisation)
    `kapacitors.new("dub1")`.

A `KapacitorUnderTest` has `kind` ("emulator" or "kapacitord"), `dc`, `url` (served over HTTP;
the emulator starts serving on first use), `client()` (a `KapacitorClient`; close it, or use it
as a context manager), and the faults and inspections both backends support alike:
`break_udf()` / `repair_udf()` (every later start of the UDF fails; Kapacitor accepts the enable
and the task then stops with the UDF node's error) and `running_script(task_id)` (the script the
task runs now, None when it does not run, `STALE` when it runs an older script than the stored
one). `emulator` and `server` give the backend itself for what only one of them can do.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import stat
import sys
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal, Protocol

import pytest

from federation.devstack.kapacitor_emulator import KapacitorEmulator
from federation.devstack.kapacitord import KAPACITORD_ENV, KapacitorServer, find_kapacitord
from federation.devstack.processes import free_port
from federation.kapacitor.client import KapacitorClient

Kind = Literal["emulator", "kapacitord"]

STALE = "<an older script than the stored one>"
"""What `running_script` returns for a task still running a script it was since PATCHed from."""

UDF_BROKEN_MESSAGE = "the UDF refuses to start (test fault)"
"""What the broken UDF answers Kapacitor's init request with."""


def kapacitord_missing(reason: str) -> None:
    """Skip the test saying why; under CI=true fail it instead (CI must run these tests)."""
    if os.environ.get("CI") == "true":
        pytest.fail(f"{reason} (CI=true: the real-Kapacitor tests must run)", pytrace=False)
    pytest.skip(reason)


def require_kapacitord() -> str:
    """The kapacitord binary FEDERATION_KAPACITORD names, or skip/fail (see `kapacitord_missing`)."""
    path = find_kapacitord()
    if path is None:
        named = os.environ.get(KAPACITORD_ENV)
        what = f"{KAPACITORD_ENV}={named} is not an executable file" if named else "unset"
        kapacitord_missing(
            f"no real Kapacitor: {KAPACITORD_ENV} {what} "
            "(CI sets it to ../shared/kapacitor/bin/kapacitord)"
        )
        raise AssertionError("unreachable")
    return path


def federation_command() -> str:
    """The installed `federation` executable, beside this interpreter or on PATH."""
    beside = Path(sys.executable).parent / "federation"
    if beside.is_file():
        return str(beside)
    found = shutil.which("federation")
    if found is None:
        pytest.fail("the `federation` command is not installed (pip install -e .)")
    return found


def _refusal_frame(message: str) -> bytes:
    """A framed UDF `Response{init: InitResponse{success: false, error: message}}`."""
    from federation.kapacitor import _udf_pb2 as pb
    from federation.kapacitor.udf_wire import encode_varint

    response = pb.Response()
    response.init.success = False
    response.init.error = message
    body = response.SerializeToString()
    return encode_varint(len(body)) + body


STALL_SWITCH = "udf-stalled"
"""The file under a test kapacitord's root that makes its UDF stall (see `udf_wrapper`)."""


def udf_wrapper(root: Path) -> tuple[Path, Path]:
    """A UDF program for kapacitord that runs `federation kapacitor-udf`, unless the returned
    switch file exists: then, after a moment, it refuses Kapacitor's init request with
    `UDF_BROKEN_MESSAGE` (Kapacitor keeps an early answer until it asks) and reads its input
    until Kapacitor lets go. While `root / STALL_SWITCH` exists, it reads its input and never
    answers, as a UDF still starting would: the UDF node then takes nothing from its input.

    A program that merely exited would fail either at once (a write to a closed pipe) or only
    at the keepalive timeout (Kapacitor ignores the end of a UDF's output), by chance. And
    Kapacitor 1.5.7 crashes (a nil pointer in `udf.(*Server).setError`) when a task stops
    before every one of its UDF nodes has started its process, so the refusal waits until all
    of them have, as a real UDF's start-up would."""
    root.mkdir(parents=True, exist_ok=True)
    switch = root / "udf-broken"
    program = root / "fedagg-udf"
    refusal = "".join(f"\\{byte:03o}" for byte in _refusal_frame(UDF_BROKEN_MESSAGE))
    program.write_text(
        "#!/bin/sh\n"
        f"if [ -e '{switch}' ]; then sleep 0.3; printf '{refusal}'; exec cat >/dev/null; fi\n"
        f"if [ -e '{root / STALL_SWITCH}' ]; then exec cat >/dev/null; fi\n"
        f"exec '{federation_command()}' \"$@\"\n"
    )
    program.chmod(program.stat().st_mode | stat.S_IXUSR | stat.S_IXGRP | stat.S_IXOTH)
    return program, switch


def stall_udf(server: KapacitorServer) -> None:
    """From now on every UDF process `server` starts stalls (see `udf_wrapper`); the one it
    ran at start-up to learn the UDF's options has answered already."""
    (server.root / STALL_SWITCH).touch()


def _dead_url() -> str:
    return f"http://127.0.0.1:{free_port()}"


StartKapacitord = Callable[..., KapacitorServer]

UDF_TIMEOUT = "30s"
"""The test kapacitords' UDF timeout: on a loaded 2-core machine a task's Python UDF processes,
all started at once, can take longer than production's 10 s to answer their first request."""


@contextlib.contextmanager
def kapacitord_starter(
    binary: str, root: Path, influx_url: str | None = None
) -> Iterator[StartKapacitord]:
    """The `start_kapacitord` factory: real kapacitords under `root`, stopped on exit; their
    InfluxDB is `influx_url` unless a test names its own (none that answers when neither)."""
    default_influx_url = influx_url
    started: list[KapacitorServer] = []

    def start(
        dc: str = "dub1",
        *,
        influx_url: str | None = None,
        gateway_url: str | None = None,
        token: str | None = None,
        udf_timeout: str = UDF_TIMEOUT,
    ) -> KapacitorServer:
        home = root / f"{dc}-{len(started)}"
        program, _switch = udf_wrapper(home)
        server = KapacitorServer(
            binary,
            home,
            dc,
            influx_url or default_influx_url or _dead_url(),
            gateway_url or _dead_url(),
            token or f"agent-secret-{dc}",
            str(program),
            udf_timeout=udf_timeout,
        )
        started.append(server)
        server.start()
        return server

    try:
        yield start
    finally:
        for server in started:
            server.kill()  # nothing to keep: a clean stop waits for every UDF to exit


class KapacitorUnderTest(Protocol):
    """One DC's Kapacitor in a test, real or emulated (see the module docstring)."""

    kind: Kind
    dc: str

    @property
    def url(self) -> str: ...

    def client(self) -> KapacitorClient: ...

    def break_udf(self) -> None: ...

    def repair_udf(self) -> None: ...

    def running_script(self, task_id: str) -> str | None: ...

    @property
    def emulator(self) -> KapacitorEmulator | None: ...

    @property
    def server(self) -> KapacitorServer | None: ...


@dataclass
class EmulatedKapacitor:
    """The emulator for one DC, in process (`client`) or served on loopback (`url`)."""

    dc: str
    stack: contextlib.ExitStack
    backend: KapacitorEmulator = field(default_factory=KapacitorEmulator)
    kind: Kind = "emulator"
    _url: str | None = None

    @property
    def url(self) -> str:
        if self._url is None:
            self._url = self.stack.enter_context(self.backend.serve())
        return self._url

    def client(self) -> KapacitorClient:
        return KapacitorClient(
            f"http://kapacitor.{self.dc}.test:9092", transport=self.backend.transport()
        )

    def break_udf(self) -> None:
        self.backend.fail_udf_start(UDF_BROKEN_MESSAGE)

    def repair_udf(self) -> None:
        self.backend.fail_udf_start(None)

    def running_script(self, task_id: str) -> str | None:
        return running_script(self.client(), task_id)

    @property
    def emulator(self) -> KapacitorEmulator:
        return self.backend

    @property
    def server(self) -> None:
        return None


@dataclass
class RealKapacitor:
    """A real kapacitord for one DC."""

    dc: str
    process: KapacitorServer
    kind: Kind = "kapacitord"

    @property
    def url(self) -> str:
        return self.process.url

    def client(self) -> KapacitorClient:
        return KapacitorClient(self.process.url)

    @property
    def _switch(self) -> Path:
        return self.process.root / "udf-broken"

    def break_udf(self) -> None:
        self._switch.touch()

    def repair_udf(self) -> None:
        self._switch.unlink(missing_ok=True)

    def running_script(self, task_id: str) -> str | None:
        return running_script(self.client(), task_id)

    @property
    def emulator(self) -> None:
        return None

    @property
    def server(self) -> KapacitorServer:
        return self.process


def running_script(client: KapacitorClient, task_id: str) -> str | None:
    """The script `task_id` runs, as Kapacitor's API tells it: None when the task is absent or
    not executing; `STALE` when the stored script was changed after the task last started
    (a PATCH does not reload a running task); else the stored script."""
    with client:
        task = client.get_task(task_id, script_format="raw")
        if task is None or not task.executing or task.error:
            return None
        if task.reload_pending:
            return STALE
        return task.script


@dataclass
class KapacitorFactory:
    """Makes one `KapacitorUnderTest` per DC, all of the same kind."""

    kind: Kind
    stack: contextlib.ExitStack
    start_kapacitord: StartKapacitord | None = None

    def new(
        self,
        dc: str = "dub1",
        *,
        influx_url: str | None = None,
        gateway_url: str | None = None,
        token: str | None = None,
    ) -> KapacitorUnderTest:
        if self.kind == "emulator":
            return EmulatedKapacitor(dc, self.stack)
        assert self.start_kapacitord is not None
        server = self.start_kapacitord(
            dc, influx_url=influx_url, gateway_url=gateway_url, token=token
        )
        return RealKapacitor(dc, server)
