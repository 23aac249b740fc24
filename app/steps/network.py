"""The network backend of the outbound pools: httpcore's anyio backend (connecting, TLS,
timeouts, its errors), but "has the server closed this idle connection?" is answered
from the socket, found once per connection, instead of through anyio's stream
attributes (which rebuild a dict of attribute getters for each question)."""

# httpcore's network interface takes each operation's timeout as a parameter
# ruff: noqa: ASYNC109

from __future__ import annotations

import select
import socket
import ssl
import typing

import httpcore


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


class Backend(httpcore.AsyncNetworkBackend):
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
