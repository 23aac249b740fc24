"""Connection pools for outbound requests: kept apart per TLS server name, O(1) per
request, and cheap to ask whether an idle connection is still usable.

httpcore's own pool re-examines every connection it holds, for each request it assigns
and each response it closes: whether it is closed, expired, readable (the server closed
it), idle — the last inside a loop over the connections, so O(n²) per request. With 16
connections in use that bookkeeping was a sixth of the server's CPU under outbound load.
:class:`OriginPool` keeps httpcore's connections (h11, TLS, timeouts, its errors) and
replaces only the bookkeeping: idle connections per origin, most recent first, each
checked once when it is taken (by :mod:`app.steps.network`, from the socket).
"""

from __future__ import annotations

import asyncio
import contextlib
import ssl
import time
import typing
from collections import OrderedDict, deque
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from functools import partial

import anyio
import httpcore
import httpx

from app import tracing
from app.steps.network import Backend

_Key = tuple[bytes, bytes, int]


def _key(origin: httpcore.Origin) -> _Key:
    return origin.scheme, origin.host, origin.port  # Origin itself is not hashable


class OriginPool:
    """What httpx's transport needs of a pool (``handle_async_request``, ``aclose``), at
    O(1) per request: idle HTTP/1.1 connections per origin, most recently used first.

    At most ``max_connections`` are open (in use or idle); a request beyond that takes
    the place of an idle connection to another origin, or waits (the request's ``pool``
    timeout) for one to be returned. At most ``max_keepalive_connections`` are kept idle.
    An idle connection is checked when it is taken (expired, or closed by the server:
    then it is closed and the next one tried), and all idle ones at most once a second,
    so that those to origins no longer asked for are closed too."""

    _SWEEP_EVERY_S = 1.0

    def __init__(
        self,
        *,
        ssl_context: ssl.SSLContext,
        max_connections: int | None,
        max_keepalive_connections: int | None,
        keepalive_expiry: float | None,
        network_backend: httpcore.AsyncNetworkBackend,
    ) -> None:
        self._ssl_context = ssl_context
        self._max_open = max_connections if max_connections is not None else 2**31
        self._max_idle = min(
            self._max_open,
            max_keepalive_connections if max_keepalive_connections is not None else 2**31,
        )
        self._expiry = keepalive_expiry
        self._backend = network_backend
        self._idle: OrderedDict[_Key, list[httpcore.AsyncHTTPConnection]] = OrderedDict()
        self._idle_count = 0
        self._open = 0
        self._in_use: set[httpcore.AsyncHTTPConnection] = set()
        self._waiters: deque[asyncio.Future[None]] = deque()
        self._swept_at = time.monotonic()
        self._closed = False

    def counts(self) -> tuple[int, int]:
        """(connections open, of which idle)."""
        return self._open, self._idle_count

    def busy(self) -> bool:
        """Whether a request is in flight or waiting for a connection."""
        return self._open > self._idle_count or bool(self._waiters)

    async def handle_async_request(self, request: httpcore.Request) -> httpcore.Response:
        scheme = request.url.scheme
        if scheme not in (b"http", b"https"):
            raise httpcore.UnsupportedProtocol(f"unsupported scheme {scheme!r}")
        origin = request.url.origin
        connection = await self._acquire(request, origin)
        try:
            response = await connection.handle_async_request(request)
        except BaseException:
            await self._release(connection, origin)
            raise
        assert isinstance(response.stream, typing.AsyncIterable)
        return httpcore.Response(
            status=response.status,
            headers=response.headers,
            content=_ReturningStream(response.stream, partial(self._release, connection, origin)),
            extensions=response.extensions,
        )

    async def _acquire(
        self, request: httpcore.Request, origin: httpcore.Origin
    ) -> httpcore.AsyncHTTPConnection:
        timeout = request.extensions.get("timeout", {}).get("pool")
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            if self._closed:
                raise httpcore.ConnectError("the connection pool is closed")
            closing: list[httpcore.AsyncHTTPConnection] = []
            connection = self._take_idle(origin, closing)
            if connection is None and self._open >= self._max_open and self._idle_count:
                closing.append(self._pop_oldest_idle())  # its place goes to this origin
            if connection is None and self._open < self._max_open:
                self._open += 1
                connection = httpcore.AsyncHTTPConnection(
                    origin=origin,
                    ssl_context=self._ssl_context,
                    keepalive_expiry=self._expiry,
                    network_backend=self._backend,
                )
            await _close_all(closing)
            if connection is not None:
                self._in_use.add(connection)
                return connection
            await self._wait_for_release(deadline)

    def _take_idle(
        self, origin: httpcore.Origin, closing: list[httpcore.AsyncHTTPConnection]
    ) -> httpcore.AsyncHTTPConnection | None:
        now = time.monotonic()
        if now - self._swept_at >= self._SWEEP_EVERY_S:
            self._swept_at = now
            self._sweep(closing)
        idle = self._idle.get(_key(origin))
        while idle:
            connection = idle.pop()
            self._idle_count -= 1
            if connection.is_available() and not connection.has_expired():
                return connection
            self._open -= 1
            closing.append(connection)
        return None

    def _sweep(self, closing: list[httpcore.AsyncHTTPConnection]) -> None:
        for key, idle in list(self._idle.items()):
            usable = [c.is_available() and not c.has_expired() for c in idle]
            closing.extend(c for c, ok in zip(idle, usable, strict=True) if not ok)
            idle[:] = [c for c, ok in zip(idle, usable, strict=True) if ok]
            gone = usable.count(False)
            self._idle_count -= gone
            self._open -= gone
            if not idle:
                del self._idle[key]  # an origin no longer asked for is forgotten

    def _pop_oldest_idle(self) -> httpcore.AsyncHTTPConnection:
        for idle in self._idle.values():
            if idle:
                self._idle_count -= 1
                self._open -= 1
                return idle.pop(0)
        raise AssertionError("no idle connection though the count says one")

    async def _wait_for_release(self, deadline: float | None) -> None:
        waiter = asyncio.get_running_loop().create_future()
        self._waiters.append(waiter)
        try:
            left = None if deadline is None else max(0.0, deadline - time.monotonic())
            async with asyncio.timeout(left):  # not wait_for: it can swallow a cancel
                await waiter
        except BaseException as exc:
            if waiter.done() and not waiter.cancelled():
                self._wake_one()  # woken, but leaving: the next request gets the turn
            if isinstance(exc, TimeoutError):
                raise httpcore.PoolTimeout("no connection became free in time") from None
            raise
        finally:
            if not waiter.done():
                waiter.cancel()
            if waiter.cancelled():  # left before its turn: not waiting any more
                with contextlib.suppress(ValueError):
                    self._waiters.remove(waiter)

    def _wake_one(self) -> None:
        while self._waiters:
            waiter = self._waiters.popleft()
            if not waiter.done():
                waiter.set_result(None)
                return

    async def _release(
        self, connection: httpcore.AsyncHTTPConnection, origin: httpcore.Origin
    ) -> None:
        """A response is over (read, closed or failed): keep its connection if it can
        take another request, close it otherwise, and let a waiting request on."""
        if connection not in self._in_use:
            return  # the pool was closed meanwhile, and closed it
        self._in_use.remove(connection)
        if not self._closed and connection.is_available() and self._idle_count < self._max_idle:
            key = _key(origin)
            self._idle.setdefault(key, []).append(connection)
            self._idle.move_to_end(key)
            self._idle_count += 1
            self._wake_one()
            return
        self._open -= 1
        try:
            await _close_all([connection])
        finally:
            self._wake_one()

    async def aclose(self) -> None:
        self._closed = True
        closing = [c for idle in self._idle.values() for c in idle]
        closing += self._in_use  # as httpcore's pool: requests in flight fail
        self._idle.clear()
        self._in_use.clear()
        self._open = 0
        self._idle_count = 0
        await _close_all(closing)
        while self._waiters:
            self._wake_one()  # each finds the pool closed

    async def __aenter__(self) -> OriginPool:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.aclose()


async def _close_all(connections: list[httpcore.AsyncHTTPConnection]) -> None:
    """Close ``connections``, all of them: a cancelled caller still closes them, and a
    connection that fails to close (its socket already gone) is not the caller's error."""
    if connections:
        with anyio.CancelScope(shield=True):
            for connection in connections:
                with contextlib.suppress(Exception):
                    await connection.aclose()


class _ReturningStream:
    """A response's body; closing it gives its connection back (``release``)."""

    def __init__(
        self, inner: typing.AsyncIterable[bytes], release: Callable[[], Awaitable[None]]
    ) -> None:
        self._inner = inner
        self._release: Callable[[], Awaitable[None]] | None = release

    async def __aiter__(self) -> AsyncIterator[bytes]:
        try:
            async for part in self._inner:
                yield part
        except BaseException:
            await self.aclose()
            raise

    async def aclose(self) -> None:
        release, self._release = self._release, None
        if release is None:
            return
        try:
            close = getattr(self._inner, "aclose", None)
            if close is not None:
                with anyio.CancelScope(shield=True):
                    await close()
        finally:
            await release()


def pooled_transport(ssl_context: ssl.SSLContext, limits: httpx.Limits) -> httpx.AsyncHTTPTransport:
    """httpx's transport (its request and error mapping) over an :class:`OriginPool` on
    :class:`~app.steps.network.Backend`. httpx takes no pool, so its own is replaced by ours;
    ``tests/steps/test_pools.py`` fails if httpx stops having one to replace."""
    transport = httpx.AsyncHTTPTransport(
        verify=ssl_context, trust_env=False, limits=limits, retries=0
    )
    assert isinstance(transport._pool, httpcore.AsyncConnectionPool)
    transport._pool = OriginPool(  # type: ignore[assignment]
        ssl_context=ssl_context,
        max_connections=limits.max_connections,
        max_keepalive_connections=limits.max_keepalive_connections,
        keepalive_expiry=limits.keepalive_expiry,
        network_backend=Backend(),
    )
    return transport


@dataclass(slots=True)
class _Partition:
    transport: httpx.AsyncHTTPTransport
    pool: OriginPool


class TlsNamePartitionedTransport(httpx.AsyncBaseTransport):
    """Connection pools kept apart per TLS server name.

    Requests are sent to IP addresses (see module doc), so httpcore's pool keys its
    connections by (scheme, IP, port). Two host names on one IP would then share a TLS
    connection whose certificate was verified for the first name only. One pool per
    ``sni_hostname`` prevents that; plain-http requests share one pool. Idle pools
    beyond ``max_pools`` are closed, least recently used first.
    """

    def __init__(
        self, factory: Callable[[], httpx.AsyncHTTPTransport], max_pools: int = 64
    ) -> None:
        self._factory = factory
        self._max_pools = max_pools
        self._pools: OrderedDict[str | None, _Partition] = OrderedDict()

    def pool_count(self) -> int:
        return len(self._pools)

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        tracing.inject(request.headers)  # the step's span, as `traceparent`
        key: str | None = None
        if request.url.scheme == "https":
            sni = request.extensions.get("sni_hostname")
            key = str(sni) if sni else request.url.host
        partition = self._pools.get(key)
        if partition is None:
            transport = self._factory()
            assert isinstance(transport._pool, OriginPool)
            partition = self._pools[key] = _Partition(transport, transport._pool)
            if len(self._pools) > self._max_pools:
                await self._close_idle_pools()
        self._pools.move_to_end(key)
        return await partition.transport.handle_async_request(request)

    async def _close_idle_pools(self) -> None:
        """Close the least recently used pools with nothing in flight (never the newest,
        which is about to take a request)."""
        excess = len(self._pools) - self._max_pools
        *older, _newest = self._pools.items()
        idle = [key for key, part in older if not part.pool.busy()][:excess]
        closing = [self._pools.pop(key) for key in idle]
        for part in closing:
            await part.transport.aclose()

    async def aclose(self) -> None:
        pools, self._pools = list(self._pools.values()), OrderedDict()
        for part in pools:
            await part.transport.aclose()
