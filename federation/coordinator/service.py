"""What the coordinator's HTTP handlers and jobs share: config, ledger, clock, tokens, metrics.

Nothing here holds state that matters across restarts: the ledger does. What a replica caches
(the config it loaded, the gateway's plan rules, the shrink grants) belongs to one config
generation recorded in the ledger (`replicas.py`): a change taken through this replica records a
new generation (`publish`), and `adopt` catches up with one another replica recorded. The plan
rules are also refreshed every few seconds on their own, so several replicas agree without
talking to each other.
"""

from __future__ import annotations

import base64
import binascii
import hmac
import os
import threading
from collections.abc import Mapping
from dataclasses import dataclass, field

from federation.config import FederationConfig
from federation.coordinator.clocks import MAX_CLOCK_SKEW_NS, AgentClocks
from federation.coordinator.desired import known_plans, sync_desired
from federation.coordinator.gateway.counters import GatewayMetrics
from federation.coordinator.gateway.rules import GatewayChecker
from federation.coordinator.ledger import Ledger
from federation.coordinator.planner import PlannerSettings
from federation.coordinator.replicas import (
    ReplicaStatus,
    config_digest,
    default_replica_name,
    heartbeat,
    latest_generation,
    record_generation,
    shrink_grants,
)
from federation.core.clock import Clock, SystemClock
from federation.errors import FederationError
from federation.policy.retention import DesiredRetention, desired_retention

SECOND = 10**9


class MissingTokens(FederationError):
    """Environment variables named in fleet.yaml for tokens are not set."""


@dataclass(frozen=True)
class Tokens:
    """The secrets the coordinator checks: one agent token per DC, a reader token, and the
    operator token (None when fleet.yaml names none: the operator endpoints are disabled)."""

    agents: Mapping[str, str]
    reader: str | None = None
    operator: str | None = None

    def dc_for_token(self, token: str) -> str | None:
        """The DC whose agent token this is (constant-time per comparison), or None."""
        found = None
        for dc, secret in self.agents.items():
            if _matches(secret, token):
                found = dc
        return found

    def check_dc(self, dc: str, token: str) -> bool:
        """Whether `token` is the agent token of `dc`."""
        return _matches(self.agents.get(dc), token)

    def check_reader(self, token: str) -> bool:
        """Whether `token` is the reader token."""
        return _matches(self.reader, token)

    def check_operator(self, token: str) -> bool:
        """Whether `token` is the operator token (False when none is configured)."""
        return _matches(self.operator, token)


def _matches(secret: str | None, token: str) -> bool:
    """Whether `token` is `secret`, compared in constant time; never for an unset secret."""
    return bool(secret) and hmac.compare_digest(str(secret).encode(), token.encode())


def load_tokens(config: FederationConfig, environ: Mapping[str, str] | None = None) -> Tokens:
    """Read every token from the environment variables fleet.yaml names.

    Raises MissingTokens naming each variable that is not set: a DC without a token could never
    ship, and starting anyway would hide the mistake.
    """
    env = os.environ if environ is None else environ
    agents: dict[str, str] = {}
    missing = []
    for name, dc in sorted(config.fleet.dcs.items()):
        value = env.get(dc.agent_token_env)
        if value:
            agents[name] = value
        else:
            missing.append(dc.agent_token_env)
    reader = env.get(config.fleet.central.reader_token_env)
    if not reader:
        missing.append(config.fleet.central.reader_token_env)
    operator = None
    operator_env = config.fleet.central.operator_token_env
    if operator_env is not None:
        operator = env.get(operator_env)
        if not operator:
            missing.append(operator_env)
    if missing:
        raise MissingTokens("token environment variables not set: " + ", ".join(missing))
    return Tokens(agents, reader, operator)


def parse_basic(header_value: str) -> tuple[str, str] | None:
    """(user, password) of an `Authorization: Basic …` value, or None if malformed."""
    try:
        decoded = base64.b64decode(header_value.strip(), validate=True).decode("utf-8")
    except (binascii.Error, UnicodeDecodeError, ValueError):
        return None
    user, sep, password = decoded.partition(":")
    return (user, password) if sep else None


@dataclass(frozen=True)
class CoordinatorSettings:
    """Tunables of one coordinator process."""

    max_body_bytes: int = 32 * 1024 * 1024
    planner: PlannerSettings = field(default_factory=PlannerSettings)
    planner_interval_s: float = 60.0
    verify_interval_s: float = 30.0
    verify_settle_ns: int = 10 * SECOND
    plan_refresh_ns: int = 10 * SECOND
    central_timeout_s: float = 30.0
    rollup_interval_s: float = 300.0
    max_clock_skew_ns: int = MAX_CLOCK_SKEW_NS
    """Agent clocks further off are reported, and bound what the gateway takes as ended."""
    generation_interval_s: float = 2.0
    """How often a replica looks for a newer config generation and writes its heartbeat."""
    drain_grace_s: float = 1.0
    """After SIGTERM, how long a replica goes on listening and answering every new request 503
    before it stops listening and finishes the requests it has (`draining`)."""


class Coordinator:
    """One coordinator process: the shared objects every handler and job uses."""

    def __init__(
        self,
        config: FederationConfig,
        ledger: Ledger,
        tokens: Tokens,
        *,
        clock: Clock | None = None,
        settings: CoordinatorSettings | None = None,
        replica: str | None = None,
        url: str | None = None,
    ) -> None:
        self.config = config
        self.ledger = ledger
        self.tokens = tokens
        self.clock: Clock = clock or SystemClock()
        self.settings = settings or CoordinatorSettings()
        self.metrics = GatewayMetrics()
        self.clocks = AgentClocks(ledger, self.settings.max_clock_skew_ns)
        self._checker: GatewayChecker | None = None
        self._checker_at = 0
        self._lock = threading.Lock()
        self.reload_lock = threading.Lock()
        self._shrink_grants: dict[str, DesiredRetention] = {}
        self.replica = replica or default_replica_name()
        self.url = url
        self.digest = config_digest(config.root)
        self.generation: int | None = None
        self.problem: str | None = None
        """Why this replica runs an older generation than the newest (None when it does not)."""
        self.draining = False
        self.started_ns = self.clock.now_ns()

    def sync(self, *, track_from_ns: int | None = None) -> None:
        """Record the config's desired state in the ledger and refresh the gateway's rules.

        The config becomes the newest generation unless the newest already has its digest
        (another replica runs the same config), which this replica then adopts."""
        sync_desired(self.ledger, self.config, self.clock.now_ns(), track_from_ns=track_from_ns)
        newest = latest_generation(self.ledger)
        if newest is not None and newest.digest == self.digest:
            self.adopt(newest.number)
        else:
            self.publish("start")

    def replace_config(self, config: FederationConfig, *, digest: str | None = None) -> None:
        """Record `config`'s desired state in the ledger, then serve it from now on (the caller
        records the generation: `publish`).

        Handlers read `self.config` per request, so each request sees one config whole.
        """
        sync_desired(self.ledger, config, self.clock.now_ns())
        self.config = config
        self.digest = digest or config_digest(config.root)
        self.refresh_plans()

    def publish(self, reason: str, *, allow_shrink: tuple[str, ...] = ()) -> int:
        """Record a change of desired state taken through this replica as a new generation
        (granting the DCs of `allow_shrink` a shrink to the retention the config declares now),
        and run it: every other replica catches up within `generation_interval_s`."""
        grants = {dc: desired_retention(self.config, dc) for dc in allow_shrink}
        number = record_generation(
            self.ledger,
            digest=self.digest,
            reason=reason,
            replica=self.replica,
            now_ns=self.clock.now_ns(),
            grants=grants,
        )
        self.adopt(number)
        self.beat()
        return number

    def adopt(self, generation: int, config: FederationConfig | None = None,
              digest: str | None = None) -> None:  # fmt: skip
        """Run `generation`: serve `config` (loaded from the digest the generation names) when
        given, and rebuild the plan rules and shrink grants from the ledger."""
        grants = shrink_grants(self.ledger)
        if config is not None:
            self.config = config
            self.digest = digest or config_digest(config.root)
        with self._lock:
            self._shrink_grants = grants
        self.refresh_plans()
        self.generation = generation
        self.problem = None

    def status(self) -> ReplicaStatus:
        """This replica as its heartbeat describes it."""
        return ReplicaStatus(
            name=self.replica,
            url=self.url,
            generation=self.generation,
            state="draining" if self.draining else "serving",
            problem=self.problem,
            started_ns=self.started_ns,
            heartbeat_ns=self.clock.now_ns(),
        )

    def beat(self) -> None:
        """Write this replica's heartbeat row."""
        heartbeat(self.ledger, self.status(), self.digest)

    def shrink_allowed(self, dc: str) -> bool:
        """Whether an operator granted `dc` a shrink to the retention the config declares now."""
        with self._lock:
            grant = self._shrink_grants.get(dc)
        return (
            grant is not None
            and dc in self.config.fleet.dcs
            and (grant == desired_retention(self.config, dc))
        )

    def refresh_plans(self) -> GatewayChecker:
        """Rebuild the gateway's rules from the plan versions the ledger knows."""
        checker = GatewayChecker(known_plans(self.ledger))
        with self._lock:
            self._checker = checker
            self._checker_at = self.clock.now_ns()
        return checker

    def checker(self) -> GatewayChecker:
        """The gateway's current rules, refreshed when older than `plan_refresh_ns`."""
        with self._lock:
            checker, at = self._checker, self._checker_at
        if checker is None or self.clock.now_ns() - at > self.settings.plan_refresh_ns:
            return self.refresh_plans()
        return checker

    def central_rp(self, dc: str) -> str:
        """The central retention policy the points of `dc` go to."""
        return self.config.policy_for(dc).central.retention_policy
