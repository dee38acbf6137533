"""A real kapacitord for one DC on loopback (`KapacitorServer`), configured with the same
kapacitor.conf sections an operator merges (`federation.kapacitor.conf`).
"""

from __future__ import annotations

import contextlib
import logging
import os
import subprocess
from dataclasses import dataclass, field
from pathlib import Path

from federation.devstack.processes import await_ping, free_port, spawn, terminate
from federation.errors import FederationError
from federation.kapacitor.conf import (
    UDF_TIMEOUT,
    gateway_section,
    password_setting,
    toml_string,
    udf_section,
)

log = logging.getLogger(__name__)


KAPACITORD_ENV = "FEDERATION_KAPACITORD"
"""Environment variable naming a kapacitord binary (Kapacitor is in no package registry)."""


def find_kapacitord() -> str | None:
    """The kapacitord binary FEDERATION_KAPACITORD names, if it is an executable file."""
    path = os.environ.get(KAPACITORD_ENV, "")
    if path and Path(path).is_file() and os.access(path, os.X_OK):
        return path
    return None


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
    udf_timeout: str = UDF_TIMEOUT
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
        gateway = "\n".join(
            gateway_section(
                self.gateway_cluster,
                [self.gateway_url],
                self.dc,
                password_setting(self.token),
                startup_timeout="1m",
            )
        )
        udf = "\n".join(udf_section(self.prog, self.udf_timeout))
        return f"""\
hostname = "127.0.0.1"
data_dir = {toml_string(str(root / "data"))}
skip-config-overrides = true

[http]
  bind-address = "127.0.0.1:{self.port}"
  auth-enabled = false
  log-enabled = false

[logging]
  file = {toml_string(str(root / "kapacitord.log"))}
  level = "INFO"

[replay]
  dir = {toml_string(str(root / "replay"))}

[storage]
  boltdb = {toml_string(str(root / "kapacitor.db"))}

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
  urls = [{toml_string(self.dc_influx_url)}]
  timeout = "60s"
  disable-subscriptions = true
  startup-timeout = "1m"

{gateway}

{udf}
"""

    def start(self, timeout: float = 60.0) -> None:
        """Write the config, start kapacitord and wait until its ping answers 204."""
        self.root.mkdir(parents=True, exist_ok=True)
        conf = self.root / "kapacitor.conf"
        conf.write_text(self.config_text())
        log_path = self.root / "kapacitord.out"
        self.process = spawn([self.binary, "-config", str(conf)], log_path)
        if await_ping(
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
        terminate(process, timeout)

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
