"""kapacitor.conf: the sections a DC's Kapacitor needs to run federation's tasks.

Two sections, written here alone: `[udf.functions.fedagg]`, which runs the aggregation UDF
(`federation kapacitor-udf`), and a write-only `[[influxdb]]` cluster at the coordinator's
gateway, which the tasks' influxDBOut() ships to.

The gateway cluster lists every coordinator replica in `urls`. Kapacitor 1.5.7 does not fail
over between them: its InfluxDB client (`influxdb/client.go`, `HTTPClient.url`) moves to the
next URL before every request, round robin, and a write that fails is logged, counted in the
node's `write_errors` and dropped, never sent again (reference §3.5). So while one of two
replicas is down or draining about half of the writes are lost instead of all of them, and
the windows they carried are recovered as any dropped write is: the agent's raw counts find
them short or the planner finds them missing, and a replay ships them again. Its start-up
ping goes round the list the same way, so one replica down does not keep kapacitord from
starting. `kapacitor_conf` renders them for an operator
to merge (`federation kapacitor config`); the local kapacitord of the demo and the tests
(`federation.devstack.localstack`) writes the same sections into its whole config.
"""

from __future__ import annotations

import os
import shutil
import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Final

from federation.config import FederationConfig
from federation.errors import ConfigError, FederationError
from federation.tickscript.render import UDF_NAME

UDF_TIMEOUT: Final = "10s"
"""How long Kapacitor waits for any answer (a keepalive, too) before it restarts the UDF."""


def federation_executable() -> Path:
    """The absolute path of the installed `federation` command, as kapacitor.conf's `prog`.

    Tried in order: the running command itself (`sys.argv[0]`), the script beside this
    Python interpreter (a virtualenv's `bin/`), then `federation` on PATH. FederationError
    when none is an executable file.
    """
    candidates: list[Path] = []
    argv0 = Path(sys.argv[0]) if sys.argv and sys.argv[0] else None
    if argv0 is not None and argv0.name == "federation":
        candidates.append(argv0)
    candidates.append(Path(sys.executable).parent / "federation")
    on_path = shutil.which("federation")
    if on_path is not None:
        candidates.append(Path(on_path))
    for candidate in candidates:
        if candidate.is_file() and os.access(candidate, os.X_OK):
            return candidate.resolve()
    raise FederationError("cannot find the installed `federation` command; pass --prog PATH")


def toml_string(value: str) -> str:
    """`value` as a TOML basic string: quotes and backslashes escaped, control characters as
    `\\uXXXX`."""
    escaped = []
    for char in value:
        if char in ('"', "\\"):
            escaped.append("\\" + char)
        elif ord(char) < 0x20 or ord(char) == 0x7F:
            escaped.append(f"\\u{ord(char):04X}")
        else:
            escaped.append(char)
    return '"' + "".join(escaped) + '"'


def udf_section(prog: str, timeout: str = UDF_TIMEOUT) -> list[str]:
    """`[udf.functions.fedagg]`: Kapacitor runs `prog kapacitor-udf` for every task's UDF node."""
    return [
        f"[udf.functions.{UDF_NAME}]",
        f"  prog = {toml_string(prog)}",
        '  args = ["kapacitor-udf"]',
        f"  timeout = {toml_string(timeout)}",
    ]


def password_setting(password: str) -> str:
    """The `password` line of an `[[influxdb]]` section."""
    return f"  password = {toml_string(password)}"


def gateway_section(
    name: str,
    urls: Sequence[str],
    dc: str,
    password_line: str,
    *,
    timeout: str = "30s",
    startup_timeout: str = "5m",
) -> list[str]:
    """A write-only `[[influxdb]]` cluster `name` at the coordinator's gateway (every replica's
    URL in `urls`, which Kapacitor takes in turn: see the module's docstring), authenticated as
    DC `dc`: influxDBOut() ships aggregates there; never the default cluster (the tasks query
    the DC's own InfluxDB) and without subscriptions."""
    listed = ", ".join(toml_string(url) for url in urls)
    return [
        "[[influxdb]]",
        "  enabled = true",
        "  default = false",
        f"  name = {toml_string(name)}",
        f"  urls = [{listed}]",
        f"  username = {toml_string(dc)}",
        password_line,
        f"  timeout = {toml_string(timeout)}",
        "  disable-subscriptions = true",
        f"  startup-timeout = {toml_string(startup_timeout)}",
    ]


@dataclass(frozen=True)
class KapacitorConf:
    """The kapacitor.conf sections of one DC, and whether its gateway password is filled in."""

    dc: str
    text: str
    password_env: str
    password_set: bool


def kapacitor_conf(
    config: FederationConfig,
    dc: str,
    *,
    prog: Path | None = None,
    environ: Mapping[str, str] | None = None,
    startup_timeout: str = "5m",
    write_timeout: str = "30s",
) -> KapacitorConf:
    """The kapacitor.conf sections DC `dc` needs, as TOML text to merge into its kapacitor.conf.

    Two sections: `[udf.functions.fedagg]` running `prog kapacitor-udf` (`prog` defaults to
    `federation_executable()`), and a write-only `[[influxdb]]` cluster named after the
    fleet's `gateway_cluster` that points at every coordinator replica, authenticated as the DC
    with its agent token. The token is read from the environment variable fleet.yaml names (`environ`,
    default `os.environ`) at render time; when it is unset the text holds a comment naming the
    variable instead of a password. ConfigError when the DC is unknown or has no Kapacitor.
    """
    env = os.environ if environ is None else environ
    dc_config = config.dc(dc)
    if dc_config.kapacitor is None:
        raise ConfigError(
            "fleet.yaml",
            f"dcs.{dc}.kapacitor",
            "not set: this DC has no Kapacitor (the agent's embedded executor does its work)",
        )
    program = federation_executable() if prog is None else prog.absolute()
    central = config.fleet.central
    token_env = dc_config.agent_token_env
    token = env.get(token_env) or None
    if token is not None:
        password_line = password_setting(token)
    else:
        password_line = (
            f"  # password = <the DC's agent token>: not rendered because {token_env} is unset;\n"
            f"  # set it and run `federation kapacitor config --dc {dc}` again."
        )
    lines = [
        f"# kapacitor.conf sections for DC {dc} of federation {config.fleet.name}.",
        "# Merge them into the DC's kapacitor.conf, then restart kapacitord: it reads UDFs only",
        "# at startup.",
        "#",
        f"# The DC's own InfluxDB ({dc_config.influxdb.url})",
        "# must stay the default cluster: its [[influxdb]] section keeps `default = true`,",
        "# because the aggregation tasks query it.",
        "",
        f"# The aggregation UDF; every task federation renders calls it as @{UDF_NAME}().",
        *udf_section(str(program)),
        "",
        "# Write-only: the coordinator's gateway, which influxDBOut() ships aggregates to.",
        "# Kapacitor sends each write to the next of these URLs in turn and drops a write that",
        "# fails (no fail-over): the agent has such windows replayed.",
        *gateway_section(
            central.gateway_cluster,
            central.coordinator_urls,
            dc,
            password_line,
            timeout=write_timeout,
            startup_timeout=startup_timeout,
        ),
        "",
    ]
    return KapacitorConf(dc, "\n".join(lines), token_env, token is not None)
