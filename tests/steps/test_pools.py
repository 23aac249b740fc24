"""The outbound connection pools (``app.steps.pools``): an idle connection is reused
while the server keeps it open, and never once the server has closed it."""

from __future__ import annotations

import asyncio
import contextlib
import socket
import ssl
from collections.abc import Callable

import httpcore
import pytest
from loopback_server import LoopbackServer, Reply, TlsFiles

from app.steps.outbound import OutboundPolicy, make_http_client, send_guarded
from app.steps.pools import _readable, pooled_transport

POLICY = OutboundPolicy(allowed_hosts=frozenset({"localhost", "127.0.0.1"}))


@pytest.mark.parametrize("tls", [False, True], ids=["http", "https"])
async def test_a_connection_the_server_closed_while_idle_is_not_reused(
    make_server: Callable[..., LoopbackServer], localhost_tls: TlsFiles, tls: bool
) -> None:
    srv = make_server(ssl_context=localhost_tls.server_context() if tls else None)
    srv.route("/x", Reply(200, body=b"ok"))
    srv.route("/bye", Reply(200, body=b"bye", close_after=True))
    async with make_http_client(verify=localhost_tls.client_context()) as client:
        for path in ("/x", "/x", "/bye"):  # one connection, closed by the server at the end
            response = await send_guarded(
                client, POLICY, "GET", srv.url(path, "localhost"), timeout_s=5
            )
            assert response.status_code == 200
        assert srv.connections == 1
        await asyncio.sleep(0.2)  # the close reaches the client's socket
        response = await send_guarded(
            client, POLICY, "GET", srv.url("/x", "localhost"), timeout_s=5
        )
        assert response.body == b"ok"
        assert srv.connections == 2  # a new one: the closed one was seen closed


def _pump(src: ssl.MemoryBIO, dst: ssl.MemoryBIO) -> None:
    dst.write(src.read())


def test_a_close_notify_already_read_off_the_socket_counts(localhost_tls: TlsFiles) -> None:
    """The server's close_notify can arrive with the end of the last response and wait
    in the TLS object's input, leaving the socket itself idle: the connection is over
    all the same (reusing it fails the next request with "Server disconnected")."""
    c_in, c_out, s_in, s_out = (ssl.MemoryBIO() for _ in range(4))
    client = localhost_tls.client_context().wrap_bio(c_in, c_out, server_hostname="localhost")
    server = localhost_tls.server_context().wrap_bio(s_in, s_out, server_side=True)
    for _ in range(4):  # the handshake, then the server's session tickets
        for side in (client, server):
            with contextlib.suppress(ssl.SSLWantReadError):
                side.do_handshake()
        _pump(c_out, s_in)
        _pump(s_out, c_in)
    server.write(b"last response")
    _pump(s_out, c_in)
    assert client.read(100) == b"last response"

    idle, peer = socket.socketpair()  # the connection's socket: nothing on it to read
    with idle, peer:
        assert not _readable(idle, client)
        with contextlib.suppress(ssl.SSLWantReadError):
            server.unwrap()
        _pump(s_out, c_in)  # the close_notify, read off the socket by the TLS stream
        assert _readable(idle, client)
        assert not _readable(idle)  # the socket alone cannot tell


def test_the_pool_replaced_is_httpx_own() -> None:
    """``pooled_transport`` swaps httpx's pool for one on its own network backend: it
    must find httpx's pool where it expects it (this fails if an httpx upgrade moves it)."""
    import httpx

    transport = pooled_transport(ssl.create_default_context(), httpx.Limits())
    assert isinstance(transport._pool, httpcore.AsyncConnectionPool)
    assert type(transport._pool._network_backend).__name__ == "_Backend"
