"""index of runs waiting for people whose parallel branch has a timer due

Revision ID: 0007
Revises: 0006
Create Date: 2026-12-04 17:20:00
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0007"
down_revision: str | None = "0006"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

WHERE = "status IN ('interrupted', 'awaiting_input') AND due_at IS NOT NULL"


def upgrade() -> None:
    op.create_index(
        "ix_runs_paused_due",
        "runs",
        ["due_at"],
        postgresql_where=sa.text(WHERE),
        sqlite_where=sa.text(WHERE),
    )


def downgrade() -> None:
    op.drop_index("ix_runs_paused_due", table_name="runs")
