"""Connections kept checked out for statements that need no transaction
(``database.lone_statement``: a run's start, a runner's commit, a run's read).

A checkout from SQLAlchemy's pool and the check-in after it cost about 65 µs of CPU
together (each runs in a fresh greenlet, whose frame stack CPython maps and unmaps,
and the pool keeps its books and fires its events), more than the client's share of
the statement they carry. Such a statement needs no transaction, so a few connections
stay checked out and are lent to such statements in turn: a loan is a list pop, its
return a list append.

What stays true: a lent connection is one the pool handed out, so it is counted in
the pool's size and its backend is known as this process's own (``backend_pids``).
A connection goes back to the pool when it idled longer than ``idle_s`` (a sweep
returns those a burst left behind, so they are not parked here while other work waits
for the pool), when it was held longer than ``max_hold_s`` (so that the pool's
recycling and its invalidation after a disconnect reach it), when the statement using
it failed or was cancelled (its protocol may be mid-way through something), and when
the process stops. It keeps its true idle time there, so the pool's liveness ping
still applies. A connection the server closed (a restart, an ended session: asyncpg
sees the socket close at once) is never lent, and is invalidated, not returned as
healthy; one found broken by a statement sends every held one away. Without a
connection to lend, a statement checks one out as before, and it is kept here
afterwards while there is room.
"""

from __future__ import annotations

import asyncio
import time
import weakref
from collections.abc import Coroutine, Sequence
from dataclasses import dataclass
from typing import Any

from sqlalchemy.engine import Engine
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine
from sqlalchemy.pool import PoolProxiedConnection

IDLE_SINCE = "idle_since"  # in a pooled connection's ``info``: when it was last used
# ...and, set before a held connection's check-in, its last use here, which the
# check-in listener takes as IDLE_SINCE (``database.create_engine``)
HELD_SINCE = "stepwise_held_since"
MAX_HOLD_S = 60.0


@dataclass(slots=True)
class _Held:
    connection: AsyncConnection
    since: float  # its last use
    held_at: float  # its checkout from the pool


class HeldConnections:
    def __init__(
        self, engine: AsyncEngine, size: int, idle_s: float, max_hold_s: float = MAX_HOLD_S
    ) -> None:
        self._engine = weakref.ref(engine)  # (the registry below is keyed by it)
        self._size = size
        self._idle_s = idle_s
        self._max_hold_s = max_hold_s
        self._idle: list[_Held] = []  # the last returned, last
        self._lent: dict[int, float] = {}  # id of a lent connection -> its held_at
        self._closed = False
        self._sweep: asyncio.TimerHandle | None = None
        self._tasks: set[asyncio.Task[None]] = set()

    @property
    def idle(self) -> list[AsyncConnection]:
        """The connections held and not lent now."""
        return [held.connection for held in self._idle]

    async def lend(self) -> AsyncConnection:
        """A connection with no transaction begun: a held one, or one checked out now."""
        now = time.monotonic()
        while self._idle:
            held = self._idle.pop()
            fresh = now - held.since <= self._idle_s and now - held.held_at <= self._max_hold_s
            if fresh and _usable(held.connection):
                self._lent[id(held.connection)] = held.held_at
                return held.connection
            await _release(held.connection, held.since)
        engine = self._engine()
        assert engine is not None
        connection = await engine.connect()
        self._lent[id(connection)] = time.monotonic()
        return connection

    async def give_back(self, connection: AsyncConnection) -> None:
        """The connection after a statement that ended well (committed, if it began one)."""
        held_at = self._lent.pop(id(connection), time.monotonic())
        if self._closed or len(self._idle) >= self._size or not _usable(connection):
            await _release(connection)
            return
        self._idle.append(_Held(connection, time.monotonic(), held_at))
        if self._sweep is None:
            self._sweep = asyncio.get_running_loop().call_later(self._idle_s, self._swept)

    async def discard(self, connection: AsyncConnection) -> None:
        """The connection after a statement that failed or was cancelled."""
        self._lent.pop(id(connection), None)
        await _release(connection)

    def invalidate_idle(self) -> None:
        """A lent connection turned out broken: the held ones most likely are too (the
        server restarted, or the network failed); they are closed at once, without a
        word to a server that may not answer, and replaced when next needed."""
        idle, self._idle = self._idle, []
        for held in idle:
            driver = _driver(held.connection)
            if driver is not None:
                driver.terminate()  # (no I/O: the graceful close could wait seconds)
        self._spawn(_release_all([(held.connection, None) for held in idle]))

    def _swept(self) -> None:
        self._sweep = None
        cutoff = time.monotonic() - self._idle_s
        stale = [(held.connection, held.since) for held in self._idle if held.since < cutoff]
        self._idle = [held for held in self._idle if held.since >= cutoff]
        if stale:
            self._spawn(_release_all(stale))
        if self._idle and not self._closed:
            self._sweep = asyncio.get_running_loop().call_later(self._idle_s, self._swept)

    def _spawn(self, work: Coroutine[Any, Any, None]) -> None:
        task = asyncio.get_running_loop().create_task(work)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def close(self) -> None:
        """Return every held connection to the pool; later returns go there too."""
        self._closed = True
        if self._sweep is not None:
            self._sweep.cancel()
            self._sweep = None
        idle, self._idle = self._idle, []
        await _release_all([(held.connection, held.since) for held in idle])
        if self._tasks:
            await asyncio.gather(*self._tasks, return_exceptions=True)


def pooled(connection: AsyncConnection) -> PoolProxiedConnection | None:
    """The pool's connection under ``connection`` while it is live, read without I/O
    (nor a greenlet): SQLAlchemy's own getter must await only to revalidate one."""
    sync = connection.sync_connection
    if sync is None or sync.closed or sync.invalidated:
        return None
    return sync.connection


def _driver(connection: AsyncConnection) -> Any:
    """The asyncpg connection under ``connection``, if it has one now (no I/O)."""
    live = pooled(connection)
    return None if live is None else live.driver_connection


def _usable(connection: AsyncConnection) -> bool:
    """Open, with no transaction, and its socket not closed by the server."""
    sync = connection.sync_connection
    if sync is None or sync.in_transaction():
        return False
    driver = _driver(connection)
    return driver is not None and not driver.is_closed()


async def _release(connection: AsyncConnection, idle_since: float | None = None) -> None:
    """Check ``connection`` in: one the server closed invalidated first (the pool would
    otherwise hand it out again as healthy), a live one with ``idle_since``, its last
    use, for the check-in listener to keep."""
    live = pooled(connection)
    driver = None if live is None else live.driver_connection
    if driver is not None and driver.is_closed():
        await asyncio.shield(connection.invalidate())
    elif live is not None and idle_since is not None:
        live.info[HELD_SINCE] = idle_since
    await asyncio.shield(connection.close())  # as ``AsyncConnection.__aexit__`` does


async def _release_all(connections: Sequence[tuple[AsyncConnection, float | None]]) -> None:
    for connection, since in connections:
        await _release(connection, since)


_HELD: weakref.WeakKeyDictionary[Engine, HeldConnections] = weakref.WeakKeyDictionary()


def hold(engine: AsyncEngine, size: int, idle_s: float) -> HeldConnections:
    """Keep up to ``size`` connections of ``engine`` for statements with no transaction."""
    held = _HELD[engine.sync_engine] = HeldConnections(engine, size, idle_s)
    return held


def held_for(engine: AsyncEngine | Engine) -> HeldConnections | None:
    return _HELD.get(engine.sync_engine if isinstance(engine, AsyncEngine) else engine)
