"""The webhook outbox (``webhook_deliveries``): rows written by the transaction that
paused or ended a run, claimed by any process for an attempt, deleted once done.

A claim moves a row's ``due_at`` past the attempt's end (the *claim window*), so a row
whose process died mid-attempt becomes claimable again by itself. A run's deliveries go
out in order: a row is claimable only once no earlier row of its run is left.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import and_, delete, exists, insert, select, update
from sqlalchemy.ext.asyncio import AsyncSession
from sqlalchemy.orm import aliased

from app.store.database import Executor, dialect_name
from app.store.models import WebhookDelivery, table, utcnow

_TABLE = table(WebhookDelivery)


@dataclass(frozen=True, slots=True)
class Delivery:
    """A claimed delivery: ``attempts`` counts this one."""

    id: int
    run_id: str
    url: str
    body: Any
    key: str
    attempts: int


async def enqueue(executor: Executor, resource: dict[str, Any]) -> None:
    """Owe the run's ``webhook`` URL a POST of ``resource`` (a run resource as JSON), due
    now, in the caller's transaction. Its Idempotency-Key names the run, its status and
    its ``updated_at``: the same for every attempt, different for each pause and end."""
    now = utcnow()
    run_id = resource["id"]
    await executor.execute(
        insert(_TABLE).values(
            run_id=run_id,
            url=resource["webhook"],
            body=resource,
            key=f"{run_id}:{resource['status']}:{resource['updated_at']}",
            attempts=0,
            due_at=now,
            created_at=now,
        )
    )


def _first_of_its_run() -> Any:
    earlier = aliased(WebhookDelivery)
    return ~exists().where(
        and_(earlier.run_id == WebhookDelivery.run_id, earlier.id < WebhookDelivery.id)
    )


async def claim(session: AsyncSession, limit: int, window_s: float) -> list[Delivery]:
    """Claim up to ``limit`` due deliveries for an attempt each, for ``window_s``.

    Candidates are locked with ``FOR UPDATE SKIP LOCKED`` (Postgres), then taken with an
    ``UPDATE … RETURNING`` guarded on their due time, so two processes never claim the
    same row in the same window."""
    now = utcnow()
    candidates = (
        select(WebhookDelivery.id)
        .where(WebhookDelivery.due_at <= now, _first_of_its_run())
        .order_by(WebhookDelivery.due_at)
        .limit(limit)
    )
    if dialect_name(session) == "postgresql":
        candidates = candidates.with_for_update(skip_locked=True)
    ids = list((await session.execute(candidates)).scalars())
    if not ids:
        return []
    column = _TABLE.c
    stmt = (
        update(_TABLE)
        .where(column.id.in_(ids), column.due_at <= now)
        .values(due_at=now + timedelta(seconds=window_s), attempts=column.attempts + 1)
        .returning(column.id, column.run_id, column.url, column.body, column.key, column.attempts)
    )
    rows = (await session.execute(stmt)).all()
    return sorted((Delivery(*row) for row in rows), key=lambda d: d.id)


async def done(session: AsyncSession, delivery_id: int) -> None:
    """The delivery was made (or given up): it is owed no more."""
    await session.execute(delete(_TABLE).where(_TABLE.c.id == delivery_id))


async def release(session: AsyncSession, delivery_ids: list[int]) -> None:
    """Attempts that were stopped (the process is shutting down): due again at once."""
    stmt = update(_TABLE).where(_TABLE.c.id.in_(delivery_ids)).values(due_at=utcnow())
    await session.execute(stmt)


async def retry_at(session: AsyncSession, delivery_id: int, due_at: datetime, error: str) -> None:
    """The attempt failed: the delivery is claimable again from ``due_at``."""
    stmt = (
        update(_TABLE)
        .where(_TABLE.c.id == delivery_id)
        .values(due_at=due_at, last_error=error[:2000])
    )
    await session.execute(stmt)
