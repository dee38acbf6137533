"""Running the coordinator: preflight, scheduled jobs (planner, verification), uvicorn.

`run_coordinator` starts in three steps: the config is already loaded and validated by the
caller; preflight checks central InfluxDB answers, brings the ledger to the Alembic head, reads
the tokens and makes sure central's database and retention policies exist; then it records the
desired state (a config generation other replicas over the same ledger catch up with),
schedules the jobs and serves. A failed preflight raises one `PreflightError`
whose message is one line.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping
from dataclasses import dataclass

from apscheduler.schedulers.background import BackgroundScheduler  # type: ignore[import-untyped]
from sqlalchemy import select

from federation.config import FederationConfig
from federation.coordinator.api import build_app
from federation.coordinator.draining import serve
from federation.coordinator.ledger import Ledger, LedgerError, WindowRow, open_ledger, safe_url
from federation.coordinator.planner import PlannerResult, plan_backfills
from federation.coordinator.reload import follow_generation
from federation.coordinator.replicas import default_replica_name, forget_replica
from federation.coordinator.service import (
    Coordinator,
    CoordinatorSettings,
    MissingTokens,
    Tokens,
    load_tokens,
)
from federation.coordinator.tracking import VerifyResult, WindowState, verify_shipped
from federation.core.clock import Clock, SystemClock
from federation.core.durations import format_influx_duration
from federation.core.influxql import quote_ident
from federation.errors import FederationError, InfluxError, PreflightError
from federation.influx import InfluxClient, credentials_from_env
from federation.reporting.monthly import refresh_rollups

log = logging.getLogger(__name__)


def central_client(config: FederationConfig, url: str | None = None) -> InfluxClient:
    """A client for central InfluxDB (credentials from the environment variables it names)."""
    central = config.fleet.central.influxdb
    return InfluxClient(url or central.url, auth=credentials_from_env(central), timeout=30.0)


def ensure_central(config: FederationConfig, client: InfluxClient) -> None:
    """Create central's database and one retention policy per region's aggregate retention.

    Idempotent; existing policies are left as they are (changing them is a policy decision).
    """
    database = config.fleet.central.database
    client.create_database(database)
    existing = {rp.name for rp in client.retention_policies(database)}
    for policy in sorted(config.policies.values(), key=lambda p: p.central.retention_policy):
        name = policy.central.retention_policy
        if name in existing:
            continue
        client.execute(
            f"CREATE RETENTION POLICY {quote_ident(name)} ON {quote_ident(database)} "
            f"DURATION {format_influx_duration(policy.central.retention)} REPLICATION 1 "
            f"SHARD DURATION {format_influx_duration(policy.central.shard_duration)}"
        )
        existing.add(name)


@dataclass(frozen=True)
class Preflight:
    """What preflight established: the open ledger and the tokens."""

    ledger: Ledger
    tokens: Tokens
    central_version: str


def preflight(
    config: FederationConfig,
    *,
    ledger_url: str | None = None,
    central_url: str | None = None,
    environ: Mapping[str, str] | None = None,
) -> Preflight:
    """Check central answers, upgrade the ledger to head, read tokens, prepare central.

    Raises PreflightError with a one-line message naming what failed.
    """
    url = ledger_url or config.fleet.central.ledger_url
    try:
        tokens = load_tokens(config, environ)
    except MissingTokens as exc:
        raise PreflightError(f"preflight: {exc}") from None
    try:
        with central_client(config, central_url) as client:
            version = client.ping()
            ensure_central(config, client)
    except InfluxError as exc:
        raise PreflightError(f"preflight: central InfluxDB: {exc}") from None
    try:
        ledger = open_ledger(url)
    except LedgerError as exc:
        raise PreflightError(f"preflight: {exc}") from None
    except Exception as exc:
        raise PreflightError(
            f"preflight: ledger {safe_url(url)}: {exc.__class__.__name__}: {exc}"
        ) from None
    return Preflight(ledger, tokens, version)


def run_planner(coordinator: Coordinator) -> PlannerResult:
    """One planner pass at the coordinator's clock."""
    return plan_backfills(
        coordinator.ledger,
        coordinator.config,
        coordinator.clock.now_ns(),
        coordinator.settings.planner,
    )


def run_verification(coordinator: Coordinator, central: InfluxClient) -> VerifyResult:
    """One verification pass at the coordinator's clock."""
    return verify_shipped(
        coordinator.ledger,
        coordinator.config,
        central,
        coordinator.clock.now_ns(),
        settle_ns=coordinator.settings.verify_settle_ns,
    )


class RollupJob:
    """Re-merges the daily rollups under every window verified since its previous pass.

    Holds only a watermark: after a restart it looks back `initial_lookback_ns`, and re-merging
    a day twice is harmless (a rollup is rebuilt from the windows central holds).
    """

    def __init__(self, coordinator: Coordinator, central: InfluxClient, *,
                 initial_lookback_ns: int = 2 * 86_400 * 10**9) -> None:  # fmt: skip
        self.coordinator = coordinator
        self.central = central
        self.since_ns = coordinator.clock.now_ns() - initial_lookback_ns

    def __call__(self) -> int:
        """One pass; returns how many windows it found changed."""
        now = self.coordinator.clock.now_ns()
        with self.coordinator.ledger.session() as session:
            rows = session.execute(
                select(WindowRow.aggregation, WindowRow.dc, WindowRow.start_ns).where(
                    WindowRow.verified_ns > self.since_ns,
                    WindowRow.state.in_([WindowState.VERIFIED.value, WindowState.EMPTY.value]),
                )
            ).all()
        changed: dict[str, list[tuple[str, int]]] = {}
        for aggregation, dc, start_ns in rows:
            changed.setdefault(aggregation, []).append((dc, start_ns))
        for aggregation, windows in changed.items():
            if aggregation in self.coordinator.config.aggregations:
                refresh_rollups(self.coordinator.config, self.central, aggregation, windows)
        self.since_ns = now
        return len(rows)


def schedule_jobs(coordinator: Coordinator, central: InfluxClient) -> BackgroundScheduler:
    """Start the planner, verification and rollup jobs and the replica's generation check and
    heartbeat (each never overlaps itself)."""
    scheduler = BackgroundScheduler(timezone="UTC")

    def guarded(name: str, job: Callable[[], object]) -> Callable[[], None]:
        def run() -> None:
            try:
                job()
            except FederationError as exc:
                log.error("%s job failed: %s", name, exc)
            except Exception:
                log.exception("%s job failed", name)

        return run

    settings = coordinator.settings
    jobs: list[tuple[str, Callable[[], object], float]] = [
        ("planner", lambda: run_planner(coordinator), settings.planner_interval_s),
        (
            "verification",
            lambda: run_verification(coordinator, central),
            settings.verify_interval_s,
        ),
        ("rollups", RollupJob(coordinator, central), settings.rollup_interval_s),
        ("generation", lambda: follow_generation(coordinator), settings.generation_interval_s),
    ]
    for name, job, interval_s in jobs:
        scheduler.add_job(
            guarded(name, job),
            "interval",
            seconds=interval_s,
            id=name,
            max_instances=1,
            coalesce=True,
        )
    scheduler.start()
    return scheduler


def run_coordinator(
    config: FederationConfig,
    *,
    host: str = "127.0.0.1",
    port: int = 8086,
    ledger_url: str | None = None,
    central_url: str | None = None,
    clock: Clock | None = None,
    settings: CoordinatorSettings | None = None,
    environ: Mapping[str, str] | None = None,
    announce: Callable[[str], None] | None = None,
) -> None:
    """Preflight, record desired state, schedule the jobs and serve until interrupted.

    `announce` gets one line saying where it serves, once preflight has passed (the CLI
    prints it; by default it is logged)."""
    ready = preflight(config, ledger_url=ledger_url, central_url=central_url, environ=environ)
    coordinator = Coordinator(
        config,
        ready.ledger,
        ready.tokens,
        clock=clock or SystemClock(),
        settings=settings,
        replica=default_replica_name(port),
        url=f"http://{host}:{port}",
    )
    coordinator.sync()
    coordinator.beat()
    central = central_client(config, central_url)
    scheduler = schedule_jobs(coordinator, central)
    app = build_app(coordinator, central_url=central_url)
    (announce or log.info)(
        f"coordinator serving on http://{host}:{port} (ledger {safe_url(ready.ledger.url)}, "
        f"central InfluxDB {ready.central_version}); Ctrl-C or SIGTERM drains and stops it"
    )
    try:
        serve(app, coordinator, host=host, port=port)
    finally:
        scheduler.shutdown(wait=False)
        central.close()
        try:
            forget_replica(ready.ledger, coordinator.replica)
        except Exception as exc:  # the ledger may be unreachable as we stop; its row then ages
            log.warning("could not remove this replica's heartbeat: %s", exc)
        ready.ledger.close()
