"""Rollouts: a deployment may desire no version (an aggregation added but not rolled out yet,
or removed), tracking ends where an aggregation was removed, and every rollout is recorded so
that it can be resumed or undone.

Revision ID: 0004
Revises: 0003
Create Date: 2026-12-07
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0004"
down_revision: str | None = "0003"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

Id = sa.BigInteger().with_variant(sa.Integer(), "sqlite")


def upgrade() -> None:
    with op.batch_alter_table("deployments") as batch:
        batch.alter_column("desired_version", existing_type=sa.String(length=64), nullable=True)
    with op.batch_alter_table("tracking") as batch:
        batch.add_column(sa.Column("end_ns", sa.BigInteger(), nullable=True))
    op.create_table(
        "rollouts",
        sa.Column("id", Id, autoincrement=True, nullable=False),
        sa.Column("state", sa.String(length=16), nullable=False),
        sa.Column("canary", sa.String(length=64), nullable=True),
        sa.Column("scope", sa.JSON(), nullable=False),
        sa.Column("moves", sa.JSON(), nullable=False),
        sa.Column("started_ns", sa.BigInteger(), nullable=False),
        sa.Column("updated_ns", sa.BigInteger(), nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_rollouts")),
    )


def downgrade() -> None:
    op.drop_table("rollouts")
    with op.batch_alter_table("tracking") as batch:
        batch.drop_column("end_ns")
    op.execute("DELETE FROM deployments WHERE desired_version IS NULL")
    with op.batch_alter_table("deployments") as batch:
        batch.alter_column("desired_version", existing_type=sa.String(length=64), nullable=False)
