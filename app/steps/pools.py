"""Connection pools for outbound requests: kept apart per TLS server name, and cheap to
ask which of their idle connections are still usable.

httpcore's pool asks every connection it holds, for each request it assigns and each
response it closes, whether the server has closed it (``is_readable``). Through anyio's
stream attributes that question rebuilds a dict of attribute getters each time: with 16
connections it was a quarter of an outbound request's CPU. The network backend here
answers it from the socket, found once per connection.
"""

# httpcore's network interface takes each operation's timeout as a parameter
# ruff: noqa: ASYNC109

from __future__ import annotations

import select
import socket
import ssl
import typing
from collections import OrderedDict
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass

import httpcore
import httpx

from app import tracing


class _Stream(httpcore.AsyncNetworkStream):
    """anyio's stream (httpcore's own), but ``is_readable`` asks the socket directly."""

    def __init__(self, inner: httpcore.AsyncNetworkStream) -> None:
        self._inner = inner
        self._socket: socket.socket | None = inner.get_extra_info("socket")
        self._tls: ssl.SSLObject | None = inner.get_extra_info("ssl_object")

    async def read(self, max_bytes: int, timeout: float | None = None) -> bytes:
        return await self._inner.read(max_bytes, timeout)

    async def write(self, buffer: bytes, timeout: float | None = None) -> None:
        await self._inner.write(buffer, timeout)

    async def aclose(self) -> None:
        await self._inner.aclose()

    async def start_tls(
        self,
        ssl_context: ssl.SSLContext,
        server_hostname: str | None = None,
        timeout: float | None = None,
    ) -> httpcore.AsyncNetworkStream:
        return _Stream(await self._inner.start_tls(ssl_context, server_hostname, timeout))

    def get_extra_info(self, info: str) -> typing.Any:
        if info == "is_readable":
            return _readable(self._socket, self._tls)
        return self._inner.get_extra_info(info)


def _readable(sock: socket.socket | None, tls: ssl.SSLObject | None = None) -> bool:
    """Whether an idle connection has something to read: the server closed it (or sent
    what it should not have), so it must not be used again.

    Over TLS the server's close_notify may already have been read off the socket, with
    the end of the last response, and wait in the TLS object's input: the socket then
    looks idle though the connection is over. A non-blocking read of the TLS object
    finds it (it can only consume records the next exchange could not use)."""
    fd = -1 if sock is None else sock.fileno()
    if fd < 0:
        return True
    if tls is not None:
        try:
            tls.read(1)
        except ssl.SSLWantReadError:
            pass  # nothing buffered: the socket decides
        except ssl.SSLError:
            return True  # close_notify (SSLZeroReturnError) or a broken stream
        else:
            return True  # data nobody asked for
    poll = select.poll()
    poll.register(fd, select.POLLIN)
    return bool(poll.poll(0))


class _Backend(httpcore.AsyncNetworkBackend):
    """httpcore's anyio backend (connecting, TLS, timeouts, its errors), with
    :class:`_Stream` over each connection."""

    def __init__(self) -> None:
        self._inner = httpcore.AnyIOBackend()

    async def connect_tcp(
        self,
        host: str,
        port: int,
        timeout: float | None = None,
        local_address: str | None = None,
        socket_options: typing.Iterable[httpcore.SOCKET_OPTION] | None = None,
    ) -> httpcore.AsyncNetworkStream:
        stream = await self._inner.connect_tcp(host, port, timeout, local_address, socket_options)
        return _Stream(stream)

    async def connect_unix_socket(
        self,
        path: str,
        timeout: float | None = None,
        socket_options: typing.Iterable[httpcore.SOCKET_OPTION] | None = None,
    ) -> httpcore.AsyncNetworkStream:
        return _Stream(await self._inner.connect_unix_socket(path, timeout, socket_options))

    async def sleep(self, seconds: float) -> None:
        await self._inner.sleep(seconds)


def pooled_transport(ssl_context: ssl.SSLContext, limits: httpx.Limits) -> httpx.AsyncHTTPTransport:
    """httpx's transport (its request and error mapping) over a pool on :class:`_Backend`.
    httpx takes no network backend, so its pool is replaced by one built as it builds
    its own; ``tests/steps/test_pools.py`` fails if httpx stops having one to replace."""
    transport = httpx.AsyncHTTPTransport(
        verify=ssl_context, trust_env=False, limits=limits, retries=0
    )
    assert isinstance(transport._pool, httpcore.AsyncConnectionPool)
    transport._pool = httpcore.AsyncConnectionPool(
        ssl_context=ssl_context,
        max_connections=limits.max_connections,
        max_keepalive_connections=limits.max_keepalive_connections,
        keepalive_expiry=limits.keepalive_expiry,
        retries=0,
        network_backend=_Backend(),
    )
    return transport


class _ReleasingStream(httpx.AsyncByteStream):
    def __init__(self, inner: httpx.AsyncByteStream, release: Callable[[], None]) -> None:
        self._inner = inner
        self._release: Callable[[], None] | None = release

    async def __aiter__(self) -> AsyncIterator[bytes]:
        async for chunk in self._inner:
            yield chunk

    async def aclose(self) -> None:
        try:
            await self._inner.aclose()
        finally:
            release, self._release = self._release, None
            if release is not None:
                release()


@dataclass(slots=True)
class _Partition:
    transport: httpx.AsyncHTTPTransport
    active: int = 0


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
            partition = self._pools[key] = _Partition(self._factory())
        self._pools.move_to_end(key)
        partition.active += 1
        released = False

        def release() -> None:
            nonlocal released
            if not released:
                released = True
                partition.active -= 1

        try:
            if len(self._pools) > self._max_pools:
                await self._close_idle_pools()
            response = await partition.transport.handle_async_request(request)
        except BaseException:
            release()
            raise
        stream = response.stream
        assert isinstance(stream, httpx.AsyncByteStream)
        return httpx.Response(
            status_code=response.status_code,
            headers=response.headers,
            stream=_ReleasingStream(stream, release),  # the pool is busy until closed
            extensions=response.extensions,
        )

    async def _close_idle_pools(self) -> None:
        excess = len(self._pools) - self._max_pools
        if excess <= 0:
            return
        idle = [key for key, part in self._pools.items() if part.active == 0][:excess]
        closing = [self._pools.pop(key) for key in idle]
        for part in closing:
            await part.transport.aclose()

    async def aclose(self) -> None:
        pools, self._pools = list(self._pools.values()), OrderedDict()
        for part in pools:
            await part.transport.aclose()
