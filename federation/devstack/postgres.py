"""A throwaway PostgreSQL cluster on loopback for the ledger (`PostgresServer`), and the
databases the tests create and drop in it.
"""

from __future__ import annotations

import contextlib
import logging
import os
import pwd
import re
import secrets
import shutil
import subprocess
import tempfile
import time
from pathlib import Path
from types import TracebackType
from typing import TYPE_CHECKING, Any

from federation.devstack.processes import free_port
from federation.errors import FederationError

if TYPE_CHECKING:
    from sqlalchemy.engine import Engine

log = logging.getLogger(__name__)


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
