"""How a stream waits on its run's feed: a broadcast wake-up with a time to end the
wait (``Changed``), or parked, the feed writing to it directly (``Parked``)."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from dataclasses import dataclass, field

INF = float("inf")

# a subscriber's write of one body: None when it completed at once, else its rest
Push = Callable[[bytes], "asyncio.Future[None] | None"]


@dataclass(eq=False, slots=True)
class Parked:
    """A subscriber caught up with its feed, its task asleep: the feed writes new events
    to it (``push``) and advances its cursor; ``waiter`` wakes its task."""

    cursor: int
    types: tuple[str, ...]
    until_paused: bool
    push: Push
    sent: float  # time.monotonic() of its last write
    waiter: asyncio.Future[None] = field(
        default_factory=lambda: asyncio.get_running_loop().create_future()
    )
    ends: bool = False  # the feed wrote the event that ends the stream
    pending: asyncio.Future[None] | None = None  # a write that did not complete at once


class Changed:
    """A broadcast wake-up: every waiter resumes on the next ``fire()``, or once its own
    ``until`` (a ``time.monotonic()`` value) has passed: the hub's ticker wakes only the
    waiters in ``due`` whose time has come, so that a thousand idle subscribers are not
    woken every tick just to find that no keep-alive is due yet."""

    def __init__(self, due: dict[asyncio.Future[None], float]) -> None:
        self._waiters: list[asyncio.Future[None]] = []
        self._due = due

    def fire(self) -> None:
        waiters, self._waiters = self._waiters, []
        for waiter in waiters:
            if not waiter.done():
                waiter.set_result(None)

    async def wait(self, until: float = INF) -> None:
        waiter = asyncio.get_running_loop().create_future()
        self._waiters.append(waiter)
        if until != INF:
            self._due[waiter] = until
        try:
            await waiter
        finally:
            if until != INF:
                del self._due[waiter]
