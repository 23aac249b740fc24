"""Connections held for one-statement writes (``app.store.held``): lent again without a
pool checkout, and back in the pool whenever they idle, fail, are cancelled, hold a
transaction or the process stops."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from typing import Any

import pytest
from sqlalchemy import text
from sqlalchemy.exc import DBAPIError, OperationalError
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine, AsyncSession, async_sessionmaker

from app.settings import Settings
from app.store import held
from app.store.database import create_engine, create_sessionmaker, driver_fetchrow, lone_statement

pytestmark = pytest.mark.postgres_only

IDLE_S = 0.2


@pytest.fixture
async def engine(database_url: str) -> AsyncIterator[AsyncEngine]:
    engine = create_engine(Settings(database_url=database_url, db_pool_size=4))
    yield engine
    lent = held.held_for(engine)
    if lent is not None:
        await lent.close()
    await engine.dispose()


@pytest.fixture
def sessions(engine: AsyncEngine) -> async_sessionmaker[AsyncSession]:
    held.hold(engine, 2, IDLE_S)
    return create_sessionmaker(engine)


def checked_out(engine: AsyncEngine) -> int:
    checked: Any = engine.sync_engine.pool.checkedout()  # type: ignore[attr-defined]
    return int(checked)


async def backend_pid(sessions: async_sessionmaker[AsyncSession]) -> int:
    async with lone_statement(sessions) as connection:
        row = await driver_fetchrow(connection, "SELECT pg_backend_pid()", [])
    assert row is not None
    return int(row[0])


async def test_a_connection_is_lent_again_without_going_back_to_the_pool(
    engine: AsyncEngine, sessions: async_sessionmaker[AsyncSession]
) -> None:
    first = await backend_pid(sessions)
    assert checked_out(engine) == 1  # kept here, not checked in
    assert [await backend_pid(sessions) for _ in range(5)] == [first] * 5
    assert checked_out(engine) == 1


async def test_without_hold_every_statement_checks_a_connection_out_and_in(
    database_url: str,
) -> None:
    engine = create_engine(Settings(database_url=database_url))
    try:
        await backend_pid(create_sessionmaker(engine))
        assert checked_out(engine) == 0
    finally:
        await engine.dispose()


async def test_idle_connections_go_back_to_the_pool(
    engine: AsyncEngine, sessions: async_sessionmaker[AsyncSession]
) -> None:
    await backend_pid(sessions)
    assert checked_out(engine) == 1
    for _ in range(40):  # the sweep runs idle_s after the return, then once more at most
        await asyncio.sleep(IDLE_S / 2)
        if checked_out(engine) == 0:
            break
    assert checked_out(engine) == 0


async def test_no_more_than_size_are_kept(
    engine: AsyncEngine, sessions: async_sessionmaker[AsyncSession]
) -> None:
    gate = asyncio.Event()
    inside = 0

    async def one() -> None:
        nonlocal inside
        async with lone_statement(sessions) as connection:
            await driver_fetchrow(connection, "SELECT 1", [])
            inside += 1
            await gate.wait()

    tasks = [asyncio.create_task(one()) for _ in range(4)]
    while inside < 4:
        await asyncio.sleep(0.01)
    assert checked_out(engine) == 4  # two more than it keeps: checked out from the pool
    gate.set()
    await asyncio.gather(*tasks)
    assert checked_out(engine) == 2


async def test_a_failed_statement_sends_its_connection_back_to_the_pool(
    engine: AsyncEngine, sessions: async_sessionmaker[AsyncSession]
) -> None:
    first = await backend_pid(sessions)
    with pytest.raises(DBAPIError):
        async with lone_statement(sessions) as connection:
            await driver_fetchrow(connection, "SELECT 1 / 0", [])
    assert checked_out(engine) == 0
    # the next write gets a working connection (the same one, from the pool)
    assert await backend_pid(sessions) == first


async def test_a_cancelled_write_sends_its_connection_back_to_the_pool(
    engine: AsyncEngine, sessions: async_sessionmaker[AsyncSession]
) -> None:
    await backend_pid(sessions)
    started = asyncio.Event()

    async def slow() -> None:
        async with lone_statement(sessions) as connection:
            started.set()
            await driver_fetchrow(connection, "SELECT pg_sleep(5)", [])

    task = asyncio.create_task(slow())
    await started.wait()
    await asyncio.sleep(0.05)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    lent = held.held_for(engine)
    assert lent is not None and not lent.idle
    assert await backend_pid(sessions) > 0  # and the next write works


async def hold_two(sessions: async_sessionmaker[AsyncSession]) -> set[int]:
    """Two connections lent at once, then both held: their backends' pids."""
    gate = asyncio.Event()

    async def hold_one() -> int:
        async with lone_statement(sessions) as connection:
            row = await driver_fetchrow(connection, "SELECT pg_backend_pid()", [])
            await gate.wait()
        assert row is not None
        return int(row[0])

    tasks = [asyncio.create_task(hold_one()) for _ in range(2)]
    await asyncio.sleep(0.2)
    gate.set()
    return set(await asyncio.gather(*tasks))


async def terminate(engine: AsyncEngine, pids: set[int]) -> None:
    async with engine.connect() as admin:
        for pid in pids:
            await admin.execute(text(f"SELECT pg_terminate_backend({pid})"))
        await admin.commit()
    await asyncio.sleep(0.1)


async def test_connections_the_server_closed_are_not_lent(
    engine: AsyncEngine, sessions: async_sessionmaker[AsyncSession]
) -> None:
    victims = await hold_two(sessions)
    lent = held.held_for(engine)
    assert lent is not None and len(lent.idle) == 2 and len(victims) == 2
    await terminate(engine, victims)
    assert await backend_pid(sessions) not in victims  # no write fails for them


async def test_a_broken_connection_sends_every_held_one_away(
    engine: AsyncEngine, sessions: async_sessionmaker[AsyncSession]
) -> None:
    """A connection whose server went away without a word (a crash, a network cut) is
    found broken only by a statement: that write fails, and the other held connections,
    most likely broken as well, are not lent again."""
    await hold_two(sessions)
    lent = held.held_for(engine)
    assert lent is not None and len(lent.idle) == 2
    with pytest.raises(OperationalError):  # the write's own session is ended under it
        await kill_own_session(sessions)
    assert lent.idle == []
    assert checked_out(engine) == 0
    assert await backend_pid(sessions) > 0


async def kill_own_session(sessions: async_sessionmaker[AsyncSession]) -> None:
    async with lone_statement(sessions) as connection:
        await driver_fetchrow(connection, "SELECT pg_terminate_backend(pg_backend_pid())", [])


async def test_the_pool_counts_a_returned_connections_idle_time_from_its_last_use(
    engine: AsyncEngine, sessions: async_sessionmaker[AsyncSession]
) -> None:
    """The pool pings a connection that idled over a second before its next checkout
    (``database.create_engine``); a connection the sweep returns idled here already."""
    before = time.monotonic()
    await backend_pid(sessions)
    used = time.monotonic()
    for _ in range(40):
        await asyncio.sleep(IDLE_S / 2)
        if checked_out(engine) == 0:
            break
    assert checked_out(engine) == 0 and time.monotonic() - used > IDLE_S
    async with engine.connect() as connection:
        raw = await connection.get_raw_connection()
        assert before <= raw.info[held.IDLE_SINCE] <= used


async def test_a_transaction_sqlalchemy_began_is_committed_and_the_connection_kept(
    engine: AsyncEngine, sessions: async_sessionmaker[AsyncSession]
) -> None:
    first = await backend_pid(sessions)
    async with lone_statement(sessions) as connection:
        await connection.execute(text("CREATE TEMPORARY TABLE held_probe (x int)"))
        await connection.execute(text("INSERT INTO held_probe VALUES (1)"))
        assert connection.in_transaction()
    async with lone_statement(sessions) as connection:
        assert isinstance(connection, AsyncConnection) and not connection.in_transaction()
        row = await driver_fetchrow(connection, "SELECT x, pg_backend_pid() FROM held_probe", [])
    assert row == (1, first)


async def test_close_returns_every_held_connection_and_later_returns_go_to_the_pool(
    engine: AsyncEngine, sessions: async_sessionmaker[AsyncSession]
) -> None:
    await backend_pid(sessions)
    lent = held.held_for(engine)
    assert lent is not None
    async with lone_statement(sessions) as connection:
        await lent.close()
        assert checked_out(engine) == 1  # the one in use
        await driver_fetchrow(connection, "SELECT 1", [])
    assert checked_out(engine) == 0
