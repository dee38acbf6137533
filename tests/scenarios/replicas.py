"""Scenarios with two coordinator replicas over one PostgreSQL ledger.

The scenario federation's own coordinator (in-process, with the scenario's fast planner and
verifier) is one replica; `ReplicaProcess` is the other, a real `federation coordinator run`
process on the same config directory and ledger that a scenario can SIGKILL or SIGTERM.
fleet.yaml lists the process first, behind a `LossyProxy` that tells when a write is in flight
through it, so agents and operator commands go to it until it fails them.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx
from sqlalchemy import select

from federation.coordinator.ledger import RolloutRow
from federation.devstack.processes import free_port

from .harness import ScenarioConfig, ScenarioFederation, wait_for
from .proxy import LossyProxy


class ReplicaProcess:
    """A coordinator replica as a real `federation coordinator run` process."""

    def __init__(self, root: Path, config_dir: Path, port: int) -> None:
        self.root = root
        self.config_dir = config_dir
        self.port = port
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> None:
        command = [sys.executable, "-m", "federation.cli", "coordinator", "run", "--port",
                   str(self.port), "--config", str(self.config_dir)]  # fmt: skip
        with (self.root / f"replica-{self.port}.log").open("ab") as out:
            self.process = subprocess.Popen(
                command, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                env=os.environ.copy(), cwd=self.root,
            )  # fmt: skip
        wait_for(self._answers, 60, f"the coordinator replica on port {self.port}")

    def _answers(self) -> bool:
        assert self.process is not None
        if self.process.poll() is not None:
            log = (self.root / f"replica-{self.port}.log").read_text()
            raise AssertionError(f"the replica exited {self.process.returncode}: {log[-2000:]}")
        try:
            return httpx.get(self.url + "/ping", timeout=2).status_code == 204
        except httpx.HTTPError:
            return False

    def signal(self, signum: int) -> None:
        assert self.process is not None
        self.process.send_signal(signum)

    def wait(self, timeout_s: float = 30) -> int:
        assert self.process is not None
        return self.process.wait(timeout_s)

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(signal.SIGKILL)
            self.process.wait(10)


class Replicated:
    """A scenario federation whose ledger is PostgreSQL and whose fleet lists a replica
    process (behind a proxy) before the in-process coordinator."""

    def __init__(
        self,
        root: Path,
        ledger_url: str,
        *,
        window_s: int = 1,
        latency_s: float = 0.0,
        central_latency_s: float = 0.0,
    ) -> None:
        port = free_port()
        self.proxy = LossyProxy(port, latency_s=latency_s).start()
        """In front of the replica process."""
        self.central_proxy: LossyProxy | None = None
        """In front of central InfluxDB, for both replicas, when `central_latency_s` is set."""
        spec = ScenarioConfig(
            window_s=window_s,
            ledger_url=ledger_url,
            other_replicas=(self.proxy.url,),
            operator=True,
        )
        self.fed = ScenarioFederation(
            root, spec, central_via=self._via_proxy if central_latency_s else None
        )
        self._central_latency_s = central_latency_s
        self.replica = ReplicaProcess(root, self.fed.config_dir, port)

    @property
    def own_url(self) -> str:
        """The in-process replica's URL."""
        return f"http://127.0.0.1:{self.fed.port}"

    def _via_proxy(self, url: str) -> str:
        port = int(url.rsplit(":", 1)[1])
        self.central_proxy = LossyProxy(port, latency_s=self._central_latency_s).start()
        return self.central_proxy.url

    def close(self) -> None:
        self.replica.stop()
        self.fed.close()
        self.proxy.stop()
        if self.central_proxy is not None:
            self.central_proxy.stop()

    def when_writing(self, timeout_s: float = 20) -> None:
        """Return while an agent's write is in flight at the replica process."""
        deadline = time.monotonic() + timeout_s
        while self.proxy.writes_in_flight == 0:
            if time.monotonic() > deadline:
                raise AssertionError("no write reached the replica process")
            time.sleep(0.001)

    def when_answered(self, request: str, timeout_s: float = 30) -> None:
        """Return once the replica process answered a request (`POST /api/v1/rollouts`)."""
        wait_for(
            lambda: any(e.request == request and e.status for e in self.proxy.exchanges),
            timeout_s,
            f"the answer to {request}",
        )

    def rollouts(self) -> list[RolloutRow]:
        assert self.fed.ledger is not None
        with self.fed.ledger.session() as session:
            return list(session.scalars(select(RolloutRow).order_by(RolloutRow.id)))
