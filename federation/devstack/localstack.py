"""Real local servers for the demo and the tests: `influxd` processes on loopback, and a
throwaway PostgreSQL cluster for the ledger (`PostgresServer`).

Each influxd gets random free ports, its own temporary directory, the TSI index, and no internal
monitoring, and is stopped cleanly (SIGTERM, then SIGKILL) when the stack closes.

Every server runs in a process group of its own (so a terminal's Ctrl-C reaches only the
program that started it, which then stops the server and whatever the server started, as one
group), and on Linux dies with the process that started it: when that process is killed
outright (SIGKILL, a crash) the kernel kills its servers too, so none is left behind.
"""

from __future__ import annotations

import contextlib
import ctypes
import logging
import os
import pwd
import re
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType
from typing import TYPE_CHECKING, Any

import httpx

from federation.errors import FederationError

if TYPE_CHECKING:
    from sqlalchemy.engine import Engine

log = logging.getLogger(__name__)

INFLUXD_ENV = "FEDERATION_INFLUXD"
"""Environment variable naming the influxd binary; otherwise `influxd` on PATH."""


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def find_influxd() -> str:
    """The influxd binary to run; FederationError saying how to install it when absent."""
    candidate = os.environ.get(INFLUXD_ENV) or shutil.which("influxd") or "/usr/bin/influxd"
    if not Path(candidate).exists():
        raise FederationError(
            "influxd not found: install the Debian package 'influxdb' (apt-get install influxdb) "
            f"or name the binary in {INFLUXD_ENV}"
        )
    return candidate


_PR_SET_PDEATHSIG = 1
"""prctl(2) option: the signal the kernel sends a process when its parent dies."""


def _die_with_parent() -> Any:
    """A pre-exec hook that makes the child die (SIGKILL) when the process starting it does, or
    None where that cannot be asked for.

    Linux sends that signal when the *thread* that forked the child ends, so it is asked only
    when the main thread spawns: the main thread ends only with the process. A server started
    from another thread is stopped by `stop()`/`close()` alone.
    """
    if not sys.platform.startswith("linux") or threading.current_thread() is not (
        threading.main_thread()
    ):
        return None
    libc = ctypes.CDLL(None, use_errno=True)
    parent = os.getpid()

    def hook() -> None:
        libc.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL)
        if os.getppid() != parent:  # the parent died before the request took effect
            os.kill(os.getpid(), signal.SIGKILL)

    return hook


def _spawn(argv: list[str], log_path: Path) -> subprocess.Popen[bytes]:
    """Start a server in a session (and process group) of its own that dies with this process,
    its output appended to `log_path`."""
    with log_path.open("ab") as out:
        return subprocess.Popen(
            argv,
            stdout=out,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            start_new_session=True,
            preexec_fn=_die_with_parent(),
        )


def _await_ping(
    process: subprocess.Popen[bytes],
    ping_url: str,
    *,
    what: str,
    log_path: Path,
    timeout: float,
    poll_s: float,
) -> bool:
    """Wait until `ping_url` answers 204 (True) or `timeout` seconds pass (False).

    Raises FederationError, naming `what` and its log, when the process exits first.
    """
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise FederationError(f"{what} exited with {process.returncode}; see {log_path}")
        with contextlib.suppress(httpx.HTTPError):
            if httpx.get(ping_url, timeout=1.0).status_code == 204:
                return True
        time.sleep(poll_s)
    return False


def _signal_group(process: subprocess.Popen[bytes], sig: int) -> None:
    """Send `sig` to the server's process group (the server and what it started, such as
    kapacitord's UDF processes)."""
    try:
        os.killpg(process.pid, sig)
    except (ProcessLookupError, PermissionError):
        with contextlib.suppress(ProcessLookupError):
            process.send_signal(sig)


def _terminate(process: subprocess.Popen[bytes] | None, timeout: float) -> None:
    """Stop a running server and its process group: SIGTERM, then SIGKILL after `timeout`
    seconds."""
    if process is None or process.poll() is not None:
        return
    _signal_group(process, signal.SIGTERM)
    try:
        process.wait(timeout)
    except subprocess.TimeoutExpired:
        _signal_group(process, signal.SIGKILL)
        process.wait(10)
    # Whatever the server started and left behind goes with it.
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(process.pid, signal.SIGKILL)


_CONFIG = """\
reporting-disabled = true
bind-address = "127.0.0.1:{rpc_port}"

[meta]
  dir = "{root}/meta"
  logging-enabled = false

[data]
  dir = "{root}/data"
  wal-dir = "{root}/wal"
  index-version = "tsi1"
  # No cap on series or tag values: the benches write the case study's cardinality (a
  # personal-data tag with a million values in an hour), past InfluxDB's default caps.
  max-series-per-database = 0
  max-values-per-tag = 0
  query-log-enabled = false
  trace-logging-enabled = false

[coordinator]
  log-queries-after = "0s"
  # The default 10s fails writes with "timeout" on a loaded machine (benches write a million
  # series); the client's own timeout still bounds every request.
  write-timeout = "120s"

[retention]
  enabled = true
  check-interval = "{retention_check}"

[monitor]
  store-enabled = false

[subscriber]
  enabled = false

[http]
  enabled = true
  bind-address = "127.0.0.1:{http_port}"
  log-enabled = false
  max-body-size = 0
  max-row-limit = 0

[continuous_queries]
  enabled = false

[logging]
  level = "warn"
"""


@dataclass
class InfluxServer:
    """One running influxd; `url` is its HTTP API on loopback."""

    name: str
    root: Path
    http_port: int
    process: subprocess.Popen[bytes] | None = None
    retention_check: str = "30m"
    log_path: Path = field(init=False)

    def __post_init__(self) -> None:
        self.log_path = self.root / "influxd.log"

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.http_port}"

    def start(self, timeout: float = 30.0) -> None:
        """Start influxd and wait until `/ping` answers 204."""
        self.root.mkdir(parents=True, exist_ok=True)
        config = self.root / "influxdb.conf"
        config.write_text(
            _CONFIG.format(
                root=self.root,
                rpc_port=free_port(),
                http_port=self.http_port,
                retention_check=self.retention_check,
            )
        )
        self.process = _spawn([find_influxd(), "-config", str(config)], self.log_path)
        if _await_ping(
            self.process,
            self.url + "/ping",
            what=f"influxd {self.name}",
            log_path=self.log_path,
            timeout=timeout,
            poll_s=0.05,
        ):
            return
        self.stop()
        raise FederationError(f"influxd {self.name} did not answer /ping within {timeout}s")

    def stop(self, timeout: float = 10.0) -> None:
        """Stop influxd: SIGTERM, then SIGKILL after `timeout` seconds."""
        process, self.process = self.process, None
        _terminate(process, timeout)

    def kill(self) -> None:
        """Kill influxd at once (SIGKILL), as a crash would."""
        if self.process is not None and self.process.poll() is None:
            self.process.kill()
            self.process.wait(10)
        self.process = None

    def restart(self) -> None:
        """Start again on the same port and data directory."""
        self.stop()
        self.start()

    @property
    def running(self) -> bool:
        return self.process is not None and self.process.poll() is None


class LocalStack:
    """Several influxd processes (DCs and central) under one temporary directory.

    Use as a context manager; everything is stopped and (unless `keep`) removed on exit.
    """

    def __init__(self, root: Path | None = None, *, keep: bool = False) -> None:
        self._own_root = root is None
        self.root = Path(tempfile.mkdtemp(prefix="federation-")) if root is None else root
        self.keep = keep
        self.servers: dict[str, InfluxServer] = {}

    def influxd(self, name: str, *, retention_check: str = "30m") -> InfluxServer:
        """Start (or return the running) influxd called `name`."""
        if name in self.servers:
            return self.servers[name]
        server = InfluxServer(name, self.root / name, free_port(), retention_check=retention_check)
        server.start()
        self.servers[name] = server
        log.debug("influxd %s listening on %s", name, server.url)
        return server

    def close(self) -> None:
        for server in self.servers.values():
            server.stop()
        if self._own_root and not self.keep:
            shutil.rmtree(self.root, ignore_errors=True)

    def __enter__(self) -> LocalStack:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()


# --- PostgreSQL ---------------------------------------------------------------------------------

PG_BIN_ENV = "FEDERATION_PG_BIN"
"""Environment variable naming the directory of PostgreSQL's `initdb`, `pg_ctl` and `postgres`;
otherwise the newest `/usr/lib/postgresql/<version>/bin` (Debian's layout), then `pg_ctl` on PATH."""

PG_SYSTEM_USER = "postgres"
"""The account PostgreSQL runs as when the caller is root (the Debian package creates it)."""

_PG_TOOLS = ("initdb", "pg_ctl", "postgres")
_DATABASE_NAME = re.compile(r"[a-z_][a-z0-9_]{0,62}")


def _version_key(path: Path) -> tuple[int, ...]:
    try:
        return tuple(int(part) for part in path.parent.name.split("."))
    except ValueError:
        return (-1,)


def find_postgres_bin() -> Path:
    """The directory holding `initdb`, `pg_ctl` and `postgres`.

    Raises FederationError saying how to install PostgreSQL when there is none.
    """
    named = os.environ.get(PG_BIN_ENV)
    if named:
        candidates = [Path(named)]
    else:
        candidates = sorted(Path("/usr/lib/postgresql").glob("*/bin"), key=_version_key)[::-1]
        on_path = shutil.which("pg_ctl")
        if on_path:
            candidates.append(Path(on_path).resolve().parent)
    for directory in candidates:
        if all(os.access(directory / tool, os.X_OK) for tool in _PG_TOOLS):
            return directory
    where = f"{PG_BIN_ENV}={named}" if named else "/usr/lib/postgresql/*/bin or PATH"
    raise FederationError(
        f"PostgreSQL not found in {where}: install the Debian package 'postgresql' "
        f"(apt-get install postgresql) or name its bin directory in {PG_BIN_ENV}"
    )


def _admin_engine(url: str) -> Engine:
    from sqlalchemy import create_engine
    from sqlalchemy.pool import NullPool

    return create_engine(url, isolation_level="AUTOCOMMIT", poolclass=NullPool)


def _check_database_name(name: str) -> str:
    if not _DATABASE_NAME.fullmatch(name):
        raise FederationError(f"invalid database name {name!r}: use [a-z_][a-z0-9_]*, ≤ 63 chars")
    return name


def create_postgres_database(url: str, name: str) -> str:
    """Create database `name` on the server that `url` (a SQLAlchemy URL) points at, and return
    the URL of the new database. The URL's role needs the CREATEDB privilege."""
    from sqlalchemy.engine import make_url

    engine = _admin_engine(url)
    try:
        with engine.connect() as conn:
            conn.exec_driver_sql(f'CREATE DATABASE "{_check_database_name(name)}"')
    finally:
        engine.dispose()
    return make_url(url).set(database=name).render_as_string(hide_password=False)


def drop_postgres_database(url: str, name: str) -> None:
    """Drop database `name` (if it exists) on the server that `url` points at, disconnecting
    whoever is still connected to it."""
    engine = _admin_engine(url)
    try:
        with engine.connect() as conn:
            conn.exec_driver_sql(
                f'DROP DATABASE IF EXISTS "{_check_database_name(name)}" WITH (FORCE)'
            )
    finally:
        engine.dispose()


class PostgresServer:
    """A throwaway PostgreSQL cluster: `initdb` in a new temporary directory, then `postgres` on
    a free port of 127.0.0.1 (its unix socket stays in that directory), with one database.

    `url` is a SQLAlchemy URL (`postgresql+psycopg://…@127.0.0.1:<port>/<database>`) for a
    superuser with a random password. PostgreSQL refuses to run as root, so a root caller runs
    it as the `postgres` account. Durability is switched off (fsync, full-page writes): the
    cluster lives only as long as this object. Use as a context manager, or `start`/`stop`.
    """

    def __init__(
        self,
        *,
        database: str = "federation",
        user: str = "federation",
        bin_dir: Path | None = None,
        system_user: str = PG_SYSTEM_USER,
    ) -> None:
        self.database = _check_database_name(database)
        self.user = user
        self.bin_dir = bin_dir
        self.system_user = system_user
        self.password = secrets.token_urlsafe(18)
        self.port = 0
        self.root: Path | None = None
        self.process: subprocess.Popen[bytes] | None = None
        self._bin: Path | None = None

    @property
    def url(self) -> str:
        """The SQLAlchemy URL of the server's database."""
        return self.url_for(self.database)

    def url_for(self, database: str) -> str:
        """The SQLAlchemy URL of another database on this server."""
        return f"postgresql+psycopg://{self.user}:{self.password}@127.0.0.1:{self.port}/{database}"

    @property
    def log_path(self) -> Path | None:
        return None if self.root is None else self.root / "postgres.log"

    @property
    def running(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def _account(self) -> tuple[int, int] | None:
        """(uid, gid) to run PostgreSQL as, or None to run it as the caller."""
        if os.geteuid() != 0:
            return None
        try:
            entry = pwd.getpwnam(self.system_user)
        except KeyError:
            raise FederationError(
                f"PostgreSQL refuses to run as root, and there is no {self.system_user!r} "
                "account to run it as: install the Debian package 'postgresql' (it creates "
                "the account) or run as an ordinary user"
            ) from None
        return entry.pw_uid, entry.pw_gid

    def _spawn_options(self, account: tuple[int, int] | None) -> dict[str, Any]:
        assert self.root is not None
        # A clean environment: inherited PG* variables (PGPORT, PGDATA, …) would redirect the
        # tools to another cluster.
        env = {
            "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
            "LC_ALL": "C",
            "TZ": "UTC",
            "HOME": str(self.root),
        }
        options: dict[str, Any] = {"cwd": self.root, "env": env, "stdin": subprocess.DEVNULL}
        if account is not None:
            options.update(user=account[0], group=account[1], extra_groups=[])
        return options

    def start(self, timeout: float = 60.0) -> None:
        """Create the cluster, start `postgres`, wait until it accepts connections, and create
        the database. Raises FederationError (naming the log file) when any step fails."""
        bin_dir = self._bin = self.bin_dir or find_postgres_bin()
        account = self._account()
        self.root = Path(tempfile.mkdtemp(prefix="federation-pg-"))
        if account is not None:
            os.chown(self.root, *account)
        options = self._spawn_options(account)
        password_file = self.root / "password"
        password_file.write_text(self.password + "\n")
        if account is not None:
            os.chown(password_file, *account)
        assert self.log_path is not None
        with self.log_path.open("ab") as log_file:
            if account is not None:
                os.chown(self.log_path, *account)
            initdb = subprocess.run(
                [
                    str(bin_dir / "initdb"),
                    "--pgdata=data",
                    f"--username={self.user}",
                    f"--pwfile={password_file}",
                    "--auth-host=scram-sha-256",
                    # The socket lives in a directory only this account (and root) can enter.
                    "--auth-local=trust",
                    "--encoding=UTF8",
                    "--no-locale",
                    "--no-sync",
                ],
                stdout=log_file,
                stderr=subprocess.STDOUT,
                check=False,
                **options,
            )
        password_file.unlink()
        if initdb.returncode != 0:
            raise self._failed(f"initdb exited with {initdb.returncode}")
        deadline = time.monotonic() + timeout
        try:
            for _attempt in range(3):
                self.port = free_port()
                if self._launch(bin_dir, options, deadline):
                    break
            else:
                raise self._failed("postgres found no free port to bind")
            create_postgres_database(self.url_for("postgres"), self.database)
        except BaseException:
            self.stop()
            raise
        log.debug("postgres listening on 127.0.0.1:%d (%s)", self.port, self.root)

    def _launch(self, bin_dir: Path, options: dict[str, Any], deadline: float) -> bool:
        """Start `postgres` on `self.port` and wait for it; False if the port was taken."""
        assert self.root is not None and self.log_path is not None
        settings = {
            "listen_addresses": "127.0.0.1",
            "port": str(self.port),
            "unix_socket_directories": str(self.root),
            "fsync": "off",
            "synchronous_commit": "off",
            "full_page_writes": "off",
            "max_connections": "200",
        }
        argv = [str(bin_dir / "postgres"), "-D", "data"]
        for key, value in settings.items():
            argv += ["-c", f"{key}={value}"]
        with self.log_path.open("ab") as log_file:
            self.process = subprocess.Popen(
                argv,
                stdout=log_file,
                stderr=subprocess.STDOUT,
                start_new_session=True,
                **options,
            )
        from sqlalchemy.exc import OperationalError

        engine = _admin_engine(self.url_for("postgres"))
        try:
            while time.monotonic() < deadline:
                if self.process.poll() is not None:
                    self.process = None
                    if "could not bind" in self.log_path.read_text(errors="replace"):
                        return False
                    raise self._failed("postgres exited at start")
                try:
                    with engine.connect():
                        return True
                except OperationalError:
                    time.sleep(0.05)
        finally:
            engine.dispose()
        raise self._failed("postgres did not accept connections in time")

    def _failed(self, what: str) -> FederationError:
        """An error for a failed start, quoting the end of the server's log, which `stop`
        removes with the rest of the cluster."""
        lines: list[str] = []
        if self.log_path is not None and self.log_path.exists():
            lines = self.log_path.read_text(errors="replace").strip().splitlines()[-3:]
        self.stop()
        return FederationError(f"{what}: " + (" | ".join(lines) or "no log output"))

    def stop(self, timeout: float = 30.0) -> None:
        """Stop the server (`pg_ctl stop -m fast`, SIGKILL if that fails) and remove the
        cluster's directory."""
        process, self.process = self.process, None
        if process is not None and process.poll() is None:
            assert self.root is not None and self._bin is not None
            with contextlib.suppress(subprocess.TimeoutExpired):
                subprocess.run(
                    [
                        str(self._bin / "pg_ctl"),
                        "stop",
                        "--pgdata=data",
                        "--mode=fast",
                        "--wait",
                        f"--timeout={int(timeout)}",
                    ],
                    stdout=subprocess.DEVNULL,
                    stderr=subprocess.DEVNULL,
                    check=False,
                    timeout=timeout + 5,
                    **self._spawn_options(self._account()),
                )
            try:
                process.wait(5)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait(10)
        root, self.root = self.root, None
        if root is not None:
            shutil.rmtree(root, ignore_errors=True)

    def __enter__(self) -> PostgresServer:
        self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()


KAPACITORD_ENV = "FEDERATION_KAPACITORD"
"""Environment variable naming a kapacitord binary (Kapacitor is in no package registry)."""


def find_kapacitord() -> str | None:
    """The kapacitord binary FEDERATION_KAPACITORD names, if it is an executable file."""
    path = os.environ.get(KAPACITORD_ENV, "")
    if path and Path(path).is_file() and os.access(path, os.X_OK):
        return path
    return None


def _toml(value: str) -> str:
    # A JSON string is a valid TOML basic string for the paths, URLs and names written here.
    import json

    return json.dumps(value)


@dataclass
class KapacitorServer:
    """A kapacitord for one DC on loopback: the DC's influxd is its default cluster, the
    coordinator's gateway a write-only cluster (`federation_gateway`, authenticated as the DC),
    and `[udf.functions.fedagg]` runs `prog kapacitor-udf`."""

    binary: str
    root: Path
    dc: str
    dc_influx_url: str
    gateway_url: str
    token: str
    prog: str
    gateway_cluster: str = "federation_gateway"
    udf_timeout: str = "10s"
    """How long kapacitord waits for any answer of the UDF (its keepalives too) before it kills
    it; also what paces its keepalive requests (every half of it)."""
    port: int = field(default_factory=free_port)
    process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def config_text(self) -> str:
        """The whole kapacitor.conf: everything under `root`, nothing the DC does not use."""
        root = self.root
        return f"""\
hostname = "127.0.0.1"
data_dir = {_toml(str(root / "data"))}
skip-config-overrides = true

[http]
  bind-address = "127.0.0.1:{self.port}"
  auth-enabled = false
  log-enabled = false

[logging]
  file = {_toml(str(root / "kapacitord.log"))}
  level = "INFO"

[replay]
  dir = {_toml(str(root / "replay"))}

[storage]
  boltdb = {_toml(str(root / "kapacitor.db"))}

[load]
  enabled = false

[reporting]
  enabled = false

[stats]
  enabled = false

[[influxdb]]
  enabled = true
  default = true
  name = "dc"
  urls = [{_toml(self.dc_influx_url)}]
  timeout = "60s"
  disable-subscriptions = true
  startup-timeout = "1m"

[[influxdb]]
  enabled = true
  default = false
  name = {_toml(self.gateway_cluster)}
  urls = [{_toml(self.gateway_url)}]
  username = {_toml(self.dc)}
  password = {_toml(self.token)}
  timeout = "30s"
  disable-subscriptions = true
  startup-timeout = "1m"

[udf]
[udf.functions]
  [udf.functions.fedagg]
    prog = {_toml(self.prog)}
    args = ["kapacitor-udf"]
    timeout = {_toml(self.udf_timeout)}
"""

    def start(self, timeout: float = 60.0) -> None:
        """Write the config, start kapacitord and wait until its ping answers 204."""
        self.root.mkdir(parents=True, exist_ok=True)
        conf = self.root / "kapacitor.conf"
        conf.write_text(self.config_text())
        log_path = self.root / "kapacitord.out"
        self.process = _spawn([self.binary, "-config", str(conf)], log_path)
        if _await_ping(
            self.process,
            f"{self.url}/kapacitor/v1/ping",
            what="kapacitord",
            log_path=log_path,
            timeout=timeout,
            poll_s=0.2,
        ):
            return
        self.stop()
        raise FederationError(
            f"kapacitord did not answer its ping within {timeout}s; see {log_path}"
        )

    def stop(self, timeout: float = 20.0) -> None:
        """SIGTERM, then SIGKILL after `timeout` seconds."""
        process, self.process = self.process, None
        _terminate(process, timeout)

    def udf_processes(self) -> list[int]:
        """The pids of kapacitord's UDF processes (its children), oldest first (Linux)."""
        if self.process is None:
            return []
        children = []
        for stat in Path("/proc").glob("[0-9]*/stat"):
            with contextlib.suppress(OSError, ValueError, IndexError):
                # pid (comm) state ppid ... starttime: fields after the command's parenthesis.
                fields = stat.read_text().rsplit(")", 1)[1].split()
                if int(fields[1]) == self.process.pid:
                    children.append((int(fields[19]), int(stat.parent.name)))
        return [pid for _started, pid in sorted(children)]

    def kill(self) -> None:
        """Kill kapacitord at once (SIGKILL), as a crash would. Its UDF processes see their
        stdin end and exit; its data directory stays for a `start` on the same port."""
        process, self.process = self.process, None
        if process is not None and process.poll() is None:
            process.kill()
            process.wait(10)
