"""`federation demo`: a whole federation on this machine, from raw mail events to SLA reports.

It starts one real `influxd` per DC (across two or three regions) and one for central, applies
the regions' retention policies, serves the coordinator (gateway, agent API, ledger) on
loopback, ingests synthetic mail traffic with personal data into each DC, and runs one agent per
DC with the embedded executor. On the way it takes the gateway down so windows go missing and
shows the coordinator getting them backfilled, lets late events arrive and an operator request
a backfill for them, then shows the status grid, a daily percentile report, the worst
customers, the detections' findings (a compromised account in the first DC, a spam wave in the
second: printed from each DC's own InfluxDB, while central holds only their counts), the
compliance audit, and a full scan proving no personal data reached central.
"""

from __future__ import annotations

import io
import logging
import os
import secrets
import shlex
import shutil
import tempfile
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import yaml

from federation.agent.daemon import Agent, build_agent
from federation.agent.findings import list_findings
from federation.agent.modes import AgentSettings
from federation.config import FederationConfig, load_config
from federation.coordinator.api import build_app
from federation.coordinator.app import RollupJob, ensure_central, schedule_jobs
from federation.coordinator.backfills import request_backfill
from federation.coordinator.ledger import Ledger, open_ledger
from federation.coordinator.planner import PlannerSettings
from federation.coordinator.service import Coordinator, CoordinatorSettings, load_tokens
from federation.coordinator.status import StatusReport, status_report
from federation.core.clock import SystemClock, format_rfc3339
from federation.core.durations import HOUR_NS
from federation.core.windows import align
from federation.devstack.asgi_server import ThreadedServer
from federation.devstack.kapacitord import KapacitorServer, find_kapacitord
from federation.devstack.localstack import LocalStack
from federation.devstack.pii_scan import ScanResult, scan_central
from federation.devstack.processes import free_port
from federation.devstack.traffic import (
    COMPROMISED_SENDER,
    SPAM_RANGE,
    Incident,
    generate_events,
    incident_events,
    personal_values,
    split_late,
    to_json_lines,
)
from federation.errors import FederationError, InvalidInput
from federation.influx import InfluxClient
from federation.ingest import ingest
from federation.kapacitor.conf import federation_executable
from federation.policy.audit import audit
from federation.policy.audit_report import AuditReport
from federation.policy.retention import apply_retention
from federation.reporting.findings import detection_counts
from federation.reporting.reports import percentile_report, worst_report

log = logging.getLogger(__name__)

# DCs in the order the demo adds them: each new region first, so 3 DCs span 3 regions.
DEMO_DCS = ("dub1", "lon1", "tor1", "fra1", "van1")


class DemoView(Protocol):
    """Where the demo shows what happens (a rich console on a terminal; a list in tests)."""

    def step(self, message: str) -> None: ...
    def note(self, message: str) -> None: ...
    def status(self, title: str, report: StatusReport) -> None: ...
    def table(self, title: str, columns: Sequence[str], rows: Sequence[dict[str, Any]]) -> None: ...


@dataclass(frozen=True)
class DemoOptions:
    """How big a federation the demo runs, and for how long a stretch of traffic."""

    dcs: int = 3
    hours: int = 24
    events_per_hour: int = 20_000
    seed: int = 7
    late_share: float = 0.01
    outage_s: float = 3.0
    timeout_s: float = 240.0
    config_source: Path = Path(".")
    root: Path | None = None


@dataclass
class DemoOutcome:
    """What the demo ended with: the checks a newcomer (and its test) look at."""

    windows: dict[str, int] = field(default_factory=dict)
    all_done: bool = False
    audit: AuditReport | None = None
    scan: ScanResult | None = None
    events: int = 0
    late_events: int = 0
    seconds: float = 0.0
    urls: dict[str, str] = field(default_factory=dict)
    local_findings: dict[str, list[tuple[str, str]]] = field(default_factory=dict)
    """Per DC, (detection, key) of each finding it keeps: read inside the DC, never central."""
    central_findings: dict[str, int] = field(default_factory=dict)
    """Per DC, the findings central's count points add up to (numbers only)."""
    incidents_found: bool = False
    """Each DC's planted incident is among its own findings."""


def incidents(options: DemoOptions, dcs: Sequence[str], start_ns: int) -> dict[str, Incident]:
    """The demo's security incidents: a compromised account in the first DC, a spam wave in the
    second (if any), in the hours two thirds and three quarters into the traffic — sized to
    stand out at any traffic rate (`events_per_hour / 10` distinct senders per spam IP)."""
    found = {
        dcs[0]: Incident("compromised_account", start_ns + options.hours * 2 // 3 * HOUR_NS, 2_400)
    }
    if len(dcs) > 1:
        hour = start_ns + options.hours * 3 // 4 * HOUR_NS
        found[dcs[1]] = Incident("spam_wave", hour, max(600, options.events_per_hour // 10))
    return found


class DemoFederation:
    """Every process and object of a demo federation, started and stopped together."""

    def __init__(self, options: DemoOptions) -> None:
        if not 1 <= options.dcs <= len(DEMO_DCS):
            raise InvalidInput(f"--dcs {options.dcs}: must be between 1 and {len(DEMO_DCS)}")
        if options.hours < 6:
            raise InvalidInput(
                f"--hours {options.hours}: must be at least 6 (the look-back and a backfill)"
            )
        if options.events_per_hour < 1:
            raise InvalidInput(f"--events-per-hour {options.events_per_hour}: must be at least 1")
        self.options = options
        self.root = options.root or Path(tempfile.mkdtemp(prefix="federation-demo-"))
        self.dcs = list(DEMO_DCS[: options.dcs])
        self.stack = LocalStack(self.root / "servers")
        self.clock = SystemClock()
        self.agents: dict[str, tuple[Agent, threading.Event, threading.Thread]] = {}
        self.config: FederationConfig | None = None
        self.ledger: Ledger | None = None
        self.coordinator: Coordinator | None = None
        self.gateway: ThreadedServer | None = None
        self.central: InfluxClient | None = None
        self._scheduler: Any = None
        self.kapacitor: KapacitorServer | None = None

    # -- set-up -------------------------------------------------------------------------------

    def write_config(
        self,
        influx_urls: dict[str, str],
        coordinator_url: str,
        kapacitor_urls: dict[str, str] | None = None,
    ) -> FederationConfig:
        """A config directory for the local federation: the source config's policies and
        aggregations, a fleet of the demo's DCs on loopback, and fresh tokens in the env."""
        source = self.options.config_source
        target = self.root / "config"
        fleet = yaml.safe_load((source / "fleet.yaml").read_text())
        dcs = {name: fleet["dcs"][name] for name in self.dcs}
        regions = sorted({dc["region"] for dc in dcs.values()})
        (target / "policies").mkdir(parents=True, exist_ok=True)
        for region in regions:
            shutil.copy(source / "policies" / f"{region}.yaml", target / "policies")
        if (source / "policies" / "schemas").is_dir():
            shutil.copytree(source / "policies" / "schemas", target / "policies" / "schemas",
                            dirs_exist_ok=True)  # fmt: skip
        shutil.copytree(source / "tickscripts", target / "tickscripts", dirs_exist_ok=True)
        for name, dc in dcs.items():
            # Kapacitor only where the demo started one; the embedded executor everywhere else.
            dc.pop("kapacitor", None)
            if kapacitor_urls and name in kapacitor_urls:
                dc["kapacitor"] = {"url": kapacitor_urls[name]}
            dc["influxdb"] = {"url": influx_urls[name]}
            dc["agent_token_env"] = f"FEDERATION_DEMO_{name.upper()}_TOKEN"
            os.environ.setdefault(dc["agent_token_env"], secrets.token_urlsafe(18))
        central = fleet["central"]
        central["influxdb"] = {"url": influx_urls["central"]}
        central["coordinator_url"] = coordinator_url
        central["ledger_url"] = f"sqlite:///{self.root / 'ledger.sqlite'}"
        central["reader_token_env"] = "FEDERATION_DEMO_READER_TOKEN"
        os.environ.setdefault("FEDERATION_DEMO_READER_TOKEN", secrets.token_urlsafe(18))
        # The operator token too, so that `policy apply` and `rollout apply` go through it.
        central["operator_token_env"] = "FEDERATION_DEMO_OPERATOR_TOKEN"
        os.environ.setdefault("FEDERATION_DEMO_OPERATOR_TOKEN", secrets.token_urlsafe(18))
        fleet.update(
            name="demo",
            regions={r: fleet["regions"][r] for r in regions},
            dcs=dcs,
            central=central,
        )
        (target / "fleet.yaml").write_text(yaml.safe_dump(fleet, sort_keys=False))
        return load_config(target)

    def start(self, view: DemoView, data_start_ns: int) -> FederationConfig:
        """Start the servers, apply the policies and serve the coordinator."""
        view.step(f"starting influxd for {', '.join(self.dcs)} and central")
        urls = {name: self.stack.influxd(name).url for name in [*self.dcs, "central"]}
        port = free_port()
        kapacitor_urls = {}
        binary = find_kapacitord()
        if binary is not None:
            # FEDERATION_KAPACITORD names a real kapacitord: the first DC runs Kapacitor.
            dc = self.dcs[0]
            token_env = f"FEDERATION_DEMO_{dc.upper()}_TOKEN"
            os.environ.setdefault(token_env, secrets.token_urlsafe(18))
            self.kapacitor = KapacitorServer(
                binary, self.root / "servers" / f"kapacitor-{dc}", dc, urls[dc],
                f"http://127.0.0.1:{port}", os.environ[token_env], str(federation_executable()),
            )  # fmt: skip
            kapacitor_urls[dc] = self.kapacitor.url
        config = self.write_config(urls, f"http://127.0.0.1:{port}", kapacitor_urls)
        self.config = config
        view.step("applying each region's retention policies (policy apply --direct)")
        for outcome in apply_retention(config):
            if not outcome.ok:
                raise FederationError(f"policy apply failed on {outcome.target}: {outcome.error}")
        self.central = InfluxClient(urls["central"])
        ensure_central(config, self.central)
        self.ledger = open_ledger(config.fleet.central.ledger_url)
        settings = CoordinatorSettings(
            planner_interval_s=1.0,
            verify_interval_s=1.0,
            verify_settle_ns=0,
            rollup_interval_s=3600.0,
            planner=PlannerSettings(retry_base_ns=2 * 10**9, max_outstanding=8),
        )
        self.coordinator = Coordinator(
            config, self.ledger, load_tokens(config), clock=self.clock, settings=settings
        )
        # Track every window of the generated traffic, as if the coordinator had run all along.
        self.coordinator.sync(track_from_ns=data_start_ns)
        coordinator = self.coordinator
        self.gateway = ThreadedServer(lambda: build_app(coordinator), port)
        view.step(f"serving the coordinator and its gateway on {self.gateway.url}")
        self.gateway.start()
        if self.kapacitor is not None:
            view.step(
                f"starting kapacitord for {self.kapacitor.dc} (its agent deploys TICKscripts there)"
            )
            self.kapacitor.start()
        return config

    def start_jobs(self) -> None:
        """Start the coordinator's planner, verification and rollup jobs."""
        assert self.coordinator is not None and self.central is not None
        self._scheduler = schedule_jobs(self.coordinator, self.central)

    def start_agents(self, view: DemoView) -> None:
        """One agent per DC (embedded executor), each in its own thread."""
        assert self.config is not None
        settings = AgentSettings(poll_interval_s=0.5, reconcile_interval_s=60.0, mode="auto")
        for dc in self.dcs:
            agent, stop = build_agent(self.config, dc, settings=settings)
            thread = threading.Thread(target=self._run_agent, args=(agent, stop), name=f"agent-{dc}", daemon=True)  # fmt: skip
            thread.start()
            self.agents[dc] = (agent, stop, thread)
        modes = ", ".join(f"{dc}: {agent.mode.name}" for dc, (agent, _, _) in self.agents.items())
        view.step(f"started {len(self.agents)} agents ({modes})")

    @staticmethod
    def _run_agent(agent: Agent, stop: threading.Event) -> None:
        try:
            agent.run(stop)
        except FederationError as exc:
            log.error("agent %s stopped: %s", agent.dc, exc)

    def close(self) -> None:
        """Stop agents, coordinator and servers; remove the temporary directory."""
        for _agent, stop, _ in self.agents.values():
            stop.set()
        for agent, _, thread in self.agents.values():
            thread.join(30)
            agent.close()
        if self._scheduler is not None:
            self._scheduler.shutdown(wait=False)
        if self.kapacitor is not None:
            self.kapacitor.stop()
        if self.gateway is not None:
            self.gateway.stop()
        if self.central is not None:
            self.central.close()
        if self.ledger is not None:
            self.ledger.close()
        self.stack.close()
        if self.options.root is None:
            shutil.rmtree(self.root, ignore_errors=True)

    def write_env_file(self) -> Path:
        """Write `demo.env` beside the config: FEDERATION_CONFIG and every token variable the
        fleet names, as shell `export` lines, so that after `source demo.env` each command of
        the README runs against this federation. Readable by its owner only (it holds tokens)."""
        assert self.config is not None
        central = self.config.fleet.central
        names: list[str | None] = [dc.agent_token_env for dc in self.config.fleet.dcs.values()]
        names += [central.reader_token_env, central.operator_token_env]
        lines = [f"export FEDERATION_CONFIG={shlex.quote(str(self.root / 'config'))}"]
        lines += [
            f"export {name}={shlex.quote(os.environ[name])}"
            for name in dict.fromkeys(names)
            if name and name in os.environ
        ]
        path = self.root / "demo.env"
        path.touch(mode=0o600)
        path.write_text("\n".join(lines) + "\n")
        return path

    # -- what the demo looks at ---------------------------------------------------------------

    def status(self, since_ns: int) -> StatusReport:
        assert self.ledger is not None and self.config is not None
        return status_report(self.ledger, self.config, self.clock.now_ns(), since_ns=since_ns)


def _counts(report: StatusReport) -> dict[str, int]:
    totals: dict[str, int] = {}
    for agg in report.aggregations:
        for dc in agg.dcs:
            for state, n in dc.counts.items():
                totals[state] = totals.get(state, 0) + n
    return totals


def _wait_done(fed: DemoFederation, since_ns: int, deadline: float) -> StatusReport:
    """Wait until every window of the range is verified or empty (or the deadline passes)."""
    while True:
        report = fed.status(since_ns)
        counts = _counts(report)
        open_ = {s: n for s, n in counts.items() if s not in ("verified", "empty")}
        if not open_ or time.monotonic() > deadline:
            return report
        time.sleep(0.5)


def _wait_shipped(fed: DemoFederation, since_ns: int, count: int, deadline: float) -> None:
    """Wait until at least `count` windows have been shipped (whatever their state now)."""
    while time.monotonic() < deadline:
        counts = _counts(fed.status(since_ns))
        if sum(n for s, n in counts.items() if s not in ("expected", "missing")) >= count:
            return
        time.sleep(0.2)


def run_demo(
    options: DemoOptions, view: DemoView, *, keep: bool = False
) -> tuple[DemoOutcome, DemoFederation]:
    """Run the whole demo; return its outcome and the federation (closed unless `keep`)."""
    started = time.monotonic()
    deadline = started + options.timeout_s
    fed = DemoFederation(options)
    outcome = DemoOutcome()
    try:
        now = fed.clock.now_ns()
        end = align(now, HOUR_NS)
        start = end - options.hours * HOUR_NS
        config = fed.start(view, start)
        assert fed.ledger is not None and fed.central is not None
        outcome.urls = {"coordinator": config.fleet.central.coordinator_url,
                        **{dc: config.dc(dc).influxdb.url for dc in fed.dcs},
                        "central": config.fleet.central.influxdb.url}  # fmt: skip

        # Traffic: the on-time part now; a share of the last hours arrives late, below.
        view.step(f"ingesting {options.hours}h of mail traffic per DC "
                  f"(~{options.events_per_hour:,} events/hour, personal data included)")  # fmt: skip
        late: dict[str, list[dict[str, object]]] = {}
        secrets_seen: set[str] = set()
        personal = sorted({k for p in config.policies.values() for m in p.measurements.values() for k in m.personal_keys})  # fmt: skip
        planted = incidents(options, fed.dcs, start)
        for i, dc in enumerate(fed.dcs):
            events = generate_events(
                dc, start, end, options.events_per_hour * options.hours, seed=options.seed + i
            )
            if dc in planted:
                events = sorted(
                    [*events, *incident_events(dc, planted[dc])], key=lambda e: int(str(e["ts"]))
                )
            secrets_seen |= personal_values(events, personal)
            recent = [e for e in events if int(str(e["ts"])) * 1_000_000 >= end - 3 * HOUR_NS]
            older = events[: len(events) - len(recent)]
            on_time, late[dc] = split_late(recent, options.late_share, seed=options.seed)
            summary = ingest(
                config,
                dc,
                io.BytesIO(to_json_lines(older + on_time)),
                dead_letter=fed.root / f"{dc}.dead.jsonl",
            )
            outcome.events += summary.points_written
            view.note(f"{dc}: {summary.points_written:,} events written to its own InfluxDB "
                      f"({config.policy_for(dc).raw.retention_policy}), {sum(summary.dead_lettered.values())} dead-lettered")  # fmt: skip

        fed.start_agents(view)
        view.step(
            "agents ship the look-back of every aggregation and detection through the gateway"
        )
        windows = [(a.lookback, a.window) for a in config.aggregations.values()]
        windows += [(d.lookback, d.window) for d in config.detections.values()]
        lookback = sum(min(back // size, options.hours) for back, size in windows)
        _wait_shipped(fed, start, lookback * len(fed.dcs), deadline)

        view.step(f"taking the gateway down for {options.outage_s:.0f}s: nothing can be shipped")
        assert fed.gateway is not None
        fed.gateway.stop()
        # The coordinator's jobs keep running: windows past their deadline go missing.
        fed.start_jobs()
        for dc in fed.dcs:
            ingest(
                config,
                dc,
                io.BytesIO(to_json_lines(late[dc])),
                dead_letter=fed.root / f"{dc}.dead.jsonl",
            )
            outcome.late_events += len(late[dc])
        view.note(f"meanwhile {outcome.late_events} late events arrived for the last 3 hours")
        time.sleep(options.outage_s)
        view.status("windows during the outage", fed.status(start))
        fed.gateway.start()
        view.step("gateway back: agents pull the coordinator's backfill requests")

        view.step("an operator requests a backfill of the last 6 hours for the late events "
                  "(federation backfill)")  # fmt: skip
        for dc in fed.dcs:
            for aggregation in [*config.aggregations, *config.detections]:
                request_backfill(
                    fed.ledger, config, dc, aggregation, end - 6 * HOUR_NS, end, fed.clock.now_ns()
                )

        view.step("agents run the backfills; the coordinator verifies every window")
        report = _wait_done(fed, start, deadline)
        outcome.windows = _counts(report)
        outcome.all_done = all(s in ("verified", "empty") for s in outcome.windows)
        view.status("windows after the backfills", report)

        if fed.coordinator is not None:
            RollupJob(fed.coordinator, fed.central)()  # the coordinator's job, run once now
        first_day = format_rfc3339(start)[:10]
        last_day = format_rfc3339(end - 1)[:10]
        daily = percentile_report(
            config, fed.central, "delivery_latency", period="day", from_date=first_day,
            to_date=last_day, tz="UTC", by=("dc",), percentiles=(50, 95, 99), ledger=fed.ledger.engine,
        )  # fmt: skip
        view.table(
            f"daily latency percentiles per DC, UTC days (merged histograms; plan version "
            f"{', '.join(sorted({r.version for r in daily.rows}))}; a day the traffic only "
            "partly covers is flagged incomplete)",
            ["period", "dc", "events", "p50", "p95", "p99", "error", "suppressed", "complete"],
            daily.table_rows(),
        )
        worst = worst_report(config, fed.central, "delivery_latency", last_ns=24 * HOUR_NS,
                             now_ns=end, by=("customer",), top=5, metric="p99")  # fmt: skip
        view.table("worst customers, last 24h (p99)", worst.columns(), worst.table_rows())

        show_findings(fed, view, outcome, start, end)

        view.step("compliance audit (policy audit)")
        outcome.audit = audit(config)
        for violation in outcome.audit.violations:
            view.note(f"VIOLATION {violation}")
        view.note(
            "audit clean"
            if outcome.audit.ok
            else f"audit: {len(outcome.audit.violations)} violation(s)"
        )

        view.step("scanning all of central for personal data")
        outcome.scan = scan_central(fed.central, config.fleet.central.database,
                                    personal_keys=personal, personal_values=secrets_seen)  # fmt: skip
        scan = outcome.scan
        view.note(f"{scan.measurements} measurements, {scan.keys_checked} keys and "
                  f"{scan.values_checked:,} values read; {len(secrets_seen):,} generated personal "
                  f"values looked for; found: {len(scan.findings)}")  # fmt: skip
        for finding in scan.findings[:10]:
            view.note(f"FOUND {finding}")
        outcome.seconds = time.monotonic() - started
    except BaseException:
        # Whatever stopped the demo (an error, Ctrl-C, a signal turned into SystemExit), every
        # process it started stops with it, --keep or not.
        fed.close()
        raise
    if not keep:
        fed.close()
    return outcome, fed


def show_findings(
    fed: DemoFederation, view: DemoView, outcome: DemoOutcome, start: int, end: int
) -> None:
    """Each DC's findings, read from its own InfluxDB — personal data, which in production only
    that DC's security team sees, in that region — and central's table: counts only."""
    assert fed.config is not None and fed.central is not None
    view.step("detections: each DC's findings, read inside that DC (they never leave it)")
    for dc in fed.dcs:
        found = list_findings(fed.config, dc, since_ns=start)
        outcome.local_findings[dc] = [(f.detection, f.key) for f in found]
        title = f"LOCAL TO {dc}: findings kept in {dc}'s own InfluxDB (personal data, never sent to central)"
        if not found:
            view.note(f"{dc}: no findings (local to {dc})")
            continue
        view.table(
            title,
            ["window", "detection", "key", "count", "threshold"],
            [f.as_dict() for f in found],
        )
    planted = incidents(fed.options, fed.dcs, start)
    outcome.incidents_found = all(
        any(key == COMPROMISED_SENDER or key.startswith(SPAM_RANGE + ".")
            for _, key in outcome.local_findings[dc])
        for dc in planted
    )  # fmt: skip
    counts = detection_counts(fed.config, fed.central, start, end, dcs=fed.dcs)
    rows = [
        {
            "dc": dc,
            "detection": detection,
            "windows": c.windows,
            "keys": c.keys,
            "findings": c.findings,
        }
        for (dc, detection), c in sorted(counts.items())
    ]
    for (dc, _), c in counts.items():
        outcome.central_findings[dc] = outcome.central_findings.get(dc, 0) + c.findings
    view.table(
        "central: detection counts per DC (no key, no value of one)",
        ["dc", "detection", "windows", "keys", "findings"],
        rows,
    )
