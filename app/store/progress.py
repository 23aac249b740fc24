"""The transaction that records a run's progress: the run row, checkpoints and events.

One fenced ``UPDATE … RETURNING`` advances the run (status, head, counters) only while
the caller still holds the lease; then the checkpoints and the events are inserted. All
of it commits together or not at all.

A write may carry several steps (``StepWrite``), each with its own checkpoint and
events: the runner lets consecutive pure steps share one commit (see
``app.engine.recording``); every step still gets its checkpoint and its events, in order.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import ColumnElement, String, cast, func, update
from sqlalchemy.orm.attributes import set_committed_value

from app.store.checkpoints import CheckpointRow, insert_checkpoints
from app.store.database import Executor, dialect_name
from app.store.events import NewEvent, insert_events
from app.store.models import Run, table, utcnow

RUN_KEYS = tuple(attr.key for attr in Run.__mapper__.column_attrs)

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


@dataclass(slots=True)
class StepWrite:
    """One step's outcome: its events and, unless it only reports progress, its checkpoint
    (``data`` a full document, or a delta against ``base_id``). ``ts`` stamps its events
    and checkpoint (default: the commit time)."""

    events: list[NewEvent]
    checkpoint: CheckpointRow | None = None
    base_id: str | None = None
    data: Any = None
    ts: datetime | None = None


@dataclass(frozen=True, slots=True)
class Recorded:
    checkpoint_seq: int | None
    last_event_seq: int
    status: str
    events: list[dict[str, Any]]  # the event rows as inserted, oldest first
    run: Run | None = None  # the whole run row as written, when the write settled the run


def _with_saved_event(write: StepWrite) -> tuple[list[NewEvent], int]:
    """The write's events with a placeholder ``checkpoint.saved`` (filled in once the
    checkpoint's seq is known), and its index; the step's status event stays last."""
    events = list(write.events)
    at = len(events)
    if write.checkpoint is None:
        return events, -1
    while at > 0 and events[at - 1].type in STATUS_EVENT_TYPES:
        at -= 1
    events.insert(at, NewEvent("checkpoint.saved"))
    return events, at


async def record_step(
    session: Executor,
    run_id: str,
    *,
    guard: ColumnElement[bool] | None,
    values: dict[str, Any],
    events: Sequence[NewEvent],
    checkpoint: CheckpointRow | None = None,
    base_id: str | None = None,
    data: Any = None,
    earlier: Sequence[StepWrite] = (),
    whole_row: bool = False,
) -> Recorded | None:
    """Write a step's outcome (after the ``earlier`` ones, oldest first); None when
    ``guard`` (the lease) refused it. ``values`` is the run row after the last step.
    With ``whole_row`` (or when the write pauses or ends the run) ``Recorded.run`` is the
    whole row as written."""
    now = utcnow()
    writes = [*earlier, StepWrite(list(events), checkpoint, base_id, data)]
    prepared = [_with_saved_event(w) for w in writes]
    checkpoints = [w.checkpoint for w in writes if w.checkpoint is not None]
    total = sum(len(evs) for evs, _ in prepared)
    if checkpoints:
        values = {
            **values,
            "head_checkpoint_id": checkpoints[-1].id,
            "checkpoint_seq": Run.checkpoint_seq + len(checkpoints),
        }
    returning: list[Any] = [Run.checkpoint_seq, Run.event_seq, Run.status]
    # a write that pauses or ends the run returns its whole row: whoever waits for the run
    # in this process is answered from it
    settles = whole_row or values.get("status") not in (None, "running", "queued")
    if settles:
        returning.extend(getattr(Run, key) for key in RUN_KEYS)
    postgres = dialect_name(session) == "postgresql"
    if postgres and total:
        # the NOTIFY rides on the same statement (one round trip less); Postgres delivers
        # it only when the transaction commits
        payload = Run.id + ":" + cast(Run.event_seq, String) + ":" + Run.status
        returning.append(func.pg_notify("stepwise_events", payload))
    stmt = (
        update(table(Run))
        .where(Run.id == run_id)
        .values(**values, updated_at=now, event_seq=Run.event_seq + total)
        .returning(*returning)
    )
    if guard is not None:
        stmt = stmt.where(guard)
    row = (await session.execute(stmt)).first()
    if row is None:
        return None
    last_checkpoint_seq, last_seq, status = int(row[0]), int(row[1]), str(row[2])
    written = None
    if settles:
        written = Run(**dict(zip(RUN_KEYS, row[3 : 3 + len(RUN_KEYS)], strict=True)))
    seq = last_checkpoint_seq - len(checkpoints)
    rows: list[tuple[CheckpointRow, str | None, Any]] = []
    for write, (evs, at) in zip(writes, prepared, strict=True):
        ts = write.ts or now
        if write.checkpoint is not None:
            seq += 1
            write.checkpoint.seq = seq
            write.checkpoint.created_at = ts
            saved = {"checkpoint_id": write.checkpoint.id, "seq": seq}
            evs[at] = NewEvent("checkpoint.saved", write.checkpoint.next_node, saved)
            rows.append((write.checkpoint, write.base_id, write.data))
    # the UPDATE above began the transaction: on Postgres the rows go through the driver
    await insert_checkpoints(session, rows, begun=postgres)
    inserted = await insert_events(
        session,
        run_id,
        last_seq,
        [e for evs, _ in prepared for e in evs],
        [w.ts or now for w, (evs, _) in zip(writes, prepared, strict=True) for _ in evs],
        begun=postgres,
    )
    return Recorded(
        last_checkpoint_seq if checkpoints else None, last_seq, status, inserted, written
    )


def take_written(run: Run, recorded: Recorded | None) -> Run:
    """``run`` (the session's instance, locked) brought up to the row ``record_step`` wrote
    with ``whole_row``, without reading it back or marking it changed."""
    assert recorded is not None  # the caller holds the row's lock: the guard holds
    assert recorded.run is not None
    for key in RUN_KEYS:
        set_committed_value(run, key, getattr(recorded.run, key))
    return run
