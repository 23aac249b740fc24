"""The transaction that records a run's progress: the run row, checkpoints and events.

One fenced ``UPDATE … RETURNING`` advances the run (status, head, counters) only while
the caller still holds the lease; then the checkpoints and the events are inserted. All
of it commits together or not at all.

A write may carry several steps (``StepWrite``), each with its own checkpoint and
events: the runner lets consecutive pure steps share one commit (see
``app.engine.recording``); every step still gets its checkpoint and its events, in order.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import JSON, ClauseElement, ColumnElement, String, cast, func, update
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncSession
from sqlalchemy.orm.attributes import set_committed_value

from app.store.checkpoints import CheckpointRow, insert_checkpoints
from app.store.database import Executor, dialect_name, driver_fetchrow, encode_json
from app.store.events import NewEvent, insert_events
from app.store.models import Run, table, utcnow
from app.store.runs import HELD, Lease, lease_guard

RUN_KEYS = tuple(attr.key for attr in Run.__mapper__.column_attrs)
_COLUMN_NAMES = {attr.key: attr.columns[0].name for attr in Run.__mapper__.column_attrs}
_JSON_KEYS = frozenset(
    attr.key for attr in Run.__mapper__.column_attrs if isinstance(attr.columns[0].type, JSON)
)

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
class Unchanged:
    """A write's fence for commands: the run must still have ``status`` (their
    transaction has usually locked its row)."""

    status: str


Fence = Lease | Unchanged


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
    guard: ColumnElement[bool] | Fence | None,
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
    whole row as written. On Postgres, a write fenced by a ``Fence`` whose ``values`` are
    plain (no SQL expressions) skips SQLAlchemy (see ``_driver_update``)."""
    now = utcnow()
    writes = [*earlier, StepWrite(list(events), checkpoint, base_id, data)]
    prepared = [_with_saved_event(w) for w in writes]
    checkpoints = [w.checkpoint for w in writes if w.checkpoint is not None]
    total = sum(len(evs) for evs, _ in prepared)
    # a write that pauses or ends the run returns its whole row: whoever waits for the run
    # in this process is answered from it
    settles = whole_row or values.get("status") not in (None, "running", "queued")
    postgres = dialect_name(session) == "postgresql"
    if postgres and isinstance(guard, Fence) and _plain(values):
        if isinstance(session, AsyncSession):  # its transaction, on its connection
            session = await session.connection()
        row = await _driver_update(
            session, run_id, guard, values, now, total, checkpoints, settles=settles
        )
    else:
        clause = _clause(guard) if isinstance(guard, Fence) else guard
        row = await _orm_update(
            session, run_id, clause, values, now, total, checkpoints, settles=settles
        )
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
    # on Postgres the rows go straight through the driver
    await insert_checkpoints(session, rows, direct=postgres)
    inserted = await insert_events(
        session,
        run_id,
        last_seq,
        [e for evs, _ in prepared for e in evs],
        [w.ts or now for w, (evs, _) in zip(writes, prepared, strict=True) for _ in evs],
        direct=postgres,
    )
    return Recorded(
        last_checkpoint_seq if checkpoints else None, last_seq, status, inserted, written
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
    return Run.status == fence.status


async def _driver_update(
    connection: AsyncConnection,
    run_id: str,
    fence: Fence,
    values: dict[str, Any],
    now: datetime,
    events: int,
    checkpoints: list[CheckpointRow],
    *,
    settles: bool,
) -> Sequence[Any] | None:
    """``_orm_update`` straight through asyncpg, for the runner's writes and the commands'
    status changes: one prepared statement per shape of ``values`` (a handful), its JSON
    encoded once here. About a fifth of the server's CPU per step went to building,
    caching and binding the Core statement."""
    if checkpoints:
        values = {**values, "head_checkpoint_id": checkpoints[-1].id}
    keys = tuple(values)
    sql = _update_sql(keys, isinstance(fence, Lease), settles, events > 0)
    args: list[Any] = [run_id, now, events, len(checkpoints)]
    args.extend(
        encode_json(values[key]).decode() if key in _JSON_KEYS else values[key] for key in keys
    )
    args.extend((fence.owner, fence.token) if isinstance(fence, Lease) else (fence.status,))
    return await driver_fetchrow(connection, sql, args)


@functools.lru_cache(maxsize=64)
def _update_sql(keys: tuple[str, ...], leased: bool, settles: bool, notify: bool) -> str:
    """The SQL of ``_driver_update`` for one shape of the run's values and its fence."""
    sets = ["updated_at = $2", "event_seq = event_seq + $3", "checkpoint_seq = checkpoint_seq + $4"]
    sets += [f"{_COLUMN_NAMES[key]} = ${i}" for i, key in enumerate(keys, start=5)]
    n = 5 + len(keys)
    if leased:
        held = ", ".join(f"'{status}'" for status in HELD)  # as ``lease_guard``
        where = f"id = $1 AND status IN ({held}) AND lease_owner = ${n} AND lease_token = ${n + 1}"
    else:
        where = f"id = $1 AND status = ${n}"
    returning = ["checkpoint_seq", "event_seq", "status"]
    if settles:
        returning += [_COLUMN_NAMES[key] for key in RUN_KEYS]
    if notify:
        returning.append(
            "pg_notify('stepwise_events', id || ':' || event_seq::text || ':' || status)"
        )
    return f"UPDATE runs SET {', '.join(sets)} WHERE {where} RETURNING {', '.join(returning)}"


def take_written(run: Run, recorded: Recorded | None) -> Run:
    """``run`` (the session's instance, locked) brought up to the row ``record_step`` wrote
    with ``whole_row``, without reading it back or marking it changed."""
    assert recorded is not None  # the caller holds the row's lock: the guard holds
    assert recorded.run is not None
    for key in RUN_KEYS:
        set_committed_value(run, key, getattr(recorded.run, key))
    return run
