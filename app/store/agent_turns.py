"""The agent loop's journal: recorded model answers and tool results, per node visit."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import insert, literal, select
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


async def copy_to_fork(session: Executor, source_id: str, fork_id: str, upto: datetime) -> None:
    """Give a fork the journal its source had when the fork's checkpoint was written: every
    turn of ``source_id`` recorded at or before ``upto`` (the checkpoint's time), under
    ``fork_id``, with the same keys and times. A turn is recorded before the step that
    made it returns, so before any checkpoint that holds what came of it; a turn recorded
    after the checkpoint (a later answer, the rest of the loop) stays the source's.

    The fork's checkpoint holds the same node visits, so an agent paused (or cut short)
    at that checkpoint goes on in the fork from its last turn recorded before it, as it
    would in the source resumed there; a visit that had ended is not run again under the
    same key. The rows are copied by the database, in the caller's transaction."""
    columns = ("run_id", "node", "visit", "seq", "kind", "data", "created_at")
    turns = select(
        literal(fork_id),
        AgentTurn.node,
        AgentTurn.visit,
        AgentTurn.seq,
        AgentTurn.kind,
        AgentTurn.data,
        AgentTurn.created_at,
    ).where(AgentTurn.run_id == source_id, AgentTurn.created_at <= upto)
    await session.execute(insert(table(AgentTurn)).from_select(columns, turns))
