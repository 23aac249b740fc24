"""The process's hub of event feeds (``FeedHub``), and the streams it serves.

The hub admits SSE streams up to a bound (``reserve``, ``StreamSlot``), keeps one
``RunFeed`` (``app.events.feed``) per watched run while anyone watches it, hands the
events this process's runners commit to their feed (``offer``), and runs the one ticker
that ends waits at their keep-alive or deadline and checks the sends in progress. Each
subscriber's stream (``stream``) replays the stored events, then takes live ones from its
feed's buffer, reads the database on its own while it lags behind that buffer, and, once
caught up with a ``push``, parks on the feed (``Parked``), which writes them through it.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator, Sequence
from typing import Any

from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from app.events.bus import EventBus
from app.events.feed import READ_BATCH, RunFeed
from app.events.frames import PAUSE_EVENTS, TERMINAL_EVENTS, FeedEvent, sse_frame
from app.events.waiting import INF, Parked, Push
from app.store import events as event_store
from app.store.database import transaction

TERMINAL_STATUSES = frozenset({"completed", "failed", "cancelled"})
PAUSED_STATUSES = frozenset({"interrupted", "awaiting_input", "suspended"})


class StreamLimitReached(Exception):
    pass


class FeedHub:
    """The feeds of one process, and the bound on its open streams."""

    def __init__(
        self,
        bus: EventBus,
        sessions: async_sessionmaker[AsyncSession],
        *,
        max_streams: int,
        poll_s: float = 1.0,
        buffer_size: int = 1024,
        tick_s: float = 1.0,
    ) -> None:
        self.bus = bus
        self.sessions = sessions
        self.max_streams = max_streams
        self.poll_s = poll_s
        self.buffer_size = buffer_size
        self.tick_s = tick_s
        self.streams = 0
        self.closed = False
        self._feeds: dict[str, RunFeed] = {}
        self._ticker: asyncio.Task[None] | None = None
        # every feed task not yet finished, those already cancelled included: shutdown
        # waits for them all, so that none is still inside a transaction when the engine
        # goes (on SQLite such a task kept the database's write lock for good)
        self._tasks: set[asyncio.Task[None]] = set()
        self._watched: set[Any] = set()  # streams whose sends the ticker checks
        self.due: dict[asyncio.Future[None], float] = {}  # waits with a time to end them

    # -- admission ---------------------------------------------------------------------

    def reserve(self) -> StreamSlot:
        """Count one more open stream, or raise StreamLimitReached."""
        if self.closed or self.streams >= self.max_streams:
            raise StreamLimitReached
        self.streams += 1
        return StreamSlot(self)

    # -- feeds -------------------------------------------------------------------------

    @contextlib.asynccontextmanager
    async def feed(self, run_id: str) -> AsyncIterator[RunFeed]:
        feed = self._feeds.get(run_id)
        if feed is None or feed.task is None or feed.task.done():
            feed = self._feeds[run_id] = RunFeed(self, run_id)
            feed.task = asyncio.create_task(feed.run(), name=f"stepwise-feed-{run_id}")
            self._tasks.add(feed.task)
            feed.task.add_done_callback(self._tasks.discard)
        self._start_ticker()
        feed.subscribers += 1
        try:
            yield feed
        finally:
            feed.subscribers -= 1
            if feed.subscribers == 0 and self._feeds.get(run_id) is feed:
                del self._feeds[run_id]
                assert feed.task is not None
                feed.task.cancel()

    def watch(self, stream: Any) -> None:
        """Have ``stream.check(now)`` called on every tick (a send's deadline)."""
        self._watched.add(stream)
        self._start_ticker()

    def unwatch(self, stream: Any) -> None:
        self._watched.discard(stream)

    def _start_ticker(self) -> None:
        if self._ticker is None or self._ticker.done():
            self._ticker = asyncio.create_task(self._tick(), name="stepwise-feed-ticker")

    async def _tick(self) -> None:
        """Now and then, wake the streams whose deadline or keep-alive has come (and only
        those), and check the sends in progress: a thousand subscribers then cost one
        timer, not a thousand."""
        while (self._feeds or self._watched) and not self.closed:
            await asyncio.sleep(self.tick_s)
            now = time.monotonic()
            for waiter, until in list(self.due.items()):
                if until <= now and not waiter.done():
                    waiter.set_result(None)
            for stream in list(self._watched):
                stream.check(now)

    def offer(self, run_id: str, rows: Sequence[dict[str, Any]], status: str) -> None:
        """A runner of this process committed ``rows`` of ``run_id``: hand them to its
        feed, if the run is watched here (see ``RunFeed.offer``)."""
        feed = self._feeds.get(run_id)
        if feed is not None:
            feed.offer(rows, status)

    @property
    def feed_count(self) -> int:
        return len(self._feeds)

    async def read(self, run_id: str, after: int) -> list[FeedEvent]:
        """A lagging subscriber's own read, past the feed's buffer."""
        async with transaction(self.sessions) as session:
            rows = await event_store.list_events(session, run_id, after=after, limit=READ_BATCH)
        return [sse_frame(row) for row in rows]

    async def stream(
        self,
        run_id: str,
        after: int,
        *,
        types: Sequence[str] = (),
        until_paused: bool = False,
        max_s: float | None = None,
        keepalive_s: float | None = None,
        push: Push | None = None,
    ) -> AsyncIterator[list[FeedEvent]]:
        """The run's events after ``after``: stored, then live, each exactly once, in batches
        (all that were ready at once: one write to the socket for each), and an empty
        batch whenever nothing was sent for ``keepalive_s`` (time for a keep-alive). Ends
        when the run is terminal (or paused, with ``until_paused``), when it is deleted,
        after ``max_s`` seconds (checked every ``tick_s``), or when the hub closes.

        With ``push``, live events are not yielded: once caught up the stream parks on
        the feed, which writes them through ``push`` (see ``RunFeed._fan_out``)."""
        deadline = time.monotonic() + (max_s if max_s is not None else float("inf"))
        quiet_s = keepalive_s if keepalive_s is not None else float("inf")
        sent = time.monotonic()
        async with self.feed(run_id) as feed:
            cursor = after
            live_from: int | None = None  # events past this one happened while we watch
            while not self.closed:
                position = feed.position
                if position is None:  # the feed's first read is on its way
                    if feed.gone:
                        return
                    await feed.changed.wait(deadline)
                    if time.monotonic() >= deadline:
                        return
                    continue
                if live_from is None:
                    live_from = position.event_seq
                batch = feed.since(cursor)
                lagging = batch is None
                if batch is None:
                    batch = await self.read(run_id, cursor)
                out: list[FeedEvent] = []
                ends = False
                for event in batch:
                    cursor = event.seq
                    if event_store.matches(event.type, types):
                        out.append(event)
                    if event.seq > live_from and (
                        event.type in TERMINAL_EVENTS
                        or (until_paused and event.type in PAUSE_EVENTS)
                    ):
                        ends = True
                        break
                if out:
                    yield out
                    sent = time.monotonic()
                if ends:
                    return
                if batch:
                    continue
                if feed.gone:
                    return
                if cursor >= position.event_seq and (
                    position.status in TERMINAL_STATUSES
                    or (until_paused and position.status in PAUSED_STATUSES)
                ):
                    return
                if time.monotonic() >= deadline:
                    return
                if lagging or feed.head <= cursor:
                    # the feed fires on every read (new events, fallback poll, deletion)
                    # and on close; the ticker ends the wait at the keep-alive or the
                    # deadline (a lagging stream: at the next tick, to read again)
                    until = min(sent + quiet_s, deadline)
                    if push is not None and not lagging and cursor >= live_from:
                        sub = Parked(cursor, tuple(types), until_paused, push, sent)
                        await self._park(feed, sub, until)
                        cursor, sent = sub.cursor, sub.sent
                        if sub.ends:
                            return
                    else:
                        await feed.changed.wait(
                            time.monotonic() + self.tick_s if lagging else until
                        )
                    if time.monotonic() - sent >= quiet_s and feed.head <= cursor:
                        yield []
                        sent = time.monotonic()

    async def _park(self, feed: RunFeed, sub: Parked, until: float) -> None:
        """Sleep while the feed writes to ``sub``; then finish a write it began."""
        feed.parked[sub] = None
        if until != INF:
            self.due[sub.waiter] = until
        try:
            await sub.waiter
        finally:
            feed.parked.pop(sub, None)
            self.due.pop(sub.waiter, None)
        if sub.pending is not None:
            await sub.pending

    async def close(self) -> None:
        """End every stream (server shutdown) and stop the feeds."""
        self.closed = True
        if self._ticker is not None:
            self._ticker.cancel()
        for feed in self._feeds.values():
            feed.changed.fire()
            feed.wake_parked()
        tasks = list(self._tasks)
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)


class StreamSlot:
    """One admitted stream; released once, however the stream ends."""

    def __init__(self, hub: FeedHub) -> None:
        self._hub: FeedHub | None = hub

    def release(self) -> None:
        if self._hub is not None:
            self._hub.streams -= 1
            self._hub = None
