"""The coordinator's ledger: SQLAlchemy models, engine and session helpers, Alembic upgrades.

The ledger is the coordinator's only state (DCs, plan versions and their rollout, windows,
backfill requests), so gateways, planners and verifiers may run as several processes against one
database. SQLite is the default (a file in WAL mode, foreign keys on); PostgreSQL is supported by
URL. Expected windows are never materialised up front: each (dc, aggregation) has a tracking row
whose start and watermark let every expected window be derived by arithmetic, and a `windows`
row is inserted only when a window ships, goes missing or is otherwise classified.

Write transactions on SQLite start with `BEGIN IMMEDIATE`, so two writers serialise at the start
of a transaction instead of failing half-way. On PostgreSQL every transaction is READ COMMITTED
and rows that are claimed are read with `FOR UPDATE SKIP LOCKED`: each statement sees what
others committed before it, and a row another transaction holds is skipped rather than waited
for (under REPEATABLE READ or SERIALIZABLE the same code would fail with serialization errors
instead). Migrations take a lock of their own on both, so coordinators starting together
upgrade the ledger once.
"""

from __future__ import annotations

import sqlite3
import time
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from sqlalchemy import (
    JSON,
    BigInteger,
    Boolean,
    ColumnElement,
    ForeignKey,
    Index,
    Integer,
    MetaData,
    String,
    Table,
    Text,
    UniqueConstraint,
    and_,
    create_engine,
    event,
    or_,
)
from sqlalchemy.engine import Connection, Engine, make_url
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.orm import DeclarativeBase, Mapped, Session, mapped_column, sessionmaker

from federation.errors import FederationError

SQLITE_BUSY_TIMEOUT_S = 30
"""How long a SQLite ledger connection waits for another's lock before it gives up."""

MIGRATIONS_DIR = Path(__file__).resolve().parent.parent.parent / "migrations"
"""The Alembic script directory (`migrations/` at the repository root)."""

# An auto-incrementing 64-bit key: SQLite only auto-increments INTEGER PRIMARY KEY.
Id = BigInteger().with_variant(Integer(), "sqlite")


class LedgerError(FederationError):
    """The ledger cannot be opened, migrated or queried; names the database (without password)."""


class Base(DeclarativeBase):
    metadata = MetaData(
        naming_convention={
            "ix": "ix_%(table_name)s_%(column_0_N_name)s",
            "uq": "uq_%(table_name)s_%(column_0_N_name)s",
            "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
            "pk": "pk_%(table_name)s",
            "ck": "ck_%(table_name)s_%(constraint_name)s",
        }
    )


class DcRow(Base):
    """A DC as the coordinator knows it: its region and what its agent last reported."""

    __tablename__ = "dcs"

    name: Mapped[str] = mapped_column(String(64), primary_key=True)
    region: Mapped[str] = mapped_column(String(64))
    last_seen_ns: Mapped[int | None] = mapped_column(BigInteger)
    mode: Mapped[str | None] = mapped_column(String(16))
    agent_version: Mapped[str | None] = mapped_column(String(64))
    last_report: Mapped[dict[str, Any] | None] = mapped_column(JSON)


class PlanVersionRow(Base):
    """Every plan version the coordinator has ever desired for a (dc, aggregation)."""

    __tablename__ = "plan_versions"
    __table_args__ = (UniqueConstraint("dc", "aggregation", "version"),)

    id: Mapped[int] = mapped_column(Id, primary_key=True, autoincrement=True)
    dc: Mapped[str] = mapped_column(ForeignKey("dcs.name", ondelete="CASCADE"))
    aggregation: Mapped[str] = mapped_column(String(128))
    version: Mapped[str] = mapped_column(String(64))
    plan: Mapped[dict[str, Any]] = mapped_column(JSON)
    created_ns: Mapped[int] = mapped_column(BigInteger)


class DeploymentRow(Base):
    """Where a (dc, aggregation) stands in a rollout: desired, previous and running versions.

    A desired version of None means the DC's agent runs nothing of the aggregation: one added
    to the config and not rolled out to this DC yet, or one removed and rolled out.
    """

    __tablename__ = "deployments"

    dc: Mapped[str] = mapped_column(ForeignKey("dcs.name", ondelete="CASCADE"), primary_key=True)
    aggregation: Mapped[str] = mapped_column(String(128), primary_key=True)
    desired_version: Mapped[str | None] = mapped_column(String(64))
    previous_version: Mapped[str | None] = mapped_column(String(64))
    running_version: Mapped[str | None] = mapped_column(String(64))
    healthy: Mapped[bool | None] = mapped_column(Boolean)
    detail: Mapped[str | None] = mapped_column(Text)
    changed_ns: Mapped[int] = mapped_column(BigInteger)
    reported_ns: Mapped[int | None] = mapped_column(BigInteger)


class RolloutRow(Base):
    """One rollout: the version moves it made (dc, aggregation, from, to; None for "nothing")
    and how far it got: `canary` (only the canary moved), `advanced` (every DC of its scope
    moved) or `rolled_back`."""

    __tablename__ = "rollouts"

    id: Mapped[int] = mapped_column(Id, primary_key=True, autoincrement=True)
    state: Mapped[str] = mapped_column(String(16))
    canary: Mapped[str | None] = mapped_column(String(64))
    scope: Mapped[dict[str, Any]] = mapped_column(JSON)
    moves: Mapped[list[dict[str, Any]]] = mapped_column(JSON)
    started_ns: Mapped[int] = mapped_column(BigInteger)
    updated_ns: Mapped[int] = mapped_column(BigInteger)


class TrackingRow(Base):
    """Per (dc, aggregation): which windows are expected, without a row for each.

    Every window of `window_ns` starting at or after `start_ns` (and before `end_ns`, once the
    aggregation was removed from the DC) is expected. Every expected window starting before
    `watermark_ns` has a `windows` row (the planner inserts `missing` or `unrecoverable` rows as
    it moves the watermark past each window's deadline).
    """

    __tablename__ = "tracking"

    dc: Mapped[str] = mapped_column(ForeignKey("dcs.name", ondelete="CASCADE"), primary_key=True)
    aggregation: Mapped[str] = mapped_column(String(128), primary_key=True)
    window_ns: Mapped[int] = mapped_column(BigInteger)
    start_ns: Mapped[int] = mapped_column(BigInteger)
    watermark_ns: Mapped[int] = mapped_column(BigInteger)
    end_ns: Mapped[int | None] = mapped_column(BigInteger)


def same_tracking() -> ColumnElement[bool]:
    """Joins a window row to the tracking row of its (dc, aggregation)."""
    return and_(TrackingRow.dc == WindowRow.dc, TrackingRow.aggregation == WindowRow.aggregation)


def tracked_window() -> ColumnElement[bool]:
    """Whether a window row (joined to its tracking row) lies in the range that tracking row
    expects: from its start, until the aggregation was removed from the DC."""
    return and_(
        WindowRow.start_ns >= TrackingRow.start_ns,
        or_(TrackingRow.end_ns.is_(None), WindowRow.start_ns < TrackingRow.end_ns),
    )


class BackfillRow(Base):
    """A request for a DC's agent to recompute and re-ship `[start_ns, end_ns)`."""

    __tablename__ = "backfills"
    __table_args__ = (
        Index(None, "dc", "state"),
        Index(None, "state", "next_attempt_ns"),
    )

    id: Mapped[int] = mapped_column(Id, primary_key=True, autoincrement=True)
    dc: Mapped[str] = mapped_column(ForeignKey("dcs.name", ondelete="CASCADE"))
    aggregation: Mapped[str] = mapped_column(String(128))
    version: Mapped[str | None] = mapped_column(String(64))
    start_ns: Mapped[int] = mapped_column(BigInteger)
    end_ns: Mapped[int] = mapped_column(BigInteger)
    state: Mapped[str] = mapped_column(String(16))
    origin: Mapped[str] = mapped_column(String(16))
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    next_attempt_ns: Mapped[int | None] = mapped_column(BigInteger)
    lease_expires_ns: Mapped[int | None] = mapped_column(BigInteger)
    windows_reported: Mapped[int | None] = mapped_column(Integer)
    error: Mapped[str | None] = mapped_column(Text)
    created_ns: Mapped[int] = mapped_column(BigInteger)
    updated_ns: Mapped[int] = mapped_column(BigInteger)


class WindowRow(Base):
    """One classified window of one (dc, aggregation)."""

    __tablename__ = "windows"
    __table_args__ = (
        UniqueConstraint("dc", "aggregation", "start_ns"),
        # The status query reads one aggregation over a time range; the planner and the
        # verifier read the few rows in a given state.
        Index(None, "aggregation", "start_ns"),
        Index(None, "state", "dc", "aggregation", "start_ns"),
    )

    id: Mapped[int] = mapped_column(Id, primary_key=True, autoincrement=True)
    dc: Mapped[str] = mapped_column(ForeignKey("dcs.name", ondelete="CASCADE"))
    aggregation: Mapped[str] = mapped_column(String(128))
    start_ns: Mapped[int] = mapped_column(BigInteger)
    state: Mapped[str] = mapped_column(String(16))
    version: Mapped[str | None] = mapped_column(String(64))
    run: Mapped[int | None] = mapped_column(BigInteger)
    events: Mapped[int | None] = mapped_column(BigInteger)
    groups: Mapped[int | None] = mapped_column(BigInteger)
    suppressed_events: Mapped[int | None] = mapped_column(BigInteger)
    personal_value_events: Mapped[int | None] = mapped_column(BigInteger)
    """Part of `suppressed_events`: groups withheld for a personal-looking dimension value."""
    summary_count: Mapped[int | None] = mapped_column(BigInteger)
    reason: Mapped[str | None] = mapped_column(Text)
    backfill_id: Mapped[int | None] = mapped_column(ForeignKey("backfills.id", ondelete="SET NULL"))
    shipped_ns: Mapped[int | None] = mapped_column(BigInteger)
    verified_ns: Mapped[int | None] = mapped_column(BigInteger)
    updated_ns: Mapped[int] = mapped_column(BigInteger)
    refusal: Mapped[str | None] = mapped_column(Text)
    """The gateway's last refusal of a shipment of this window, until a shipment is accepted."""
    refused_ns: Mapped[int | None] = mapped_column(BigInteger)
    findings: Mapped[int | None] = mapped_column(BigInteger)
    """A detection window's findings as central's count point says, set when it is verified
    (None for an aggregation's window): only the number, never a finding."""


class ConfigGenerationRow(Base):
    """One change of desired state taken through some replica: a reload (the config directory's
    digest changed) or a rollout step. Replicas poll the newest row and catch up with it."""

    __tablename__ = "config_generations"

    generation: Mapped[int] = mapped_column(Id, primary_key=True, autoincrement=True)
    digest: Mapped[str] = mapped_column(String(64))
    reason: Mapped[str] = mapped_column(String(64))
    replica: Mapped[str] = mapped_column(String(255))
    created_ns: Mapped[int] = mapped_column(BigInteger)


class ShrinkGrantRow(Base):
    """An operator's permission for a DC's agent to shrink its raw retention to exactly the
    retention recorded here (a `DesiredRetention` as data); it lapses when the config declares
    another one."""

    __tablename__ = "shrink_grants"

    dc: Mapped[str] = mapped_column(ForeignKey("dcs.name", ondelete="CASCADE"), primary_key=True)
    retention: Mapped[dict[str, Any]] = mapped_column(JSON)
    generation: Mapped[int] = mapped_column(BigInteger)
    granted_ns: Mapped[int] = mapped_column(BigInteger)


class ReplicaRow(Base):
    """A coordinator process serving over this ledger, and the generation it runs."""

    __tablename__ = "replicas"

    name: Mapped[str] = mapped_column(String(255), primary_key=True)
    url: Mapped[str | None] = mapped_column(String(255))
    generation: Mapped[int | None] = mapped_column(BigInteger)
    digest: Mapped[str | None] = mapped_column(String(64))
    state: Mapped[str] = mapped_column(String(16))
    problem: Mapped[str | None] = mapped_column(Text)
    started_ns: Mapped[int] = mapped_column(BigInteger)
    heartbeat_ns: Mapped[int] = mapped_column(BigInteger)


def windows_table() -> Table:
    """The `windows` table object, for bulk Core statements."""
    return WindowRow.__table__  # type: ignore[return-value]


def safe_url(url: str) -> str:
    """The URL with any password hidden, for messages."""
    try:
        return make_url(url).render_as_string(hide_password=True)
    except Exception:
        return "<invalid ledger URL>"


def _switch_to_wal(cursor: Any) -> None:
    """Put the database in WAL mode (once per database; a no-op after that).

    The switch from rollback mode needs an exclusive lock. When connections that meet a new
    database together switch it at once, they can deadlock, and SQLite then answers one of them
    `database is locked` at once instead of waiting on its busy timeout. The loser tries again
    until the busy timeout is spent; by then the winner has switched, or it never will.
    """
    deadline = time.monotonic() + SQLITE_BUSY_TIMEOUT_S
    pause = 0.001
    while True:
        try:
            cursor.execute("PRAGMA journal_mode=WAL")
            return
        except sqlite3.OperationalError as exc:
            if "locked" not in str(exc) or time.monotonic() + pause > deadline:
                raise
        time.sleep(pause)
        pause = min(pause * 2, 0.1)


def _sqlite_setup(engine: Engine) -> None:
    @event.listens_for(engine, "connect")
    def _on_connect(dbapi_connection: Any, _record: Any) -> None:
        # Take transaction control away from the driver so that `begin` below decides
        # between BEGIN and BEGIN IMMEDIATE.
        dbapi_connection.isolation_level = None
        cursor = dbapi_connection.cursor()
        _switch_to_wal(cursor)
        cursor.execute("PRAGMA foreign_keys=ON")
        cursor.execute("PRAGMA synchronous=NORMAL")
        cursor.close()

    @event.listens_for(engine, "begin")
    def _on_begin(conn: Connection) -> None:
        immediate = conn.get_execution_options().get("ledger_write", False)
        conn.exec_driver_sql("BEGIN IMMEDIATE" if immediate else "BEGIN")


def create_ledger_engine(url: str, **pool: int) -> Engine:
    """An Engine for the ledger at `url`; SQLite connections get WAL, foreign keys and a busy
    timeout, and write transactions there begin IMMEDIATE; PostgreSQL ones are READ COMMITTED,
    pooled as `pool` says (`pool_size`, `max_overflow`) or SQLAlchemy's default."""
    try:
        parsed = make_url(url)
    except SQLAlchemyError as exc:
        raise LedgerError(f"invalid ledger URL: {exc}") from None
    if parsed.get_backend_name() == "sqlite":
        engine = create_engine(
            url, connect_args={"timeout": SQLITE_BUSY_TIMEOUT_S, "check_same_thread": False}
        )
        _sqlite_setup(engine)
        return engine
    # Pinned rather than inherited: a server whose default isolation is stricter would turn
    # the planner's and the agents' claims into serialization failures.
    return create_engine(url, pool_pre_ping=True, isolation_level="READ COMMITTED", **pool)


class Ledger:
    """An open ledger: an engine and two kinds of session (read, write)."""

    def __init__(self, url: str, engine: Engine | None = None) -> None:
        self.url = url
        self.engine = engine if engine is not None else create_ledger_engine(url)
        self._read = sessionmaker(self.engine, expire_on_commit=False)
        self._write = sessionmaker(
            self.engine.execution_options(ledger_write=True), expire_on_commit=False
        )

    @property
    def dialect(self) -> str:
        """`sqlite` or `postgresql`."""
        return self.engine.dialect.name

    @contextmanager
    def session(self, *, write: bool = False) -> Iterator[Session]:
        """A session in one transaction, committed on success and rolled back on an error.

        `write=True` marks a transaction that will write: on SQLite it takes the write lock at
        its start, so concurrent writers queue instead of failing with `database is locked`.
        """
        maker = self._write if write else self._read
        with maker.begin() as session:
            yield session

    def close(self) -> None:
        """Release every pooled connection."""
        self.engine.dispose()

    def __enter__(self) -> Ledger:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def upsert(
    session: Session,
    table: Table,
    rows: Sequence[Mapping[str, Any]] | Mapping[str, Any],
    key: Sequence[str],
    update: Sequence[str],
    where: Any = None,
) -> None:
    """INSERT … ON CONFLICT (key) DO UPDATE SET the `update` columns from the new row.

    Works on SQLite and PostgreSQL alike; `where` (an expression over the table and the
    statement's `excluded` row, given as a callable of the insert statement) limits the update.
    With no `update` columns a conflicting row is left alone.
    """
    dialect = session.get_bind().dialect.name
    if dialect == "sqlite":
        from sqlalchemy.dialects.sqlite import insert as sqlite_insert

        stmt: Any = sqlite_insert(table)
    elif dialect == "postgresql":
        from sqlalchemy.dialects.postgresql import insert as pg_insert

        stmt = pg_insert(table)
    else:  # pragma: no cover - only the two supported dialects reach here
        raise LedgerError(f"unsupported ledger database {dialect!r}")
    if not update:
        stmt = stmt.on_conflict_do_nothing(index_elements=list(key))
    else:
        condition = where(stmt) if callable(where) else where
        stmt = stmt.on_conflict_do_update(
            index_elements=list(key),
            set_={name: stmt.excluded[name] for name in update},
            where=condition,
        )
    session.execute(stmt, list(rows) if not isinstance(rows, Mapping) else [rows])


# --- Alembic ------------------------------------------------------------------------------------


def alembic_config(url: str) -> Any:
    """The Alembic Config for the ledger at `url`, pointing at `migrations/`."""
    from alembic.config import Config

    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS_DIR))
    config.set_main_option("sqlalchemy.url", url.replace("%", "%%"))
    return config


def upgrade_ledger(url: str, revision: str = "head") -> None:
    """Bring the ledger at `url` to `revision` (default: the newest); idempotent.

    Raises LedgerError naming the database if it cannot be reached or a migration fails.
    """
    from alembic import command

    try:
        command.upgrade(alembic_config(url), revision)
    except SQLAlchemyError as exc:
        raise LedgerError(
            f"ledger {safe_url(url)}: migration failed: {exc.__class__.__name__}: {exc}"
        ) from None


def downgrade_ledger(url: str, revision: str = "base") -> None:
    """Take the ledger at `url` back to `revision` (default: empty)."""
    from alembic import command

    command.downgrade(alembic_config(url), revision)


def ledger_revision(url: str) -> str | None:
    """The Alembic revision the ledger at `url` is at (None for an empty database)."""
    from alembic.runtime.migration import MigrationContext

    engine = create_ledger_engine(url)
    try:
        with engine.connect() as conn:
            return MigrationContext.configure(conn).get_current_revision()
    except SQLAlchemyError as exc:
        raise LedgerError(f"ledger {safe_url(url)}: cannot read its revision: {exc}") from None
    finally:
        engine.dispose()


def head_revision() -> str:
    """The newest revision in `migrations/`."""
    from alembic.script import ScriptDirectory

    head = ScriptDirectory.from_config(alembic_config("sqlite://")).get_current_head()
    if head is None:  # pragma: no cover - the project ships at least one revision
        raise LedgerError("migrations/ holds no revision")
    return head


def check_ledger(url: str) -> None:
    """Check that the ledger at `url` exists and is at the newest revision, without creating or
    changing anything; LedgerError in one line otherwise (what read-only tools check first)."""
    try:
        parsed = make_url(url)
    except Exception as exc:  # SQLAlchemy raises several types for a bad URL
        raise LedgerError(f"ledger URL {safe_url(url)!r} is not a database URL: {exc}") from None
    path = parsed.database or ""
    on_disk = parsed.get_backend_name() == "sqlite" and path not in ("", ":memory:")
    if on_disk and not path.startswith("file:") and not Path(path).is_file():
        raise LedgerError(
            f"ledger {safe_url(url)} does not exist: start the coordinator once to create it "
            "(or point --ledger/--ledger-url at an existing ledger)"
        )
    current = ledger_revision(url)
    if current != head_revision():
        raise LedgerError(
            f"ledger {safe_url(url)} is at revision {current or 'none (empty)'}, "
            f"not {head_revision()}: start the coordinator once to upgrade it"
        )


def open_ledger(url: str, *, upgrade: bool = True) -> Ledger:
    """Open the ledger at `url`, first upgrading it to head unless `upgrade` is False.

    With `upgrade=False` the ledger must already be at head (LedgerError otherwise), which is
    what read-only tools (status) check.
    """
    if upgrade:
        upgrade_ledger(url)
    else:
        check_ledger(url)
    return Ledger(url)
