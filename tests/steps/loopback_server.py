"""Real loopback HTTP(S) servers and helpers for the outbound step tests.

``LoopbackServer`` is a small HTTP/1.1 server (keep-alive, chunked streaming, delays,
TLS) running on its own event loop in a background thread. It records every request
(``hits``) and counts every accepted TCP connection (``connections``): a guard test
asserts ``connections == 0``, which proves no byte reached the server.
"""

from __future__ import annotations

import asyncio
import contextlib
import ssl
import threading
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import httpx

from app.steps.base import StepContext
from app.steps.destinations import OutboundPolicy


@dataclass
class Hit:
    method: str
    target: str  # path and query, as sent
    headers: dict[str, str]  # lower-case names
    body: bytes

    @property
    def path(self) -> str:
        return self.target.split("?", 1)[0]


@dataclass
class Reply:
    status: int = 200
    headers: list[tuple[str, str]] = field(default_factory=list)
    body: bytes = b""
    chunks: Iterable[bytes] | None = None  # sent with chunked transfer-encoding
    delay_s: float = 0.0
    chunk_delay_s: float = 0.0
    close_after: bool = False  # close the connection afterwards, without saying so


Route = Reply | Callable[[Hit], Reply]

_REASONS = {200: "OK", 201: "Created", 204: "No Content", 404: "Not Found"}


class LoopbackServer:
    def __init__(
        self,
        *,
        ssl_context: ssl.SSLContext | None = None,
        also_ipv6: bool = False,
    ) -> None:
        self.routes: dict[str, Route] = {}
        self.hits: list[Hit] = []
        self.connections = 0
        self.port = 0
        self._ssl = ssl_context
        self._also_ipv6 = also_ipv6
        self._loop = asyncio.new_event_loop()
        self._servers: list[asyncio.Server] = []
        self._thread = threading.Thread(target=self._loop.run_forever, daemon=True)

    # -- control (test thread)
    def start(self) -> LoopbackServer:
        self._thread.start()
        asyncio.run_coroutine_threadsafe(self._start(), self._loop).result(10)
        return self

    def stop(self) -> None:
        asyncio.run_coroutine_threadsafe(self._stop(), self._loop).result(10)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(10)
        self._loop.close()

    def route(self, path: str, reply: Route) -> None:
        self.routes[path] = reply

    def url(self, path: str = "/", host: str = "127.0.0.1") -> str:
        scheme = "https" if self._ssl else "http"
        return f"{scheme}://{host}:{self.port}{path}"

    def hits_for(self, path: str) -> list[Hit]:
        return [hit for hit in self.hits if hit.path == path]

    # -- server (its own thread and loop)
    async def _start(self) -> None:
        server = await asyncio.start_server(self._serve, "127.0.0.1", 0, ssl=self._ssl)
        self._servers.append(server)
        self.port = server.sockets[0].getsockname()[1]
        if self._also_ipv6:
            with contextlib.suppress(OSError):  # no IPv6 loopback here: skip it
                self._servers.append(
                    await asyncio.start_server(self._serve, "::1", self.port, ssl=self._ssl)
                )

    async def _stop(self) -> None:
        for server in self._servers:
            server.close()
        tasks = [task for task in asyncio.all_tasks() if task is not asyncio.current_task()]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        try:
            while await self._one_exchange(reader, writer):
                pass
        except (ConnectionError, asyncio.IncompleteReadError, ssl.SSLError, OSError):
            pass
        finally:
            with contextlib.suppress(Exception):
                writer.close()

    async def _one_exchange(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> bool:
        line = await reader.readline()
        if not line.strip():
            return False
        method, target, _ = line.decode("latin-1").split(" ", 2)
        headers: dict[str, str] = {}
        while True:
            raw = await reader.readline()
            if raw in (b"\r\n", b"\n", b""):
                break
            name, _, value = raw.decode("latin-1").partition(":")
            headers[name.strip().lower()] = value.strip()
        body = await reader.readexactly(int(headers.get("content-length", "0")))
        hit = Hit(method, target, headers, body)
        self.hits.append(hit)

        route = self.routes.get(hit.path, Reply(404, body=b"no route"))
        reply = route(hit) if callable(route) else route
        if reply.delay_s:
            await asyncio.sleep(reply.delay_s)
        reason = _REASONS.get(reply.status, "Status")
        head = [f"HTTP/1.1 {reply.status} {reason}"]
        names = {name.lower() for name, _ in reply.headers}
        head += [f"{name}: {value}" for name, value in reply.headers]
        if reply.chunks is not None:
            head.append("Transfer-Encoding: chunked")
        elif "content-length" not in names:
            head.append(f"Content-Length: {len(reply.body)}")
        writer.write(("\r\n".join(head) + "\r\n\r\n").encode("latin-1"))
        if reply.chunks is not None:
            for chunk in reply.chunks:
                writer.write(b"%x\r\n%s\r\n" % (len(chunk), chunk))
                await writer.drain()
                if reply.chunk_delay_s:
                    await asyncio.sleep(reply.chunk_delay_s)
            writer.write(b"0\r\n\r\n")
        elif method != "HEAD":
            writer.write(reply.body)
        await writer.drain()
        return not reply.close_after and headers.get("connection", "").lower() != "close"


LOOPBACK = OutboundPolicy(allowed_hosts=frozenset({"127.0.0.1"}))


def make_ctx(
    config: dict[str, Any],
    http: httpx.AsyncClient | None,
    *,
    step: str = "http",
    policy: OutboundPolicy = LOOPBACK,
    **fields: Any,
) -> StepContext:
    return StepContext(
        run_id=fields.pop("run_id", "r1"),
        node=fields.pop("node", "n"),
        step=step,
        config=config,
        inputs={},
        state=fields.pop("state", {}),
        context=fields.pop("context", {}),
        http=http,
        services=SimpleNamespace(outbound_policy=policy),
        **fields,
    )


@dataclass(frozen=True)
class TlsFiles:
    cert: Path
    key: Path

    def server_context(self) -> ssl.SSLContext:
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        context.load_cert_chain(self.cert, self.key)
        return context

    def client_context(self) -> ssl.SSLContext:
        return ssl.create_default_context(cafile=str(self.cert))
