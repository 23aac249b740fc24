"""Queries over runs: create, read, list, claim and lease, guarded updates, delete.

Every write that a runner makes is fenced: it names the lease (owner and token) it
holds, and a run whose lease moved on refuses the write in the same statement.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any, cast

from sqlalchemy import (
    ColumnElement,
    and_,
    bindparam,
    case,
    delete,
    func,
    insert,
    or_,
    select,
    text,
    update,
)
from sqlalchemy.engine import CursorResult, Result
from sqlalchemy.ext.asyncio import AsyncSession

from app.store.database import Executor, dialect_name
from app.store.models import Run, detached, table, utcnow

PAUSED = ("interrupted", "awaiting_input", "suspended")
WAITING_FOR_PEOPLE = ("interrupted", "awaiting_input")


@dataclass(frozen=True, slots=True)
class Lease:
    owner: str
    token: int


async def notify(session: AsyncSession, channel: str, payload: str) -> None:
    """Queue a Postgres notification; it is delivered only when the transaction commits."""
    if dialect_name(session) == "postgresql":
        await session.execute(text("SELECT pg_notify(:c, :p)"), {"c": channel, "p": payload})


RUN_INSERT = insert(table(Run))
_COLUMN_OF = {attr.key: attr.columns[0].name for attr in Run.__mapper__.column_attrs}


async def insert_run(session: AsyncSession, values: dict[str, Any]) -> Run:
    """Insert a run (``values`` by attribute name); the returned object is not attached
    to the session (a plain Core insert: no unit-of-work upkeep)."""
    await session.execute(RUN_INSERT, [{_COLUMN_OF[key]: v for key, v in values.items()}])
    return detached(Run, values)


async def locked_answers(executor: Executor, run_id: str) -> list[dict[str, Any]]:
    """The answers left for a running run's branches, its row locked until the commit."""
    stmt = select(Run.answers).where(Run.id == run_id).with_for_update()
    found = (await executor.execute(stmt)).scalar_one_or_none()
    return list(found or [])


_GET = select(table(Run)).where(table(Run).c.id == bindparam("run_id"))
# built once: the statement's cache key and compiled form are not made again per call
_GET_LOCKED = select(Run).where(Run.id == bindparam("run_id")).with_for_update()


async def get(session: AsyncSession, run_id: str, *, lock: bool = False) -> Run | None:
    """The run; with ``lock`` its row is locked and the object belongs to the session
    (to be changed), else it is a detached copy read with a constant Core statement."""
    if lock:
        return (await session.execute(_GET_LOCKED, {"run_id": run_id})).scalar_one_or_none()
    row = (await session.execute(_GET, {"run_id": run_id})).first()
    if row is None:
        return None
    found = row._mapping
    return detached(Run, {key: found[column] for key, column in _COLUMN_OF.items()})


async def event_position(session: AsyncSession, run_id: str) -> tuple[str, int] | None:
    """A run's status and last event seq (what a stream needs to know), or None."""
    row = (await session.execute(select(Run.status, Run.event_seq).where(Run.id == run_id))).first()
    return None if row is None else (str(row[0]), int(row[1]))


async def get_by_idempotency_key(session: AsyncSession, key: str) -> Run | None:
    return (
        await session.execute(select(Run).where(Run.idempotency_key == key))
    ).scalar_one_or_none()


async def list_runs(
    session: AsyncSession,
    *,
    statuses: Sequence[str],
    workflow: str | None,
    before: tuple[datetime, str] | None,
    limit: int,
) -> list[Run]:
    """Newest first; ``before`` is the (created_at, id) of the last row of the previous page."""
    stmt = select(Run).order_by(Run.created_at.desc(), Run.id.desc()).limit(limit)
    if statuses:
        stmt = stmt.where(Run.status.in_(statuses))
    if workflow is not None:
        stmt = stmt.where(Run.workflow_name == workflow)
    if before is not None:
        created, run_id = before
        stmt = stmt.where(
            or_(Run.created_at < created, and_(Run.created_at == created, Run.id < run_id))
        )
    return list((await session.execute(stmt)).scalars())


HELD = ("queued", "running")  # a queued run may be reserved (see ``reservation``)


def lease_guard(lease: Lease) -> ColumnElement[bool]:
    return and_(
        Run.status.in_(HELD), Run.lease_owner == lease.owner, Run.lease_token == lease.token
    )


def reservation(owner: str, now: datetime, lease_s: float, token: int) -> dict[str, Any]:
    """The lease columns of a run queued *for* a process: the API transaction that queues
    it (a start, an answer) also hands it to the caller's runner pool, so no claim is
    needed. It stays ``queued`` until the runner's first write; if that process dies,
    the lease lapses and any worker claims it."""
    return {
        "lease_owner": owner,
        "lease_expires_at": now + timedelta(seconds=lease_s),
        "lease_token": token,
    }


def _unreserved(now: datetime) -> ColumnElement[bool]:
    return or_(Run.lease_expires_at.is_(None), Run.lease_expires_at < now)


def _lapsed(now: datetime) -> ColumnElement[bool]:
    """A running run nobody holds: its lease expired (or it never had one)."""
    return and_(
        Run.status == "running", or_(Run.lease_expires_at.is_(None), Run.lease_expires_at < now)
    )


def _claimable(now: datetime) -> ColumnElement[bool]:
    return or_(
        and_(
            Run.status == "queued",
            or_(Run.due_at.is_(None), Run.due_at <= now),
            _unreserved(now),
        ),
        and_(Run.status == "suspended", Run.due_at <= now),
        # a branch's `wait` came due while other branches wait for people
        and_(Run.status.in_(WAITING_FOR_PEOPLE), Run.due_at.is_not(None), Run.due_at <= now),
        _lapsed(now),
    )


def _abandoned(now: datetime) -> ColumnElement[bool]:
    """A run whose holder died: a lapsed lease, or a reservation nobody took up."""
    reserved = and_(
        Run.status == "queued", Run.lease_owner.is_not(None), Run.lease_expires_at < now
    )
    return or_(_lapsed(now), reserved)


def _lease(owner: str, now: datetime, lease_s: float) -> dict[str, Any]:
    """The columns a claim sets: running, under a new lease (a new fencing token)."""
    return {
        "status": "running",
        "lease_owner": owner,
        "lease_expires_at": now + timedelta(seconds=lease_s),
        "lease_token": Run.lease_token + 1,
        "updated_at": now,
    }


async def claim(
    session: AsyncSession, owner: str, limit: int, lease_s: float
) -> list[tuple[str, int]]:
    """Claim up to ``limit`` runnable runs: queued ones, due timers and lapsed leases.

    Candidates are locked with ``FOR UPDATE SKIP LOCKED`` (Postgres), then taken with a
    status-guarded ``UPDATE … RETURNING``, so two workers never claim the same run.
    """
    now = utcnow()
    candidates = select(Run.id).where(_claimable(now)).order_by(Run.due_at).limit(limit)
    if dialect_name(session) == "postgresql":
        candidates = candidates.with_for_update(skip_locked=True)
    ids = list((await session.execute(candidates)).scalars())
    if not ids:
        return []
    stmt = (
        update(Run)
        .where(Run.id.in_(ids), _claimable(now))
        .values(
            **_lease(owner, now, lease_s),
            due_at=None,
            recoveries=Run.recoveries + case((_abandoned(now), 1), else_=0),
        )
        .returning(Run.id, Run.lease_token)
        .execution_options(synchronize_session=False)
    )
    return [(row[0], int(row[1])) for row in (await session.execute(stmt)).all()]


async def claim_queued(
    session: AsyncSession, owner: str, run_id: str, lease_s: float
) -> int | None:
    """Claim one queued, due run by id (one this process just queued); its lease token."""
    now = utcnow()
    stmt = (
        update(Run)
        .where(
            Run.id == run_id,
            Run.status == "queued",
            or_(Run.due_at.is_(None), Run.due_at <= now),
            _unreserved(now),
        )
        .values(
            **_lease(owner, now, lease_s),
            recoveries=Run.recoveries + case((_abandoned(now), 1), else_=0),
        )
        .returning(Run.lease_token)
        .execution_options(synchronize_session=False)
    )
    token = (await session.execute(stmt)).scalar_one_or_none()
    return None if token is None else int(token)


async def extend_leases(
    session: AsyncSession, owner: str, ids: Sequence[str], lease_s: float
) -> set[str]:
    """Extend the leases ``owner`` still holds; returns the ids it still holds."""
    if not ids:
        return set()
    stmt = (
        update(Run)
        .where(Run.id.in_(ids), Run.lease_owner == owner, Run.status.in_(HELD))
        .values(lease_expires_at=utcnow() + timedelta(seconds=lease_s))
        .returning(Run.id)
        .execution_options(synchronize_session=False)
    )
    return set((await session.execute(stmt)).scalars())


async def release(session: AsyncSession, owner: str, ids: Sequence[str] | None = None) -> list[str]:
    """Give runs back to the queue (graceful shutdown): another worker takes them at once.

    Only runs ``owner`` still holds (running, or queued for it) are released; ``ids=None``
    releases every one of them.
    """
    if ids is not None and not ids:
        return []
    stmt = (
        update(Run)
        .where(Run.lease_owner == owner, Run.status.in_(HELD))
        .values(status="queued", lease_owner=None, lease_expires_at=None, updated_at=utcnow())
        .returning(Run.id)
        .execution_options(synchronize_session=False)
    )
    if ids is not None:
        stmt = stmt.where(Run.id.in_(ids))
    return list((await session.execute(stmt)).scalars())


async def requeue_lapsed(session: AsyncSession) -> list[str]:
    """The sweep: running runs whose lease lapsed (their worker died or froze) go back
    to the queue, where any worker claims them. A frozen worker's late writes are refused
    (they need status ``running`` and its lease token)."""
    now = utcnow()
    stmt = (
        update(Run)
        .where(_lapsed(now))
        .values(
            status="queued",
            lease_owner=None,
            lease_expires_at=None,
            updated_at=now,
            recoveries=Run.recoveries + 1,
        )
        .returning(Run.id)
        .execution_options(synchronize_session=False)
    )
    return list((await session.execute(stmt)).scalars())


async def has_claimable(session: AsyncSession) -> bool:
    """Whether some run could be claimed right now."""
    stmt = select(Run.id).where(_claimable(utcnow())).limit(1)
    return (await session.execute(stmt)).first() is not None


async def next_due_at(session: AsyncSession) -> datetime | None:
    """The earliest future time at which some run becomes claimable."""
    stmt = select(func.min(Run.due_at)).where(
        Run.status.in_(("queued", *PAUSED)), Run.due_at.is_not(None)
    )
    due = (await session.execute(stmt)).scalar_one_or_none()
    leases = select(func.min(Run.lease_expires_at)).where(Run.status.in_(HELD))
    lease = (await session.execute(leases)).scalar_one_or_none()
    candidates = [t for t in (due, lease) if t is not None]
    return min(candidates) if candidates else None


async def delete_runs(session: AsyncSession, run_ids: Sequence[str]) -> tuple[int, int]:
    """Delete these runs with their events, checkpoints, agent turns and prompt versions; forks of them
    lose their ``parent_run_id``. Returns (events, checkpoints) deleted with them.

    The foreign keys cascade (SQLite enforces it with foreign_keys=ON); explicit deletes
    keep it true whatever the backend's settings."""
    from app.store.events import events_held
    from app.store.models import AgentTurn, Checkpoint, Event, RunPrompt

    if not run_ids:
        return 0, 0
    await session.execute(delete(AgentTurn).where(AgentTurn.run_id.in_(run_ids)))
    await session.execute(delete(RunPrompt).where(RunPrompt.run_id.in_(run_ids)))
    # counted as events, not rows (a batch row holds several)
    held = delete(Event).where(Event.run_id.in_(run_ids))
    events = sum(
        (await session.execute(held.returning(events_held(Event.type, Event.data)))).scalars()
    )
    checkpoints = await session.execute(delete(Checkpoint).where(Checkpoint.run_id.in_(run_ids)))
    await session.execute(
        update(Run).where(Run.parent_run_id.in_(run_ids)).values(parent_run_id=None)
    )
    await session.execute(delete(Run).where(Run.id.in_(run_ids)))
    return events, rowcount(checkpoints)


async def delete_run(session: AsyncSession, run_id: str) -> None:
    await delete_runs(session, [run_id])


def rowcount(result: Result[Any]) -> int:
    return int(cast(CursorResult[Any], result).rowcount)
