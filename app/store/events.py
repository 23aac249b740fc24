"""Event storage: each run's events with a gapless ``seq``, appended in the writer's
transaction after the run row's ``event_seq`` counter was advanced.

A row holds one event, or all the events of one step's write (a *batch*: type
``BATCH``, ``seq`` the seq of its last event, ``data`` the ``[type, node, data]`` of each
event, oldest first, all stamped with the row's ``ts``). A step writes about five events
(``node.started``, ``state.updated``, ``branch.evaluated``, ``node.completed``,
``checkpoint.saved``); as one row they cost the database one insert instead of five.
Readers see events only: ``list_events`` expands the batches, and the ``event_log`` view
(migration 0008) does the same for SQL.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import ColumnElement, Select, case, func, insert, or_, select
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncSession
from sqlalchemy.orm import QueryableAttribute

from app import metrics
from app.store.database import Executor, driver_executemany, encode_json
from app.store.models import Event, table, utcnow

# the type of a row holding several events: not an event type (those are dotted names)
BATCH = "[batch]"

EVENT_INSERT = insert(table(Event))
EVENT_INSERT_SQL = (
    "INSERT INTO events (run_id, seq, type, node, ts, data) VALUES ($1, $2, $3, $4, $5, $6)"
)


@dataclass(frozen=True, slots=True)
class NewEvent:
    type: str
    node: str | None = None
    data: dict[str, Any] | None = None


@dataclass(frozen=True, slots=True)
class StoredEvent:
    """One event as read back (a batch row gives several)."""

    run_id: str
    seq: int
    type: str
    node: str | None
    ts: datetime
    data: Any


async def insert_events(
    session: Executor,
    run_id: str,
    last_seq: int,
    events: Sequence[NewEvent],
    ts: datetime | Sequence[datetime] | None = None,
    *,
    groups: Sequence[int] = (),
    direct: bool = False,
) -> list[dict[str, Any]]:
    """Insert ``events`` numbered so that the last one gets ``last_seq``, stamped ``ts``
    (one time for all, or one per event); the rows of the events, as numbered. ``groups``:
    how many events each write has, in order (each group of two or more is stored as one
    batch row); none: one row each. ``direct``: ``session`` is a Postgres Core connection
    (the rows then go straight through the driver)."""
    if not events:
        return []
    stamps = [ts or utcnow()] * len(events) if not isinstance(ts, Sequence) else ts
    rows = event_rows(run_id, last_seq, events, stamps)
    stored = batched(rows, groups) if groups else rows
    if direct and isinstance(session, AsyncConnection):
        await driver_executemany(
            session,
            EVENT_INSERT_SQL,
            [
                (run_id, r["seq"], r["type"], r["node"], r["ts"], encode_json(r["data"]).decode())
                for r in stored
            ],
        )
    else:
        # one constant statement (its compiled form cached), rows sent as executemany
        # parameters: one pipelined round trip
        await session.execute(EVENT_INSERT, stored)
    # counted when written (a transaction that then rolls back is rare: a lost lease)
    metrics.observe_events(e.type for e in events)
    return rows


def event_rows(
    run_id: str, last_seq: int, events: Sequence[NewEvent], stamps: Sequence[datetime]
) -> list[dict[str, Any]]:
    """The rows of ``events`` numbered so that the last one gets ``last_seq``."""
    first = last_seq - len(events) + 1
    return [
        {
            "run_id": run_id,
            "seq": first + i,
            "type": e.type,
            "node": e.node,
            "ts": stamp,
            "data": e.data or {},
        }
        for i, (e, stamp) in enumerate(zip(events, stamps, strict=True))
    ]


def batched(rows: Sequence[dict[str, Any]], groups: Sequence[int]) -> list[dict[str, Any]]:
    """``rows`` (``event_rows``) as stored: each group of two or more (a write's events,
    one stamp) as one batch row."""
    stored: list[dict[str, Any]] = []
    at = 0
    for size in groups:
        group = rows[at : at + size]
        at += size
        if size == 1:
            stored.append(group[0])
        elif size > 1:
            last = group[-1]
            stored.append(
                {
                    "run_id": last["run_id"],
                    "seq": last["seq"],
                    "type": BATCH,
                    "node": None,
                    "ts": last["ts"],
                    "data": [[r["type"], r["node"], r["data"]] for r in group],
                }
            )
    assert at == len(rows), "groups must cover the rows"
    return stored


def stored_json(events: Sequence[NewEvent], at: int, checkpoint_id: str | None) -> tuple[str, str]:
    """The JSON text of ``events``' row (a batch unless there is one event) as ``(head,
    tail)``: with ``checkpoint_id``, ``events[at]`` is that checkpoint's ``checkpoint.saved``,
    whose seq only the statement knows: the row's data is ``head + seq + tail``; without,
    ``head`` is the whole of it and ``tail`` empty."""
    if checkpoint_id is None:
        if len(events) == 1:
            return encode_json(events[0].data or {}).decode(), ""
        return encode_json([[e.type, e.node, e.data or {}] for e in events]).decode(), ""
    saved = '{"checkpoint_id":' + encode_json(checkpoint_id).decode() + ',"seq":'
    more = events[at].data  # the placeholder's data: more of the event's (its branch)
    close = ("," + encode_json(more).decode()[1:-1] if more else "") + "}"
    if len(events) == 1:
        return saved, close
    before = [[e.type, e.node, e.data or {}] for e in events[:at]]
    after = [[e.type, e.node, e.data or {}] for e in events[at + 1 :]]
    type_node = encode_json([events[at].type, events[at].node]).decode()[:-1]
    head = "[" + (encode_json(before).decode()[1:-1] + "," if before else "")
    head += type_node + "," + saved
    tail = close + "]" + ("," + encode_json(after).decode()[1:-1] if after else "") + "]"
    return head, tail


def expand(
    run_id: str, seq: int, type_: str, node: str | None, ts: datetime, data: Any
) -> list[StoredEvent]:
    """The events of one stored row."""
    if type_ != BATCH:
        return [StoredEvent(run_id, seq, type_, node, ts, data)]
    first = seq - len(data) + 1
    return [StoredEvent(run_id, first + i, t, n, ts, d) for i, (t, n, d) in enumerate(data)]


_COLUMNS = (Event.seq, Event.type, Event.node, Event.ts, Event.data)


async def has_event(session: AsyncSession, run_id: str, type_: str) -> bool:
    stmt = select(*_COLUMNS).where(Event.run_id == run_id, Event.type.in_((type_, BATCH)))
    for row in await session.execute(stmt):
        if any(e.type == type_ for e in expand(run_id, *row)):
            return True
    return False


def _type_filter(stmt: Select[Any], types: Sequence[str]) -> Select[Any]:
    """Rows that may hold an event of ``types``: rows of those types, and every batch."""
    conditions = [Event.type == BATCH]
    for pattern in types:
        if pattern.endswith("*"):
            conditions.append(Event.type.startswith(pattern[:-1], autoescape=True))
        else:
            conditions.append(Event.type == pattern)
    return stmt.where(or_(*conditions)) if types else stmt


def matches(event_type: str, patterns: Sequence[str]) -> bool:
    """``?types=``: exact types or prefix globs (``node.*``); no patterns match all."""
    if not patterns:
        return True
    return any(
        event_type.startswith(p[:-1]) if p.endswith("*") else event_type == p for p in patterns
    )


async def list_events(
    session: AsyncSession,
    run_id: str,
    *,
    after: int = 0,
    limit: int = 500,
    types: Sequence[str] = (),
) -> list[StoredEvent]:
    """Up to ``limit`` of the run's events after seq ``after`` (of ``types``: exact types or
    prefix globs such as ``node.*``; none: all), oldest first."""
    if not types:
        return await _events_between(session, run_id, after, after + limit)
    found: list[StoredEvent] = []
    while len(found) < limit:
        # every batch may hold an event of ``types``: read rows in chunks, so that a
        # rare type costs a few reads, not one a row
        chunk = max(limit - len(found), FILTERED_CHUNK)
        stmt = _type_filter(_rows_after(run_id, after).limit(chunk), types)
        rows = (await session.execute(stmt)).all()
        found.extend(
            event
            for row in rows
            for event in expand(run_id, *row)
            if event.seq > after and matches(event.type, types)
        )
        if len(rows) < chunk:
            break
        after = rows[-1][0]
    return found[:limit]


# rows read at a time for a filtered page
FILTERED_CHUNK = 100


def _rows_after(run_id: str, after: int) -> Select[Any]:
    # a row's seq is its last event's: a batch straddling ``after`` comes whole
    return select(*_COLUMNS).where(Event.run_id == run_id, Event.seq > after).order_by(Event.seq)


async def _events_between(
    session: AsyncSession, run_id: str, after: int, last: int
) -> list[StoredEvent]:
    """The events with seq in ``(after, last]``: seqs are gapless, so they are in the rows
    whose seq is in that range and, when those end short of ``last``, the next row."""
    stmt = _rows_after(run_id, after).where(Event.seq <= last)
    rows = list((await session.execute(stmt)).all())
    if not rows or rows[-1][0] < last:
        rows += (await session.execute(_rows_after(run_id, last).limit(1))).all()
    return [event for row in rows for event in expand(run_id, *row) if after < event.seq <= last]


def events_held(
    type_: ColumnElement[str] | QueryableAttribute[str],
    data: ColumnElement[Any] | QueryableAttribute[Any],
) -> ColumnElement[int]:
    """How many events a row holds (a batch: one for each of its items)."""
    return case((type_ == BATCH, func.json_array_length(data)), else_=1)
