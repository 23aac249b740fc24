"""The agent loop's journal: recorded model answers and tool results, per node visit."""

from __future__ import annotations

from typing import Any

from sqlalchemy import select
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert

from app.store.database import Executor, dialect_name
from app.store.models import AgentTurn, table


async def load(session: Executor, run_id: str, node: str, visit: int) -> list[dict[str, Any]]:
    """The visit's turns in order: ``{seq, kind, data}``."""
    stmt = (
        select(AgentTurn.seq, AgentTurn.kind, AgentTurn.data)
        .where(AgentTurn.run_id == run_id, AgentTurn.node == node, AgentTurn.visit == visit)
        .order_by(AgentTurn.seq)
    )
    return [{"seq": s, "kind": k, "data": d} for s, k, d in (await session.execute(stmt)).all()]


async def record(
    session: Executor, run_id: str, node: str, visit: int, seq: int, kind: str, data: Any
) -> None:
    """Record one turn; a turn already recorded under that key is kept as it was (the
    first writer wins, so two workers of one run never disagree on history)."""
    values = {"run_id": run_id, "node": node, "visit": visit, "seq": seq, "kind": kind,
              "data": data}  # fmt: skip
    insert = pg_insert if dialect_name(session) == "postgresql" else sqlite_insert
    await session.execute(insert(table(AgentTurn)).values(**values).on_conflict_do_nothing())
