"""Alembic environment for the coordinator ledger.

The database URL comes from the Alembic config (`federation.coordinator.ledger.alembic_config`
sets it); a caller may instead pass an open connection in `config.attributes["connection"]`.
SQLite runs migrations in batch mode, since it cannot alter most constraints in place.

A run is one transaction that first takes the ledger's migration lock (SQLite: the write lock,
`BEGIN IMMEDIATE`; PostgreSQL: a transaction-level advisory lock) and only then reads the
current revision, so coordinators that start together against an empty ledger create it once:
the others wait, then find it at head.
"""

from __future__ import annotations

from alembic import context
from sqlalchemy import text
from sqlalchemy.engine import Connection

from federation.coordinator.ledger import Base, create_ledger_engine

target_metadata = Base.metadata

MIGRATION_LOCK = 0x6665645F6C656467
"""The PostgreSQL advisory lock key that migrations hold (the bytes of "fed_ledg")."""


def _migrate(connection: Connection) -> None:
    context.configure(
        connection=connection,
        target_metadata=target_metadata,
        render_as_batch=connection.dialect.name == "sqlite",
        compare_type=True,
    )
    with context.begin_transaction():
        context.run_migrations()


def _run(connection: Connection) -> None:
    if connection.in_transaction():
        # The caller's transaction, and the caller's locking.
        _migrate(connection)
        return
    if connection.dialect.name == "sqlite":
        # `create_ledger_engine` begins such a connection's transactions IMMEDIATE.
        connection.execution_options(ledger_write=True)
    with connection.begin():
        if connection.dialect.name == "postgresql":
            connection.execute(text("SELECT pg_advisory_xact_lock(:key)"), {"key": MIGRATION_LOCK})
        _migrate(connection)


def run_migrations_offline() -> None:
    context.configure(
        url=context.config.get_main_option("sqlalchemy.url"),
        target_metadata=target_metadata,
        literal_binds=True,
        render_as_batch=True,
    )
    with context.begin_transaction():
        context.run_migrations()


def run_migrations_online() -> None:
    connection = context.config.attributes.get("connection")
    if connection is not None:
        _run(connection)
        return
    url = context.config.get_main_option("sqlalchemy.url")
    assert url is not None
    engine = create_ledger_engine(url)
    try:
        with engine.connect() as conn:
            _run(conn)
    finally:
        engine.dispose()


if context.is_offline_mode():
    run_migrations_offline()
else:
    run_migrations_online()
