"""The outbound connection pools (``app.steps.pools``): an idle connection is reused
while the server keeps it open, and never once the server has closed it."""

from __future__ import annotations

import asyncio
import ssl
import time
from collections.abc import Callable
from typing import Any

import httpcore
import httpx
import pytest
import uvloop
from loopback_server import LoopbackServer, Reply, TlsFiles

from app.steps.clients import make_http_client
from app.steps.destinations import OutboundPolicy
from app.steps.network import Backend
from app.steps.outbound import send_guarded
from app.steps.pools import OriginPool, TlsNamePartitionedTransport, pooled_transport

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


async def _idle_stream_after_one_exchange(
    localhost_tls: TlsFiles, *, server_closes: bool
) -> httpcore.AsyncNetworkStream:
    """A TLS connection of the backend after one request and its whole answer; the
    server sends its close_notify right behind the answer, or keeps the connection."""

    async def answer(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.readuntil(b"\r\n\r\n")
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
        if server_closes:
            writer.close()  # close_notify, in the same flight as the answer
        await writer.drain()
        await asyncio.sleep(5)

    server = await asyncio.start_server(answer, "127.0.0.1", 0, ssl=localhost_tls.server_context())
    port = server.sockets[0].getsockname()[1]
    stream = await Backend().connect_tcp("127.0.0.1", port, timeout=5)
    stream = await stream.start_tls(localhost_tls.client_context(), "localhost", timeout=5)
    await stream.write(b"GET / HTTP/1.1\r\nHost: localhost\r\n\r\n", timeout=5)
    received = b""
    while not received.endswith(b"ok"):
        received += await stream.read(1024, timeout=5)
    server.close()
    return stream


async def test_a_close_notify_behind_the_last_answer_marks_the_connection_over(
    localhost_tls: TlsFiles,
) -> None:
    """The server's close_notify can arrive with the end of the last response, so that
    the socket itself is idle again when the pool asks: the connection is over all the
    same (reusing it fails the next request with "Server disconnected")."""
    stream = await _idle_stream_after_one_exchange(localhost_tls, server_closes=True)
    for _ in range(100):
        if stream.get_extra_info("is_readable"):
            break
        await asyncio.sleep(0.01)
    assert stream.get_extra_info("is_readable")
    assert await stream.read(1024, timeout=1) == b""
    await stream.aclose()


async def test_a_connection_the_server_keeps_is_not_taken_for_closed(
    localhost_tls: TlsFiles,
) -> None:
    stream = await _idle_stream_after_one_exchange(localhost_tls, server_closes=False)
    await asyncio.sleep(0.1)  # the session tickets and anything else have arrived
    assert not stream.get_extra_info("is_readable")
    with pytest.raises(httpcore.ReadTimeout):
        await stream.read(1024, timeout=0.05)
    await stream.aclose()


async def test_closing_a_tls_connection_whose_server_never_answers_close_notify_frees_its_socket(
    localhost_tls: TlsFiles,
) -> None:
    """Closing waits a bounded time for the server's close_notify, then drops the socket
    (asyncio's own default waits 30 s, holding every evicted connection's socket)."""
    stalled: list[asyncio.StreamWriter] = []

    async def answer(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.readuntil(b"\r\n\r\n")
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
        await writer.drain()
        writer.transport.pause_reading()  # the client's close_notify is never read
        stalled.append(writer)

    server = await asyncio.start_server(answer, "127.0.0.1", 0, ssl=localhost_tls.server_context())
    try:
        port = server.sockets[0].getsockname()[1]
        stream = await Backend().connect_tcp("127.0.0.1", port, timeout=5)
        stream = await stream.start_tls(localhost_tls.client_context(), "localhost", timeout=5)
        await stream.write(b"GET / HTTP/1.1\r\nHost: localhost\r\n\r\n", timeout=5)
        received = b""
        while not received.endswith(b"ok"):
            received += await stream.read(1024, timeout=5)
        sock = stream._transport.get_extra_info("socket")  # type: ignore[attr-defined]
        await stream.aclose()
        begun = time.monotonic()
        while sock.fileno() != -1 and time.monotonic() - begun < 10:
            await asyncio.sleep(0.05)
        assert sock.fileno() == -1, "the socket is still open 10 s after the close"
    finally:
        for writer in stalled:
            writer.transport.abort()
        server.close()
        await server.wait_closed()


async def test_a_large_answer_is_read_whole_through_the_transport_pausing(
    make_server: Callable[..., LoopbackServer],
) -> None:
    body = bytes(range(256)) * 8192  # 2 MiB: the transport pauses and resumes reading
    srv = make_server()
    srv.route("/big", Reply(200, body=body))
    async with httpx.AsyncClient(transport=_transport()) as client:
        assert (await client.get(srv.url("/big"))).content == body
        assert (await client.get(srv.url("/big"))).content == body  # and the connection
    assert srv.connections == 1


def test_the_pool_replaced_is_httpx_own() -> None:
    """``pooled_transport`` swaps httpx's pool for an :class:`OriginPool` on its own
    network backend: it must find httpx's pool where it expects it (this fails if an
    httpx upgrade moves it)."""
    transport = pooled_transport(ssl.create_default_context(), httpx.Limits())
    assert isinstance(transport._pool, OriginPool)
    assert isinstance(transport._pool._backend, Backend)
    assert isinstance(httpx.AsyncHTTPTransport()._pool, httpcore.AsyncConnectionPool)


def _transport(**limits: Any) -> httpx.AsyncHTTPTransport:
    return pooled_transport(ssl.create_default_context(), httpx.Limits(**limits))


def _counts(transport: httpx.AsyncHTTPTransport) -> tuple[int, int]:
    pool = transport._pool
    assert isinstance(pool, OriginPool)
    return pool.counts()


async def test_one_connection_serves_requests_one_after_another(
    make_server: Callable[..., LoopbackServer],
) -> None:
    srv = make_server()
    srv.route("/x", Reply(200, body=b"ok"))
    async with httpx.AsyncClient(transport=_transport()) as client:
        for _ in range(5):
            assert (await client.get(srv.url("/x"))).content == b"ok"
            assert _counts(client._transport) == (1, 1)  # type: ignore[arg-type]
    assert srv.connections == 1


async def test_requests_beyond_max_connections_wait_for_one_to_be_returned(
    make_server: Callable[..., LoopbackServer],
) -> None:
    srv = make_server()
    srv.route("/slow", Reply(200, body=b"ok", delay_s=0.2))
    transport = _transport(max_connections=2)
    async with httpx.AsyncClient(transport=transport) as client:
        answers = await asyncio.gather(*(client.get(srv.url("/slow")) for _ in range(5)))
        assert [a.content for a in answers] == [b"ok"] * 5
        assert _counts(transport) == (2, 2)
    assert srv.connections == 2  # never more than two at once, and each reused


async def test_a_request_that_waits_past_its_pool_timeout_fails_and_frees_nothing(
    make_server: Callable[..., LoopbackServer],
) -> None:
    srv = make_server()
    srv.route("/slow", Reply(200, body=b"ok", delay_s=0.5))
    transport = _transport(max_connections=1)
    async with httpx.AsyncClient(transport=transport) as client:
        busy = asyncio.create_task(client.get(srv.url("/slow")))
        await asyncio.sleep(0.05)
        with pytest.raises(httpx.PoolTimeout):
            await client.get(srv.url("/slow"), timeout=httpx.Timeout(5, pool=0.1))
        assert (await busy).content == b"ok"
        assert (await client.get(srv.url("/slow"))).content == b"ok"  # the slot is free
        assert _counts(transport) == (1, 1)


async def test_a_cancelled_request_gives_its_connection_back(
    make_server: Callable[..., LoopbackServer],
) -> None:
    srv = make_server()
    srv.route("/slow", Reply(200, body=b"late", delay_s=5))
    srv.route("/x", Reply(200, body=b"ok"))
    transport = _transport(max_connections=1)
    async with httpx.AsyncClient(transport=transport) as client:
        cancelled = asyncio.create_task(client.get(srv.url("/slow")))
        await asyncio.sleep(0.05)
        waiting = asyncio.create_task(client.get(srv.url("/x")))
        await asyncio.sleep(0.05)
        assert not waiting.done()
        cancelled.cancel()
        with pytest.raises(asyncio.CancelledError):
            await cancelled
        # the cancelled request's connection was closed mid-response; the one waiting
        # for a free connection goes on at once on a new one
        assert (await asyncio.wait_for(waiting, 2)).content == b"ok"
        assert _counts(transport) == (1, 1)


async def test_idle_connections_beyond_max_keepalive_are_closed(
    make_server: Callable[..., LoopbackServer],
) -> None:
    srv = make_server()
    srv.route("/slow", Reply(200, body=b"ok", delay_s=0.1))
    transport = _transport(max_connections=4, max_keepalive_connections=1)
    async with httpx.AsyncClient(transport=transport) as client:
        await asyncio.gather(*(client.get(srv.url("/slow")) for _ in range(4)))
        assert _counts(transport) == (1, 1)


async def test_an_idle_connection_gives_way_to_another_origin_at_the_limit(
    make_server: Callable[..., LoopbackServer],
) -> None:
    one, two = make_server(), make_server()
    for srv in (one, two):
        srv.route("/x", Reply(200, body=b"ok"))
    transport = _transport(max_connections=1)
    async with httpx.AsyncClient(transport=transport) as client:
        assert (await client.get(one.url("/x"))).content == b"ok"
        assert (await asyncio.wait_for(client.get(two.url("/x")), 2)).content == b"ok"
        assert _counts(transport) == (1, 1)
        assert (await client.get(one.url("/x"))).content == b"ok"
    assert (one.connections, two.connections) == (2, 1)


async def test_idle_connections_past_their_keepalive_are_closed_and_not_reused(
    make_server: Callable[..., LoopbackServer],
) -> None:
    one, two = make_server(), make_server()
    for srv in (one, two):
        srv.route("/x", Reply(200, body=b"ok"))
    transport = _transport(keepalive_expiry=0.05)
    pool = transport._pool
    assert isinstance(pool, OriginPool)
    pool._SWEEP_EVERY_S = 0.0
    async with httpx.AsyncClient(transport=transport) as client:
        await client.get(one.url("/x"))
        await client.get(two.url("/x"))
        assert _counts(transport) == (2, 2)
        await asyncio.sleep(0.1)
        await client.get(one.url("/x"))  # the sweep closes both expired ones
        assert _counts(transport) == (1, 1)
        assert len(pool._idle) == 1  # the origin no longer asked for is forgotten
    assert (one.connections, two.connections) == (2, 1)


async def test_a_connection_that_failed_is_not_kept(
    make_server: Callable[..., LoopbackServer],
) -> None:
    srv = make_server()
    srv.route("/x", Reply(200, body=b"ok"))
    srv.route(
        "/cut", Reply(200, headers=[("Content-Length", "100")], body=b"short", close_after=True)
    )
    transport = _transport()
    async with httpx.AsyncClient(transport=transport) as client:
        with pytest.raises(httpx.RemoteProtocolError):
            await client.get(srv.url("/cut"))
        assert _counts(transport) == (0, 0)
        assert (await client.get(srv.url("/x"))).content == b"ok"
        assert _counts(transport) == (1, 1)


async def test_a_closed_pool_refuses_requests(make_server: Callable[..., LoopbackServer]) -> None:
    srv = make_server()
    srv.route("/x", Reply(200, body=b"ok"))
    transport = _transport()
    async with httpx.AsyncClient(transport=transport) as client:
        await client.get(srv.url("/x"))
    assert _counts(transport) == (0, 0)
    with pytest.raises(httpx.ConnectError):
        await httpx.AsyncClient(transport=transport).get(srv.url("/x"))


async def test_only_pools_with_nothing_in_flight_are_closed_past_max_pools(
    make_server: Callable[..., LoopbackServer], localhost_tls: TlsFiles
) -> None:
    srv = make_server(ssl_context=localhost_tls.server_context())
    srv.route("/slow", Reply(200, body=b"ok", delay_s=0.3))
    partitions = TlsNamePartitionedTransport(
        lambda: pooled_transport(localhost_tls.client_context(), httpx.Limits()), max_pools=1
    )

    async def get(sni: str) -> bytes:
        request = httpx.Request("GET", srv.url("/slow"), extensions={"sni_hostname": sni})
        response = await partitions.handle_async_request(request)
        try:
            return await response.aread()
        finally:
            await response.aclose()

    slow = asyncio.create_task(get("localhost"))
    await asyncio.sleep(0.1)
    with pytest.raises(httpx.ConnectError):  # the certificate names localhost only
        await get("a.test")
    assert partitions.pool_count() == 2  # the busy one is kept past the limit
    assert await slow == b"ok"
    with pytest.raises(httpx.ConnectError):
        await get("b.test")
    assert partitions.pool_count() == 1  # both idle ones closed, the newest kept
    await partitions.aclose()


def test_on_uvloop_as_under_stepwise_serve(
    make_server: Callable[..., LoopbackServer], localhost_tls: TlsFiles
) -> None:
    """`stepwise serve` runs on uvloop, whose transports are not asyncio's classes: TLS,
    a large answer, reuse, and a connection the server closed, on that loop."""
    srv = make_server(ssl_context=localhost_tls.server_context())
    body = b"ok" * 200_000
    srv.route("/x", Reply(200, body=body))
    srv.route("/bye", Reply(200, body=b"bye", close_after=True))

    async def exchanges() -> list[bytes]:
        answers: list[bytes] = []
        async with make_http_client(verify=localhost_tls.client_context()) as client:
            for path in ("/x", "/x", "/bye", "/x"):
                if path == "/x" and answers and answers[-1] == b"bye":
                    await asyncio.sleep(0.2)  # the close reaches the client's socket
                response = await send_guarded(
                    client, POLICY, "GET", srv.url(path, "localhost"), timeout_s=5
                )
                answers.append(response.body)
        return answers

    assert uvloop.run(exchanges()) == [body, body, b"bye", body]
    assert srv.connections == 2


def _pool(max_connections: int = 1) -> OriginPool:
    return OriginPool(
        ssl_context=ssl.create_default_context(),
        max_connections=max_connections,
        max_keepalive_connections=max_connections,
        keepalive_expiry=5,
        network_backend=Backend(),
    )


@pytest.mark.parametrize("pool_timeout", [None, 5.0])
async def test_a_request_cancelled_as_its_turn_comes_stops_and_passes_the_turn_on(
    pool_timeout: float | None,
) -> None:
    """Cancelled in the very tick a connection is freed for it, a waiting request must
    stop (not take the connection), and the next waiting request gets the turn."""
    pool = _pool()
    deadline = None if pool_timeout is None else time.monotonic() + pool_timeout
    first = asyncio.create_task(pool._wait_for_release(deadline))
    second = asyncio.create_task(pool._wait_for_release(deadline))
    await asyncio.sleep(0)  # both wait
    pool._wake_one()  # a connection is free: the first's turn...
    first.cancel()  # ...and the first is cancelled in the same tick
    with pytest.raises(asyncio.CancelledError):
        await first
    await asyncio.wait_for(second, 1)  # the turn went on
    assert not pool.busy()


async def test_a_request_past_its_pool_timeout_leaves_no_waiter_behind() -> None:
    pool = _pool()
    with pytest.raises(httpcore.PoolTimeout):
        await pool._wait_for_release(time.monotonic() + 0.01)
    assert not pool.busy()  # a pool with nothing in flight may be closed


async def test_closing_the_pool_ends_requests_waiting_and_in_flight(
    make_server: Callable[..., LoopbackServer],
) -> None:
    srv = make_server()
    srv.route("/slow", Reply(200, body=b"ok", delay_s=5))
    transport = _transport(max_connections=1)
    client = httpx.AsyncClient(transport=transport)
    in_flight = asyncio.create_task(client.get(srv.url("/slow")))
    await asyncio.sleep(0.1)
    waiting = asyncio.create_task(client.get(srv.url("/slow")))
    await asyncio.sleep(0.05)
    await transport.aclose()
    for task in (in_flight, waiting):
        with pytest.raises(httpx.TransportError):
            await asyncio.wait_for(task, 2)
    assert _counts(transport) == (0, 0)
