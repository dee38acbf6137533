"""The ledger: DCs, plan versions, deployments, tracking, backfills, windows.

Revision ID: 0001
Revises:
Create Date: 2026-11-28
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0001"
down_revision: str | None = None
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

# 64-bit keys, except on SQLite, which only auto-increments INTEGER PRIMARY KEY.
Id = sa.BigInteger().with_variant(sa.Integer(), "sqlite")


def _dc_column() -> sa.Column[str]:
    return sa.Column("dc", sa.String(length=64), nullable=False)


def _dc_foreign_key(table: str) -> sa.ForeignKeyConstraint:
    return sa.ForeignKeyConstraint(
        ["dc"], ["dcs.name"], name=op.f(f"fk_{table}_dc_dcs"), ondelete="CASCADE"
    )


def upgrade() -> None:
    op.create_table(
        "dcs",
        sa.Column("name", sa.String(length=64), nullable=False),
        sa.Column("region", sa.String(length=64), nullable=False),
        sa.Column("last_seen_ns", sa.BigInteger(), nullable=True),
        sa.Column("mode", sa.String(length=16), nullable=True),
        sa.Column("agent_version", sa.String(length=64), nullable=True),
        sa.Column("last_report", sa.JSON(), nullable=True),
        sa.PrimaryKeyConstraint("name", name=op.f("pk_dcs")),
    )
    op.create_table(
        "plan_versions",
        sa.Column("id", Id, autoincrement=True, nullable=False),
        _dc_column(),
        sa.Column("aggregation", sa.String(length=128), nullable=False),
        sa.Column("version", sa.String(length=64), nullable=False),
        sa.Column("plan", sa.JSON(), nullable=False),
        sa.Column("created_ns", sa.BigInteger(), nullable=False),
        _dc_foreign_key("plan_versions"),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_plan_versions")),
        sa.UniqueConstraint(
            "dc", "aggregation", "version", name=op.f("uq_plan_versions_dc_aggregation_version")
        ),
    )
    op.create_table(
        "deployments",
        _dc_column(),
        sa.Column("aggregation", sa.String(length=128), nullable=False),
        sa.Column("desired_version", sa.String(length=64), nullable=False),
        sa.Column("previous_version", sa.String(length=64), nullable=True),
        sa.Column("running_version", sa.String(length=64), nullable=True),
        sa.Column("healthy", sa.Boolean(), nullable=True),
        sa.Column("detail", sa.Text(), nullable=True),
        sa.Column("changed_ns", sa.BigInteger(), nullable=False),
        sa.Column("reported_ns", sa.BigInteger(), nullable=True),
        _dc_foreign_key("deployments"),
        sa.PrimaryKeyConstraint("dc", "aggregation", name=op.f("pk_deployments")),
    )
    op.create_table(
        "tracking",
        _dc_column(),
        sa.Column("aggregation", sa.String(length=128), nullable=False),
        sa.Column("window_ns", sa.BigInteger(), nullable=False),
        sa.Column("start_ns", sa.BigInteger(), nullable=False),
        sa.Column("watermark_ns", sa.BigInteger(), nullable=False),
        _dc_foreign_key("tracking"),
        sa.PrimaryKeyConstraint("dc", "aggregation", name=op.f("pk_tracking")),
    )
    op.create_table(
        "backfills",
        sa.Column("id", Id, autoincrement=True, nullable=False),
        _dc_column(),
        sa.Column("aggregation", sa.String(length=128), nullable=False),
        sa.Column("version", sa.String(length=64), nullable=True),
        sa.Column("start_ns", sa.BigInteger(), nullable=False),
        sa.Column("end_ns", sa.BigInteger(), nullable=False),
        sa.Column("state", sa.String(length=16), nullable=False),
        sa.Column("origin", sa.String(length=16), nullable=False),
        sa.Column("attempts", sa.Integer(), nullable=False),
        sa.Column("next_attempt_ns", sa.BigInteger(), nullable=True),
        sa.Column("lease_expires_ns", sa.BigInteger(), nullable=True),
        sa.Column("windows_reported", sa.Integer(), nullable=True),
        sa.Column("error", sa.Text(), nullable=True),
        sa.Column("created_ns", sa.BigInteger(), nullable=False),
        sa.Column("updated_ns", sa.BigInteger(), nullable=False),
        _dc_foreign_key("backfills"),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_backfills")),
    )
    op.create_index(op.f("ix_backfills_dc_state"), "backfills", ["dc", "state"])
    op.create_index(
        op.f("ix_backfills_state_next_attempt_ns"), "backfills", ["state", "next_attempt_ns"]
    )
    op.create_table(
        "windows",
        sa.Column("id", Id, autoincrement=True, nullable=False),
        _dc_column(),
        sa.Column("aggregation", sa.String(length=128), nullable=False),
        sa.Column("start_ns", sa.BigInteger(), nullable=False),
        sa.Column("state", sa.String(length=16), nullable=False),
        sa.Column("version", sa.String(length=64), nullable=True),
        sa.Column("run", sa.BigInteger(), nullable=True),
        sa.Column("events", sa.BigInteger(), nullable=True),
        sa.Column("groups", sa.BigInteger(), nullable=True),
        sa.Column("suppressed_events", sa.BigInteger(), nullable=True),
        sa.Column("summary_count", sa.BigInteger(), nullable=True),
        sa.Column("reason", sa.Text(), nullable=True),
        sa.Column("backfill_id", Id, nullable=True),
        sa.Column("shipped_ns", sa.BigInteger(), nullable=True),
        sa.Column("verified_ns", sa.BigInteger(), nullable=True),
        sa.Column("updated_ns", sa.BigInteger(), nullable=False),
        sa.ForeignKeyConstraint(
            ["backfill_id"],
            ["backfills.id"],
            name=op.f("fk_windows_backfill_id_backfills"),
            ondelete="SET NULL",
        ),
        _dc_foreign_key("windows"),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_windows")),
        sa.UniqueConstraint(
            "dc", "aggregation", "start_ns", name=op.f("uq_windows_dc_aggregation_start_ns")
        ),
    )
    op.create_index(op.f("ix_windows_aggregation_start_ns"), "windows", ["aggregation", "start_ns"])
    op.create_index(
        op.f("ix_windows_state_dc_aggregation_start_ns"),
        "windows",
        ["state", "dc", "aggregation", "start_ns"],
    )


def downgrade() -> None:
    op.drop_index(op.f("ix_windows_state_dc_aggregation_start_ns"), table_name="windows")
    op.drop_index(op.f("ix_windows_aggregation_start_ns"), table_name="windows")
    op.drop_table("windows")
    op.drop_index(op.f("ix_backfills_state_next_attempt_ns"), table_name="backfills")
    op.drop_index(op.f("ix_backfills_dc_state"), table_name="backfills")
    op.drop_table("backfills")
    op.drop_table("tracking")
    op.drop_table("deployments")
    op.drop_table("plan_versions")
    op.drop_table("dcs")
