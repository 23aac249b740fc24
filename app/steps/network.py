"""The network backend of the outbound pools, on asyncio's own transports.

httpcore's default backend goes through anyio: a cancel scope (``fail_after``) around
every read and write, a send guard, a checkpoint per call, and a stream-attribute
lookup that rebuilds a dict of getters each time a pool asks whether an idle connection
was closed. Here a read returns what the transport has already received (waiting only
when there is nothing, with a timer only then), a write hands the bytes to the
transport (waiting only when its buffer is full), TLS is asyncio's (``loop.start_tls``),
and "has the server closed this idle connection?" is answered from what the protocol
has seen and a poll of the socket. Errors are httpcore's, as its own backends raise
them, so httpx maps them as usual.
"""

# httpcore's network interface takes each operation's timeout as a parameter
# ruff: noqa: ASYNC109

from __future__ import annotations

import asyncio
import select
import socket
import ssl
import typing

import httpcore

_READ_HIGH = 256 * 1024  # bytes received and not yet read before the transport pauses
_READ_LOW = 64 * 1024
# how long closing a TLS connection waits for the server's close_notify before dropping
# the socket (asyncio's default, 30 s, would hold each closed connection's socket that long)
_TLS_SHUTDOWN_S = 2.0


class _Protocol(asyncio.Protocol):
    """What the transport received, and a waiter woken by any news."""

    def __init__(self) -> None:
        self.transport: asyncio.Transport | None = None
        self.received = bytearray()
        self.eof = False
        self.lost: BaseException | None = None
        self.reading_paused = False
        self.writing_paused = False
        self.waiter: asyncio.Future[bool] | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = typing.cast(asyncio.Transport, transport)  # uvloop's is no subclass

    def data_received(self, data: bytes) -> None:
        self.received += data
        if len(self.received) > _READ_HIGH and not self.reading_paused and self.transport:
            self.reading_paused = True
            self.transport.pause_reading()
        self.wake()

    def eof_received(self) -> bool:
        self.eof = True
        self.wake()
        return False  # the transport closes itself

    def connection_lost(self, exc: Exception | None) -> None:
        self.eof = True
        self.lost = exc
        self.wake()

    def pause_writing(self) -> None:
        self.writing_paused = True

    def resume_writing(self) -> None:
        self.writing_paused = False
        self.wake()

    def wake(self) -> None:
        if self.waiter is not None and not self.waiter.done():
            self.waiter.set_result(True)


def _expire(waiter: asyncio.Future[bool]) -> None:
    if not waiter.done():
        waiter.set_result(False)


class _Stream(httpcore.AsyncNetworkStream):
    def __init__(self, transport: asyncio.Transport, protocol: _Protocol) -> None:
        self._transport = transport
        self._protocol = protocol
        self._socket: socket.socket | None = transport.get_extra_info("socket")

    async def _news(self, timeout: float | None) -> bool:
        """Wait for the protocol's next news; False if ``timeout`` passed first."""
        loop = asyncio.get_running_loop()
        waiter = self._protocol.waiter = loop.create_future()
        timer = None if timeout is None else loop.call_later(timeout, _expire, waiter)
        try:
            return bool(await waiter)
        finally:
            self._protocol.waiter = None
            if timer is not None:
                timer.cancel()

    async def read(self, max_bytes: int, timeout: float | None = None) -> bytes:
        protocol = self._protocol
        while not protocol.received and not protocol.eof:
            if not await self._news(timeout):
                raise httpcore.ReadTimeout("timed out reading the response")
        received = protocol.received
        if received:
            data = bytes(received[:max_bytes])
            del received[:max_bytes]
            if protocol.reading_paused and len(received) < _READ_LOW:
                protocol.reading_paused = False
                self._transport.resume_reading()
            return data
        if protocol.lost is not None:
            raise httpcore.ReadError(str(protocol.lost) or type(protocol.lost).__name__)
        return b""  # the server closed the connection

    async def write(self, buffer: bytes, timeout: float | None = None) -> None:
        protocol = self._protocol
        if protocol.lost is not None or self._transport.is_closing():
            raise httpcore.WriteError("the connection is closed")
        self._transport.write(buffer)
        while protocol.writing_paused and protocol.lost is None:
            if not await self._news(timeout):
                raise httpcore.WriteTimeout("timed out writing the request")
        if protocol.lost is not None:
            raise httpcore.WriteError(str(protocol.lost) or type(protocol.lost).__name__)

    async def aclose(self) -> None:
        self._transport.close()

    async def start_tls(
        self,
        ssl_context: ssl.SSLContext,
        server_hostname: str | None = None,
        timeout: float | None = None,
    ) -> httpcore.AsyncNetworkStream:
        loop = asyncio.get_running_loop()
        try:
            async with asyncio.timeout(timeout):
                transport = await loop.start_tls(
                    self._transport,
                    self._protocol,
                    ssl_context,
                    server_hostname=server_hostname,
                    ssl_shutdown_timeout=_TLS_SHUTDOWN_S,
                )
        except TimeoutError:
            self._transport.close()
            raise httpcore.ConnectTimeout("timed out in the TLS handshake") from None
        except (OSError, ssl.SSLError) as exc:
            self._transport.close()
            raise httpcore.ConnectError(str(exc)) from exc
        assert transport is not None
        self._protocol.transport = transport
        return _Stream(transport, self._protocol)

    def get_extra_info(self, info: str) -> typing.Any:
        if info == "is_readable":
            protocol = self._protocol
            return bool(protocol.received) or protocol.eof or _readable(self._socket)
        if info == "ssl_object":
            return self._transport.get_extra_info("ssl_object")
        if info == "client_addr":
            return self._transport.get_extra_info("sockname")
        if info == "server_addr":
            return self._transport.get_extra_info("peername")
        if info == "socket":
            return self._socket
        return None


def _readable(sock: socket.socket | None) -> bool:
    """Whether the socket has bytes (or the server's close) the event loop has not yet
    handed to the protocol: an idle connection with something to read is over."""
    fd = -1 if sock is None else sock.fileno()
    if fd < 0:
        return True
    poll = select.poll()
    poll.register(fd, select.POLLIN)
    return bool(poll.poll(0))


class Backend(httpcore.AsyncNetworkBackend):
    """Connections for httpcore on asyncio's transports (see the module's doc)."""

    async def connect_tcp(
        self,
        host: str,
        port: int,
        timeout: float | None = None,
        local_address: str | None = None,
        socket_options: typing.Iterable[httpcore.SOCKET_OPTION] | None = None,
    ) -> httpcore.AsyncNetworkStream:
        local = None if local_address is None else (local_address, 0)
        loop = asyncio.get_running_loop()
        opening = loop.create_connection(_Protocol, host, port, local_addr=local)
        return await _opened(opening, f"{host}:{port}", timeout, socket_options)

    async def connect_unix_socket(
        self,
        path: str,
        timeout: float | None = None,
        socket_options: typing.Iterable[httpcore.SOCKET_OPTION] | None = None,
    ) -> httpcore.AsyncNetworkStream:
        opening = asyncio.get_running_loop().create_unix_connection(_Protocol, path)
        return await _opened(opening, path, timeout, socket_options)

    async def sleep(self, seconds: float) -> None:
        await asyncio.sleep(seconds)


async def _opened(
    opening: typing.Awaitable[tuple[asyncio.BaseTransport, _Protocol]],
    where: str,
    timeout: float | None,
    socket_options: typing.Iterable[httpcore.SOCKET_OPTION] | None,
) -> _Stream:
    """The stream of a connection ``opening`` makes, its errors raised as httpcore's."""
    try:
        async with asyncio.timeout(timeout):
            transport, protocol = await opening
    except TimeoutError:
        raise httpcore.ConnectTimeout(f"timed out connecting to {where}") from None
    except OSError as exc:
        raise httpcore.ConnectError(str(exc)) from exc
    sock = transport.get_extra_info("socket")
    for option in socket_options or ():
        sock.setsockopt(*option)  # after the connect: TCP options, keep-alive and the like
    return _Stream(typing.cast(asyncio.Transport, transport), protocol)
