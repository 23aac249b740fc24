"""Event storage: each run's events with a gapless ``seq``, appended in the writer's
transaction after the run row's ``event_seq`` counter was advanced."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import Select, insert, or_, select
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncSession

from app import metrics
from app.store.database import Executor, driver_executemany, encode_json
from app.store.models import Event, table, utcnow

EVENT_INSERT = insert(table(Event))
EVENT_INSERT_SQL = (
    "INSERT INTO events (run_id, seq, type, node, ts, data) VALUES ($1, $2, $3, $4, $5, $6)"
)


@dataclass(frozen=True, slots=True)
class NewEvent:
    type: str
    node: str | None = None
    data: dict[str, Any] | None = None


async def insert_events(
    session: Executor,
    run_id: str,
    last_seq: int,
    events: Sequence[NewEvent],
    ts: datetime | Sequence[datetime] | None = None,
    *,
    direct: bool = False,
) -> list[dict[str, Any]]:
    """Insert ``events`` numbered so that the last one gets ``last_seq``, stamped ``ts``
    (one time for all, or one per event); the rows as inserted. ``direct``: ``session`` is
    a Postgres Core connection (the rows then go straight through the driver)."""
    if not events:
        return []
    stamps = [ts or utcnow()] * len(events) if not isinstance(ts, Sequence) else ts
    rows = event_rows(run_id, last_seq, events, stamps)
    if direct and isinstance(session, AsyncConnection):
        await driver_executemany(
            session,
            EVENT_INSERT_SQL,
            [
                (run_id, r["seq"], r["type"], r["node"], r["ts"], encode_json(r["data"]).decode())
                for r in rows
            ],
        )
    else:
        # one constant statement (its compiled form cached), rows sent as executemany
        # parameters: one pipelined round trip
        await session.execute(EVENT_INSERT, rows)
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


async def has_event(session: AsyncSession, run_id: str, type_: str) -> bool:
    stmt = select(Event.seq).where(Event.run_id == run_id, Event.type == type_).limit(1)
    return (await session.execute(stmt)).first() is not None


def _type_filter(stmt: Select[Any], types: Sequence[str]) -> Select[Any]:
    conditions = []
    for pattern in types:
        if pattern.endswith("*"):
            conditions.append(Event.type.startswith(pattern[:-1], autoescape=True))
        else:
            conditions.append(Event.type == pattern)
    return stmt.where(or_(*conditions)) if conditions else stmt


async def list_events(
    session: AsyncSession,
    run_id: str,
    *,
    after: int = 0,
    limit: int = 500,
    types: Sequence[str] = (),
) -> list[Event]:
    stmt = (
        select(Event)
        .where(Event.run_id == run_id, Event.seq > after)
        .order_by(Event.seq)
        .limit(limit)
    )
    return list((await session.execute(_type_filter(stmt, types))).scalars())
