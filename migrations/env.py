"""Alembic environment for the coordinator ledger.

The database URL comes from the Alembic config (`federation.coordinator.ledger.alembic_config`
sets it); a caller may instead pass an open connection in `config.attributes["connection"]`.
SQLite runs migrations in batch mode, since it cannot alter most constraints in place.
"""

from __future__ import annotations

from alembic import context
from sqlalchemy.engine import Connection

from federation.coordinator.ledger import Base, create_ledger_engine

target_metadata = Base.metadata


def _run(connection: Connection) -> None:
    context.configure(
        connection=connection,
        target_metadata=target_metadata,
        render_as_batch=connection.dialect.name == "sqlite",
        compare_type=True,
    )
    with context.begin_transaction():
        context.run_migrations()


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
