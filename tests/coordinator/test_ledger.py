"""The ledger's schema: migrations up and down, and no drift between models and migrations."""

from __future__ import annotations

import threading
from pathlib import Path

import pytest
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from sqlalchemy import Engine, inspect, text

from federation.coordinator.ledger import (
    Base,
    LedgerError,
    create_ledger_engine,
    downgrade_ledger,
    head_revision,
    ledger_revision,
    open_ledger,
    upgrade_ledger,
)


def _url(tmp_path: Path) -> str:
    return f"sqlite:///{tmp_path / 'ledger.sqlite'}"


def test_upgrade_to_head_matches_the_models_and_downgrades_to_empty(ledger_url: str) -> None:
    url = ledger_url
    upgrade_ledger(url)
    assert ledger_revision(url) == head_revision()
    engine = create_ledger_engine(url)
    try:
        with engine.connect() as conn:
            context = MigrationContext.configure(conn, opts={"compare_type": True})
            assert compare_metadata(context, Base.metadata) == []
            tables = set(inspect(conn).get_table_names())
        assert {"dcs", "plan_versions", "deployments", "tracking", "windows", "backfills"} <= tables
    finally:
        engine.dispose()
    downgrade_ledger(url)
    engine = create_ledger_engine(url)
    try:
        with engine.connect() as conn:
            assert set(inspect(conn).get_table_names()) <= {"alembic_version"}
    finally:
        engine.dispose()
    upgrade_ledger(url)
    assert ledger_revision(url) == head_revision()


def test_sqlite_ledger_runs_in_wal_mode_with_foreign_keys(tmp_path: Path) -> None:
    with open_ledger(_url(tmp_path)) as ledger, ledger.session() as session:
        assert session.execute(text("PRAGMA journal_mode")).scalar() == "wal"
        assert session.execute(text("PRAGMA foreign_keys")).scalar() == 1


def test_connections_that_first_meet_a_new_sqlite_ledger_together_all_switch_it_to_wal(
    tmp_path: Path,
) -> None:
    # Each connection switches a new database from rollback mode to WAL. Two switches at once
    # can deadlock, and SQLite then answers one of them "database is locked" at once, without
    # waiting on its busy timeout: every connection must still open.
    errors: list[BaseException] = []
    modes: list[str] = []
    for round_ in range(15):
        url = f"sqlite:///{tmp_path / f'ledger-{round_}.sqlite'}"
        engines = [create_ledger_engine(url) for _ in range(6)]
        start = threading.Barrier(len(engines))

        def connect(engine: Engine, start: threading.Barrier = start) -> None:
            try:
                start.wait(30)
                with engine.connect() as conn:
                    modes.append(conn.exec_driver_sql("PRAGMA journal_mode").scalar())
            except BaseException as exc:
                errors.append(exc)

        threads = [threading.Thread(target=connect, args=(engine,)) for engine in engines]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        for engine in engines:
            engine.dispose()
    assert errors == []
    assert modes == ["wal"] * 15 * 6


def test_postgresql_ledger_reads_committed_whatever_the_server_default(
    ledger_url: str, ledger_backend: str
) -> None:
    if ledger_backend != "postgresql":
        pytest.skip("isolation levels are PostgreSQL's; SQLite's writers queue (see above)")
    upgrade_ledger(ledger_url)
    engine = create_ledger_engine(ledger_url)
    try:
        with engine.connect() as conn:
            database = conn.exec_driver_sql("SELECT current_database()").scalar()
            conn.exec_driver_sql(
                f'ALTER DATABASE "{database}" SET default_transaction_isolation = serializable'
            )
            conn.commit()
    finally:
        engine.dispose()
    with open_ledger(ledger_url) as ledger, ledger.session(write=True) as session:
        assert session.execute(text("SHOW transaction_isolation")).scalar() == "read committed"


def test_opening_without_upgrade_refuses_a_ledger_behind_head(ledger_url: str) -> None:
    with pytest.raises(LedgerError, match=r"not .*start the coordinator"):
        open_ledger(ledger_url, upgrade=False)
