"""Connections kept checked out for one-statement writes (``database.lone_statement``).

A checkout from SQLAlchemy's pool and the check-in after it cost about 65 µs of CPU
together (each runs in a fresh greenlet, whose frame stack CPython maps and unmaps,
and the pool keeps its books and fires its events), more than the client's share of
the statement they carry. A write that is one statement needs no transaction, so a
few connections stay checked out and are lent to such writes in turn: a loan is a
list pop, its return a list append.

What stays true: a lent connection is one the pool handed out, so it is counted in
the pool's size and its backend is known as this process's own (``backend_pids``). A
connection goes back to the pool, and so through the pool's liveness ping before its
next use, whenever it sat idle longer than ``idle_s``, when the write using it failed
or was cancelled (its protocol may be mid-way through something), when it holds a
transaction, and when the process stops; a sweep returns those idle longer than
``idle_s`` too, so that a burst's connections do not stay parked here. Without a connection to lend, a write
checks one out as before, and keeps it here afterwards while there is room.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
import weakref

from sqlalchemy.engine import Engine
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

IDLE_SINCE = "idle_since"  # in a pooled connection's ``info``: its last check-in


class HeldConnections:
    def __init__(self, engine: AsyncEngine, size: int, idle_s: float) -> None:
        self._engine = engine
        self._size = size
        self._idle_s = idle_s
        self._idle: list[tuple[AsyncConnection, float]] = []  # last returned, last
        self._closed = False
        self._sweep: asyncio.TimerHandle | None = None
        self._tasks: set[asyncio.Task[None]] = set()

    @property
    def idle(self) -> list[AsyncConnection]:
        """The connections held and not lent now."""
        return [connection for connection, _ in self._idle]

    async def lend(self) -> AsyncConnection:
        """A connection with no transaction begun: a held one, or one checked out now."""
        now = time.monotonic()
        while self._idle:
            connection, since = self._idle.pop()
            if now - since <= self._idle_s and _clean(connection):
                return connection
            await _release(connection, since)  # the pool pings it before its next use
        return await self._engine.connect()

    async def give_back(self, connection: AsyncConnection) -> None:
        """The connection after a write that ended well (committed, if it began one)."""
        if self._closed or len(self._idle) >= self._size or not _clean(connection):
            await _release(connection)
            return
        self._idle.append((connection, time.monotonic()))
        if self._sweep is None:
            self._sweep = asyncio.get_running_loop().call_later(self._idle_s, self._swept)

    def _swept(self) -> None:
        """Return the connections idle longer than ``idle_s`` to the pool, so that those
        of a burst do not stay parked here while other work waits for the pool."""
        self._sweep = None
        cutoff = time.monotonic() - self._idle_s
        stale = [(c, since) for c, since in self._idle if since < cutoff]
        self._idle = [(c, since) for c, since in self._idle if since >= cutoff]
        if stale:
            task = asyncio.get_running_loop().create_task(_release_all(stale))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)
        if self._idle and not self._closed:
            self._sweep = asyncio.get_running_loop().call_later(self._idle_s, self._swept)

    async def close(self) -> None:
        """Return every held connection to the pool; later returns go there too."""
        self._closed = True
        if self._sweep is not None:
            self._sweep.cancel()
            self._sweep = None
        idle, self._idle = self._idle, []
        await _release_all(idle)
        if self._tasks:
            await asyncio.gather(*self._tasks)

    async def invalidate_idle(self) -> None:
        """A lent connection turned out broken: the held ones most likely are too (the
        server restarted, or ended every session); each is closed, and replaced by a new
        one when next needed, instead of failing a write of its own."""
        idle, self._idle = self._idle, []
        for connection, _ in idle:
            with contextlib.suppress(Exception):
                await connection.invalidate()
            await _release(connection)


def _clean(connection: AsyncConnection) -> bool:
    """Usable for a write of its own: open, with no transaction, and its socket not closed
    by the server (asyncpg sees that at once: a restart, a terminated session)."""
    sync = connection.sync_connection
    if sync is None or sync.closed or sync.invalidated or sync.in_transaction():
        return False
    driver = sync.connection.driver_connection
    return driver is not None and not driver.is_closed()


async def _release(connection: AsyncConnection, idle_since: float | None = None) -> None:
    """Check ``connection`` in. ``idle_since``: when it was last used, since the check-in
    would count its idle time from now (the pool pings a connection that idled longer
    than a second before its next checkout: ``database.create_engine``)."""
    sync = connection.sync_connection
    live = sync is not None and not (sync.closed or sync.invalidated)
    info = sync.connection.info if live and sync is not None else None
    await asyncio.shield(connection.close())  # as ``AsyncConnection.__aexit__`` does
    if info is not None and idle_since is not None:
        info[IDLE_SINCE] = idle_since


async def _release_all(connections: list[tuple[AsyncConnection, float]]) -> None:
    for connection, since in connections:
        await _release(connection, since)


_HELD: weakref.WeakKeyDictionary[Engine, HeldConnections] = weakref.WeakKeyDictionary()


def hold(engine: AsyncEngine, size: int, idle_s: float) -> HeldConnections:
    """Keep up to ``size`` connections of ``engine`` for one-statement writes."""
    held = _HELD[engine.sync_engine] = HeldConnections(engine, size, idle_s)
    return held


def held_for(engine: AsyncEngine | Engine) -> HeldConnections | None:
    return _HELD.get(engine.sync_engine if isinstance(engine, AsyncEngine) else engine)
