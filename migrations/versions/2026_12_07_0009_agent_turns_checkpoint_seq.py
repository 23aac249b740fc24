"""agent_turns: the run's checkpoint_seq when each turn was recorded

A fork takes its source's journal up to the fork's checkpoint by this number rather than
by comparing the turn's time with the checkpoint's (two workers' clocks). Turns recorded
before this revision keep NULL and are still taken by their time.

Revision ID: 0009
Revises: 0008
Create Date: 2026-12-07 04:00:00
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0009"
down_revision: str | None = "0008"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table("agent_turns") as batch:
        batch.add_column(sa.Column("checkpoint_seq", sa.Integer(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("agent_turns") as batch:
        batch.drop_column("checkpoint_seq")
