"""Coalescing streamed text into ``message.delta`` events.

A delta is written at most every ``interval_s`` (and at the end of the answer), so a long
answer is tens of events rather than thousands, and every chunk reaches an event within
``interval_s`` of arriving — a timer flushes text that no later chunk pushes out.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable, Callable

FLUSH_INTERVAL_S = 0.05


class DeltaCoalescer:
    def __init__(
        self, emit: Callable[[str], Awaitable[None]], interval_s: float = FLUSH_INTERVAL_S
    ) -> None:
        self._emit = emit
        self._interval_s = interval_s
        self._buffer: list[str] = []
        self._timer: asyncio.Task[None] | None = None
        self._lock = asyncio.Lock()
        self._sleeping = False

    async def add(self, text: str) -> None:
        if not text:
            return
        self._buffer.append(text)
        if self._timer is None or self._timer.done():
            self._timer = asyncio.create_task(self._flush_later())

    async def _flush_later(self) -> None:
        self._sleeping = True
        try:
            await asyncio.sleep(self._interval_s)
        finally:
            self._sleeping = False
        await self._flush()

    async def _flush(self) -> None:
        async with self._lock:
            if self._buffer:
                text, self._buffer = "".join(self._buffer), []
                await self._emit(text)

    async def close(self) -> None:
        """Write what is buffered now (the end of an answer)."""
        timer, self._timer = self._timer, None
        if timer is not None and not timer.done():
            if self._sleeping:  # never cancel a write under way
                timer.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await timer
        await self._flush()
