"""Shared per-run event feeds: what SSE subscribers read from.

One ``RunFeed`` exists per watched run per process. It alone reads the database when
the bus says the run has new events (or, as a fallback, every ``poll_s``), keeps the
run's most recent events in a small buffer, already encoded as SSE frames, and wakes
its subscribers. A subscriber takes from the buffer by cursor; one that fell behind
the buffer reads the database on its own until it catches up. So N subscribers of one
run cost one query per new batch of events, not N, and none holds a database
connection while it waits. Events a runner of this process has just committed are
handed to the feed directly (``FeedHub.offer``): local watchers need no read at all.

A subscriber that has caught up parks on its feed (``Parked``) with a ``push`` of its
response. When new events come, one pass of the feed (``RunFeed._fan_out``) writes
them to every parked subscriber: the bytes for a cursor and a filter are joined once
and handed to each push, which completes at once when the socket has room. The
subscribers' tasks stay asleep; one is woken only to end its stream, to wait for a send
that could not complete, to read past the buffer, or for a keep-alive or its deadline.

The hub that owns the feeds, admits the streams and runs each subscriber's read is
``app.events.hub``.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import time
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Protocol

from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from app.events.bus import EventBus
from app.events.frames import (
    PAUSE_EVENTS,
    TERMINAL_EVENTS,
    FeedEvent,
    encode_frame,
    sse_frame,
)
from app.events.waiting import Changed, Parked
from app.store import events as event_store
from app.store import runs as run_store
from app.store.database import transaction

log = logging.getLogger(__name__)

READ_BATCH = 500


@dataclass(frozen=True, slots=True)
class RunPosition:
    """The run's status and last event seq, read together from its row."""

    status: str
    event_seq: int


class Hub(Protocol):
    """What a feed takes from the hub that owns it (``FeedHub``)."""

    bus: EventBus
    sessions: async_sessionmaker[AsyncSession]
    poll_s: float
    buffer_size: int
    due: dict[asyncio.Future[None], float]


class RunFeed:
    def __init__(self, hub: Hub, run_id: str) -> None:
        self.hub = hub
        self.run_id = run_id
        self.buffer: deque[FeedEvent] = deque(maxlen=hub.buffer_size)
        self.head = 0  # the highest seq read (the buffer ends there)
        self.position: RunPosition | None = None  # None until the first read
        self.gone = False  # the run was deleted
        self.subscribers = 0
        self.changed = Changed(hub.due)
        self.task: asyncio.Task[None] | None = None
        self.parked: dict[Parked, None] = {}  # insertion-ordered
        self._fan_out_due = False

    def offer(self, rows: Sequence[dict[str, Any]], status: str) -> None:
        """Events this process just committed (``insert_events`` rows): taken at once when
        they follow the buffer, so local watchers skip the read; else the next read
        brings them."""
        if self.position is None or not rows or rows[0]["seq"] != self.head + 1:
            return
        for row in rows:
            self.buffer.append(encode_frame(**row))
        self.head = rows[-1]["seq"]
        self.position = RunPosition(status, self.head)
        self.changed.fire()
        self._schedule_fan_out()

    def since(self, cursor: int) -> list[FeedEvent] | None:
        """Buffered events after ``cursor``; None when the buffer no longer reaches back
        there (the caller then reads the database)."""
        if cursor >= self.head:
            return []
        if not self.buffer or cursor < self.buffer[0].seq - 1:
            return None
        return list(itertools.islice(self.buffer, cursor - self.buffer[0].seq + 1, None))

    def _schedule_fan_out(self) -> None:
        if self.parked and not self._fan_out_due:
            self._fan_out_due = True
            asyncio.get_running_loop().call_soon(self._fan_out)

    def _fan_out(self) -> None:
        """Write the events past each parked subscriber's cursor to it, in one pass."""
        self._fan_out_due = False
        bodies: dict[tuple[int, tuple[str, ...], bool], tuple[bytes, int, bool] | None] = {}
        now = time.monotonic()
        for sub in list(self.parked):
            if sub.waiter.done() or sub.cursor >= self.head:
                continue
            key = (sub.cursor, sub.types, sub.until_paused)
            if key not in bodies:
                bodies[key] = self._body(*key)
            found = bodies[key]
            if found is None:  # past the buffer: the subscriber reads on its own
                self.wake(sub)
                continue
            body, sub.cursor, sub.ends = found
            if body:
                try:
                    sub.pending = sub.push(body)
                except Exception as exc:  # the subscriber's task raises it
                    sub.pending = asyncio.get_running_loop().create_future()
                    sub.pending.set_exception(exc)
                sub.sent = now
            if sub.ends or sub.pending is not None:
                self.wake(sub)

    def _body(
        self, cursor: int, types: tuple[str, ...], until_paused: bool
    ) -> tuple[bytes, int, bool] | None:
        """The frames after ``cursor`` that match ``types``, joined; the new cursor; and
        whether they end the stream. None when the buffer no longer reaches ``cursor``."""
        batch = self.since(cursor)
        if batch is None:
            return None
        frames: list[bytes] = []
        for event in batch:
            cursor = event.seq
            if event_store.matches(event.type, types):
                frames.append(event.frame)
            if event.type in TERMINAL_EVENTS or (until_paused and event.type in PAUSE_EVENTS):
                return b"".join(frames), cursor, True
        return b"".join(frames), cursor, False

    def wake(self, sub: Parked) -> None:
        self.parked.pop(sub, None)
        if not sub.waiter.done():
            sub.waiter.set_result(None)

    def wake_parked(self) -> None:
        for sub in list(self.parked):
            self.wake(sub)

    async def run(self) -> None:
        async with self.hub.bus.subscribe(self.run_id) as signal:
            while not self.gone:
                before = (self.head, self.position, self.gone)
                try:
                    more = await self._fetch()
                except Exception:
                    log.exception("event feed of run %s: read failed; retrying", self.run_id)
                    more = False
                if (self.head, self.position, self.gone) != before:
                    self.changed.fire()
                    if self.gone:
                        self.wake_parked()
                    else:
                        self._schedule_fan_out()
                if not more:
                    woke = await signal.wait_past(self.head, self.hub.poll_s)
                    while woke and signal.seq <= self.head:  # ``offer`` brought them
                        woke = await signal.wait_past(self.head, self.hub.poll_s)

    async def _fetch(self) -> bool:
        """Read the run's position and its new events; True when there are more to read."""
        async with transaction(self.hub.sessions) as session:
            # the position first: the events read afterwards include all up to it
            found = await run_store.event_position(session, self.run_id)
            if found is None:
                self.gone = True
                return False
            position = RunPosition(*found)
            rows: list[event_store.StoredEvent] = []
            if position.event_seq > self.head:
                start = self.head
                if self.position is None:  # first read: only the recent past
                    start = max(0, position.event_seq - self.hub.buffer_size)
                rows = await event_store.list_events(
                    session, self.run_id, after=start, limit=READ_BATCH
                )
        more = len(rows) == READ_BATCH
        rows = [row for row in rows if row.seq > self.head]  # ``offer`` may have been quicker
        if rows and self.buffer and rows[0].seq != self.head + 1:
            self.buffer.clear()  # cannot happen with gapless seqs; stay correct anyway
        for row in rows:
            self.buffer.append(sse_frame(row))
        if rows:
            self.head = rows[-1].seq
        if self.position is None or position.event_seq >= self.position.event_seq:
            self.position = position
        return more
