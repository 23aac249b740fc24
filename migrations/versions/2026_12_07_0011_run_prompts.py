"""run_prompts: the version of each stored prompt a run uses

A run that names a prompt without a version (``name``) takes its latest version the first
time it uses it, and that version from then on: across pauses, retries, time travel and
into its forks (DESIGN §9: "a resume or a replay uses the same text").

Revision ID: 0011
Revises: 0010
Create Date: 2026-12-07 14:30:00
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0011"
down_revision: str | None = "0010"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "run_prompts",
        sa.Column("run_id", sa.String(length=36), nullable=False),
        sa.Column("name", sa.String(length=100), nullable=False),
        sa.Column("version", sa.Integer(), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(
            ["run_id"], ["runs.id"], name=op.f("fk_run_prompts_run_id_runs"), ondelete="CASCADE"
        ),
        sa.PrimaryKeyConstraint("run_id", "name", name=op.f("pk_run_prompts")),
    )


def downgrade() -> None:
    op.drop_table("run_prompts")
