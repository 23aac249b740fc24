"""The agent loop's journal: recorded model answers and tool results, per node visit."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import ColumnElement, and_, delete, insert, literal, or_, select
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert

from app.store.database import Executor, dialect_name
from app.store.models import AgentTurn, Run, table


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
    """Record one turn, with the run's checkpoint_seq now; a turn already recorded under
    that key is kept as it was (the first writer wins, so two workers of one run never
    disagree on history)."""
    at = select(Run.checkpoint_seq).where(Run.id == run_id).scalar_subquery()
    values = {"run_id": run_id, "node": node, "visit": visit, "seq": seq, "kind": kind,
              "data": data, "checkpoint_seq": at}  # fmt: skip
    insert = pg_insert if dialect_name(session) == "postgresql" else sqlite_insert
    await session.execute(insert(table(AgentTurn)).values(**values).on_conflict_do_nothing())


def _after(checkpoint_seq: int, upto: datetime) -> ColumnElement[bool]:
    """Turns recorded once the run's checkpoint ``checkpoint_seq`` had been written (by the
    run's checkpoint numbers; turns recorded before those were kept: after ``upto``)."""
    return or_(
        AgentTurn.checkpoint_seq >= checkpoint_seq,
        and_(AgentTurn.checkpoint_seq.is_(None), AgentTurn.created_at > upto),
    )


def _before(checkpoint_seq: int, upto: datetime) -> ColumnElement[bool]:
    """The other turns (written out: ``NOT _after`` is NULL, not true, for a NULL number)."""
    return or_(
        AgentTurn.checkpoint_seq < checkpoint_seq,
        and_(AgentTurn.checkpoint_seq.is_(None), AgentTurn.created_at <= upto),
    )


async def discard_after(
    session: Executor, run_id: str, checkpoint_seq: int, upto: datetime
) -> None:
    """Time travel: the run goes on from its checkpoint ``checkpoint_seq`` (written at
    ``upto``), and the turns recorded after it belong to the timeline it leaves (an
    answer given later, a model call made with a state since edited). They are deleted,
    so an agent at that checkpoint goes on from its turns recorded before it and asks,
    or calls the model, anew; the events of the timeline left stay readable."""
    stmt = delete(AgentTurn).where(AgentTurn.run_id == run_id, _after(checkpoint_seq, upto))
    await session.execute(stmt)


async def copy_to_fork(
    session: Executor, source_id: str, fork_id: str, checkpoint_seq: int, upto: datetime
) -> None:
    """Give a fork the journal its source had when the fork's checkpoint was written: every
    turn of ``source_id`` recorded while the run's last checkpoint was an earlier one than
    ``checkpoint_seq`` (the fork's checkpoint), under ``fork_id``, with the same keys and
    times. A turn is recorded before the step that made it returns, so before any
    checkpoint that holds what came of it; a turn recorded after the checkpoint (a later
    answer, the rest of the loop) stays the source's. Turns recorded before their
    checkpoint_seq was kept are taken by time instead: at or before ``upto``, the
    checkpoint's time.

    The fork's checkpoint holds the same node visits, so an agent paused (or cut short)
    at that checkpoint goes on in the fork from its last turn recorded before it, as it
    would in the source resumed there; a visit that had ended is not run again under the
    same key. The copies count as recorded before any checkpoint of the fork
    (checkpoint_seq 0). The rows are copied by the database, in the caller's
    transaction."""
    columns = ("run_id", "node", "visit", "seq", "kind", "data", "created_at", "checkpoint_seq")
    turns = select(
        literal(fork_id),
        AgentTurn.node,
        AgentTurn.visit,
        AgentTurn.seq,
        AgentTurn.kind,
        AgentTurn.data,
        AgentTurn.created_at,
        literal(0),
    ).where(AgentTurn.run_id == source_id, _before(checkpoint_seq, upto))
    await session.execute(insert(table(AgentTurn)).from_select(columns, turns))
