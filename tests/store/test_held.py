"""Connections held for statements with no transaction (``app.store.held``): lent again
without a pool checkout, and back in the pool whenever they idle, are held too long,
fail, are cancelled, hold a transaction or the process stops; one the server closed is
never lent, nor handed back to the pool as healthy."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from typing import Any

import asyncpg
import pytest
from sqlalchemy import event, text
from sqlalchemy.exc import DBAPIError, OperationalError
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine, AsyncSession, async_sessionmaker

from app.settings import Settings
from app.store import held
from app.store.database import create_engine, create_sessionmaker, driver_fetchrow, lone_statement

pytestmark = pytest.mark.postgres_only

SWEEP_S = 0.2  # for the tests of the sweep; the others never idle that long here: 30 s
Sessions = async_sessionmaker[AsyncSession]


@pytest.fixture
async def engine(database_url: str) -> AsyncIterator[AsyncEngine]:
    engine = create_engine(Settings(database_url=database_url, db_pool_size=4))
    yield engine
    lent = held.held_for(engine)
    if lent is not None:
        await lent.close()
    await engine.dispose()


@pytest.fixture
def sessions(engine: AsyncEngine) -> Sessions:
    held.hold(engine, 2, 30.0)
    return create_sessionmaker(engine)


@pytest.fixture
def swept(engine: AsyncEngine) -> Sessions:
    held.hold(engine, 2, SWEEP_S)
    return create_sessionmaker(engine)


def checked_out(engine: AsyncEngine) -> int:
    checked: Any = engine.sync_engine.pool.checkedout()  # type: ignore[attr-defined]
    return int(checked)


def lent_of(engine: AsyncEngine) -> held.HeldConnections:
    lent = held.held_for(engine)
    assert lent is not None
    return lent


async def backend_pid(sessions: Sessions) -> int:
    async with lone_statement(sessions) as connection:
        row = await driver_fetchrow(connection, "SELECT pg_backend_pid()", [])
    assert row is not None
    return int(row[0])


async def hold_two(sessions: Sessions) -> set[int]:
    """Two connections lent at once, then both held: their backends' pids."""
    gate = asyncio.Event()
    pids: list[int] = []

    async def hold_one() -> None:
        async with lone_statement(sessions) as connection:
            row = await driver_fetchrow(connection, "SELECT pg_backend_pid()", [])
            assert row is not None
            pids.append(int(row[0]))
            await gate.wait()

    tasks = [asyncio.create_task(hold_one()) for _ in range(2)]
    while len(pids) < 2:
        await asyncio.sleep(0.01)
    gate.set()
    await asyncio.gather(*tasks)
    return set(pids)


async def terminate(database_url: str, pids: set[int]) -> None:
    """End those sessions from a connection of no pool (as a server restart would)."""
    admin = await asyncpg.connect(database_url.replace("+asyncpg", ""))
    try:
        for pid in pids:
            await admin.execute("SELECT pg_terminate_backend($1)", pid)
    finally:
        await admin.close()
    await asyncio.sleep(0.1)  # asyncpg reads the server's goodbye


async def until(condition: Any, seconds: float = 5.0) -> None:
    deadline = time.monotonic() + seconds
    while not condition():
        assert time.monotonic() < deadline, "timed out"
        await asyncio.sleep(0.02)


async def test_a_connection_is_lent_again_without_going_back_to_the_pool(
    engine: AsyncEngine, sessions: Sessions
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


async def test_idle_connections_go_back_to_the_pool(engine: AsyncEngine, swept: Sessions) -> None:
    await backend_pid(swept)
    assert checked_out(engine) == 1
    await until(lambda: checked_out(engine) == 0)  # the sweep: within two SWEEP_S


async def test_the_pool_counts_a_returned_connections_idle_time_from_its_last_use(
    engine: AsyncEngine, swept: Sessions
) -> None:
    """The pool pings a connection that idled over a second before its next checkout
    (``database.create_engine``), a held one too: its idle time began here. A task that
    waits for the pool gets the connection the sweep returns, and the checkout sees
    that time, not the check-in's."""
    await backend_pid(swept)
    used = time.monotonic()
    others = [await engine.connect() for _ in range(5)]  # the rest of the pool (4 + 2)
    seen: list[float] = []

    def checkout(_dbapi: Any, record: Any, _proxy: Any) -> None:
        seen.append(record.info[held.IDLE_SINCE])

    event.listen(engine.sync_engine, "checkout", checkout)
    try:
        async with engine.connect() as waiter:  # waits for the sweep's return
            await waiter.execute(text("SELECT 1"))
    finally:
        event.remove(engine.sync_engine, "checkout", checkout)
        for other in others:
            await other.close()
    assert len(seen) == 1 and seen[0] <= used


async def test_a_connection_held_too_long_goes_back_through_the_pool(
    engine: AsyncEngine,
) -> None:
    """So that the pool's recycling and its invalidation after a disconnect reach it."""
    sessions = create_sessionmaker(engine)
    held._HELD[engine.sync_engine] = held.HeldConnections(engine, 2, 30.0, max_hold_s=0.3)
    checkouts = 0

    def counted(*_: Any) -> None:
        nonlocal checkouts
        checkouts += 1

    event.listen(engine.sync_engine, "checkout", counted)
    try:
        began = time.monotonic()
        while time.monotonic() - began < 1.0:
            await backend_pid(sessions)
            await asyncio.sleep(0.05)
    finally:
        event.remove(engine.sync_engine, "checkout", counted)
    assert 2 <= checkouts <= 5  # about once every 0.3 s, not once per statement (~18)


async def test_no_more_than_size_are_kept(engine: AsyncEngine, sessions: Sessions) -> None:
    gate = asyncio.Event()
    inside = 0

    async def one() -> None:
        nonlocal inside
        async with lone_statement(sessions) as connection:
            await driver_fetchrow(connection, "SELECT 1", [])
            inside += 1
            await gate.wait()

    tasks = [asyncio.create_task(one()) for _ in range(4)]
    await until(lambda: inside == 4)
    assert checked_out(engine) == 4  # two more than it keeps: checked out from the pool
    gate.set()
    await asyncio.gather(*tasks)
    assert checked_out(engine) == 2


async def test_a_failed_statement_sends_its_connection_back_to_the_pool(
    engine: AsyncEngine, sessions: Sessions
) -> None:
    first = await backend_pid(sessions)
    with pytest.raises(DBAPIError):
        async with lone_statement(sessions) as connection:
            await driver_fetchrow(connection, "SELECT 1 / 0", [])
    assert checked_out(engine) == 0
    # the next statement gets a working connection (the same one, from the pool)
    assert await backend_pid(sessions) == first


async def test_a_cancelled_statement_sends_its_connection_back_to_the_pool(
    engine: AsyncEngine, sessions: Sessions
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
    assert lent_of(engine).idle == []
    assert await backend_pid(sessions) > 0  # and the next statement works


async def test_connections_the_server_closed_are_neither_lent_nor_pooled_as_healthy(
    database_url: str, engine: AsyncEngine, sessions: Sessions
) -> None:
    victims = await hold_two(sessions)
    assert len(lent_of(engine).idle) == 2 and len(victims) == 2
    await terminate(database_url, victims)
    # no statement fails for them, and the pool does not hand them out again either
    assert await backend_pid(sessions) not in victims
    async with engine.connect() as other:
        pid = (await other.execute(text("SELECT pg_backend_pid()"))).scalar_one()
    assert pid not in victims


async def test_a_broken_connection_sends_every_held_one_away(
    engine: AsyncEngine, sessions: Sessions
) -> None:
    """A connection whose server went away without a word (a crash, a network cut) is
    found broken only by a statement: that statement fails, and the other held
    connections, most likely broken as well, are closed, not lent again."""
    victims = await hold_two(sessions)
    assert len(lent_of(engine).idle) == 2
    with pytest.raises(OperationalError):  # the statement's own session ends under it
        await end_own_session(sessions)
    assert lent_of(engine).idle == []
    await until(lambda: checked_out(engine) == 0)
    assert await backend_pid(sessions) not in victims  # the other one was closed too


async def end_own_session(sessions: Sessions) -> None:
    async with lone_statement(sessions) as connection:
        await driver_fetchrow(connection, "SELECT pg_terminate_backend(pg_backend_pid())", [])


async def test_a_transaction_sqlalchemy_began_is_committed_and_the_connection_kept(
    engine: AsyncEngine, sessions: Sessions
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
    engine: AsyncEngine, sessions: Sessions
) -> None:
    await backend_pid(sessions)
    lent = lent_of(engine)
    async with lone_statement(sessions) as connection:
        await lent.close()
        assert checked_out(engine) == 1  # the one in use
        await driver_fetchrow(connection, "SELECT 1", [])
    assert checked_out(engine) == 0
