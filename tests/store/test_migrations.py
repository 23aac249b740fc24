"""Migrations go up and down on both backends, and head matches the ORM models."""

from __future__ import annotations

import asyncio
import json
import os
import sys
import uuid
from pathlib import Path
from typing import Any

import pytest
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from sqlalchemy import inspect, text
from sqlalchemy.ext.asyncio import AsyncSession, create_async_engine

from app.store.database import migrate
from app.store.events import NewEvent, insert_events
from app.store.models import Base
from tests.conftest import REQUIRE_PG, _pg_admin, _pg_available, _pg_url, scratch_pg_database

TABLES = {
    "workflows",
    "prompts",
    "runs",
    "checkpoints",
    "events",
    "agent_turns",
    "webhook_deliveries",
}


async def _state(url: str) -> tuple[set[str], list[Any], str | None]:
    engine = create_async_engine(url)
    try:
        async with engine.connect() as conn:

            def read(sync_conn: Any) -> tuple[set[str], list[Any], str | None]:
                tables = set(inspect(sync_conn).get_table_names())
                context = MigrationContext.configure(sync_conn)
                diff = compare_metadata(context, Base.metadata) if tables >= TABLES else []
                return tables, diff, context.get_current_revision()

            return await conn.run_sync(read)
    finally:
        await engine.dispose()


async def _round_trip(url: str) -> None:
    await migrate(url)
    tables, diff, revision = await _state(url)
    assert tables >= TABLES
    assert diff == [], f"the migrations and app/store/models.py differ: {diff}"
    assert revision is not None

    await migrate(url, "base", down=True)
    tables, _, revision = await _state(url)
    assert not tables & TABLES
    assert revision is None

    await migrate(url)
    tables, diff, _ = await _state(url)
    assert tables >= TABLES and diff == []
    # the schema works: a row goes in
    engine = create_async_engine(url)
    try:
        async with engine.begin() as conn:
            await conn.execute(
                text(
                    "INSERT INTO workflows (name, version, definition, hash, created_at) "
                    "VALUES ('w', 1, '{}', 'h', CURRENT_TIMESTAMP)"
                )
            )
    finally:
        await engine.dispose()


async def test_sqlite_up_down_up(tmp_path: Path) -> None:
    await _round_trip(f"sqlite+aiosqlite:///{tmp_path / 'fresh.db'}")


async def test_postgres_up_down_up() -> None:
    if not await _pg_available():
        if REQUIRE_PG:
            pytest.fail("Postgres is not reachable (STEPWISE_REQUIRE_POSTGRES=1)")
        pytest.skip("Postgres is not reachable")
    name = f"stepwise_migrations_{os.getpid()}_{uuid.uuid4().hex[:6]}"
    await _pg_admin(f'CREATE DATABASE "{name}"')
    try:
        await _round_trip(_pg_url(name))
    finally:
        await asyncio.shield(_pg_admin(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))


async def _batches_round_trip(url: str) -> None:
    """Down from 0008, each batch row becomes its events again; up, the view reads them."""
    await migrate(url)
    engine = create_async_engine(url)
    run_id = str(uuid.uuid4())
    events = [
        NewEvent("node.started", "a", {"step": "set", "visit": 1}),
        NewEvent("state.updated", "a", {"keys": ["n"]}),
        NewEvent("node.completed", "a", {"output": {"n": 1}}),
    ]
    query = text("SELECT seq, type, node, data FROM {} WHERE run_id = :id ORDER BY seq")

    async def read(table: str) -> list[tuple[Any, ...]]:
        async with engine.connect() as conn:
            found = await conn.execute(text(str(query).format(table)), {"id": run_id})
            return [(s, t, n, json.loads(d) if isinstance(d, str) else d) for s, t, n, d in found]

    try:
        async with engine.begin() as conn:
            await conn.execute(
                text(
                    "INSERT INTO runs (id, workflow_name, definition_hash, status, inputs,"
                    " step_count, attempt, event_seq, checkpoint_seq, lease_token, recoveries,"
                    " error_attempts, created_at, updated_at) VALUES (:id, 'w', 'h', 'completed',"
                    " '{}', 1, 0, 4, 0, 0, 0, 0, CURRENT_TIMESTAMP, CURRENT_TIMESTAMP)"
                ),
                {"id": run_id},
            )
            session = AsyncSession(bind=conn)
            await insert_events(session, run_id, 1, events[:1], groups=[1])
            await insert_events(session, run_id, 4, events, groups=[3])
            await session.flush()
        expected = [(1, "node.started", "a", {"step": "set", "visit": 1})] + [
            (seq, e.type, e.node, e.data) for seq, e in enumerate(events, start=2)
        ]
        assert await read("event_log") == expected
        assert len(await read("events")) == 2

        await migrate(url, "0007", down=True)
        assert await read("events") == expected

        await migrate(url)
        assert await read("event_log") == expected
    finally:
        await engine.dispose()


async def test_sqlite_event_batches_down_and_up(tmp_path: Path) -> None:
    await _batches_round_trip(f"sqlite+aiosqlite:///{tmp_path / 'batches.db'}")


async def test_postgres_event_batches_down_and_up() -> None:
    async with scratch_pg_database("stepwise_batches", "the migration tests of batches") as url:
        await _batches_round_trip(url)


async def test_processes_starting_together_migrate_one_after_another() -> None:
    """``serve`` processes started at once on a fresh Postgres database each apply the
    migrations at start: they take turns (an advisory lock), the first applies them and
    the others find the schema at head. Without that, two created ``alembic_version``
    at once and one process died on a unique violation."""
    if not await _pg_available():
        if REQUIRE_PG:
            pytest.fail("Postgres is not reachable (STEPWISE_REQUIRE_POSTGRES=1)")
        pytest.skip("Postgres is not reachable")
    name = f"stepwise_concurrent_{os.getpid()}_{uuid.uuid4().hex[:6]}"
    await _pg_admin(f'CREATE DATABASE "{name}"')
    try:
        env = {**os.environ, "STEPWISE_DATABASE_URL": _pg_url(name)}
        command = [sys.executable, "-m", "app", "migrate"]
        procs = [
            await asyncio.create_subprocess_exec(*command, env=env, stderr=asyncio.subprocess.PIPE)
            for _ in range(3)
        ]
        outcomes = [(await p.wait(), (await p.stderr.read()).decode()) for p in procs if p.stderr]
        assert [code for code, _ in outcomes] == [0, 0, 0], outcomes
        tables, diff, revision = await _state(_pg_url(name))
        assert tables >= TABLES and diff == [] and revision is not None
    finally:
        await asyncio.shield(_pg_admin(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
