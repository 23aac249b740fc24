"""A lean Server-Sent Events response for a run's event stream.

A run watched by a thousand clients sends every batch of events a thousand times, so
what one delivery costs decides how late the last subscriber sees it. This response is
plain ASGI: one coroutine per stream that takes ready-encoded batches from the feed
(``FeedHub.stream``, which also says when a keep-alive is due) and sends each with a
single ``send``, plus one idle task that notices the client going away. No task group,
no per-message wrappers and no timer per send or wait: the hub's ticker checks every
stream's send in progress and drops a client that stopped reading for
``send_timeout_s`` (``check``).
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator, Callable, Mapping
from typing import Protocol

from starlette.responses import Response
from starlette.types import Message, Receive, Scope, Send

from app.events.feed import FeedEvent

PING = b": ping\n\n"
HEADERS = {
    "Content-Type": "text/event-stream; charset=utf-8",
    "Cache-Control": "no-store",
    "Connection": "keep-alive",
    "X-Accel-Buffering": "no",  # proxies must not buffer the stream
}


class Watchdog(Protocol):
    """Calls ``check(now)`` of every watched stream now and then (``FeedHub``)."""

    def watch(self, stream: EventStreamResponse) -> None: ...

    def unwatch(self, stream: EventStreamResponse) -> None: ...


class EventStreamResponse(Response):
    """Streams ``batches`` (an empty batch: a keep-alive comment) as SSE; ``on_close``
    runs once when the stream ends, however it ends (HEAD included)."""

    media_type = "text/event-stream"

    def __init__(
        self,
        batches: AsyncIterator[list[FeedEvent]],
        *,
        on_close: Callable[[], None],
        watchdog: Watchdog,
        send_timeout_s: float,
        headers: Mapping[str, str] | None = None,
    ) -> None:
        # no ``super().__init__``: without a ``body`` no Content-Length is set (a stream)
        self.status_code = 200
        self.background = None
        self.init_headers({**HEADERS, **(headers or {})})
        self.batches = batches
        self.on_close = on_close
        self.watchdog = watchdog
        self.send_timeout_s = send_timeout_s
        self._sending_since: float | None = None
        self._task: asyncio.Task[object] | None = None
        self._stalled = False

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        try:
            start: Message = {
                "type": "http.response.start",
                "status": self.status_code,
                "headers": self.raw_headers,
            }
            if scope.get("method", "GET").upper() == "HEAD":
                await send(start)
                await send({"type": "http.response.body", "body": b"", "more_body": False})
                return
            await self._stream(receive, send, start)
        finally:
            self.on_close()

    async def _stream(self, receive: Receive, send: Send, start: Message) -> None:
        streaming = asyncio.current_task()
        assert streaming is not None
        self._task = streaming
        gone = False

        async def watch() -> None:
            nonlocal gone
            while True:
                message = await receive()
                if message["type"] == "http.disconnect":
                    gone = True
                    streaming.cancel()
                    return

        watcher = asyncio.create_task(watch(), name="sse-disconnect")
        self.watchdog.watch(self)
        try:
            await self._send(send, start)
            async for batch in self.batches:
                body = b"".join([event.frame for event in batch]) if batch else PING
                await self._send(
                    send, {"type": "http.response.body", "body": body, "more_body": True}
                )
            await self._send(send, {"type": "http.response.body", "body": b"", "more_body": False})
        except asyncio.CancelledError:
            if not (gone or self._stalled):
                raise  # the server is stopping, not the client going away
            streaming.uncancel()
        except OSError:
            pass  # a broken connection
        finally:
            self.watchdog.unwatch(self)
            watcher.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await watcher
            aclose = getattr(self.batches, "aclose", None)
            if aclose is not None:
                await aclose()

    async def _send(self, send: Send, message: Message) -> None:
        self._sending_since = time.monotonic()
        await send(message)
        self._sending_since = None

    def check(self, now: float) -> None:
        """Drop the client if one send has waited longer than ``send_timeout_s`` (it
        stopped reading: the socket's buffers are full)."""
        since = self._sending_since
        if since is not None and now - since > self.send_timeout_s and self._task is not None:
            self._stalled = True
            self._task.cancel()
