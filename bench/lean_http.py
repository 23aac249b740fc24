"""The load generator's HTTP client: HTTP/1.1 keep-alive on raw asyncio sockets.

The load generator shares the machine's two cores with the server and Postgres, so what
it spends per request is taken from the server being measured. httpx spends about 1 ms of
CPU per request here (its pool, transports, headers and response models); this client
writes a request as bytes and reads a ``Content-Length`` answer, about a tenth of that,
so the figures measure the server. It speaks only what the benchmark needs: JSON bodies,
answers with ``Content-Length`` (every non-streaming answer of ``stepwise serve``).

It offers the few ``httpx.AsyncClient`` calls the suites make (``get``, ``post`` with
``json=``/``params=``; answers with ``status_code``, ``json()``, ``raise_for_status()``),
so a workload runs on either.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
from collections.abc import AsyncIterator, Mapping
from typing import Any
from urllib.parse import urlencode, urlsplit

import orjson

TIMEOUT_S = 120.0  # a request and its answer, as the suites' httpx clients allowed


class _Unanswered(Exception):
    """The connection ended before the first byte of an answer."""


class LeanHTTPError(RuntimeError):
    """An answer of status 400 or more, or a connection that broke mid-answer."""


class LeanResponse:
    __slots__ = ("content", "status_code")

    def __init__(self, status_code: int, content: bytes) -> None:
        self.status_code = status_code
        self.content = content

    def json(self) -> Any:
        return orjson.loads(self.content)

    def raise_for_status(self) -> None:
        if self.status_code >= 400:
            raise LeanHTTPError(f"HTTP {self.status_code}: {self.content[:300]!r}")


class LeanClient:
    """Up to ``size`` keep-alive connections to one ``http://host:port``."""

    def __init__(self, base: str, size: int) -> None:
        parts = urlsplit(base)
        self.host = parts.hostname or "127.0.0.1"
        self.port = parts.port or 80
        self._idle: collections.deque[tuple[asyncio.StreamReader, asyncio.StreamWriter]] = (
            collections.deque()
        )
        self._slots = asyncio.Semaphore(size)
        self._head = f"Host: {self.host}:{self.port}\r\n".encode()

    async def get(
        self,
        path: str,
        params: dict[str, Any] | None = None,
        headers: Mapping[str, str] | None = None,
    ) -> LeanResponse:
        return await self.request("GET", path, params=params, headers=headers)

    async def post(
        self,
        path: str,
        json: Any = None,
        params: dict[str, Any] | None = None,
        headers: Mapping[str, str] | None = None,
    ) -> LeanResponse:
        return await self.request("POST", path, json=json, params=params, headers=headers)

    async def request(
        self,
        method: str,
        path: str,
        json: Any = None,
        params: dict[str, Any] | None = None,
        headers: Mapping[str, str] | None = None,
    ) -> LeanResponse:
        if params:
            path = f"{path}?{urlencode(params)}"
        head = f"{method} {path} HTTP/1.1\r\n".encode() + self._head
        for name, value in (headers or {}).items():
            head += f"{name}: {value}\r\n".encode()
        body = b""
        if json is not None:
            body = orjson.dumps(json)
            head += b"Content-Type: application/json\r\nContent-Length: %d\r\n" % len(body)
        message = head + b"\r\n" + body
        async with self._slots, asyncio.timeout(TIMEOUT_S):
            while self._idle:
                reader, writer = self._idle.popleft()
                if reader.at_eof() or writer.is_closing():
                    writer.close()  # the server closed it while idle (keep-alive timeout)
                    continue
                try:
                    return await self._exchange(reader, writer, message)
                except _Unanswered:
                    # closed by the server as it was taken, before it read the request:
                    # nothing was done, so the request goes again, on a new connection
                    break
            reader, writer = await self._connect()
            try:
                return await self._exchange(reader, writer, message)
            except _Unanswered as exc:
                raise LeanHTTPError("the connection closed before an answer") from exc

    async def _exchange(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, message: bytes
    ) -> LeanResponse:
        """``message`` sent on the connection and its answer read; the connection is kept
        for the next request unless the server said it closes it."""
        try:
            writer.write(message)
            status, content, keep = await _read_answer(reader)
        except BaseException:
            writer.close()
            raise
        if keep:
            self._idle.append((reader, writer))
        else:
            writer.close()
        return LeanResponse(status, content)

    async def _connect(self) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
        return await asyncio.open_connection(self.host, self.port)

    async def aclose(self) -> None:
        for _, writer in self._idle:
            writer.close()
        self._idle.clear()


async def _read_answer(reader: asyncio.StreamReader) -> tuple[int, bytes, bool]:
    try:
        head = await reader.readuntil(b"\r\n\r\n")
    except asyncio.IncompleteReadError as exc:
        if exc.partial:
            raise LeanHTTPError("the connection closed mid-answer") from exc
        raise _Unanswered from exc
    except (ConnectionError, asyncio.LimitOverrunError) as exc:
        raise LeanHTTPError(f"the answer could not be read: {exc!r}") from exc
    lines = head.split(b"\r\n")
    status = int(lines[0].split(b" ", 2)[1])
    length, keep = None, True
    for line in lines[1:]:
        name, _, value = line.partition(b":")
        name = name.strip().lower()
        if name == b"content-length":
            length = int(value)
        elif name == b"connection" and value.strip().lower() == b"close":
            keep = False
        elif name == b"transfer-encoding":
            raise LeanHTTPError("a chunked answer (this client reads Content-Length only)")
    if length is None and (status in (204, 304) or 100 <= status < 200):
        return status, b"", keep
    if length is None:
        raise LeanHTTPError(f"HTTP {status} without Content-Length")
    try:
        return status, await reader.readexactly(length), keep
    except asyncio.IncompleteReadError as exc:
        raise LeanHTTPError("the connection closed mid-answer") from exc


@contextlib.asynccontextmanager
async def lean_client(base: str, in_flight: int) -> AsyncIterator[LeanClient]:
    client = LeanClient(base, in_flight * 2 + 4)
    try:
        yield client
    finally:
        await client.aclose()
