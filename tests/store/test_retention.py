"""Retention: ended runs older than their cutoff go, with their checkpoints and events,
in bounded transactions; paused and running runs are never touched."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from datetime import datetime, timedelta
from typing import Any

import pytest
from sqlalchemy import bindparam, event, func, select, text
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession, async_sessionmaker

from app.engine.retention import policy_rules, prune
from app.store.database import create_engine, create_sessionmaker, transaction
from app.store.models import Checkpoint, Event, Run, UtcDateTime, Workflow, utcnow
from app.store.retention import ADVISORY_KEY, age_rule
from tests.conftest import settings_for, truncate

DAY = timedelta(days=1)


@pytest.fixture
async def db(
    database_url: str,
) -> AsyncIterator[tuple[AsyncEngine, async_sessionmaker[AsyncSession]]]:
    await truncate(database_url)
    engine = create_engine(settings_for(database_url))
    yield engine, create_sessionmaker(engine)
    await engine.dispose()


async def add_workflow(
    sessions: async_sessionmaker[AsyncSession], name: str, version: int, **extra: Any
) -> None:
    definition = {"name": name, "nodes": {"a": {"step": "set"}}, **extra}
    async with transaction(sessions) as session:
        session.add(
            Workflow(name=name, version=version, definition=definition, hash=f"{name}-{version}")
        )


async def add_run(
    sessions: async_sessionmaker[AsyncSession],
    run_id: str,
    status: str,
    ended_ago: timedelta,
    *,
    workflow: str = "plain",
    version: int | None = 1,
    inline: dict[str, Any] | None = None,
    parent: str | None = None,
    events: int = 3,
    checkpoints: int = 2,
) -> None:
    at = utcnow() - ended_ago
    async with transaction(sessions) as session:
        session.add(
            Run(
                id=run_id,
                workflow_name=workflow,
                workflow_version=version,
                definition_hash="h",
                inline_definition=inline,
                status=status,
                inputs={},
                parent_run_id=parent,
                event_seq=events,
                checkpoint_seq=checkpoints,
                created_at=at - DAY,
                updated_at=at,
            )
        )
        await session.flush()
        for seq in range(1, checkpoints + 1):
            session.add(
                Checkpoint(
                    id=f"{run_id}-c{seq}",
                    run_id=run_id,
                    seq=seq,
                    status=status,
                    steps_completed=seq,
                    data={},
                    created_at=at,
                )
            )
        for seq in range(1, events + 1):
            session.add(Event(run_id=run_id, seq=seq, type="node.completed", data={}, ts=at))


async def rows(sessions: async_sessionmaker[AsyncSession]) -> dict[str, tuple[int, int]]:
    """Each run still stored, with its (checkpoints, events) counts."""
    async with transaction(sessions) as session:
        ids = list((await session.execute(select(Run.id))).scalars())
        found = {}
        for run_id in ids:
            cps = await session.scalar(
                select(func.count()).select_from(Checkpoint).where(Checkpoint.run_id == run_id)
            )
            evs = await session.scalar(
                select(func.count()).select_from(Event).where(Event.run_id == run_id)
            )
            found[run_id] = (int(cps or 0), int(evs or 0))
        return found


PAUSED_OR_LIVE = ("queued", "running", "interrupted", "awaiting_input", "suspended")


async def seed_policy_world(sessions: async_sessionmaker[AsyncSession]) -> None:
    await add_workflow(sessions, "plain", 1)
    await add_workflow(sessions, "keeper", 1)
    await add_workflow(sessions, "keeper", 2, retention_days=90)  # the latest version rules
    await add_workflow(sessions, "short", 1, retention_days=2)
    await add_run(sessions, "plain-old", "completed", 40 * DAY)
    await add_run(sessions, "plain-failed-old", "failed", 31 * DAY)
    await add_run(sessions, "plain-cancelled-old", "cancelled", 31 * DAY)
    await add_run(sessions, "plain-recent", "completed", 10 * DAY)
    await add_run(sessions, "fork-of-old", "completed", 1 * DAY, parent="plain-old")
    await add_run(sessions, "keeper-40", "completed", 40 * DAY, workflow="keeper")
    await add_run(sessions, "keeper-100", "completed", 100 * DAY, workflow="keeper", version=2)
    await add_run(sessions, "short-5", "failed", 5 * DAY, workflow="short")
    await add_run(sessions, "short-1", "completed", 1 * DAY - timedelta(hours=1), workflow="short")
    inline = {"name": "adhoc", "retention_days": 3, "nodes": {"a": {"step": "set"}}}
    await add_run(
        sessions, "inline-5", "completed", 5 * DAY, workflow="adhoc", version=None, inline=inline
    )
    await add_run(
        sessions,
        "inline-plain-5",
        "completed",
        5 * DAY,
        workflow="adhoc",
        version=None,
        inline={"name": "adhoc", "nodes": {"a": {"step": "set"}}},
    )
    for status in PAUSED_OR_LIVE:
        await add_run(sessions, f"live-{status}", status, 400 * DAY)
        await add_run(sessions, f"short-live-{status}", status, 400 * DAY, workflow="short")


async def test_policy_expires_by_age_with_workflow_and_inline_overrides(db: Any) -> None:
    _, sessions = db
    await seed_policy_world(sessions)
    before = await rows(sessions)

    report = await prune(sessions, await policy_rules(sessions, 30), batch_runs=2, batch_rows=3)

    after = await rows(sessions)
    gone = set(before) - set(after)
    assert gone == {
        "plain-old",
        "plain-failed-old",
        "plain-cancelled-old",
        "keeper-100",
        "short-5",
        "inline-5",
    }
    # everything else is whole, paused and running runs included however old they are
    assert all(after[run_id] == before[run_id] for run_id in after)
    assert {f"live-{s}" for s in PAUSED_OR_LIVE} <= set(after)
    assert (report.runs, report.checkpoints, report.events) == (6, 12, 18)
    assert report.largest_transaction <= 3
    async with transaction(sessions) as session:
        fork = await session.get(Run, "fork-of-old")
        assert fork is not None and fork.parent_run_id is None


async def test_without_a_policy_nothing_goes_and_workflows_still_override(db: Any) -> None:
    _, sessions = db
    await seed_policy_world(sessions)
    before = await rows(sessions)
    report = await prune(sessions, await policy_rules(sessions, None))
    gone = set(before) - set(await rows(sessions))
    # no default: only runs of workflows (and inline definitions) that set retention_days
    assert gone == {"keeper-100", "short-5", "inline-5"}
    assert report.runs == 3


async def test_dry_run_changes_nothing(db: Any) -> None:
    _, sessions = db
    await seed_policy_world(sessions)
    before = await rows(sessions)
    report = await prune(sessions, await policy_rules(sessions, 30), dry_run=True)
    assert (report.runs, report.checkpoints, report.events) == (6, 12, 18)
    assert report.dry_run and report.transactions == []
    assert await rows(sessions) == before


async def test_by_hand_age_and_workflow_filter(db: Any) -> None:
    _, sessions = db
    await seed_policy_world(sessions)
    before = await rows(sessions)
    report = await prune(sessions, [age_rule(utcnow() - 35 * DAY, "keeper")])
    assert set(before) - set(await rows(sessions)) == {"keeper-40", "keeper-100"}
    assert report.runs == 2
    # by hand, the age given rules: workflows' retention_days do not keep runs from it
    await prune(sessions, [age_rule(utcnow() - 20 * DAY)])
    left = set(await rows(sessions))
    assert "plain-old" not in left and "plain-recent" in left and "short-5" in left
    assert {f"live-{s}" for s in PAUSED_OR_LIVE} <= left


def _json(backend: str, value: str) -> str:
    return f"'{value}'::json" if backend == "postgres" else f"'{value}'"


async def bulk_seed(
    engine: AsyncEngine, backend: str, runs: int, per_run: int, at: datetime
) -> None:
    """``runs`` ended runs with one checkpoint and ``per_run`` events each, in three
    statements (a recursive CTE counts on both backends)."""
    empty = _json(backend, "{}")
    numbers = "WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n WHERE i < {})"
    stamp = bindparam("at", type_=UtcDateTime())
    async with engine.begin() as conn:
        await conn.execute(
            text(
                "INSERT INTO runs (id, workflow_name, workflow_version, definition_hash, status, "
                "inputs, step_count, attempt, event_seq, checkpoint_seq, lease_token, created_at, "
                f"updated_at) {numbers.format(runs)} SELECT 'bulk-' || i, 'bulk', 1, 'h', "
                f"'completed', {empty}, 1, 0, {per_run}, 1, 0, :at, :at FROM n"
            ).bindparams(stamp),
            {"at": at},
        )
        await conn.execute(
            text(
                "INSERT INTO checkpoints (id, run_id, seq, status, steps_completed, data, "
                f"created_at) SELECT id || '-c', id, 1, 'completed', 1, {empty}, :at FROM runs "
                "WHERE workflow_name = 'bulk'"
            ).bindparams(stamp),
            {"at": at},
        )
        await conn.execute(
            text(
                f"INSERT INTO events (run_id, seq, type, ts, data) {numbers.format(per_run)} "
                f"SELECT r.id, n.i, 'node.completed', :at, {empty} FROM runs r, n "
                "WHERE r.workflow_name = 'bulk'"
            ).bindparams(stamp),
            {"at": at},
        )


@pytest.mark.timeout(600)
async def test_a_million_events_go_in_small_transactions_while_others_write(
    db: Any, backend: str
) -> None:
    engine, sessions = db
    await bulk_seed(engine, backend, runs=1000, per_run=1000, at=utcnow() - 60 * DAY)
    await add_run(sessions, "live", "running", 400 * DAY, events=1, checkpoints=1)
    async with transaction(sessions) as session:
        total = await session.scalar(select(func.count()).select_from(Event))
    assert total == 1_000_001

    deletes: list[int] = []  # rows of every DELETE statement, as the driver reports them

    def count_deletes(conn: Any, cursor: Any, statement: str, *_: Any) -> None:
        if statement.lstrip().upper().startswith("DELETE"):
            deletes.append(cursor.rowcount)

    event.listen(engine.sync_engine, "after_cursor_execute", count_deletes)
    batch_rows = 10_000
    writes: list[float] = []  # how long each write to the live run took
    during: list[bool] = []
    pruning = asyncio.Event()
    done = asyncio.Event()

    async def writer() -> None:
        seq = 1
        await pruning.wait()
        while not done.is_set():
            seq += 1
            started = time.monotonic()
            async with transaction(sessions) as session:
                session.add(Event(run_id="live", seq=seq, type="step.progress", data={"n": seq}))
                await session.execute(
                    Run.__table__.update().where(Run.id == "live").values(event_seq=seq)
                )
            writes.append(time.monotonic() - started)
            during.append(not done.is_set())
            await asyncio.sleep(0.05)

    async def pruner() -> Any:
        pruning.set()
        try:
            return await prune(
                sessions, [age_rule(utcnow() - 30 * DAY)], batch_runs=500, batch_rows=batch_rows
            )
        finally:
            done.set()

    writing = asyncio.create_task(writer())
    report = await pruner()
    await writing
    event.remove(engine.sync_engine, "after_cursor_execute", count_deletes)

    assert report.runs == 1000 and report.events == 1_000_000 and report.checkpoints == 1000
    # no transaction deleted more than a batch, and no single statement either
    assert report.largest_transaction <= batch_rows
    assert len(report.transactions) >= 1_000_000 // batch_rows
    assert deletes and max(deletes) <= batch_rows
    assert sum(deletes) == 1_000_000 + 1000 + 1000
    # the live run was written to all along, never stuck behind the prune for long
    assert sum(during) >= 3, (len(writes), report.transactions[:5])
    assert max(writes) < 10, max(writes)
    async with transaction(sessions) as session:
        left = await session.scalar(select(func.count()).select_from(Event))
        live = await session.get(Run, "live")
    assert live is not None and live.status == "running"
    assert left == len(writes) + 1


@pytest.mark.postgres_only
async def test_one_process_prunes_at_a_time(db: Any) -> None:
    """While another transaction holds the pruning lock (another process pruning), a
    prune deletes nothing and says so; once it is released, the prune does the work."""
    engine, sessions = db
    await seed_policy_world(sessions)
    before = await rows(sessions)
    async with engine.connect() as other:
        await other.execute(text("SELECT pg_advisory_xact_lock(:k)"), {"k": ADVISORY_KEY})
        report = await prune(sessions, await policy_rules(sessions, 30))
        assert report.busy and report.runs == 0 and report.events == 0
        assert await rows(sessions) == before
        await other.rollback()
    report = await prune(sessions, await policy_rules(sessions, 30))
    assert not report.busy and report.runs == 6
