"""Preflight: each failure is one line naming what failed; success leaves the ledger at head."""

from __future__ import annotations

from pathlib import Path

import pytest
from terminal import sigint_as_at_a_terminal

from federation.config import FederationConfig
from federation.coordinator.app import preflight
from federation.coordinator.ledger import head_revision, ledger_revision
from federation.devstack.processes import free_port
from federation.errors import PreflightError

from .helpers import READER, token


def _environ(config: FederationConfig) -> dict[str, str]:
    env = {dc.agent_token_env: token(name) for name, dc in config.fleet.dcs.items()}
    env[config.fleet.central.reader_token_env] = READER
    return env


def test_preflight_upgrades_the_ledger_and_prepares_central(
    config: FederationConfig, ledger_url: str
) -> None:
    ready = preflight(config, environ=_environ(config))
    ready.ledger.close()
    assert ledger_revision(ledger_url) == head_revision()
    assert ready.tokens.check_dc("dub1", token("dub1"))


def test_preflight_failures_are_one_line(config: FederationConfig, tmp_path: Path) -> None:
    with pytest.raises(PreflightError, match="FEDERATION_READER_TOKEN") as missing:
        preflight(config, environ={})
    assert "\n" not in str(missing.value)
    with pytest.raises(PreflightError, match="central InfluxDB") as down:
        preflight(config, environ=_environ(config), central_url=f"http://127.0.0.1:{free_port()}")
    assert "\n" not in str(down.value)


def test_coordinator_run_says_where_it_serves_without_verbose(
    config: FederationConfig, config_dir: Path
) -> None:
    import os
    import signal
    import subprocess
    import sys

    port = free_port()
    process = subprocess.Popen(
        [sys.executable, "-m", "federation.cli", "coordinator", "run", "--config",
         str(config_dir), "--port", str(port)],
        env={**os.environ, **_environ(config)}, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
        text=True, preexec_fn=sigint_as_at_a_terminal,
    )  # fmt: skip
    try:
        assert process.stderr is not None
        first = process.stderr.readline()
    finally:
        process.send_signal(signal.SIGINT)
        stdout, _ = process.communicate(timeout=30)
    assert first.startswith(f"coordinator serving on http://127.0.0.1:{port} (ledger "), first
    assert stdout == ""
