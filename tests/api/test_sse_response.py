"""The SSE response's own contract, driven over ASGI: a client that stops reading is
dropped once a send has waited past ``send_timeout_s``; a disconnect ends the stream;
HEAD sends headers only; every way out releases the stream's slot once."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator
from typing import Any

from app.api.sse import PING, EventStreamResponse, start_send
from app.events.frames import FeedEvent
from app.events.waiting import Push


class Ticker:
    """What ``FeedHub`` does for watched streams, on demand."""

    def __init__(self) -> None:
        self.watched: set[Any] = set()

    def watch(self, stream: Any) -> None:
        self.watched.add(stream)

    def unwatch(self, stream: Any) -> None:
        self.watched.discard(stream)

    def tick(self, at: float) -> None:
        for stream in list(self.watched):
            stream.check(at)


async def batches(count: int, *, then_wait: bool = True) -> AsyncIterator[list[FeedEvent]]:
    for seq in range(1, count + 1):
        yield [FeedEvent(seq, "step.progress", f"id: {seq}\n\n".encode())]
    yield []  # a keep-alive
    if then_wait:
        await asyncio.Event().wait()


def response(source: AsyncIterator[list[FeedEvent]], ticker: Ticker, closed: list[int]) -> Any:
    return EventStreamResponse(
        lambda push: source, on_close=lambda: closed.append(1), watchdog=ticker, send_timeout_s=5
    )


async def never_disconnects() -> dict[str, Any]:
    await asyncio.Event().wait()
    raise AssertionError


async def test_a_client_that_stops_reading_is_dropped() -> None:
    ticker, closed, sent = Ticker(), [], []
    stuck = asyncio.Event()

    async def send(message: dict[str, Any]) -> None:
        sent.append(message)
        if len(sent) == 3:  # the socket's buffers are full from here on
            stuck.set()
            await asyncio.Event().wait()

    scope = {"type": "http", "method": "GET"}
    task = asyncio.create_task(response(batches(5), ticker, closed)(scope, never_disconnects, send))
    await stuck.wait()
    ticker.tick(time.monotonic() + 1)  # within the timeout: kept
    await asyncio.sleep(0)
    assert not task.done()
    ticker.tick(time.monotonic() + 6)  # past it: dropped, quietly
    await asyncio.wait_for(task, 5)
    assert task.exception() is None
    assert closed == [1] and not ticker.watched
    assert [m["body"] for m in sent[1:]] == [b"id: 1\n\n", b"id: 2\n\n"]


async def test_a_disconnect_ends_the_stream_and_the_end_is_clean() -> None:
    ticker, closed, sent = Ticker(), [], []
    gone = asyncio.Event()

    async def receive() -> dict[str, Any]:
        await gone.wait()
        return {"type": "http.disconnect"}

    async def send(message: dict[str, Any]) -> None:
        sent.append(message)
        if message.get("body") == PING:
            gone.set()

    scope = {"type": "http", "method": "GET"}
    await asyncio.wait_for(response(batches(2), ticker, closed)(scope, receive, send), 5)
    assert closed == [1] and not ticker.watched
    assert [m.get("body") for m in sent] == [None, b"id: 1\n\n", b"id: 2\n\n", PING]


async def test_a_finished_stream_ends_its_body_and_head_sends_headers_only() -> None:
    for method, bodies in (("GET", [b"id: 1\n\n", PING, b""]), ("HEAD", [b""])):
        ticker, closed, sent = Ticker(), [], []

        async def send(message: dict[str, Any], sent: list[Any] = sent) -> None:
            sent.append(message)

        source = batches(1, then_wait=False)
        scope = {"type": "http", "method": method}
        await response(source, ticker, closed)(scope, never_disconnects, send)
        assert sent[0]["type"] == "http.response.start"
        headers = dict(sent[0]["headers"])
        assert headers[b"content-type"].startswith(b"text/event-stream")
        assert b"content-length" not in headers
        assert [m["body"] for m in sent[1:]] == bodies
        assert sent[-1]["more_body"] is False
        assert closed == [1]


async def test_start_send_completes_at_once_or_finishes_the_send_as_a_task() -> None:
    log: list[str] = []
    gate = asyncio.Event()
    failed: asyncio.Future[None] = asyncio.get_running_loop().create_future()

    async def quick() -> None:
        log.append("quick")

    async def slow() -> None:
        log.append("slow begins")
        await gate.wait()
        log.append("slow ends")

    async def failing() -> None:
        try:
            await failed
        except ValueError:
            log.append("failure seen by the send")

    async def stuck() -> None:
        try:
            await asyncio.Event().wait()
        finally:
            log.append("stuck closed")

    assert start_send(quick()) is None and log == ["quick"]
    pending = start_send(slow())
    assert pending is not None and log[-1] == "slow begins"
    gate.set()
    await asyncio.wait_for(pending, 5)
    assert log[-1] == "slow ends"
    pending = start_send(failing())
    assert pending is not None
    failed.set_exception(ValueError("socket gone"))
    await asyncio.wait_for(pending, 5)
    assert log[-1] == "failure seen by the send"
    pending = start_send(stuck())
    assert pending is not None
    await asyncio.sleep(0)
    pending.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await pending
    assert log[-1] == "stuck closed"


async def test_a_pushed_write_that_waits_is_watched_and_a_stalled_client_is_dropped() -> None:
    ticker, closed, sent = Ticker(), [], []
    stuck = asyncio.Event()
    pending: list[asyncio.Future[None] | None] = []

    async def send(message: dict[str, Any]) -> None:
        sent.append(message)
        if len(sent) == 4:  # the socket's buffers are full from the second pushed write on
            stuck.set()
            await asyncio.Event().wait()

    async def source(push: Push) -> AsyncIterator[list[FeedEvent]]:
        yield [FeedEvent(1, "step.progress", b"id: 1\n\n")]
        assert push(b"id: 2\n\n") is None  # room in the socket: written at once
        waiting = push(b"id: 3\n\n")
        pending.append(waiting)
        assert waiting is not None
        await waiting  # as ``FeedHub.stream`` does before it sends anything else
        yield []

    scope = {"type": "http", "method": "GET"}
    respond = EventStreamResponse(
        source, on_close=lambda: closed.append(1), watchdog=ticker, send_timeout_s=5
    )
    sent_before_stall = 4
    task = asyncio.create_task(respond(scope, never_disconnects, send))
    await stuck.wait()
    assert len(sent) == sent_before_stall
    ticker.tick(time.monotonic() + 1)  # within the timeout: kept
    await asyncio.sleep(0)
    assert not task.done()
    ticker.tick(time.monotonic() + 6)  # past it: dropped, quietly
    await asyncio.wait_for(task, 5)
    assert task.exception() is None
    assert closed == [1] and not ticker.watched
    assert pending[0] is not None and pending[0].done()
    assert [m["body"] for m in sent[1:]] == [b"id: 1\n\n", b"id: 2\n\n", b"id: 3\n\n"]
