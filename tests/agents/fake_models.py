"""A scripted fake of the model providers' HTTP APIs, on loopback (real HTTP, real SSE).

``FakeModel("openai")`` serves ``POST /v1/chat/completions`` (Chat Completions, streamed
as ``data:`` chunks ending with ``data: [DONE]``, tool calls as ``delta.tool_calls``);
``FakeModel("anthropic")`` serves ``POST /v1/messages`` (Messages, streamed as
``message_start`` … ``message_stop`` events). Each request takes the next scripted
reply: an :class:`Answer` (text and/or tool calls; ``malformed`` or ``cut`` spoil its
stream) or an :class:`Error` (a status with headers). ``requests`` keeps every request
body and its headers; ``connections`` counts accepted connections, ``open_connections``
those not closed yet. Other paths answer
from ``routes`` (the tools' endpoints).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any


@dataclass
class Answer:
    text: str = ""
    tool_calls: list[tuple[str, str, Any]] = field(default_factory=list)  # (id, name, args)
    input_tokens: int = 10
    output_tokens: int = 5
    pieces: int = 3  # how many chunks the text is streamed in
    chunk_delay_s: float = 0.0
    malformed: bool = False  # one chunk of the stream is not JSON
    cut: bool = False  # the connection drops in the middle of the stream
    hold: threading.Event | None = None  # wait until it is set before answering


@dataclass
class Error:
    status: int
    headers: list[tuple[str, str]] = field(default_factory=list)
    body: Any = field(default_factory=lambda: {"error": {"message": "scripted failure"}})


@dataclass
class Request:
    path: str
    headers: dict[str, str]
    body: Any


Route = Callable[[Request], tuple[int, Any]]


def _split(text: str, pieces: int) -> list[str]:
    if not text:
        return []
    size = max(1, -(-len(text) // max(1, pieces)))
    return [text[i : i + size] for i in range(0, len(text), size)]


class FakeModel:
    def __init__(self, provider: str) -> None:
        self.provider = provider
        self.script: list[Answer | Error] = []
        self.requests: list[Request] = []
        self.routes: dict[str, Route] = {}
        self.connections = 0
        self.open_connections = 0
        self.port = 0
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, daemon=True)
        self._server: asyncio.Server | None = None

    # -- the test's side
    def start(self) -> FakeModel:
        self._thread.start()
        asyncio.run_coroutine_threadsafe(self._start(), self._loop).result(10)
        return self

    def stop(self) -> None:
        asyncio.run_coroutine_threadsafe(self._stop(), self._loop).result(10)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(10)
        self._loop.close()

    def push(self, *replies: Answer | Error) -> None:
        self.script.extend(replies)

    @property
    def base_url(self) -> str:
        root = f"http://127.0.0.1:{self.port}"
        return f"{root}/v1" if self.provider == "openai" else root

    @property
    def model_path(self) -> str:
        return "/v1/chat/completions" if self.provider == "openai" else "/v1/messages"

    @property
    def model_requests(self) -> list[Request]:
        return [r for r in self.requests if r.path == self.model_path]

    def url(self, path: str) -> str:
        return f"http://127.0.0.1:{self.port}{path}"

    # -- the server's side
    async def _start(self) -> None:
        self._server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        self.port = self._server.sockets[0].getsockname()[1]

    async def _stop(self) -> None:
        if self._server is not None:
            self._server.close()
        tasks = [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        self.open_connections += 1
        try:
            while await self._exchange(reader, writer):
                pass
        except (ConnectionError, asyncio.IncompleteReadError, OSError):
            pass
        except asyncio.CancelledError:
            # ``_stop`` cancels the connections still open; ending normally keeps Python
            # 3.11's stream callback from logging the cancellation as an error
            pass
        finally:
            self.open_connections -= 1
            with contextlib.suppress(Exception):
                writer.close()

    async def _exchange(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> bool:
        line = await reader.readline()
        if not line.strip():
            return False
        _, target, _ = line.decode("latin-1").split(" ", 2)
        headers: dict[str, str] = {}
        while True:
            raw = await reader.readline()
            if raw in (b"\r\n", b"\n", b""):
                break
            name, _, value = raw.decode("latin-1").partition(":")
            headers[name.strip().lower()] = value.strip()
        raw_body = await reader.readexactly(int(headers.get("content-length", "0")))
        try:
            body = json.loads(raw_body) if raw_body else None
        except ValueError:
            body = raw_body.decode("utf-8", "replace")
        request = Request(target.split("?", 1)[0], headers, body)
        self.requests.append(request)
        if request.path != self.model_path:
            route = self.routes.get(request.path)
            status, reply = route(request) if route else (404, {"error": "no route"})
            await self._json(writer, status, reply)
            return True
        if not self.script:
            await self._json(writer, 500, {"error": {"message": "the script is exhausted"}})
            return True
        step = self.script.pop(0)
        if isinstance(step, Error):
            await self._json(writer, step.status, step.body, step.headers)
            return True
        while step.hold is not None and not step.hold.is_set():
            await asyncio.sleep(0.05)
        if isinstance(body, dict) and body.get("stream"):
            return await self._stream(writer, step)
        await self._json(writer, 200, self._whole(step, body))
        return True

    async def _json(
        self,
        writer: asyncio.StreamWriter,
        status: int,
        body: Any,
        headers: list[tuple[str, str]] | None = None,
    ) -> None:
        data = json.dumps(body).encode()
        head = [f"HTTP/1.1 {status} Status", "Content-Type: application/json",
                f"Content-Length: {len(data)}"]  # fmt: skip
        head += [f"{k}: {v}" for k, v in headers or []]
        writer.write(("\r\n".join(head) + "\r\n\r\n").encode() + data)
        await writer.drain()

    async def _stream(self, writer: asyncio.StreamWriter, answer: Answer) -> bool:
        head = ["HTTP/1.1 200 OK", "Content-Type: text/event-stream", "Transfer-Encoding: chunked"]
        writer.write(("\r\n".join(head) + "\r\n\r\n").encode())
        events = self._events(answer)
        cut_at = len(events) // 2 if answer.cut else None
        for i, event in enumerate(events):
            if i == cut_at:
                writer.write(b"%x\r\n%s" % (len(event) + 40, event))  # a chunk left unfinished
                await writer.drain()
                writer.close()
                return False
            if answer.malformed and i == len(events) // 2:
                event = event.split(b"data: ")[0] + b"data: {not json\n\n"
            writer.write(b"%x\r\n%s\r\n" % (len(event), event))
            await writer.drain()
            if answer.chunk_delay_s:
                await asyncio.sleep(answer.chunk_delay_s)
        writer.write(b"0\r\n\r\n")
        await writer.drain()
        return True

    # -- the wire formats
    def _events(self, a: Answer) -> list[bytes]:
        if self.provider == "openai":
            return [f"data: {json.dumps(c)}\n\n".encode() for c in _openai_chunks(a)] + [
                b"data: [DONE]\n\n"
            ]
        return [
            f"event: {e['type']}\ndata: {json.dumps(e)}\n\n".encode() for e in _anthropic_events(a)
        ]

    def _whole(self, a: Answer, body: Any) -> dict[str, Any]:
        if self.provider == "openai":
            message: dict[str, Any] = {"role": "assistant", "content": a.text or None}
            if a.tool_calls:
                message["tool_calls"] = [
                    {"id": i, "type": "function",
                     "function": {"name": n, "arguments": json.dumps(args)}}
                    for i, n, args in a.tool_calls
                ]  # fmt: skip
            return {
                "id": "chatcmpl-1", "object": "chat.completion", "created": 1, "model": "fake",
                "choices": [{"index": 0, "message": message,
                             "finish_reason": "tool_calls" if a.tool_calls else "stop"}],
                "usage": {"prompt_tokens": a.input_tokens, "completion_tokens": a.output_tokens,
                          "total_tokens": a.input_tokens + a.output_tokens},
            }  # fmt: skip
        content: list[dict[str, Any]] = [{"type": "text", "text": a.text}] if a.text else []
        content += [{"type": "tool_use", "id": i, "name": n, "input": args}
                    for i, n, args in a.tool_calls]  # fmt: skip
        return {
            "id": "msg_1", "type": "message", "role": "assistant", "model": "fake",
            "content": content, "stop_reason": "tool_use" if a.tool_calls else "end_turn",
            "stop_sequence": None,
            "usage": {"input_tokens": a.input_tokens, "output_tokens": a.output_tokens},
        }  # fmt: skip


def _openai_chunks(a: Answer) -> list[dict[str, Any]]:
    def chunk(delta: dict[str, Any], finish: str | None = None) -> dict[str, Any]:
        return {"id": "chatcmpl-1", "object": "chat.completion.chunk", "created": 1,
                "model": "fake", "choices": [{"index": 0, "delta": delta,
                                              "finish_reason": finish}]}  # fmt: skip

    chunks = [chunk({"role": "assistant", "content": ""})]
    chunks += [chunk({"content": piece}) for piece in _split(a.text, a.pieces)]
    for index, (call_id, name, args) in enumerate(a.tool_calls):
        text = json.dumps(args)
        half = len(text) // 2
        chunks.append(chunk({"tool_calls": [{"index": index, "id": call_id, "type": "function",
                                             "function": {"name": name, "arguments": text[:half]}}]}))  # fmt: skip
        chunks.append(chunk({"tool_calls": [{"index": index, "function": {"arguments": text[half:]}}]}))  # fmt: skip
    chunks.append(chunk({}, "tool_calls" if a.tool_calls else "stop"))
    chunks.append({"id": "chatcmpl-1", "object": "chat.completion.chunk", "created": 1,
                   "model": "fake", "choices": [],
                   "usage": {"prompt_tokens": a.input_tokens, "completion_tokens": a.output_tokens,
                             "total_tokens": a.input_tokens + a.output_tokens}})  # fmt: skip
    return chunks


def _anthropic_events(a: Answer) -> list[dict[str, Any]]:
    events: list[dict[str, Any]] = [
        {"type": "message_start", "message": {
            "id": "msg_1", "type": "message", "role": "assistant", "model": "fake", "content": [],
            "stop_reason": None, "stop_sequence": None,
            "usage": {"input_tokens": a.input_tokens, "output_tokens": 1}}},
        {"type": "ping"},
    ]  # fmt: skip
    index = 0
    if a.text:
        events.append({"type": "content_block_start", "index": 0,
                       "content_block": {"type": "text", "text": ""}})  # fmt: skip
        events += [{"type": "content_block_delta", "index": 0,
                    "delta": {"type": "text_delta", "text": piece}}
                   for piece in _split(a.text, a.pieces)]  # fmt: skip
        events.append({"type": "content_block_stop", "index": 0})
        index = 1
    for call_id, name, args in a.tool_calls:
        text = json.dumps(args)
        half = len(text) // 2
        events.append({"type": "content_block_start", "index": index,
                       "content_block": {"type": "tool_use", "id": call_id, "name": name,
                                         "input": {}}})  # fmt: skip
        for part in (text[:half], text[half:]):
            events.append({"type": "content_block_delta", "index": index,
                           "delta": {"type": "input_json_delta", "partial_json": part}})  # fmt: skip
        events.append({"type": "content_block_stop", "index": index})
        index += 1
    events.append({"type": "message_delta",
                   "delta": {"stop_reason": "tool_use" if a.tool_calls else "end_turn",
                             "stop_sequence": None},
                   "usage": {"output_tokens": a.output_tokens}})  # fmt: skip
    events.append({"type": "message_stop"})
    return events
