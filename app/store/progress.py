"""The transaction that records a step: the run row, its checkpoint and its events.

One fenced ``UPDATE … RETURNING`` advances the run (status, head, counters) only while
the caller still holds the lease; then the checkpoint and the events are inserted. All
of it commits together or not at all.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from sqlalchemy import ColumnElement, String, cast, func, update
from sqlalchemy.ext.asyncio import AsyncSession

from app.store.checkpoints import CheckpointRow, insert_checkpoint
from app.store.events import NewEvent, insert_events
from app.store.models import Run, utcnow

STATUS_EVENT_TYPES = frozenset(
    {
        "run.completed",
        "run.failed",
        "run.cancelled",
        "run.interrupted",
        "run.awaiting_input",
        "run.suspended",
    }
)


@dataclass(frozen=True, slots=True)
class Recorded:
    checkpoint_seq: int | None
    last_event_seq: int
    status: str


async def record_step(
    session: AsyncSession,
    run_id: str,
    *,
    guard: ColumnElement[bool] | None,
    values: dict[str, Any],
    events: Sequence[NewEvent],
    checkpoint: CheckpointRow | None = None,
    base_id: str | None = None,
    data: Any = None,
) -> Recorded | None:
    """Write one step's outcome; None when ``guard`` (the lease) refused it."""
    now = utcnow()
    all_events = list(events)
    at = len(all_events)
    if checkpoint is not None:
        # the run's status event (completed, interrupted, ...) stays the last one
        while at > 0 and all_events[at - 1].type in STATUS_EVENT_TYPES:
            at -= 1
        all_events.insert(
            at, NewEvent("checkpoint.saved", checkpoint.next_node, {"checkpoint_id": checkpoint.id})
        )
        values = {
            **values,
            "head_checkpoint_id": checkpoint.id,
            "checkpoint_seq": Run.checkpoint_seq + 1,
        }
    returning: list[Any] = [Run.checkpoint_seq, Run.event_seq, Run.status]
    postgres = session.get_bind().dialect.name == "postgresql"
    if postgres and all_events:
        # the NOTIFY rides on the same statement (one round trip less); Postgres delivers
        # it only when the transaction commits
        payload = Run.id + ":" + cast(Run.event_seq, String) + ":" + Run.status
        returning.append(func.pg_notify("stepwise_events", payload))
    stmt = (
        update(Run)
        .where(Run.id == run_id)
        .values(**values, updated_at=now, event_seq=Run.event_seq + len(all_events))
        .returning(*returning)
        .execution_options(synchronize_session=False)
    )
    if guard is not None:
        stmt = stmt.where(guard)
    row = (await session.execute(stmt)).first()
    if row is None:
        return None
    checkpoint_seq, last_seq, status = int(row[0]), int(row[1]), str(row[2])
    if checkpoint is not None:
        checkpoint.seq = checkpoint_seq
        checkpoint.created_at = now
        all_events[at] = NewEvent(
            "checkpoint.saved",
            checkpoint.next_node,
            {"checkpoint_id": checkpoint.id, "seq": checkpoint_seq},
        )
        await insert_checkpoint(session, checkpoint, base_id, data)
    await insert_events(session, run_id, last_seq, all_events, now)
    return Recorded(checkpoint_seq if checkpoint is not None else None, last_seq, status)
