"""Replicas: config generations, shrink grants and the coordinator processes over one ledger.

Revision ID: 0002
Revises: 0001
Create Date: 2026-12-07
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0002"
down_revision: str | None = "0001"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

# 64-bit keys, except on SQLite, which only auto-increments INTEGER PRIMARY KEY.
Id = sa.BigInteger().with_variant(sa.Integer(), "sqlite")


def upgrade() -> None:
    op.create_table(
        "config_generations",
        sa.Column("generation", Id, autoincrement=True, nullable=False),
        sa.Column("digest", sa.String(length=64), nullable=False),
        sa.Column("reason", sa.String(length=64), nullable=False),
        sa.Column("replica", sa.String(length=255), nullable=False),
        sa.Column("created_ns", sa.BigInteger(), nullable=False),
        sa.PrimaryKeyConstraint("generation", name=op.f("pk_config_generations")),
    )
    op.create_table(
        "shrink_grants",
        sa.Column("dc", sa.String(length=64), nullable=False),
        sa.Column("retention", sa.JSON(), nullable=False),
        sa.Column("generation", sa.BigInteger(), nullable=False),
        sa.Column("granted_ns", sa.BigInteger(), nullable=False),
        sa.ForeignKeyConstraint(
            ["dc"], ["dcs.name"], name=op.f("fk_shrink_grants_dc_dcs"), ondelete="CASCADE"
        ),
        sa.PrimaryKeyConstraint("dc", name=op.f("pk_shrink_grants")),
    )
    op.create_table(
        "replicas",
        sa.Column("name", sa.String(length=255), nullable=False),
        sa.Column("url", sa.String(length=255), nullable=True),
        sa.Column("generation", sa.BigInteger(), nullable=True),
        sa.Column("digest", sa.String(length=64), nullable=True),
        sa.Column("state", sa.String(length=16), nullable=False),
        sa.Column("problem", sa.Text(), nullable=True),
        sa.Column("started_ns", sa.BigInteger(), nullable=False),
        sa.Column("heartbeat_ns", sa.BigInteger(), nullable=False),
        sa.PrimaryKeyConstraint("name", name=op.f("pk_replicas")),
    )


def downgrade() -> None:
    op.drop_table("replicas")
    op.drop_table("shrink_grants")
    op.drop_table("config_generations")
