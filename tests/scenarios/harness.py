"""A whole local federation for the scenario tests: two DCs in two regions and central.

`ScenarioFederation` starts a real `influxd` per DC (dub1 in eu, lon1 in uk) and for central,
a real `kapacitord` for each DC the spec names in `kapacitor_dcs` (its agent then runs in
Kapacitor mode), applies the regions' retention policies, serves the coordinator (gateway, agent API, ledger in
a SQLite file) on loopback with its planner and verification jobs, and runs one agent per DC
(in a thread, or as a real `federation agent run` subprocess). Everything is tuned for
second-long windows: the planner and verifier run twice a second, agents poll every quarter
second, shipments retry within about a second and a half.

`Traffic` holds one DC's deterministic traffic (`generate_events`, personal data filled in) and
writes it through `ingest` as time passes (`Feeder`), or on demand (late events).

`GatewayTap` wraps the coordinator's ASGI app: armed, it holds the answer to the next summaries
batch of one DC (already stored at central, manifest not yet sent) while a scenario action runs,
so a fault lands exactly in the middle of a shipment.

The invariant checks every scenario ends with live in `checks`.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import contextlib
import dataclasses
import io
import logging
import os
import secrets
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Collection, Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml
from kapacitor_fixture import udf_wrapper
from sqlalchemy import func, select
from starlette.responses import JSONResponse
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from federation.agent.backfill_work import BackfillWork
from federation.agent.daemon import Agent, build_agent
from federation.agent.modes import AgentSettings
from federation.config import FederationConfig, load_config
from federation.coordinator.api import build_app
from federation.coordinator.app import ensure_central, run_verification, schedule_jobs
from federation.coordinator.ledger import Ledger, WindowRow, open_ledger
from federation.coordinator.planner import PlannerSettings
from federation.coordinator.service import Coordinator, CoordinatorSettings, load_tokens
from federation.core.clock import Clock, SystemClock, format_rfc3339
from federation.core.retry import RetryPolicy
from federation.devstack.asgi_server import ThreadedServer
from federation.devstack.kapacitord import KapacitorServer
from federation.devstack.localstack import LocalStack
from federation.devstack.processes import free_port
from federation.devstack.traffic import generate_events, personal_values, to_json_lines
from federation.errors import FederationError
from federation.influx import InfluxClient
from federation.ingest import ingest
from federation.policy.retention import apply_retention

log = logging.getLogger(__name__)

REPO = Path(__file__).resolve().parents[2]
SECOND = 10**9
MINUTE = 60 * SECOND

DCS = ("dub1", "lon1")
"""The scenario DCs: one in the eu region, one in the uk region."""

LOOKBACK_WINDOWS = {"delivery_latency": 3, "delivery_direction": 3}
"""The example aggregations and their look-back, in windows (three each: a late event gets two
more runs after the first)."""

COORDINATOR_SETTINGS = CoordinatorSettings(
    planner_interval_s=0.5,
    verify_interval_s=0.5,
    verify_settle_ns=0,
    rollup_interval_s=3600.0,
    planner=PlannerSettings(
        max_windows=40,
        max_outstanding=8,
        retry_base_ns=SECOND,
        retry_max_ns=4 * SECOND,
        max_attempts=30,
        # An agent killed while it holds a lease gives the request back within seconds.
        lease_ns=4 * SECOND,
    ),
)
AGENT_SETTINGS = AgentSettings(poll_interval_s=0.25, reconcile_interval_s=60.0, mode="embedded")
KAPACITOR_UDF_TIMEOUT = "20s"
"""The scenario kapacitords' UDF keepalive deadline: Python UDF processes all starting at once on
a loaded machine need more than production's 10 s; a killed UDF is noticed within half of it."""
SHIP_RETRY = RetryPolicy(attempts=4, initial_s=0.2, multiplier=2.0, max_s=1.0)
"""About 1.4 s of retries: an outage of a few windows outlasts them, so both the retry and the
give-up-and-backfill paths run."""
RESULT_RETRY = RetryPolicy(initial_s=0.25, multiplier=2.0, max_s=1.0)
"""Back-off of an unsent backfill result: tried again at most a second apart."""


def token_env(dc: str) -> str:
    return f"FEDERATION_SCENARIO_{dc.upper()}_TOKEN"


READER_ENV = "FEDERATION_SCENARIO_READER_TOKEN"
OPERATOR_ENV = "FEDERATION_SCENARIO_OPERATOR_TOKEN"


def set_tokens() -> None:
    """Put an agent token per DC, a reader and an operator token in this process's environment
    (and so in every subprocess it starts)."""
    for name in (*map(token_env, DCS), READER_ENV, OPERATOR_ENV):
        os.environ.setdefault(name, secrets.token_urlsafe(18))


@dataclass(frozen=True)
class ScenarioConfig:
    """How the scenario's config differs from the example: window size and raw retention."""

    window_s: int = 1
    raw: Mapping[str, Mapping[str, str]] = field(default_factory=dict)
    """Per region, keys of the policy's `raw` section to replace (e.g. a short retention)."""
    kapacitor_dcs: tuple[str, ...] = ()
    """DCs that run a real kapacitord, their agent in Kapacitor mode (the others embedded)."""
    ledger_url: str | None = None
    """The ledger's database (default: a SQLite file in the config directory)."""
    other_replicas: tuple[str, ...] = ()
    """Coordinator replicas fleet.yaml lists before the scenario's own (agents and operator
    commands try them first); each is started by the scenario."""
    operator: bool = False
    """Whether fleet.yaml names an operator token (policy and rollout go through the
    coordinator)."""


def write_config(
    target: Path,
    urls: Mapping[str, str],
    coordinator_url: str,
    spec: ScenarioConfig,
    kapacitor_urls: Mapping[str, str] | None = None,
) -> FederationConfig:
    """The example policies and aggregations, with `spec`'s windows, for the scenario DCs;
    a DC in `kapacitor_urls` has that Kapacitor, the others run the embedded executor."""
    fleet = yaml.safe_load((REPO / "fleet.yaml").read_text())
    dcs: dict[str, Any] = {}
    for name in DCS:
        dc = dict(fleet["dcs"][name])
        dc.pop("kapacitor", None)
        if kapacitor_urls and name in kapacitor_urls:
            dc["kapacitor"] = {"url": kapacitor_urls[name]}
        dc["influxdb"] = {"url": urls[name]}
        dc["agent_token_env"] = token_env(name)
        dcs[name] = dc
    regions = sorted({dc["region"] for dc in dcs.values()})
    central = dict(fleet["central"])
    central["influxdb"] = {"url": urls["central"]}
    central["coordinator_url"], *replicas = (*spec.other_replicas, coordinator_url)
    if replicas:
        central["coordinator_replicas"] = replicas
    central["ledger_url"] = spec.ledger_url or f"sqlite:///{target / 'ledger.sqlite'}"
    central["reader_token_env"] = READER_ENV
    if spec.operator:
        central["operator_token_env"] = OPERATOR_ENV
    fleet.update(
        name="scenario",
        regions={r: fleet["regions"][r] for r in regions},
        dcs=dcs,
        central=central,
    )
    (target / "policies").mkdir(parents=True, exist_ok=True)
    (target / "fleet.yaml").write_text(yaml.safe_dump(fleet, sort_keys=False))
    for region in regions:
        policy = yaml.safe_load((REPO / "policies" / f"{region}.yaml").read_text())
        policy["raw"].update(spec.raw.get(region, {}))
        (target / "policies" / f"{region}.yaml").write_text(yaml.safe_dump(policy, sort_keys=False))
    shutil.copytree(REPO / "policies" / "schemas", target / "policies" / "schemas")
    (target / "tickscripts").mkdir()
    shutil.copy(REPO / "tickscripts" / "aggregation.tick.j2", target / "tickscripts")
    for name, lookback in LOOKBACK_WINDOWS.items():
        aggregation = yaml.safe_load((REPO / "tickscripts" / f"{name}.yaml").read_text())
        aggregation["window"] = f"{spec.window_s}s"
        aggregation["lookback"] = f"{spec.window_s * lookback}s"
        (target / "tickscripts" / f"{name}.yaml").write_text(
            yaml.safe_dump(aggregation, sort_keys=False)
        )
    return load_config(target)


def personal_keys(config: FederationConfig) -> set[str]:
    """Every personal-data key any region declares."""
    return {
        key
        for policy in config.policies.values()
        for measurement in policy.measurements.values()
        for key in measurement.personal_keys
    }


# --- traffic --------------------------------------------------------------------------------


class Traffic:
    """One DC's deterministic traffic over `[start_ns, end_ns)`, written in time order.

    Events can be held back (late events) and written later with `write_held`.
    """

    def __init__(
        self,
        config: FederationConfig,
        dc: str,
        start_ns: int,
        end_ns: int,
        *,
        per_second: int,
        seed: int,
        dead_letter: Path,
    ) -> None:
        count = per_second * (end_ns - start_ns) // SECOND
        self.config = config
        self.dc = dc
        self.events = generate_events(dc, start_ns, end_ns, count, seed=seed)
        self.dead_letter = dead_letter
        self.written = 0
        self._next = 0
        self._held: dict[int, dict[str, object]] = {}
        self._lock = threading.Lock()
        self._client = InfluxClient(config.dc(dc).influxdb.url)

    @staticmethod
    def time_ns(event: Mapping[str, object]) -> int:
        return int(str(event["ts"])) * 1_000_000

    def personal(self) -> set[str]:
        """Every personal value in this traffic (held-back events included)."""
        return personal_values(self.events, sorted(personal_keys(self.config)))

    def hold(self, start_ns: int, end_ns: int, every: int = 4) -> int:
        """Hold back every `every`-th event in `[start_ns, end_ns)` that is not written yet;
        return how many are held."""
        with self._lock:
            picked = [
                i
                for i in range(self._next, len(self.events))
                if start_ns <= self.time_ns(self.events[i]) < end_ns
            ][::every]
            for i in picked:
                self._held[i] = self.events[i]
            return len(picked)

    def write_until(self, t_ns: int) -> int:
        """Write every event before `t_ns` not written yet (held-back ones excepted)."""
        with self._lock:
            stop = self._next
            while stop < len(self.events) and self.time_ns(self.events[stop]) < t_ns:
                stop += 1
            batch = [self.events[i] for i in range(self._next, stop) if i not in self._held]
            self._next = stop
            return self._write(batch)

    def write_held(self, start_ns: int, end_ns: int) -> int:
        """Write the held-back events in `[start_ns, end_ns)` now (they arrive late)."""
        with self._lock:
            due = sorted(i for i, e in self._held.items() if start_ns <= self.time_ns(e) < end_ns)
            batch = [self._held.pop(i) for i in due]
            return self._write(batch)

    def end_at(self, t_ns: int) -> int:
        """End the traffic at `t_ns`: events from then on, held back or not, are never written
        (nor part of `personal()`); return how many were dropped. Every event written so far
        must be before `t_ns`."""
        with self._lock:
            kept = self._next
            while kept < len(self.events) and self.time_ns(self.events[kept]) < t_ns:
                kept += 1
            assert all(self.time_ns(e) < t_ns for e in self.events[: self._next]), "written"
            dropped = len(self.events) - kept
            del self.events[kept:]  # in time order: the held-back indexes below stay valid
            self._held = {i: e for i, e in self._held.items() if i < kept}
            return dropped

    def _write(self, batch: list[dict[str, object]]) -> int:
        if not batch:
            return 0
        summary = ingest(
            self.config,
            self.dc,
            io.BytesIO(to_json_lines(batch)),
            dead_letter=self.dead_letter,
            client=self._client,
        )
        if summary.points_written != len(batch):
            raise AssertionError(f"{self.dc}: ingest wrote {summary.points_written}/{len(batch)}")
        self.written += summary.points_written
        return summary.points_written

    def close(self) -> None:
        self._client.close()


class Feeder:
    """Writes each DC's traffic as real time passes, `lead_s` ahead of the clock."""

    def __init__(self, traffic: Iterable[Traffic], clock: Clock, lead_s: float = 0.3) -> None:
        self.traffic = list(traffic)
        self.clock = clock
        self.lead_ns = int(lead_s * SECOND)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="feeder", daemon=True)
        self.error: BaseException | None = None

    def start(self) -> None:
        self._feed()
        self._thread.start()

    def _feed(self) -> None:
        for t in self.traffic:
            t.write_until(self.clock.now_ns() + self.lead_ns)

    def _run(self) -> None:
        while not self._stop.wait(0.1):
            try:
                self._feed()
            except BaseException as exc:  # reported by stop(); the scenario fails there
                self.error = exc
                return

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(10)
        if self.error is not None:
            raise AssertionError(f"feeding traffic failed: {self.error!r}")


# --- the gateway tap ------------------------------------------------------------------------


def _basic_user(scope: Scope) -> str | None:
    for name, value in scope.get("headers", []):
        if name == b"authorization" and value[:6].lower() == b"basic ":
            try:
                decoded = base64.b64decode(value[6:], validate=True).decode()
            except (binascii.Error, UnicodeDecodeError):
                return None
            return decoded.partition(":")[0]
    return None


class SummariesHold:
    """Arms the tap: the next accepted summaries batch of `dc` runs `action` before its answer."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._dc: str | None = None
        self._action: Callable[[], None] | None = None
        self._when: Callable[[], bool] | None = None
        self.fired = threading.Event()
        self.body = b""

    def arm(
        self, dc: str, action: Callable[[], None], when: Callable[[], bool] | None = None
    ) -> None:
        """Run `action` at the next summaries batch of `dc` (one for which `when` holds)."""
        with self._lock:
            self._dc, self._action, self._when = dc, action, when
            self.fired.clear()

    @property
    def armed(self) -> bool:
        return self._action is not None

    def take(self, dc: str | None, body: bytes) -> Callable[[], None] | None:
        """The action, once, for a summaries batch (no manifest in it) from the armed DC."""
        if b"federation_manifest" in body or not body.strip():
            return None
        with self._lock:
            if self._action is None or dc != self._dc:
                return None
            if self._when is not None and not self._when():
                return None
            action, self._action = self._action, None
            self.body = body
            return action


class GatewayTap:
    """An ASGI wrapper around the coordinator's app that runs a `SummariesHold` action after
    central stored a summaries batch and before the sender hears so, and answers 503 to the
    writes of the DCs (as basic-auth users: Kapacitor's `influxDBOut`) in `refusing`."""

    def __init__(self, app: ASGIApp, hold: SummariesHold, refusing: Collection[str] = ()) -> None:
        self.app = app
        self.hold = hold
        self.refusing = refusing

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if (
            scope["type"] == "http"
            and scope.get("path") == "/write"
            and _basic_user(scope) in self.refusing
        ):
            refused = JSONResponse({"error": "the gateway refuses writes (scenario)"}, 503)
            await refused(scope, receive, send)
            return
        if scope["type"] != "http" or scope.get("path") != "/write" or not self.hold.armed:
            await self.app(scope, receive, send)
            return
        dc = _basic_user(scope)
        chunks: list[bytes] = []

        async def tee() -> Message:
            message = await receive()
            if message["type"] == "http.request":
                chunks.append(message.get("body", b""))
            return message

        async def answer(message: Message) -> None:
            if message["type"] == "http.response.start" and message["status"] == 204:
                action = self.hold.take(dc, b"".join(chunks))
                if action is not None:
                    await asyncio.to_thread(action)
                    self.hold.fired.set()
            await send(message)

        await self.app(scope, tee, answer)


# --- the federation -------------------------------------------------------------------------


@dataclass
class RunningAgent:
    agent: Agent
    stop: threading.Event
    thread: threading.Thread


class ScenarioFederation:
    """Every process and object of one scenario's federation; `close` stops them all."""

    def __init__(
        self,
        root: Path,
        spec: ScenarioConfig | None = None,
        *,
        clock: Clock | None = None,
        settings: CoordinatorSettings = COORDINATOR_SETTINGS,
        kapacitord: str | None = None,
        central_via: Callable[[str], str] | None = None,
    ) -> None:
        set_tokens()
        self.central_via = central_via
        """Maps central influxd's URL to the one fleet.yaml names, which the coordinator writes
        to (a proxy in front of it); the checks read central directly."""
        self.kapacitord = kapacitord
        self.kapacitors: dict[str, KapacitorServer] = {}
        self.root = root
        self.spec = spec or ScenarioConfig()
        self.clock: Clock = clock or SystemClock()
        """The coordinator's clock, and by default every agent's and the traffic's."""
        self.settings = settings
        self.stack = LocalStack(root / "servers")
        self.config_dir = root / "config"
        self.port = free_port()
        self.hold = SummariesHold()
        self.refusing: set[str] = set()
        """DCs whose basic-auth writes (Kapacitor's) the gateway answers 503 to."""
        self.agents: dict[str, RunningAgent] = {}
        self.processes: dict[str, subprocess.Popen[bytes]] = {}
        self.traffic: dict[str, Traffic] = {}
        self._config: FederationConfig | None = None
        self._central: InfluxClient | None = None
        self.ledger: Ledger | None = None
        self.coordinator: Coordinator | None = None
        self.gateway: ThreadedServer | None = None
        self._scheduler: Any = None

    # -- accessors ----------------------------------------------------------------------------

    @property
    def config(self) -> FederationConfig:
        assert self._config is not None, "start() first"
        return self._config

    @property
    def central(self) -> InfluxClient:
        assert self._central is not None, "start() first"
        return self._central

    @property
    def window_ns(self) -> int:
        return self.spec.window_s * SECOND

    def influx(self, name: str) -> InfluxClient:
        """A new client for the influxd of a DC or of central (the caller closes it)."""
        return InfluxClient(self.stack.servers[name].url)

    # -- set-up -------------------------------------------------------------------------------

    def start(self, *, history_windows: int = 4, track_from_ns: int | None = None) -> int:
        """Start the influxd servers, apply the retention policies, prepare central and serve
        the coordinator with its jobs. Every window from `track_from_ns` (default: the window
        `history_windows` before now) is tracked; returns that first window's start."""
        urls = {name: self.stack.influxd(name).url for name in (*DCS, "central")}
        self.config_dir.mkdir(parents=True, exist_ok=True)
        coordinator_url = f"http://127.0.0.1:{self.port}"
        for dc in self.spec.kapacitor_dcs:
            self.kapacitors[dc] = self.start_kapacitord(dc, urls[dc], coordinator_url)
        kapacitor_urls = {dc: server.url for dc, server in self.kapacitors.items()}
        named = dict(urls)
        if self.central_via is not None:
            named["central"] = self.central_via(urls["central"])
        self._config = write_config(
            self.config_dir, named, coordinator_url, self.spec, kapacitor_urls
        )
        for outcome in apply_retention(self.config):
            if not outcome.ok:
                raise FederationError(f"policy apply failed on {outcome.target}: {outcome.error}")
        self._central = InfluxClient(urls["central"])
        ensure_central(self.config, self.central)
        if track_from_ns is None:
            track_from_ns = (
                aligned_now(self.clock, self.window_ns) - history_windows * self.window_ns
            )
        self.start_coordinator(track_from_ns=track_from_ns)
        return track_from_ns

    def start_kapacitord(self, dc: str, influx_url: str, gateway_url: str) -> KapacitorServer:
        """A real kapacitord for DC `dc` (the binary given at construction), its UDF a
        `udf_wrapper` that a test can break."""
        if self.kapacitord is None:
            raise AssertionError(f"{dc} runs Kapacitor, but no kapacitord binary was given")
        home = self.root / "kapacitor" / dc
        program, _switch = udf_wrapper(home)
        server = KapacitorServer(
            self.kapacitord, home, dc, influx_url, gateway_url, os.environ[token_env(dc)],
            str(program), udf_timeout=KAPACITOR_UDF_TIMEOUT,
        )  # fmt: skip
        server.start()
        return server

    def start_coordinator(self, *, track_from_ns: int | None = None) -> None:
        """Open the ledger, record the desired state, serve the gateway, start the jobs."""
        self.ledger = open_ledger(self.config.fleet.central.ledger_url)
        coordinator = Coordinator(
            self.config,
            self.ledger,
            load_tokens(self.config),
            clock=self.clock,
            settings=self.settings,
        )
        coordinator.sync(track_from_ns=track_from_ns)
        self.coordinator = coordinator
        hold, refusing = self.hold, self.refusing
        self.gateway = ThreadedServer(
            lambda: GatewayTap(build_app(coordinator), hold, refusing), self.port
        )
        self.gateway.start()
        self.start_jobs()

    def start_jobs(self) -> None:
        assert self.coordinator is not None
        self._scheduler = schedule_jobs(self.coordinator, self.central)

    def stop_jobs(self) -> None:
        if self._scheduler is not None:
            self._scheduler.shutdown(wait=True)
            self._scheduler = None

    def stop_coordinator(self) -> None:
        """Stop the jobs and the gateway and close the ledger (the file stays)."""
        self.stop_jobs()
        if self.gateway is not None:
            self.gateway.stop()
            self.gateway = None
        if self.ledger is not None:
            self.ledger.close()
            self.ledger = None
        self.coordinator = None

    def add_traffic(
        self, start_ns: int, end_ns: int, *, per_second: int = 250, seed: int = 12
    ) -> dict[str, Traffic]:
        """Deterministic traffic for every DC over `[start_ns, end_ns)` (not written yet)."""
        for i, dc in enumerate(DCS):
            self.traffic[dc] = Traffic(
                self.config,
                dc,
                start_ns,
                end_ns,
                per_second=per_second,
                seed=seed + i,
                dead_letter=self.root / f"{dc}.dead.jsonl",
            )
        return self.traffic

    def personal(self) -> set[str]:
        """Every personal value of every DC's traffic."""
        return set().union(*(t.personal() for t in self.traffic.values()))

    # -- agents -------------------------------------------------------------------------------

    def start_agent(
        self, dc: str, *, clock: Clock | None = None, settings: AgentSettings = AGENT_SETTINGS
    ) -> Agent:
        """Run DC `dc`'s agent in a thread (embedded executor, scenario timings)."""
        if dc in self.kapacitors:
            settings = dataclasses.replace(settings, mode="kapacitor")
        agent, stop = build_agent(self.config, dc, clock=clock or self.clock, settings=settings)
        assert agent.shipper is not None
        agent.shipper.retry = SHIP_RETRY
        agent.work = BackfillWork(RESULT_RETRY)
        thread = threading.Thread(target=_run_agent, args=(agent, stop), name=f"agent-{dc}", daemon=True)  # fmt: skip
        thread.start()
        self.agents[dc] = RunningAgent(agent, stop, thread)
        return agent

    def stop_agent(self, dc: str) -> None:
        """Stop DC `dc`'s agent thread (as SIGTERM would) and close its clients."""
        running = self.agents.pop(dc)
        running.stop.set()
        running.thread.join(30)
        running.agent.close()

    def start_agent_process(self, dc: str) -> subprocess.Popen[bytes]:
        """Run DC `dc`'s agent as a real `federation agent run` process."""
        command = [sys.executable, "-m", "federation.cli", "-v", "agent", "run", "--dc", dc,
                   "--mode", "embedded", "--config", str(self.config_dir), "--poll-interval", "0.25"]  # fmt: skip
        with (self.root / f"agent-{dc}.log").open("ab") as out:
            process = subprocess.Popen(
                command, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                env=os.environ.copy(), cwd=self.root,
            )  # fmt: skip
        self.processes[dc] = process
        return process

    def kill_agent_process(self, dc: str) -> None:
        """SIGKILL DC `dc`'s agent process and reap it."""
        process = self.processes.pop(dc)
        process.send_signal(signal.SIGKILL)
        process.wait(10)

    def stop_agents(self) -> None:
        """Stop every agent: threads by their stop event, processes by SIGTERM."""
        for dc in list(self.agents):
            self.stop_agent(dc)
        for dc, process in list(self.processes.items()):
            process.send_signal(signal.SIGTERM)
            try:
                process.wait(15)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait(5)
            del self.processes[dc]

    def freeze(self) -> None:
        """Stop the agents (and kapacitord), let the coordinator verify what they shipped last,
        then stop its jobs, so the checks read a state that holds still. The InfluxDB servers
        and the ledger stay up."""
        self.stop_agents()
        for server in self.kapacitors.values():
            server.kill()  # its tasks would go on shipping the look-back
        if self.coordinator is not None:
            if self.kapacitors:  # its tasks ship on their own: a write may be in flight at the kill
                self.wait_for_last_shipments()
            run_verification(self.coordinator, self.central)
        self.stop_jobs()

    def wait_for_last_shipments(self, quiet_s: float = 1.0, timeout_s: float = 15.0) -> None:
        """Wait until the ledger has taken no shipment for `quiet_s`: one sent just before its
        sender stopped can still be going through the gateway (waiting for its DC's turn), and
        would otherwise land after the last verification."""
        assert self.ledger is not None
        deadline = time.monotonic() + timeout_s

        def shipments() -> tuple[int, int | None, int | None]:
            """Windows shipped, the latest shipment and run: what only a shipment changes (the
            planner adds the rows of windows still expected all the while)."""
            assert self.ledger is not None
            with self.ledger.session() as session:
                count, shipped, run = session.execute(
                    select(
                        func.count(WindowRow.shipped_ns),
                        func.max(WindowRow.shipped_ns),
                        func.max(WindowRow.run),
                    )
                ).one()
            return count, shipped, run

        seen = shipments()
        while time.monotonic() < deadline:
            time.sleep(quiet_s)
            now = shipments()
            if now == seen:
                return
            seen = now

    def close(self) -> None:
        """Stop agents, coordinator and servers; the temporary directory is pytest's."""
        with contextlib.suppress(Exception):
            self.stop_agents()
        self.stop_coordinator()
        for traffic in self.traffic.values():
            traffic.close()
        if self._central is not None:
            self._central.close()
        for server in self.kapacitors.values():
            server.kill()  # nothing to keep; a clean stop waits for every UDF process
        self.stack.close()

    # -- the real CLI -------------------------------------------------------------------------

    def cli(self, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        """Run `federation ARGS --config <scenario config>` as an operator would."""
        result = subprocess.run(
            [sys.executable, "-m", "federation.cli", *args, "--config", str(self.config_dir)],
            capture_output=True, text=True, env=os.environ.copy(), cwd=self.root, timeout=60,
        )  # fmt: skip
        if check and result.returncode != 0:
            raise AssertionError(
                f"federation {' '.join(args)} exited {result.returncode}: {result.stderr}"
            )
        return result


def _run_agent(agent: Agent, stop: threading.Event) -> None:
    try:
        agent.run(stop)
    except FederationError as exc:
        log.error("agent %s stopped: %s", agent.dc, exc)


# --- time -----------------------------------------------------------------------------------


def aligned_now(clock: Clock, window_ns: int) -> int:
    """The start of the window holding the clock's now."""
    now = clock.now_ns()
    return now - now % window_ns


def sleep_until(clock: Clock, t_ns: int) -> None:
    """Sleep (real time) until `clock` reads `t_ns`."""
    while (left := t_ns - clock.now_ns()) > 0:
        time.sleep(min(left / SECOND, 0.2))


def wait_for(predicate: Callable[[], bool], timeout_s: float, what: str) -> None:
    """Poll `predicate` until it holds; AssertionError naming `what` after `timeout_s`."""
    deadline = time.monotonic() + timeout_s
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout_s:.0f}s waiting for {what}")
        time.sleep(0.2)


# --- window states -------------------------------------------------------------------------

DONE = ("verified", "empty")
LOST = "unrecoverable"

Key = tuple[str, str, int]
"""(dc, aggregation, window start)."""


def ledger_states(fed: ScenarioFederation, since_ns: int, until_ns: int) -> dict[Key, str]:
    """The ledger's state of every window row in `[since, until)`."""
    assert fed.ledger is not None
    with fed.ledger.session() as session:
        rows = session.execute(
            select(WindowRow.dc, WindowRow.aggregation, WindowRow.start_ns, WindowRow.state).where(
                WindowRow.start_ns >= since_ns, WindowRow.start_ns < until_ns
            )
        ).all()
    return {(dc, agg, start): state for dc, agg, start, state in rows}


def window_row(fed: ScenarioFederation, key: Key) -> WindowRow | None:
    """The ledger row of one window (detached), or None."""
    dc, aggregation, start = key
    assert fed.ledger is not None
    with fed.ledger.session() as session:
        return session.scalars(
            select(WindowRow).where(
                WindowRow.dc == dc,
                WindowRow.aggregation == aggregation,
                WindowRow.start_ns == start,
            )
        ).one_or_none()


def all_done(
    fed: ScenarioFederation,
    since_ns: int,
    until_ns: int,
    *,
    lost: Mapping[str, tuple[int, int]] | None = None,
) -> bool:
    """Whether every window of the range ended verified or empty (or may be lost, and is)."""
    states = ledger_states(fed, since_ns, until_ns)
    for key in expected_keys(fed, since_ns, until_ns):
        state = states.get(key)
        if state in DONE or (state == LOST and may_be_lost(key, lost)):
            continue
        return False
    return True


def expected_keys(fed: ScenarioFederation, since_ns: int, until_ns: int) -> list[Key]:
    w = fed.window_ns
    return [
        (dc, aggregation, start)
        for dc in DCS
        for aggregation in sorted(fed.config.aggregations)
        for start in range(since_ns, until_ns, w)
    ]


def may_be_lost(key: Key, lost: Mapping[str, tuple[int, int]] | None) -> bool:
    if not lost or key[0] not in lost:
        return False
    low, high = lost[key[0]]
    return low <= key[2] < high


def wait_done(
    fed: ScenarioFederation,
    since_ns: int,
    until_ns: int,
    timeout_s: float,
    *,
    lost: Mapping[str, tuple[int, int]] | Callable[[], Mapping[str, tuple[int, int]]] | None = None,
) -> None:
    """Wait until every window of the range is verified or empty (or lost where allowed:
    `lost` may be a callable, asked again at every poll); AssertionError listing the windows
    still open after `timeout_s`."""
    deadline = time.monotonic() + timeout_s

    def allowed() -> Mapping[str, tuple[int, int]] | None:
        return lost() if callable(lost) else lost

    while not all_done(fed, since_ns, until_ns, lost=allowed()):
        if time.monotonic() > deadline:
            states = ledger_states(fed, since_ns, until_ns)
            open_ = [
                f"{dc}/{agg} {format_rfc3339(start)}: {states.get((dc, agg, start), 'no row')}"
                for dc, agg, start in expected_keys(fed, since_ns, until_ns)
                if states.get((dc, agg, start)) not in DONE
                and not (
                    states.get((dc, agg, start)) == LOST
                    and may_be_lost((dc, agg, start), allowed())
                )
            ]
            raise AssertionError(
                f"after {timeout_s:.0f}s, {len(open_)} window(s) open: {open_[:12]}"
            )
        time.sleep(0.25)


EMPTY_WINDOWS = 2
"""Windows after the traffic ends that the checks cover too: they end `empty`."""


@dataclass
class LiveRun:
    """A scenario on the real clock: a few windows of traffic written up front (the recent
    past), then traffic written as time passes until `end_ns`; checked over
    `[start_ns, until_ns)`."""

    fed: ScenarioFederation
    start_ns: int
    end_ns: int
    feeder: Feeder
    began_ns: int
    """The start of the window that held now when the traffic began."""

    @classmethod
    def begin(
        cls,
        fed: ScenarioFederation,
        *,
        history_windows: int = 4,
        traffic_windows: int = 10,
        per_second: int = 250,
        hold: Mapping[str, Iterable[int]] | None = None,
    ) -> LiveRun:
        """Start the federation (not its agents) and the traffic.

        `hold` maps a DC to windows (counted from the one holding now: negative in the
        history, positive in the traffic to come) of which a quarter of the events are held
        back, for `Traffic.write_held` to deliver late.
        """
        start = fed.start(history_windows=history_windows)
        now = aligned_now(fed.clock, fed.window_ns)
        end = now + traffic_windows * fed.window_ns
        fed.add_traffic(start, end, per_second=per_second)
        for dc, windows in (hold or {}).items():
            for k in windows:
                held_from = now + k * fed.window_ns
                assert fed.traffic[dc].hold(held_from, held_from + fed.window_ns) > 0
        feeder = Feeder(fed.traffic.values(), fed.clock)
        feeder.start()
        return cls(fed, start, end, feeder, now)

    @property
    def until_ns(self) -> int:
        return self.end_ns + EMPTY_WINDOWS * self.fed.window_ns

    def end_traffic(self, windows: int) -> None:
        """End the traffic `windows` windows from the one now (at its planned end, if that is
        sooner): a scenario whose fault is over need not wait out traffic planned generously
        for a slow start. The checks then cover up to the new end."""
        end = self.window_from_now(windows)
        assert end > self.fed.clock.now_ns() + self.feeder.lead_ns, "end at least a window on"
        if end >= self.end_ns:
            return
        self.end_ns = end
        for traffic in self.fed.traffic.values():
            traffic.end_at(end)

    def window_from_now(self, windows: int) -> int:
        """The start of the window `windows` after the one now."""
        return aligned_now(self.fed.clock, self.fed.window_ns) + windows * self.fed.window_ns

    def finish(
        self, timeout_s: float = 30.0, *, lost: Mapping[str, tuple[int, int]] | None = None
    ) -> None:
        """Let the traffic end, wait until every window is done, then freeze the federation."""
        sleep_until(self.fed.clock, self.end_ns)
        self.feeder.stop()
        wait_done(self.fed, self.start_ns, self.until_ns, timeout_s, lost=lost)
        self.fed.freeze()
