"""The outbound guard against real loopback servers: nothing refused may reach them."""

from __future__ import annotations

import asyncio
import gzip
import ipaddress
import re
import socket
import time
from collections.abc import Callable, Iterator
from typing import Any

import httpx
import pytest
from loopback_server import LOOPBACK, LoopbackServer, Reply, TlsFiles

from app.steps.clients import make_http_client
from app.steps.destinations import (
    AddressNotAllowed,
    HostResolutionError,
    OutboundPolicy,
    is_public_address,
    resolve_checked,
)
from app.steps.outbound import ResponseTooLarge, TooManyRedirects, send_guarded

DEFAULT = OutboundPolicy()
OPEN = OutboundPolicy(allow_private_networks=True)

REFUSED_URLS = [
    "http://127.0.0.1:{port}/",
    "http://localhost:{port}/",
    "http://LocalHost:{port}/",
    "http://[::1]:{port}/",
    "http://2130706433:{port}/",
    "http://0x7f000001:{port}/",
    "http://0177.0.1:{port}/",
    "http://127.1:{port}/",
    "http://127.0.1:{port}/",
    "http://127.0.0.1.:{port}/",
    "http://[::ffff:127.0.0.1]:{port}/",
    "http://[::ffff:7f00:1]:{port}/",
    "http://[::127.0.0.1]:{port}/",
    "http://[64:ff9b::127.0.0.1]:{port}/",
    "http://[2002:7f00:1::]:{port}/",
    "http://0.0.0.0:{port}/",
    "http://0:{port}/",
    "http://[::]:{port}/",
    "http://10.0.0.1/",
    "http://172.16.0.1/",
    "http://192.168.1.1/",
    "http://169.254.169.254/latest/meta-data/",
    "http://100.64.0.1/",
    "http://[fe80::1]/",
    "http://[fc00::1]/",
    "http://[fd12:3456::1]/",
    "http://224.0.0.1/",
    "http://[ff02::1]/",
    "http://240.0.0.1/",
    "http://255.255.255.255/",
    "http://1.2.3.4.5/",
    "https://127.0.0.1:{port}/",
    "ftp://127.0.0.1:{port}/",
    "ftp://example.com/file",
    "file:///etc/passwd",
    "gopher://127.0.0.1:{port}/_x",
]


@pytest.mark.parametrize("template", REFUSED_URLS)
async def test_default_policy_refuses_without_connecting(
    template: str, server: LoopbackServer, http_client: httpx.AsyncClient
) -> None:
    url = template.format(port=server.port)
    with pytest.raises(AddressNotAllowed) as caught:
        await send_guarded(http_client, DEFAULT, "GET", url, timeout_s=5)
    assert "refused" in str(caught.value)
    assert server.connections == 0
    # the same server is reachable when opened: the zero above is meaningful
    opened = await send_guarded(http_client, LOOPBACK, "GET", server.url("/"), timeout_s=5)
    assert opened.status_code == 404
    assert server.connections == 1


@pytest.mark.parametrize("template", ["http://0177.0.0.1:{port}/", "http://256.0.0.1:{port}/"])
async def test_malformed_dotted_quads_are_invalid_urls(
    template: str, server: LoopbackServer, http_client: httpx.AsyncClient
) -> None:
    with pytest.raises(httpx.InvalidURL):
        await send_guarded(http_client, OPEN, "GET", template.format(port=server.port), timeout_s=5)
    assert server.connections == 0


@pytest.mark.parametrize(
    ("url", "reason"),
    [
        ("http://169.254.169.254/", "link-local"),
        ("http://10.1.2.3/", "private (RFC 1918)"),
        ("http://100.64.0.1/", "CGNAT"),
        ("http://127.1/", "loopback"),
        ("http://[::ffff:10.0.0.1]/", "IPv4-mapped private"),
        ("http://[fc00::1]/", "unique local"),
        ("ftp://example.com/", "scheme 'ftp'"),
        ("file:///etc/passwd", "scheme 'file'"),
    ],
)
async def test_refusal_says_why(url: str, reason: str) -> None:
    with pytest.raises(AddressNotAllowed, match=re.escape(reason)):
        await resolve_checked(httpx.URL(url), DEFAULT)


async def test_refusal_message_hides_credentials_and_query() -> None:
    with pytest.raises(AddressNotAllowed) as caught:
        await resolve_checked(httpx.URL("http://user:pw@10.0.0.1/p?token=s3cret"), DEFAULT)
    assert "s3cret" not in str(caught.value)
    assert "pw" not in str(caught.value)


@pytest.mark.parametrize(
    ("url", "expected"),
    [
        ("http://2130706433/", "127.0.0.1"),
        ("http://0x7f000001/", "127.0.0.1"),
        ("http://127.1/", "127.0.0.1"),
        ("http://0177.0.01/", "127.0.0.1"),
        ("http://10.1/", "10.0.0.1"),
        ("http://[::ffff:127.0.0.1]/", "127.0.0.1"),
        ("http://[::1]/", "::1"),
    ],
)
async def test_ip_literals_are_parsed_not_looked_up(url: str, expected: str) -> None:
    assert await resolve_checked(httpx.URL(url), OPEN) == [ipaddress.ip_address(expected)]


@pytest.mark.parametrize("url", ["http://8.8.8.8/", "https://1.1.1.1/", "http://[2606:4700::1]/"])
async def test_public_addresses_pass_the_check(url: str) -> None:
    # resolve_checked never connects: no internet needed
    assert len(await resolve_checked(httpx.URL(url), DEFAULT)) == 1


def test_public_address_classification() -> None:
    public = ["8.8.8.8", "1.1.1.1", "2606:4700::1", "::ffff:8.8.8.8", "2002:808:808::"]
    refused = ["127.0.0.1", "10.0.0.1", "172.31.255.255", "192.168.0.1", "169.254.169.254",
               "100.127.255.255", "0.0.0.0", "0.1.2.3", "224.0.0.1", "239.1.1.1", "240.0.0.1",
               "255.255.255.255", "198.18.0.1", "192.0.2.1", "::1", "::", "fe80::1", "fc00::1",
               "fd00::1", "ff02::1", "::ffff:127.0.0.1", "::ffff:169.254.169.254",
               "64:ff9b::a00:1", "2002:a00:1::", "2001:db8::1"]  # fmt: skip
    assert all(is_public_address(ipaddress.ip_address(ip)) for ip in public)
    assert not any(is_public_address(ipaddress.ip_address(ip)) for ip in refused)


async def test_unresolvable_host_is_a_network_error(http_client: httpx.AsyncClient) -> None:
    with pytest.raises(HostResolutionError):
        await send_guarded(http_client, OPEN, "GET", "http://no-such-host.invalid/", timeout_s=5)
    assert issubclass(HostResolutionError, httpx.TransportError)


# --------------------------------------------------------------------------- opening


async def test_allow_private_networks_reaches_loopback(
    server: LoopbackServer, http_client: httpx.AsyncClient
) -> None:
    server.route("/x", Reply(200, body=b"hello"))
    for host in ("127.0.0.1", "localhost", "2130706433", "127.1"):
        response = await send_guarded(http_client, OPEN, "GET", server.url("/x", host), timeout_s=5)
        assert (response.status_code, response.body) == (200, b"hello")
    assert len(server.hits) == 4


async def test_allowed_host_by_address(
    server: LoopbackServer, http_client: httpx.AsyncClient
) -> None:
    server.route("/x", Reply(200, body=b"ok"))
    response = await send_guarded(http_client, LOOPBACK, "GET", server.url("/x"), timeout_s=5)
    assert response.body == b"ok"
    # an address opened by number is open whatever way the URL spells it
    response = await send_guarded(
        http_client, LOOPBACK, "GET", server.url("/x", "2130706433"), timeout_s=5
    )
    assert response.body == b"ok"
    assert server.hits[-1].headers["host"] == f"127.0.0.1:{server.port}"  # canonical form
    # ... but it opens that address only
    with pytest.raises(AddressNotAllowed):
        await send_guarded(http_client, LOOPBACK, "GET", server.url("/x", "[::1]"), timeout_s=5)


async def test_the_request_as_sent_and_a_compressed_answer(
    server: LoopbackServer, http_client: httpx.AsyncClient
) -> None:
    """What the endpoint receives: the client's headers (User-Agent, Accept-Encoding),
    the caller's, the body; and an answer in gzip is read decoded."""
    server.route(
        "/x", Reply(200, headers=[("Content-Encoding", "gzip")], body=gzip.compress(b"unzipped"))
    )
    response = await send_guarded(
        http_client,
        LOOPBACK,
        "POST",
        server.url("/x"),
        headers={"X-Trace": "t-1", "User-Agent": "caller/2"},
        json={"a": 1},
        timeout_s=5,
    )
    assert (response.status_code, response.body) == (200, b"unzipped")
    hit = server.hits[-1]
    assert hit.body == b'{"a":1}'
    assert hit.headers["x-trace"] == "t-1"
    assert hit.headers["user-agent"] == "caller/2"  # the caller's header wins
    assert hit.headers["content-type"] == "application/json"
    assert hit.headers["content-length"] == "7"
    assert "gzip" in hit.headers["accept-encoding"]
    await send_guarded(http_client, LOOPBACK, "GET", server.url("/x"), timeout_s=5)
    assert server.hits[-1].headers["user-agent"] == "stepwise"  # the client's default


async def test_allowed_host_by_name(server: LoopbackServer, http_client: httpx.AsyncClient) -> None:
    policy = OutboundPolicy(allowed_hosts=frozenset({"LocalHost"}))
    server.route("/x", Reply(200, body=b"ok"))
    response = await send_guarded(
        http_client, policy, "GET", server.url("/x", "localhost"), timeout_s=5
    )
    assert response.body == b"ok"
    assert server.hits[0].headers["host"] == f"localhost:{server.port}"
    assert response.url == server.url("/x", "localhost")
    # the name opens that name, not the addresses it happens to resolve to
    with pytest.raises(AddressNotAllowed):
        await send_guarded(http_client, policy, "GET", server.url("/x"), timeout_s=5)
    assert len(server.hits) == 1


async def test_connection_falls_back_over_checked_addresses(
    make_server: Callable[..., LoopbackServer],
    http_client: httpx.AsyncClient,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A name with several addresses: every one is checked, the first that accepts is used."""
    srv = make_server(also_ipv6=False)  # listens on 127.0.0.1 only
    srv.route("/x", Reply(200, body=b"ok"))
    _fake_dns(monkeypatch, {"multi.test": [["::1", "127.0.0.1"]]})
    policy = OutboundPolicy(allowed_hosts=frozenset({"multi.test"}))
    response = await send_guarded(
        http_client, policy, "GET", f"http://multi.test:{srv.port}/x", timeout_s=5
    )
    assert response.body == b"ok"
    # and one refused address among them refuses the whole request
    _fake_dns(monkeypatch, {"mixed.test": [["8.8.8.8", "127.0.0.1"]]})
    with pytest.raises(AddressNotAllowed, match=r"mixed\.test \(127\.0\.0\.1\)"):
        await send_guarded(
            http_client, DEFAULT, "GET", f"http://mixed.test:{srv.port}/", timeout_s=5
        )
    assert srv.connections == 1


# --------------------------------------------------------------------------- pinning


def _fake_dns(monkeypatch: pytest.MonkeyPatch, answers: dict[str, list[list[str]]]) -> list[str]:
    """Answer the names in ``answers`` (one list of addresses per successive lookup) and
    record every name looked up; other names go to the real resolver."""
    real = socket.getaddrinfo
    asked: list[str] = []

    def getaddrinfo(host: Any, port: Any, *args: Any, **kwargs: Any) -> Any:
        name = host.decode() if isinstance(host, bytes) else str(host)
        asked.append(name)
        if name in answers:
            queue = answers[name]
            addresses = queue.pop(0) if len(queue) > 1 else queue[0]
            return [
                (
                    socket.AF_INET6 if ":" in ip else socket.AF_INET,
                    socket.SOCK_STREAM,
                    socket.IPPROTO_TCP,
                    "",
                    (ip, int(port or 0), 0, 0) if ":" in ip else (ip, int(port or 0)),
                )
                for ip in addresses
            ]
        return real(host, port, *args, **kwargs)

    monkeypatch.setattr(socket, "getaddrinfo", getaddrinfo)
    return asked


async def test_dns_rebinding_cannot_swap_the_checked_address(
    server: LoopbackServer, http_client: httpx.AsyncClient, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The first answer is checked and used; a later (rebound) answer is never asked for."""
    server.route("/x", Reply(200, body=b"pinned"))
    asked = _fake_dns(monkeypatch, {"rebind.test": [["127.0.0.1"], ["10.255.255.1"]]})
    response = await send_guarded(
        http_client, LOOPBACK, "GET", f"http://rebind.test:{server.port}/x", timeout_s=5
    )
    assert response.body == b"pinned"
    assert server.hits[0].headers["host"] == f"rebind.test:{server.port}"
    assert asked.count("rebind.test") == 1
    assert all(name == "rebind.test" or _is_ip(name) for name in asked)


def _is_ip(name: str) -> bool:
    try:
        ipaddress.ip_address(name)
    except ValueError:
        return False
    return True


async def test_tls_is_verified_against_the_url_name_not_the_pinned_ip(
    make_server: Callable[..., LoopbackServer], localhost_tls: TlsFiles
) -> None:
    srv = make_server(ssl_context=localhost_tls.server_context())
    srv.route("/x", Reply(200, body=b"secure"))
    policy = OutboundPolicy(allowed_hosts=frozenset({"localhost", "127.0.0.1"}))
    async with make_http_client(verify=localhost_tls.client_context()) as client:
        # connected to 127.0.0.1, verified as "localhost" (the certificate has no IP SAN)
        for _ in range(2):
            response = await send_guarded(
                client, policy, "GET", srv.url("/x", "localhost"), timeout_s=5
            )
            assert response.body == b"secure"
        assert srv.connections == 1  # the second request reused the pooled connection
        # the same IP and port under another name must not ride on that connection:
        # the certificate is not valid for 127.0.0.1
        with pytest.raises(httpx.ConnectError, match="certificate"):
            await send_guarded(client, policy, "GET", srv.url("/x"), timeout_s=5)
        assert len(srv.hits) == 2


# --------------------------------------------------------------------------- proxies


PROXY_VARS = ("HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY", "http_proxy", "https_proxy", "all_proxy")


@pytest.fixture
def proxy_env(
    make_server: Callable[..., LoopbackServer], monkeypatch: pytest.MonkeyPatch
) -> LoopbackServer:
    proxy = make_server()
    proxy.route("/", Reply(200, body=b"proxied"))
    for name in PROXY_VARS:
        monkeypatch.setenv(name, f"http://127.0.0.1:{proxy.port}")
    for name in ("NO_PROXY", "no_proxy"):
        monkeypatch.delenv(name, raising=False)
    return proxy


async def test_environment_proxies_do_not_bypass_the_guard(
    proxy_env: LoopbackServer, make_server: Callable[..., LoopbackServer]
) -> None:
    target = make_server()
    target.route("/x", Reply(200, body=b"direct"))
    # control: a client that trusts the environment does go through the proxy
    async with httpx.AsyncClient() as trusting:
        await trusting.get(target.url("/x"))
    assert proxy_env.connections == 1
    assert target.connections == 0

    async with make_http_client() as client:
        response = await send_guarded(client, LOOPBACK, "GET", target.url("/x"), timeout_s=5)
        assert response.body == b"direct"
        with pytest.raises(AddressNotAllowed):
            await send_guarded(client, DEFAULT, "GET", target.url("/x"), timeout_s=5)
    assert proxy_env.connections == 1  # unchanged
    assert target.connections == 1


async def test_a_client_trusting_the_environment_is_refused(
    proxy_env: LoopbackServer, server: LoopbackServer
) -> None:
    async with httpx.AsyncClient() as trusting:
        with pytest.raises(ValueError, match="trust_env"):
            await send_guarded(trusting, LOOPBACK, "GET", server.url("/"), timeout_s=5)
    assert proxy_env.connections == 0
    assert server.connections == 0


def test_make_http_client_defaults() -> None:
    client = make_http_client()
    assert client.trust_env is False
    assert client.follow_redirects is False


# --------------------------------------------------------------------------- redirects


async def test_redirect_is_returned_not_followed_by_default(
    server: LoopbackServer, http_client: httpx.AsyncClient
) -> None:
    server.route("/a", Reply(302, [("Location", "/b")]))
    server.route("/b", Reply(200, body=b"b"))
    response = await send_guarded(http_client, LOOPBACK, "GET", server.url("/a"), timeout_s=5)
    assert response.status_code == 302
    assert response.headers["location"] == "/b"
    assert server.hits_for("/b") == []


async def test_redirects_followed_on_request(
    server: LoopbackServer, http_client: httpx.AsyncClient
) -> None:
    server.route("/a", Reply(301, [("Location", "/b?x=1")]))
    server.route("/b", Reply(302, [("Location", server.url("/c"))]))
    server.route("/c", Reply(200, body=b"c"))
    response = await send_guarded(
        http_client, LOOPBACK, "GET", server.url("/a"), timeout_s=5, follow_redirects=True
    )
    assert (response.status_code, response.body) == (200, b"c")
    assert response.url == server.url("/c")
    assert [hit.target for hit in server.hits] == ["/a", "/b?x=1", "/c"]


@pytest.mark.parametrize(
    ("status", "method", "next_method", "keeps_body"),
    [
        (303, "POST", "GET", False),
        (302, "POST", "GET", False),
        (301, "PUT", "PUT", True),
        (307, "POST", "POST", True),
        (308, "PATCH", "PATCH", True),
    ],
)
async def test_redirect_method_and_body(
    server: LoopbackServer,
    http_client: httpx.AsyncClient,
    status: int,
    method: str,
    next_method: str,
    keeps_body: bool,
) -> None:
    server.route("/a", Reply(status, [("Location", "/b")]))
    server.route("/b", Reply(200))
    await send_guarded(
        http_client, LOOPBACK, method, server.url("/a"), json={"k": 1}, timeout_s=5,
        follow_redirects=True,
    )  # fmt: skip
    second = server.hits[1]
    assert second.method == next_method
    assert (second.body == b'{"k":1}') is keeps_body
    assert ("content-type" in second.headers) is keeps_body


async def test_cross_origin_redirect_drops_credentials(
    make_server: Callable[..., LoopbackServer], http_client: httpx.AsyncClient
) -> None:
    first, second = make_server(), make_server()
    first.route("/a", Reply(307, [("Location", second.url("/b"))]))
    second.route("/b", Reply(200))
    await send_guarded(
        http_client, LOOPBACK, "GET", first.url("/a"), timeout_s=5, follow_redirects=True,
        headers={"Authorization": "Bearer t", "Cookie": "c=1", "Idempotency-Key": "k"},
    )  # fmt: skip
    assert first.hits[0].headers["authorization"] == "Bearer t"
    headers = second.hits[0].headers
    assert "authorization" not in headers
    assert "cookie" not in headers
    assert headers["idempotency-key"] == "k"


async def test_redirect_to_a_refused_address_is_refused_before_connecting(
    make_server: Callable[..., LoopbackServer], http_client: httpx.AsyncClient
) -> None:
    origin, refused = make_server(), make_server()
    policy = OutboundPolicy(allowed_hosts=frozenset({"localhost"}))
    origin.route("/to-ip", Reply(302, [("Location", refused.url("/secret"))]))
    origin.route("/to-metadata", Reply(302, [("Location", "http://169.254.169.254/")]))
    origin.route("/to-file", Reply(302, [("Location", "file:///etc/passwd")]))
    for path in ("/to-ip", "/to-metadata", "/to-file"):
        with pytest.raises(AddressNotAllowed):
            await send_guarded(
                http_client, policy, "GET", origin.url(path, "localhost"), timeout_s=5,
                follow_redirects=True,
            )  # fmt: skip
    assert len(origin.hits) == 3
    assert refused.connections == 0


async def test_too_many_redirects(server: LoopbackServer, http_client: httpx.AsyncClient) -> None:
    server.route("/loop", Reply(302, [("Location", "/loop")]))
    with pytest.raises(TooManyRedirects):
        await send_guarded(
            http_client, LOOPBACK, "GET", server.url("/loop"), timeout_s=5, follow_redirects=True,
            max_redirects=3,
        )  # fmt: skip
    assert len(server.hits) == 4


# --------------------------------------------------------------------------- bodies, time


async def test_declared_oversize_body_is_refused_without_reading(
    server: LoopbackServer, http_client: httpx.AsyncClient
) -> None:
    policy = OutboundPolicy(allowed_hosts=frozenset({"127.0.0.1"}), max_response_bytes=1000)
    server.route("/big", Reply(200, body=b"x" * 1001))
    server.route("/fits", Reply(200, body=b"x" * 1000))
    with pytest.raises(ResponseTooLarge, match="1000 bytes"):
        await send_guarded(http_client, policy, "GET", server.url("/big"), timeout_s=5)
    response = await send_guarded(http_client, policy, "GET", server.url("/fits"), timeout_s=5)
    assert len(response.body) == 1000


async def test_streamed_oversize_body_stops_reading(
    server: LoopbackServer, http_client: httpx.AsyncClient
) -> None:
    sent = 0

    def chunks() -> Iterator[bytes]:
        nonlocal sent
        for _ in range(2000):  # 32 MiB if read to the end
            sent += 1
            yield b"y" * 16384

    server.route("/stream", lambda hit: Reply(200, chunks=chunks()))
    policy = OutboundPolicy(allowed_hosts=frozenset({"127.0.0.1"}), max_response_bytes=100_000)
    with pytest.raises(ResponseTooLarge):
        await send_guarded(http_client, policy, "GET", server.url("/stream"), timeout_s=10)
    await asyncio.sleep(0.2)
    assert sent < 2000


async def test_timeout(server: LoopbackServer, http_client: httpx.AsyncClient) -> None:
    server.route("/slow", Reply(200, delay_s=3))
    started = time.monotonic()
    with pytest.raises(httpx.TimeoutException):
        await send_guarded(http_client, LOOPBACK, "GET", server.url("/slow"), timeout_s=0.3)
    assert time.monotonic() - started < 2


async def test_timeout_bounds_the_whole_exchange(
    server: LoopbackServer, http_client: httpx.AsyncClient
) -> None:
    # each chunk comes well within the timeout, the whole body does not
    server.route("/trickle", lambda hit: Reply(200, chunks=[b"."] * 30, chunk_delay_s=0.1))
    started = time.monotonic()
    with pytest.raises(httpx.TimeoutException, match=r"within 0\.5 s"):
        await send_guarded(http_client, LOOPBACK, "GET", server.url("/trickle"), timeout_s=0.5)
    assert time.monotonic() - started < 2


async def test_request_parts_and_no_cookie_jar(
    server: LoopbackServer, http_client: httpx.AsyncClient
) -> None:
    server.route("/set", Reply(200, [("Set-Cookie", "session=abc; Path=/")]))
    server.route("/echo", lambda hit: Reply(200, body=hit.body))
    await send_guarded(http_client, LOOPBACK, "GET", server.url("/set"), timeout_s=5)
    response = await send_guarded(
        http_client, LOOPBACK, "post", server.url("/echo?a=1"), params={"b": [2, 3], "c": True},
        headers={"X-Test": "yes", "Host": "evil.example"}, content="plain", timeout_s=5,
    )  # fmt: skip
    hit = server.hits[-1]
    assert hit.method == "POST"
    assert hit.target == "/echo?a=1&b=2&b=3&c=true"
    assert hit.headers["x-test"] == "yes"
    assert hit.headers["host"] == f"127.0.0.1:{server.port}"
    assert "cookie" not in hit.headers
    assert response.body == b"plain"


async def test_misuse_is_a_value_error(
    server: LoopbackServer, http_client: httpx.AsyncClient
) -> None:
    with pytest.raises(ValueError, match="either json or content"):
        await send_guarded(
            http_client, LOOPBACK, "POST", server.url("/"), json={}, content=b"", timeout_s=5
        )
    with pytest.raises(ValueError, match="positive"):
        await send_guarded(http_client, LOOPBACK, "GET", server.url("/"), timeout_s=0)
    assert server.connections == 0


async def test_idle_tls_pools_are_bounded(
    make_server: Callable[..., LoopbackServer],
    localhost_tls: TlsFiles,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    srv = make_server(ssl_context=localhost_tls.server_context())
    srv.route("/x", Reply(200, body=b"ok"))
    _fake_dns(monkeypatch, {"a.test": [["127.0.0.1"]], "b.test": [["127.0.0.1"]]})
    policy = OutboundPolicy(allow_private_networks=True)
    async with make_http_client(verify=localhost_tls.client_context(), max_pools=2) as client:
        transport = client._transport
        for host in ("a.test", "b.test", "127.0.0.1"):
            with pytest.raises(httpx.ConnectError):  # the certificate names localhost only
                await send_guarded(client, policy, "GET", srv.url("/x", host), timeout_s=5)
        response = await send_guarded(
            client, policy, "GET", srv.url("/x", "localhost"), timeout_s=5
        )
        assert response.body == b"ok"
        assert transport.pool_count() == 2  # type: ignore[attr-defined]
