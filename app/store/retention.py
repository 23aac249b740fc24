"""Queries for retention: which ended runs are due for deletion, and deleting them in
bounded pieces (events first, then checkpoints with their run).

A run is kept as long as it could still change: only ``completed``, ``failed`` and
``cancelled`` runs whose last change (``updated_at``, the time they ended) is older than
their cutoff are deleted, and every transaction re-checks that under the run's row lock,
so a run resumed meanwhile is left alone. Each transaction deletes at most a given number
of rows, so no lock is held for long.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta

from sqlalchemy import (
    ColumnElement,
    and_,
    delete,
    func,
    literal,
    not_,
    or_,
    select,
    text,
    true,
    tuple_,
)
from sqlalchemy.ext.asyncio import AsyncSession

from app.store import events as event_store
from app.store.database import dialect_name
from app.store.models import Checkpoint, Event, Run, UtcDateTime, Workflow, table

ENDED = ("completed", "failed", "cancelled")
# pg_try_advisory_xact_lock key ("StepPrun"): one process prunes at a time
ADVISORY_KEY = 0x53746570_5072756E

_runs = table(Run)
_events = table(Event)
_checkpoints = table(Checkpoint)


@dataclass(frozen=True, slots=True)
class RetentionRule:
    """Ended runs in ``scope`` that ended before ``cutoff`` go."""

    cutoff: datetime
    scope: ColumnElement[bool]
    label: str

    def due(self) -> ColumnElement[bool]:
        return and_(_runs.c.status.in_(ENDED), _runs.c.updated_at < self.cutoff, self.scope)


def _inline_days() -> ColumnElement[int]:
    days: ColumnElement[int] = _runs.c.inline_definition["retention_days"].as_integer()
    return days


async def workflow_retention(session: AsyncSession) -> dict[str, int]:
    """``retention_days`` of each stored workflow whose latest version sets it."""
    wf = table(Workflow)
    latest = select(wf.c.name, func.max(wf.c.version).label("version")).group_by(wf.c.name)
    latest_sq = latest.subquery()
    days = wf.c.definition["retention_days"].as_integer()
    stmt = (
        select(wf.c.name, days)
        .join(latest_sq, and_(wf.c.name == latest_sq.c.name, wf.c.version == latest_sq.c.version))
        .where(days.is_not(None))
    )
    return {str(name): int(value) for name, value in (await session.execute(stmt)).all()}


async def inline_retention_values(session: AsyncSession, now: datetime) -> list[int]:
    """The distinct ``retention_days`` of runs of inline definitions that ended over a
    day ago (the shortest retention there is)."""
    days = _inline_days()
    stmt = (
        select(days)
        .where(
            _runs.c.status.in_(ENDED),
            _runs.c.updated_at < now - timedelta(days=1),
            _runs.c.workflow_version.is_(None),
            days.is_not(None),
        )
        .distinct()
    )
    return sorted(int(v) for v in (await session.execute(stmt)).scalars())


def policy_rules(
    now: datetime,
    default_days: int | None,
    by_workflow: dict[str, int],
    inline_days: Sequence[int],
) -> list[RetentionRule]:
    """The rules of the configured policy. A run of a stored workflow follows its
    workflow's latest ``retention_days``; a run of an inline definition follows its own;
    every other run follows ``default_days`` (None: kept)."""
    stored = _runs.c.workflow_version.is_not(None)
    inline = _runs.c.workflow_version.is_(None)
    rules = [
        RetentionRule(
            now - timedelta(days=days),
            and_(stored, _runs.c.workflow_name == name),
            f"workflow {name}: {days} days",
        )
        for name, days in sorted(by_workflow.items())
    ]
    rules += [
        RetentionRule(
            now - timedelta(days=days),
            and_(inline, _inline_days() == days),
            f"inline definitions: {days} days",
        )
        for days in inline_days
    ]
    if default_days is not None:
        own = or_(
            and_(stored, _runs.c.workflow_name.in_(sorted(by_workflow))),
            and_(inline, _inline_days().is_not(None)),
        )
        rules.append(
            RetentionRule(now - timedelta(days=default_days), not_(own), f"{default_days} days")
        )
    return rules


def age_rule(cutoff: datetime, workflow: str | None = None) -> RetentionRule:
    """By hand: every ended run (of ``workflow``) that ended before ``cutoff``."""
    scope = _runs.c.workflow_name == workflow if workflow is not None else true()
    label = f"ended before {cutoff.isoformat()}" + (f", workflow {workflow}" if workflow else "")
    return RetentionRule(cutoff, scope, label)


async def try_exclusive(session: AsyncSession) -> bool:
    """Whether this transaction may prune: on Postgres, no other process is pruning in
    a transaction right now (an advisory lock held until commit); SQLite has one process."""
    if dialect_name(session) != "postgresql":
        return True
    stmt = text("SELECT pg_try_advisory_xact_lock(:key)")
    return bool((await session.execute(stmt, {"key": ADVISORY_KEY})).scalar_one())


async def due_runs(
    session: AsyncSession, rule: RetentionRule, limit: int, after: tuple[datetime, str] | None
) -> list[tuple[str, datetime]]:
    """Up to ``limit`` runs due under ``rule``, oldest first, after the ``(updated_at, id)``
    position ``after`` (so runs skipped in one pass are not read again in it)."""
    stmt = (
        select(_runs.c.id, _runs.c.updated_at)
        .where(rule.due())
        .order_by(_runs.c.updated_at, _runs.c.id)
        .limit(limit)
    )
    if after is not None:
        position = tuple_(literal(after[0], UtcDateTime()), literal(after[1]))
        stmt = stmt.where(tuple_(_runs.c.updated_at, _runs.c.id) > position)
    rows = (await session.execute(stmt)).all()
    return [(str(row[0]), row[1]) for row in rows]


async def lock_due(session: AsyncSession, rule: RetentionRule, ids: Sequence[str]) -> list[str]:
    """Those of ``ids`` still due, their rows locked until commit (Postgres; rows another
    transaction holds are skipped this time)."""
    if not ids:
        return []
    stmt = select(_runs.c.id).where(_runs.c.id.in_(ids), rule.due())
    if dialect_name(session) == "postgresql":
        stmt = stmt.with_for_update(skip_locked=True)
    return [str(found) for found in (await session.execute(stmt)).scalars()]


async def delete_events(
    session: AsyncSession, run_ids: Sequence[str], limit: int
) -> tuple[int, int]:
    """Delete at most ``limit`` event rows of these runs; how many rows were deleted, and
    how many events they held (a batch row holds several)."""
    if not run_ids:
        return 0, 0
    some = select(_events.c.run_id, _events.c.seq).where(_events.c.run_id.in_(run_ids)).limit(limit)
    stmt = (
        delete(_events)
        .where(tuple_(_events.c.run_id, _events.c.seq).in_(some))
        .returning(event_store.events_held(_events.c.type, _events.c.data))
    )
    held = list((await session.execute(stmt)).scalars())
    return len(held), sum(held)


async def checkpoint_counts(session: AsyncSession, run_ids: Sequence[str]) -> dict[str, int]:
    stmt = (
        select(_checkpoints.c.run_id, func.count())
        .where(_checkpoints.c.run_id.in_(run_ids))
        .group_by(_checkpoints.c.run_id)
    )
    return {str(run_id): int(n) for run_id, n in (await session.execute(stmt)).all()}


@dataclass(frozen=True, slots=True)
class DueTotals:
    runs: int
    checkpoints: int
    events: int


async def due_totals(session: AsyncSession, rule: RetentionRule) -> DueTotals:
    """What ``rule`` would delete now (for a dry run)."""
    due_ids = select(_runs.c.id).where(rule.due())
    runs = (await session.execute(select(func.count()).select_from(due_ids.subquery()))).scalar()
    checkpoints = (
        await session.execute(
            select(func.count()).select_from(_checkpoints).where(_checkpoints.c.run_id.in_(due_ids))
        )
    ).scalar()
    events = (
        await session.execute(
            select(
                func.coalesce(func.sum(event_store.events_held(_events.c.type, _events.c.data)), 0)
            ).where(_events.c.run_id.in_(due_ids))
        )
    ).scalar()
    return DueTotals(int(runs or 0), int(checkpoints or 0), int(events or 0))
