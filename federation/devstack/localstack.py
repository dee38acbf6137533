"""Real local InfluxDB servers for the demo and the tests: `influxd` processes on loopback.

The other local servers: `postgres` (the ledger's PostgreSQL), `kapacitord` (a DC's
Kapacitor); `processes` starts and stops them all.

Each influxd gets random free ports, its own temporary directory, the TSI index, and no internal
monitoring, and is stopped cleanly (SIGTERM, then SIGKILL) when the stack closes.

Every server runs in a process group of its own (so a terminal's Ctrl-C reaches only the
program that started it, which then stops the server and whatever the server started, as one
group), and on Linux dies with the process that started it: when that process is killed
outright (SIGKILL, a crash) the kernel kills its servers too, so none is left behind.
"""

from __future__ import annotations

import logging
import os
import shutil
import subprocess
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType

from federation.devstack.processes import await_ping, free_port, spawn, terminate
from federation.errors import FederationError

log = logging.getLogger(__name__)

INFLUXD_ENV = "FEDERATION_INFLUXD"
"""Environment variable naming the influxd binary; otherwise `influxd` on PATH."""


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
        self.process = spawn([find_influxd(), "-config", str(config)], self.log_path)
        if await_ping(
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
        terminate(process, timeout)

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
