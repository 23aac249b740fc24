"""runs: index of ended runs by age, for retention

Revision ID: 0005
Revises: 0001
Create Date: 2026-12-04 16:00:00
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0005"
down_revision: str | None = "0004"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

ENDED = sa.text("status IN ('completed', 'failed', 'cancelled')")


def upgrade() -> None:
    op.create_index(
        "ix_runs_ended",
        "runs",
        ["updated_at", "id"],
        postgresql_where=ENDED,
        sqlite_where=ENDED,
    )


def downgrade() -> None:
    op.drop_index("ix_runs_ended", table_name="runs")
