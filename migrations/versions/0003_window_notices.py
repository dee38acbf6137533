"""Windows: events withheld for a personal-looking dimension value, and the last gateway refusal.

Revision ID: 0003
Revises: 0002
Create Date: 2026-12-07
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0003"
down_revision: str | None = "0002"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table("windows") as batch:
        batch.add_column(sa.Column("personal_value_events", sa.BigInteger(), nullable=True))
        batch.add_column(sa.Column("refusal", sa.Text(), nullable=True))
        batch.add_column(sa.Column("refused_ns", sa.BigInteger(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("windows") as batch:
        batch.drop_column("refused_ns")
        batch.drop_column("refusal")
        batch.drop_column("personal_value_events")
