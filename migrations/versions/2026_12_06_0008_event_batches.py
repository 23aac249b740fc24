"""event batches: a step's events stored as one row; the event_log view expands them

A row of ``events`` whose type is ``[batch]`` holds all the events of one write: its
``seq`` is its last event's, its ``data`` the ``[type, node, data]`` of each event, oldest
first. ``event_log`` shows every event as a row of its own, for SQL readers.

The view depends on ``events``: a later migration that changes a column's type or
rebuilds the table (SQLite's batch mode) drops the view first and creates it again after.

Revision ID: 0008
Revises: 0007
Create Date: 2026-12-06 05:40:00
"""

from collections.abc import Sequence

from alembic import op

revision: str = "0008"
down_revision: str | None = "0007"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

SINGLE = "SELECT run_id, seq, type, node, ts, data FROM events WHERE type <> '[batch]'"

POSTGRES_BATCHES = (
    "SELECT e.run_id, (e.seq - json_array_length(e.data) + x.k)::int AS seq,"
    " x.item->>0 AS type, x.item->>1 AS node, e.ts, x.item->2 AS data"
    " FROM events e, json_array_elements(e.data) WITH ORDINALITY AS x(item, k)"
    " WHERE e.type = '[batch]'"
)
SQLITE_BATCHES = (
    "SELECT e.run_id, e.seq - json_array_length(e.data) + 1 + CAST(x.key AS INTEGER) AS seq,"
    " json_extract(x.value, '$[0]') AS type, json_extract(x.value, '$[1]') AS node, e.ts,"
    " json(json_extract(x.value, '$[2]')) AS data"
    " FROM events e, json_each(e.data) AS x WHERE e.type = '[batch]'"
)


def _batches() -> str:
    return POSTGRES_BATCHES if op.get_bind().dialect.name == "postgresql" else SQLITE_BATCHES


def upgrade() -> None:
    op.execute(f"CREATE VIEW event_log AS {SINGLE} UNION ALL {_batches()}")


def downgrade() -> None:
    # back to one row an event: the batches' other events inserted, then each batch row
    # becomes its last event (it has that event's seq)
    postgres = op.get_bind().dialect.name == "postgresql"
    op.execute(
        "INSERT INTO events (run_id, seq, type, node, ts, data)"
        f" SELECT b.run_id, b.seq, b.type, b.node, b.ts, b.data FROM ({_batches()}) AS b"
        " WHERE NOT EXISTS (SELECT 1 FROM events o WHERE o.run_id = b.run_id AND o.seq = b.seq)"
    )
    if postgres:
        op.execute(
            "UPDATE events SET type = data->-1->>0, node = data->-1->>1, data = data->-1->2"
            " WHERE type = '[batch]'"
        )
    else:
        op.execute(
            "UPDATE events SET type = json_extract(data, '$[#-1][0]'),"
            " node = json_extract(data, '$[#-1][1]'), data = json(json_extract(data, '$[#-1][2]'))"
            " WHERE type = '[batch]'"
        )
    op.execute("DROP VIEW event_log")
