"""The transaction that records a run's progress: the run row, checkpoints and events.

One fenced ``UPDATE … RETURNING`` advances the run (status, head, counters) only while
the caller still holds the lease; then the checkpoints and the events are inserted. All
of it commits together or not at all.

A write may carry several steps (``StepWrite``), each with its own checkpoint and
events: the runner lets consecutive pure steps share one commit (see
``app.engine.recording``); every step still gets its checkpoint and its events, in order.

On Postgres the fenced writes go straight through asyncpg (``app.store.statements``),
and a write given a connection with no transaction begun is a single statement that
commits by itself.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import ClauseElement, ColumnElement, String, and_, cast, func, update
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncSession
from sqlalchemy.orm.attributes import set_committed_value

from app import metrics
from app.store.checkpoints import CheckpointRow, insert_checkpoints
from app.store.database import Executor, dialect_name
from app.store.events import BATCH, NewEvent, event_rows, insert_events, stored_json
from app.store.models import Run, detached, table, utcnow
from app.store.runs import Lease, lease_guard
from app.store.statements import RUN_KEYS, Fence, StoredRow, fenced_update, one_statement

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
    and checkpoint (default: the commit time); ``saved`` is more data for the
    checkpoint's ``checkpoint.saved`` event (the parallel branch that wrote it)."""

    events: list[NewEvent]
    checkpoint: CheckpointRow | None = None
    base_id: str | None = None
    data: Any = None
    ts: datetime | None = None
    saved: dict[str, Any] | None = None


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
    events.insert(at, NewEvent("checkpoint.saved", write.checkpoint.next_node, write.saved))
    return events, at


async def record_step(
    session: Executor,
    run_id: str,
    *,
    guard: ColumnElement[bool] | Fence | None,
    values: dict[str, Any],
    events: Sequence[NewEvent],
    checkpoint: CheckpointRow | None = None,
    base_id: str | None = None,
    data: Any = None,
    earlier: Sequence[StepWrite] = (),
    whole_row: bool = False,
    saved: dict[str, Any] | None = None,
) -> Recorded | None:
    """Write a step's outcome (after the ``earlier`` ones, oldest first); None when
    ``guard`` (the lease) refused it. ``values`` is the run row after the last step;
    ``saved`` is more data for the step's ``checkpoint.saved`` (as ``StepWrite.saved``).
    With ``whole_row`` (or when the write pauses or ends the run) ``Recorded.run`` is the
    whole row as written. On Postgres, a write fenced by a ``Fence`` whose ``values`` are
    plain (no SQL expressions) skips SQLAlchemy (``app.store.statements``); given a
    connection with no transaction begun, it is one statement that commits by itself."""
    now = utcnow()
    writes = [*earlier, StepWrite(list(events), checkpoint, base_id, data, saved=saved)]
    prepared = [_with_saved_event(w) for w in writes]
    checkpoints = [w.checkpoint for w in writes if w.checkpoint is not None]
    total = sum(len(evs) for evs, _ in prepared)
    # a write that pauses or ends the run returns its whole row: whoever waits for the run
    # in this process is answered from it
    settles = whole_row or values.get("status") not in (None, "running", "queued")
    postgres = dialect_name(session) == "postgresql"
    if postgres and isinstance(guard, Fence) and _plain(values):
        if isinstance(session, AsyncConnection) and not session.in_transaction():
            return await _alone(session, run_id, guard, values, now, writes, prepared, settles)
        if isinstance(session, AsyncSession):  # its transaction, on its connection
            session = await session.connection()
        row = await fenced_update(
            session, run_id, guard, values, now, total, checkpoints, settles=settles
        )
    else:
        clause = _clause(guard) if isinstance(guard, Fence) else guard
        row = await _orm_update(
            session, run_id, clause, values, now, total, checkpoints, settles=settles
        )
    if row is None:
        return None
    rows = _numbered(writes, prepared, int(row[0]) - len(checkpoints), now)
    # on Postgres the rows go straight through the driver
    await insert_checkpoints(session, rows, direct=postgres)
    inserted = await insert_events(
        session,
        run_id,
        int(row[1]),
        [e for evs, _ in prepared for e in evs],
        _stamps(writes, prepared, now),
        groups=[len(evs) for evs, _ in prepared],
        direct=postgres,
    )
    return _recorded(row, bool(checkpoints), inserted, settles=settles)


async def _alone(
    connection: AsyncConnection,
    run_id: str,
    fence: Fence,
    values: dict[str, Any],
    now: datetime,
    writes: list[StepWrite],
    prepared: list[tuple[list[NewEvent], int]],
    settles: bool,
) -> Recorded | None:
    """The write as one statement, committed by itself (``statements.one_statement``)."""
    checkpoints: list[tuple[CheckpointRow, str | None, Any]] = []
    rows: list[StoredRow] = []
    upto = 0
    for write, (evs, at) in zip(writes, prepared, strict=True):
        if write.checkpoint is not None:
            write.checkpoint.created_at = write.ts or now  # as ``_numbered`` stamps it
            checkpoints.append((write.checkpoint, write.base_id, write.data))
        if not evs:
            continue
        # the checkpoint.saved placeholder (at ``at``) gets its seq from the statement
        upto += len(evs)
        saved = write.checkpoint.id if write.checkpoint is not None else None
        head, tail = stored_json(evs, at, saved)
        first = evs[0]
        type_, node = (first.type, first.node) if len(evs) == 1 else (BATCH, None)
        k = len(checkpoints) if saved is not None else 0
        rows.append(StoredRow(type_, node, write.ts or now, head, tail, k, upto))
    row = await one_statement(
        connection, run_id, fence, values, now, checkpoints, rows, upto, settles=settles
    )
    if row is None:
        return None
    # the same numbers, and the same checkpoint.saved data, as the statement wrote
    _numbered(writes, prepared, int(row[0]) - len(checkpoints), now)
    flat = [e for evs, _ in prepared for e in evs]
    inserted = event_rows(run_id, int(row[1]), flat, _stamps(writes, prepared, now))
    metrics.observe_events(e.type for e in flat)
    return _recorded(row, bool(checkpoints), inserted, settles=settles)


def _numbered(
    writes: list[StepWrite],
    prepared: list[tuple[list[NewEvent], int]],
    seq: int,
    now: datetime,
) -> list[tuple[CheckpointRow, str | None, Any]]:
    """Number the writes' checkpoints after ``seq`` and fill in their ``checkpoint.saved``
    events; the checkpoints as ``(row, base_id, data)``."""
    rows: list[tuple[CheckpointRow, str | None, Any]] = []
    for write, (evs, at) in zip(writes, prepared, strict=True):
        if write.checkpoint is not None:
            seq += 1
            write.checkpoint.seq = seq
            write.checkpoint.created_at = write.ts or now
            saved = {"checkpoint_id": write.checkpoint.id, "seq": seq, **(write.saved or {})}
            evs[at] = NewEvent("checkpoint.saved", write.checkpoint.next_node, saved)
            rows.append((write.checkpoint, write.base_id, write.data))
    return rows


def _stamps(
    writes: list[StepWrite], prepared: list[tuple[list[NewEvent], int]], now: datetime
) -> list[datetime]:
    return [w.ts or now for w, (evs, _) in zip(writes, prepared, strict=True) for _ in evs]


def _recorded(
    row: Sequence[Any], checkpointed: bool, inserted: list[dict[str, Any]], *, settles: bool
) -> Recorded:
    last_checkpoint_seq, last_seq, status = int(row[0]), int(row[1]), str(row[2])
    written = None
    if settles:
        written = detached(Run, dict(zip(RUN_KEYS, row[3 : 3 + len(RUN_KEYS)], strict=True)))
    return Recorded(
        last_checkpoint_seq if checkpointed else None, last_seq, status, inserted, written
    )


async def _orm_update(
    session: Executor,
    run_id: str,
    guard: ColumnElement[bool] | None,
    values: dict[str, Any],
    now: datetime,
    events: int,
    checkpoints: list[CheckpointRow],
    *,
    settles: bool,
) -> Sequence[Any] | None:
    """The fenced ``UPDATE runs … RETURNING`` as a SQLAlchemy Core statement."""
    if checkpoints:
        values = {
            **values,
            "head_checkpoint_id": checkpoints[-1].id,
            "checkpoint_seq": Run.checkpoint_seq + len(checkpoints),
        }
    returning: list[Any] = [Run.checkpoint_seq, Run.event_seq, Run.status]
    if settles:
        returning.extend(getattr(Run, key) for key in RUN_KEYS)
    if dialect_name(session) == "postgresql" and events:
        # the NOTIFY rides on the same statement (one round trip less); Postgres delivers
        # it only when the transaction commits
        payload = Run.id + ":" + cast(Run.event_seq, String) + ":" + Run.status
        returning.append(func.pg_notify("stepwise_events", payload))
    stmt = (
        update(table(Run))
        .where(Run.id == run_id)
        .values(**values, updated_at=now, event_seq=Run.event_seq + events)
        .returning(*returning)
    )
    if guard is not None:
        stmt = stmt.where(guard)
    return (await session.execute(stmt)).first()


def _plain(values: dict[str, Any]) -> bool:
    return not any(isinstance(value, ClauseElement) for value in values.values())


def _clause(fence: Fence) -> ColumnElement[bool]:
    if isinstance(fence, Lease):
        return lease_guard(fence)
    if fence.versions is None:
        return Run.status == fence.status
    events, checkpoints, token = fence.versions
    return and_(
        Run.status == fence.status,
        Run.event_seq == events,
        Run.checkpoint_seq == checkpoints,
        Run.lease_token == token,
    )


def take_written(run: Run, recorded: Recorded | None) -> Run:
    """``run`` (the session's instance, locked) brought up to the row ``record_step`` wrote
    with ``whole_row``, without reading it back or marking it changed."""
    assert recorded is not None  # the caller holds the row's lock: the guard holds
    assert recorded.run is not None
    for key in RUN_KEYS:
        set_committed_value(run, key, getattr(recorded.run, key))
    return run
