"""Real local servers for the demo and the tests: `influxd` processes on loopback.

Each server gets random free ports, its own temporary directory, the TSI index, and no internal
monitoring, and is stopped cleanly (SIGTERM, then SIGKILL) when the stack closes.
"""

from __future__ import annotations

import contextlib
import logging
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType

import httpx

from federation.errors import FederationError

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
  query-log-enabled = false
  trace-logging-enabled = false

[coordinator]
  log-queries-after = "0s"

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
        with self.log_path.open("ab") as out:
            self.process = subprocess.Popen(
                [find_influxd(), "-config", str(config)],
                stdout=out,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                start_new_session=True,
            )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise FederationError(
                    f"influxd {self.name} exited with {self.process.returncode}; see {self.log_path}"
                )
            with contextlib.suppress(httpx.HTTPError):
                if httpx.get(self.url + "/ping", timeout=1.0).status_code == 204:
                    return
            time.sleep(0.05)
        self.stop()
        raise FederationError(f"influxd {self.name} did not answer /ping within {timeout}s")

    def stop(self, timeout: float = 10.0) -> None:
        """Stop influxd: SIGTERM, then SIGKILL after `timeout` seconds."""
        process, self.process = self.process, None
        if process is None or process.poll() is not None:
            return
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(timeout)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(timeout)

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
