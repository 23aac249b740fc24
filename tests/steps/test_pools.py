"""The outbound connection pools (``app.steps.pools``): an idle connection is reused
while the server keeps it open, and never once the server has closed it."""

from __future__ import annotations

import asyncio
from collections.abc import Callable

import httpcore
import pytest
from loopback_server import LoopbackServer, Reply, TlsFiles

from app.steps.outbound import OutboundPolicy, make_http_client, send_guarded
from app.steps.pools import pooled_transport

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


def test_the_pool_replaced_is_httpx_own() -> None:
    """``pooled_transport`` swaps httpx's pool for one on its own network backend: it
    must find httpx's pool where it expects it (this fails if an httpx upgrade moves it)."""
    import ssl

    import httpx

    transport = pooled_transport(ssl.create_default_context(), httpx.Limits())
    assert isinstance(transport._pool, httpcore.AsyncConnectionPool)
    assert type(transport._pool._network_backend).__name__ == "_Backend"
