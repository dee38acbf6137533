"""Several coordinator replicas over one ledger: config generations, shrink grants, heartbeats.

A replica holds two things in memory that the ledger alone does not give it per request: the
config it loaded (retention served to agents, the aggregations it knows) and the gateway's plan
rules. Whatever changes them through one replica — a reload, a rollout step — is recorded as a
new row of `config_generations` (its number, the config directory's digest, why); every replica
polls the newest row every few seconds and catches up when it moved: it reloads the config
directory when the digest differs from the one it runs, and rebuilds its plan rules and shrink
grants from the ledger in every case. Shrink grants live in the ledger (`shrink_grants`), so a
grant given through one replica is served by all of them and survives a restart.

Each replica upserts a heartbeat row (`replicas`) naming the generation it runs, whether it is
draining, and why it could not catch up (its config directory differs from the generation's);
`federation status` lists them.

Generation numbers come from the database's auto-increment key, so two replicas recording a
change at once get two distinct generations, and each replica converges on the newest.
"""

from __future__ import annotations

import hashlib
import os
import socket
from collections.abc import Mapping
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from sqlalchemy import delete, select

from federation.coordinator.ledger import (
    ConfigGenerationRow,
    Ledger,
    ReplicaRow,
    ShrinkGrantRow,
    upsert,
)
from federation.policy.retention import DesiredRetention

SECOND = 10**9

REPLICA_STALE_NS = 30 * SECOND
"""A replica whose heartbeat is older than this is shown as not seen (stopped or cut off)."""

CONFIG_PARTS = ("fleet.yaml", "policies", "tickscripts")
"""What of a config directory the loader reads, and so what its digest covers."""


def config_digest(root: Path) -> str:
    """A SHA-256 over every file of the config directory the loader reads (names and bytes), in
    name order: two replicas with the same digest run the same config."""
    digest = hashlib.sha256()
    paths: list[Path] = []
    for part in CONFIG_PARTS:
        path = root / part
        if path.is_file():
            paths.append(path)
        elif path.is_dir():
            paths.extend(p for p in path.rglob("*") if p.is_file() and "__pycache__" not in p.parts)
    for path in sorted(paths):
        digest.update(path.relative_to(root).as_posix().encode() + b"\0")
        digest.update(hashlib.sha256(path.read_bytes()).digest())
    return digest.hexdigest()


def default_replica_name(port: int | None = None) -> str:
    """`host:port` when serving on a port, else `host:pid`: unique per process on a host."""
    return f"{socket.gethostname()}:{port if port is not None else os.getpid()}"


@dataclass(frozen=True)
class Generation:
    """The newest change of desired state recorded in the ledger."""

    number: int
    digest: str
    reason: str
    replica: str
    created_ns: int


def latest_generation(ledger: Ledger) -> Generation | None:
    """The newest generation, or None on a ledger no replica has recorded one in."""
    with ledger.session() as session:
        row = session.scalars(
            select(ConfigGenerationRow).order_by(ConfigGenerationRow.generation.desc()).limit(1)
        ).first()
        if row is None:
            return None
        return Generation(row.generation, row.digest, row.reason, row.replica, row.created_ns)


def record_generation(
    ledger: Ledger,
    *,
    digest: str,
    reason: str,
    replica: str,
    now_ns: int,
    grants: Mapping[str, DesiredRetention] | None = None,
) -> int:
    """Record one change of desired state (and the shrink grants it gives, replacing any
    earlier grant of those DCs) in one transaction; returns its generation number."""
    with ledger.session(write=True) as session:
        row = ConfigGenerationRow(digest=digest, reason=reason, replica=replica, created_ns=now_ns)
        session.add(row)
        session.flush()
        if grants:
            upsert(
                session,
                ShrinkGrantRow.__table__,  # type: ignore[arg-type]
                [
                    {
                        "dc": dc,
                        "retention": grant.as_dict(),
                        "generation": row.generation,
                        "granted_ns": now_ns,
                    }
                    for dc, grant in sorted(grants.items())
                ],
                key=("dc",),
                update=("retention", "generation", "granted_ns"),
            )
        return row.generation


def shrink_grants(ledger: Ledger) -> dict[str, DesiredRetention]:
    """Every DC's shrink grant, as recorded."""
    with ledger.session() as session:
        return {
            row.dc: DesiredRetention.from_dict(row.retention)
            for row in session.scalars(select(ShrinkGrantRow))
        }


@dataclass(frozen=True)
class ReplicaStatus:
    """One replica as its last heartbeat described it."""

    name: str
    url: str | None
    generation: int | None
    state: str
    problem: str | None
    started_ns: int
    heartbeat_ns: int

    def as_dict(self) -> dict[str, Any]:
        """Plain JSON-ready data."""
        return asdict(self)


def heartbeat(ledger: Ledger, status: ReplicaStatus, digest: str | None) -> None:
    """Upsert the heartbeat row of one replica."""
    row = status.as_dict() | {"digest": digest}
    with ledger.session(write=True) as session:
        upsert(
            session,
            ReplicaRow.__table__,  # type: ignore[arg-type]
            row,
            key=("name",),
            update=tuple(k for k in row if k not in ("name", "started_ns")),
        )


def forget_replica(ledger: Ledger, name: str) -> None:
    """Remove a replica's heartbeat row (it stopped cleanly)."""
    with ledger.session(write=True) as session:
        session.execute(delete(ReplicaRow).where(ReplicaRow.name == name))


def replica_statuses(session: Any) -> tuple[list[ReplicaStatus], int | None]:
    """Every replica's last heartbeat (by name) and the newest generation, in one session."""
    rows = session.scalars(select(ReplicaRow).order_by(ReplicaRow.name)).all()
    newest = session.scalar(
        select(ConfigGenerationRow.generation)
        .order_by(ConfigGenerationRow.generation.desc())
        .limit(1)
    )
    return [
        ReplicaStatus(r.name, r.url, r.generation, r.state, r.problem, r.started_ns, r.heartbeat_ns)
        for r in rows
    ], newest


__all__ = [
    "REPLICA_STALE_NS",
    "Generation",
    "ReplicaStatus",
    "config_digest",
    "default_replica_name",
    "forget_replica",
    "heartbeat",
    "latest_generation",
    "record_generation",
    "replica_statuses",
    "shrink_grants",
]
