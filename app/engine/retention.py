"""Retention: deleting ended runs, with their checkpoints and events, once they are old.

``STEPWISE_RETENTION_DAYS`` (unset: keep everything) and a workflow's ``retention_days``
say how long an ended run is kept (see ``app.store.retention.policy_rules``). The
``RetentionSweeper`` applies them periodically; ``stepwise prune`` calls ``prune`` by hand.

Deletion goes in small transactions, so that no lock is held for long and the runners
and the API keep writing meanwhile: for each batch of due runs, their events go
``batch_rows`` at a time, then the runs themselves with their checkpoints, as many runs
per transaction as keep it within ``batch_rows`` checkpoints. On Postgres, every such
transaction first takes an advisory lock: a process that finds another pruning leaves
the work to it.
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass, field
from datetime import datetime

from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from app.settings import Settings
from app.store import retention as retention_store
from app.store import runs as run_store
from app.store.database import transaction
from app.store.models import utcnow
from app.store.retention import RetentionRule

log = logging.getLogger(__name__)

FIRST_SWEEP_S = 60.0


@dataclass(slots=True)
class PruneReport:
    """What a prune deleted (or, for a dry run, would delete)."""

    runs: int = 0
    checkpoints: int = 0
    events: int = 0
    dry_run: bool = False
    # another process was pruning: this one stopped and left the work to it
    busy: bool = False
    # rows deleted by each transaction, in order (empty for a dry run)
    transactions: list[int] = field(default_factory=list)
    rules: list[str] = field(default_factory=list)

    @property
    def largest_transaction(self) -> int:
        return max(self.transactions, default=0)


class _Busy(Exception):
    """Another process holds the pruning lock."""


async def policy_rules(
    sessions: async_sessionmaker[AsyncSession], default_days: int | None
) -> list[RetentionRule]:
    """The configured policy as rules, as of now."""
    now = utcnow()
    async with transaction(sessions) as session:
        by_workflow = await retention_store.workflow_retention(session)
        inline_days = await retention_store.inline_retention_values(session, now)
    return retention_store.policy_rules(now, default_days, by_workflow, inline_days)


async def prune(
    sessions: async_sessionmaker[AsyncSession],
    rules: list[RetentionRule],
    *,
    batch_runs: int = 500,
    batch_rows: int = 5000,
    dry_run: bool = False,
) -> PruneReport:
    report = PruneReport(dry_run=dry_run, rules=[rule.label for rule in rules])
    if dry_run:
        async with transaction(sessions) as session:
            for rule in rules:
                totals = await retention_store.due_totals(session, rule)
                report.runs += totals.runs
                report.checkpoints += totals.checkpoints
                report.events += totals.events
        return report
    try:
        for rule in rules:
            await _prune_rule(sessions, rule, batch_runs, batch_rows, report)
    except _Busy:
        report.busy = True
    return report


async def _prune_rule(
    sessions: async_sessionmaker[AsyncSession],
    rule: RetentionRule,
    batch_runs: int,
    batch_rows: int,
    report: PruneReport,
) -> None:
    after: tuple[datetime, str] | None = None
    while True:
        async with transaction(sessions) as session:
            batch = await retention_store.due_runs(session, rule, batch_runs, after)
        if not batch:
            return
        after = batch[-1][1], batch[-1][0]
        ids = [run_id for run_id, _ in batch]
        await _delete_events(sessions, rule, ids, batch_rows, report)
        await _delete_runs(sessions, rule, ids, batch_rows, report)
        await asyncio.sleep(0)  # let this process's other work in between batches


async def _exclusive(session: AsyncSession) -> None:
    if not await retention_store.try_exclusive(session):
        raise _Busy


async def _delete_events(
    sessions: async_sessionmaker[AsyncSession],
    rule: RetentionRule,
    ids: list[str],
    batch_rows: int,
    report: PruneReport,
) -> None:
    while True:
        async with transaction(sessions) as session:
            await _exclusive(session)
            due = await retention_store.lock_due(session, rule, ids)
            deleted, events = await retention_store.delete_events(session, due, batch_rows)
        report.transactions.append(deleted)
        report.events += events
        if deleted < batch_rows:
            return
        await asyncio.sleep(0)


async def _delete_runs(
    sessions: async_sessionmaker[AsyncSession],
    rule: RetentionRule,
    ids: list[str],
    batch_rows: int,
    report: PruneReport,
) -> None:
    remaining = list(ids)
    while remaining:
        async with transaction(sessions) as session:
            await _exclusive(session)
            due = await retention_store.lock_due(session, rule, remaining)
            counts = await retention_store.checkpoint_counts(session, due)
            chosen: list[str] = []
            rows = 0
            for run_id in due:
                n = counts.get(run_id, 0) + 1
                if chosen and rows + n > batch_rows:
                    break
                chosen.append(run_id)
                rows += n
            events, checkpoints = await run_store.delete_runs(session, chosen)
        # the chosen are gone; runs no longer due (resumed, or locked elsewhere) are left
        left = set(due) - set(chosen)
        remaining = [run_id for run_id in remaining if run_id in left]
        report.runs += len(chosen)
        report.checkpoints += checkpoints
        report.events += events
        report.transactions.append(len(chosen) + checkpoints + events)
        await asyncio.sleep(0)


class RetentionSweeper:
    """The periodic sweep, started by the runtime when a retention policy may apply."""

    def __init__(self, settings: Settings, sessions: async_sessionmaker[AsyncSession]) -> None:
        self.settings = settings
        self.sessions = sessions
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        self._task = asyncio.create_task(self._loop(), name="stepwise-retention")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
            self._task = None

    async def sweep(self) -> PruneReport:
        settings = self.settings
        rules = await policy_rules(self.sessions, settings.retention_days)
        report = await prune(
            self.sessions,
            rules,
            batch_runs=settings.retention_batch_runs,
            batch_rows=settings.retention_batch_rows,
        )
        if report.runs:
            log.info(
                "retention: deleted %d run(s), %d checkpoint(s), %d event(s) in %d transaction(s)",
                report.runs,
                report.checkpoints,
                report.events,
                len(report.transactions),
            )
        return report

    async def _loop(self) -> None:
        # the first sweep soon after start, so that a process restarted more often than
        # the interval still sweeps
        delay = min(self.settings.retention_interval_s, FIRST_SWEEP_S)
        while True:
            await asyncio.sleep(delay)
            delay = self.settings.retention_interval_s
            try:
                await self.sweep()
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                log.warning("retention sweep failed (%s: %s)", type(exc).__name__, exc)
