"""A lean Server-Sent Events response for a run's event stream.

A run watched by a thousand clients sends every batch of events a thousand times, so
what one delivery costs decides how late the last subscriber sees it. This response is
plain ASGI: one coroutine per stream that sends the stored events and keep-alives it
takes from the feed (``FeedHub.stream``), plus one idle task that notices the client
going away. Live events do not pass through that coroutine: the feed writes them to
every caught-up stream in one pass through ``push``, which runs the ASGI ``send`` to
its end at once when the socket has room (``start_send``), without waking the stream's
task. No task group, no per-message wrappers and no timer per send or wait: the hub's
ticker checks every stream's send in progress and drops a client that stopped reading
for ``send_timeout_s`` (``check``).
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Coroutine, Mapping
from typing import Any, Protocol

from starlette.responses import Response
from starlette.types import Message, Receive, Scope, Send

from app.events.frames import FeedEvent
from app.events.waiting import Push

PING = b": ping\n\n"
HEADERS = {
    "Content-Type": "text/event-stream; charset=utf-8",
    "Cache-Control": "no-store",
    "Connection": "keep-alive",
    "X-Accel-Buffering": "no",  # proxies must not buffer the stream
}


def start_send(sending: Awaitable[None]) -> asyncio.Future[None] | None:
    """Run a ``send`` as far as it goes without waiting: to its end when the socket has
    room (None: no task was made), else the rest as a task, returned. (An eagerly
    started task, Python 3.12+, does the same.)"""
    if not isinstance(sending, Coroutine):
        future = asyncio.ensure_future(sending)
        return None if future.done() and future.exception() is None else future
    try:
        waiting_on = sending.send(None)
    except StopIteration:
        return None
    return asyncio.ensure_future(_finish_send(sending, waiting_on))


async def _finish_send(sending: Coroutine[Any, Any, None], waiting_on: Any) -> None:
    """Drive ``sending`` on, as a task would have, from where it first had to wait."""
    while True:
        try:
            if waiting_on is None:
                await asyncio.sleep(0)
            else:
                waiting_on._asyncio_future_blocking = False  # taken over, as a task does
                await waiting_on
        except asyncio.CancelledError:
            task = asyncio.current_task()
            if task is not None and task.cancelling():
                sending.close()
                raise
        except Exception:  # the send sees it itself, when resumed below
            pass
        try:
            waiting_on = sending.send(None)
        except StopIteration:
            return


class Watchdog(Protocol):
    """Calls ``check(now)`` of every watched stream now and then (``FeedHub``)."""

    def watch(self, stream: EventStreamResponse) -> None: ...

    def unwatch(self, stream: EventStreamResponse) -> None: ...


class EventStreamResponse(Response):
    """Streams the batches of ``open_batches(push)`` (an empty batch: a keep-alive
    comment) as SSE, and whatever the source writes through ``push``; ``on_close`` runs
    once when the stream ends, however it ends (HEAD included)."""

    media_type = "text/event-stream"

    def __init__(
        self,
        open_batches: Callable[[Push], AsyncIterator[list[FeedEvent]]],
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
        self.open_batches = open_batches
        self.on_close = on_close
        self.watchdog = watchdog
        self.send_timeout_s = send_timeout_s
        self._sending_since: float | None = None
        self._task: asyncio.Task[object] | None = None
        self._stalled = False
        self._live_send: Send | None = None  # while the body streams: what ``push`` uses
        self._pending: asyncio.Future[None] | None = None  # a push that had to wait

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
        batches = self.open_batches(self._push)
        try:
            await self._send(send, start)
            self._live_send = send
            async for batch in batches:
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
            self._live_send = None
            if self._pending is not None:
                self._pending.cancel()
            self.watchdog.unwatch(self)
            watcher.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await watcher
            aclose = getattr(batches, "aclose", None)
            if aclose is not None:
                await aclose()

    def _push(self, body: bytes) -> asyncio.Future[None] | None:
        """Write ``body`` now, from outside the stream's task (the feed's fan-out); the
        rest of a write that must wait for the socket is returned (the stream's task
        awaits it before anything else is sent) and watched like any send."""
        send = self._live_send
        if send is None:
            return None  # the stream is ending
        pending = start_send(send({"type": "http.response.body", "body": body, "more_body": True}))
        if pending is not None:
            self._sending_since = time.monotonic()
            self._pending = pending
            pending.add_done_callback(self._pushed)
        return pending

    def _pushed(self, pending: asyncio.Future[None]) -> None:
        if self._pending is pending:
            self._sending_since = None
            self._pending = None

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
