"""The outbound guard: every request of the ``http`` and ``call`` steps goes through here.

A workflow author chooses the URLs, so without a guard a step could reach the service's
own network (cloud metadata at 169.254.169.254, databases on 10.x, admin ports on
loopback). :func:`send_guarded` therefore:

1. accepts only ``http`` and ``https``;
2. resolves the host ONCE (an IP literal in any of the forms ``inet_aton`` accepts —
   ``2130706433``, ``0x7f000001``, ``127.1`` — is parsed, never looked up) and refuses the
   request unless EVERY resolved address is allowed (:func:`resolve_checked`);
3. connects to the checked address only: the request URL's host is replaced by the IP,
   the ``Host`` header keeps the original name, and for https the TLS server name (SNI
   and certificate verification) stays the original name through the ``sni_hostname``
   request extension. There is no second DNS lookup, so DNS rebinding cannot swap the
   address between the check and the connection;
4. follows redirects itself (httpx never does), re-checking every hop;
5. reads the body with a cap, failing fast instead of buffering an unbounded response.

The client must not use environment proxies (a proxy would do its own DNS lookup):
:func:`make_http_client` builds one with ``trust_env=False``, and :func:`send_guarded`
refuses a client that trusts the environment.
"""

from __future__ import annotations

import asyncio
import functools
import ipaddress
import json as jsonlib
import re
import socket
import ssl
from collections.abc import Mapping
from dataclasses import dataclass
from functools import partial
from http.cookiejar import CookieJar, CookiePolicy
from typing import Any, Final
from urllib.request import Request as UrllibRequest

import httpx

from app.steps.pools import TlsNamePartitionedTransport, pooled_transport

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address

ALLOWED_SCHEMES: Final = frozenset({"http", "https"})
REDIRECT_STATUSES: Final = frozenset({301, 302, 303, 307, 308})

_V4 = ipaddress.IPv4Network
_V6 = ipaddress.IPv6Network

# Checked in order; the first match names the reason in the error message. Anything not
# listed that Python does not consider globally routable is refused too (see _refusal).
_BLOCKED: Final[tuple[tuple[ipaddress.IPv4Network | ipaddress.IPv6Network, str], ...]] = (
    (_V4("0.0.0.0/8"), "'this network' (0.0.0.0/8), which reaches the local host"),
    (_V4("10.0.0.0/8"), "private (RFC 1918)"),
    (_V4("100.64.0.0/10"), "shared address space (CGNAT, RFC 6598)"),
    (_V4("127.0.0.0/8"), "loopback"),
    (_V4("169.254.0.0/16"), "link-local (including cloud metadata endpoints)"),
    (_V4("172.16.0.0/12"), "private (RFC 1918)"),
    (_V4("192.0.0.0/24"), "IETF protocol assignments (192.0.0.0/24)"),
    (_V4("192.0.2.0/24"), "documentation (TEST-NET-1)"),
    (_V4("192.168.0.0/16"), "private (RFC 1918)"),
    (_V4("198.18.0.0/15"), "benchmarking (198.18.0.0/15)"),
    (_V4("198.51.100.0/24"), "documentation (TEST-NET-2)"),
    (_V4("203.0.113.0/24"), "documentation (TEST-NET-3)"),
    (_V4("224.0.0.0/4"), "multicast"),
    (_V4("255.255.255.255/32"), "broadcast"),
    (_V4("240.0.0.0/4"), "reserved (240.0.0.0/4)"),
    (_V6("::/128"), "unspecified"),
    (_V6("::1/128"), "loopback"),
    (_V6("::ffff:0:0/96"), "IPv4-mapped"),
    (_V6("64:ff9b:1::/48"), "local-use NAT64 (64:ff9b:1::/48)"),
    (_V6("100::/64"), "discard-only (100::/64)"),
    (_V6("2001:db8::/32"), "documentation (2001:db8::/32)"),
    (_V6("fc00::/7"), "unique local (fc00::/7)"),
    (_V6("fe80::/10"), "link-local (fe80::/10)"),
    (_V6("fec0::/10"), "site-local (fec0::/10)"),
    (_V6("ff00::/8"), "multicast"),
    (_V6("::/8"), "reserved (::/8, including IPv4-compatible addresses)"),
)
_NAT64: Final = _V6("64:ff9b::/96")


# --------------------------------------------------------------------------- errors


class OutboundError(Exception):
    """Base of the guard's own refusals (network failures stay httpx errors)."""


class AddressNotAllowed(OutboundError):
    """The URL's scheme, or one of its host's addresses, is not allowed by the policy.

    Raised before any connection is made.
    """


class ResponseTooLarge(OutboundError):
    """The response body is larger than ``OutboundPolicy.max_response_bytes``."""

    def __init__(self, message: str, *, limit: int) -> None:
        super().__init__(message)
        self.limit = limit


class TooManyRedirects(OutboundError):
    """More than ``max_redirects`` redirects were followed."""


class HostResolutionError(httpx.ConnectError):
    """The host name did not resolve (a network error, as httpx reports it too)."""


# --------------------------------------------------------------------------- policy


@dataclass(frozen=True)
class OutboundPolicy:
    """What outbound requests may reach.

    By default only globally routable addresses. ``allow_private_networks`` opens every
    address; ``allowed_hosts`` opens the hosts named (as written in the URL, case-
    insensitive) and the IP addresses listed, whatever they resolve to or are.
    """

    allow_private_networks: bool = False
    allowed_hosts: frozenset[str] = frozenset()
    max_response_bytes: int = 10 << 20


@dataclass(frozen=True, slots=True)
class GuardedResponse:
    status_code: int
    headers: dict[str, str]  # lower-case names; repeated headers joined with ", "
    body: bytes
    url: str  # the final URL (after redirects), with its original host name
    reason_phrase: str = ""


@functools.lru_cache(maxsize=64)
def _opened(allowed_hosts: frozenset[str]) -> tuple[frozenset[str], frozenset[IPAddress]]:
    names: set[str] = set()
    addresses: set[IPAddress] = set()
    for entry in allowed_hosts:
        name = _normalize_name(entry.strip().strip("[]"))
        if not name:
            continue
        names.add(name)
        try:
            ip = ipaddress.ip_address(name)
        except ValueError:
            literal = _parse_ipv4_literal(name)
            if isinstance(literal, ipaddress.IPv4Address):
                addresses.add(literal)
            continue
        addresses.add(_effective(ip))
    return frozenset(names), frozenset(addresses)


def _normalize_name(host: str) -> str:
    return host.lower().rstrip(".")


def _effective(ip: IPAddress) -> IPAddress:
    """The address a connection really reaches: IPv4-mapped IPv6 is the IPv4 address."""
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        return ip.ipv4_mapped
    return ip


def _refusal(ip: IPAddress) -> str | None:
    """Why ``ip`` is not a public address, or None when it is."""
    if isinstance(ip, ipaddress.IPv6Address):
        if ip.ipv4_mapped is not None:
            inner = _refusal(ip.ipv4_mapped)
            return f"IPv4-mapped {inner}" if inner else None
        embedded: ipaddress.IPv4Address | None = ip.sixtofour
        kind = "6to4"
        if embedded is None and ip in _NAT64:
            embedded, kind = ipaddress.IPv4Address(int(ip) & 0xFFFFFFFF), "NAT64"
        if embedded is not None:
            inner = _refusal(embedded)
            if inner:
                return f"{kind} address embedding {embedded}, which is {inner}"
    for network, reason in _BLOCKED:
        if ip.version == network.version and ip in network:
            return reason
    if ip.is_multicast:
        return "multicast"
    if ip.is_unspecified:
        return "unspecified"
    if ip.is_loopback:
        return "loopback"
    if ip.is_link_local:
        return "link-local"
    if ip.is_private or ip.is_reserved or not ip.is_global:
        return "not a globally routable address"
    return None


def is_public_address(ip: IPAddress) -> bool:
    """True when ``ip`` may be reached under the default policy."""
    return _refusal(_effective(ip)) is None


# --------------------------------------------------------------------------- URLs and names

_IPV4_PART = re.compile(r"^(0[xX][0-9a-fA-F]*|0[0-7]*|[1-9][0-9]*)$")
_NUMERIC_LAST = re.compile(r"^(0[xX][0-9a-fA-F]*|[0-9]+)$")


def _parse_ipv4_literal(host: str) -> ipaddress.IPv4Address | str | None:
    """Parse the IPv4 forms ``inet_aton`` (and browsers) accept.

    ``2130706433``, ``0x7f000001``, ``0177.0.0.1``, ``127.1``, ``127.0.1`` all mean
    127.0.0.1. Returns the address; None when ``host`` is a name, not a number; or a
    message when it looks numeric but is not a valid address (it is then refused
    rather than handed to DNS).
    """
    parts = host.split(".")
    if len(parts) > 1 and parts[-1] == "":
        parts.pop()  # one trailing dot, as in a fully qualified name
    if not parts or not _NUMERIC_LAST.match(parts[-1]):
        return None
    if len(parts) > 4 or not all(_IPV4_PART.match(part) for part in parts):
        return f"{host!r} is not a valid IPv4 address"
    numbers = [_ipv4_part_value(part) for part in parts]
    *head, last = numbers
    if any(n > 255 for n in head) or last >= 1 << (8 * (4 - len(head))):
        return f"{host!r} is not a valid IPv4 address (a part is out of range)"
    value = last
    for index, n in enumerate(head):
        value |= n << (8 * (3 - index))
    return ipaddress.IPv4Address(value)


def _ipv4_part_value(part: str) -> int:
    if part[:2].lower() == "0x":
        return int(part[2:] or "0", 16)
    if part.startswith("0"):
        return int(part, 8)
    return int(part)


def _canonical(url: httpx.URL) -> httpx.URL:
    """A host written as a loose IPv4 literal (``127.1``) becomes its dotted form."""
    host = url.raw_host.decode("ascii")
    try:
        ipaddress.ip_address(host)
    except ValueError:
        literal = _parse_ipv4_literal(host)
        if isinstance(literal, ipaddress.IPv4Address):
            return url.copy_with(host=str(literal))
    return url


def display_url(url: httpx.URL | str) -> str:
    """The URL without credentials, query or fragment: safe for messages and logs."""
    try:
        parsed = url if isinstance(url, httpx.URL) else httpx.URL(url)
        netloc = parsed.netloc.decode("ascii")
        return f"{parsed.scheme}://{netloc}{parsed.path}"
    except Exception:  # an unparseable URL: show nothing of it rather than a secret
        return "<invalid URL>"


def parse_url(url: str | httpx.URL) -> httpx.URL:
    """Parse ``url``; :class:`httpx.InvalidURL` for anything malformed."""
    if isinstance(url, httpx.URL):
        return url
    try:
        return httpx.URL(url)
    except httpx.InvalidURL:
        raise
    except Exception as exc:  # e.g. idna errors escape httpx's own checks
        raise httpx.InvalidURL(f"invalid URL: {exc}") from exc


def _check_scheme(url: httpx.URL) -> None:
    if url.scheme not in ALLOWED_SCHEMES:
        scheme = url.scheme or "(none)"
        raise AddressNotAllowed(
            f"refused {display_url(url)}: scheme {scheme!r} is not allowed (only http and https)"
        )
    if not url.raw_host:
        raise httpx.InvalidURL(f"invalid URL {display_url(url)}: it has no host")


async def _resolve(host: str, port: int) -> list[IPAddress]:
    loop = asyncio.get_running_loop()
    try:
        infos = await loop.getaddrinfo(
            host, port, type=socket.SOCK_STREAM, proto=socket.IPPROTO_TCP
        )
    except (OSError, UnicodeError) as exc:
        raise HostResolutionError(f"cannot resolve host {host!r}: {exc}") from exc
    addresses: list[IPAddress] = []
    for family, _, _, _, sockaddr in infos:
        if family not in (socket.AF_INET, socket.AF_INET6):
            continue
        try:
            ip = ipaddress.ip_address(str(sockaddr[0]))
        except ValueError as exc:
            raise HostResolutionError(
                f"host {host!r} resolved to an unusable address {sockaddr[0]!r}"
            ) from exc
        if ip not in addresses:
            addresses.append(ip)
    if not addresses:
        raise HostResolutionError(f"host {host!r} resolved to no address")
    return addresses


async def resolve_checked(url: httpx.URL, policy: OutboundPolicy) -> list[IPAddress]:
    """Resolve ``url``'s host once and check every address against ``policy``.

    Returns the addresses to connect to (IPv4-mapped IPv6 addresses as their IPv4
    address), in resolver order. Raises :class:`AddressNotAllowed` for a refused scheme
    or address, :class:`HostResolutionError` when the name does not resolve,
    :class:`httpx.InvalidURL` for a URL without a host. Makes no connection.
    """
    _check_scheme(url)
    host = url.raw_host.decode("ascii")
    name = _normalize_name(host)
    port = url.port or (443 if url.scheme == "https" else 80)

    literal: IPAddress | str | None
    try:
        literal = ipaddress.ip_address(host)
    except ValueError:
        literal = _parse_ipv4_literal(host)
    if isinstance(literal, str):
        raise AddressNotAllowed(f"refused {display_url(url)}: {literal}")
    resolved = [literal] if literal is not None else await _resolve(host, port)

    opened_names, opened_addresses = _opened(policy.allowed_hosts)
    host_opened = policy.allow_private_networks or name in opened_names
    addresses: list[IPAddress] = []
    for ip in resolved:
        target = _effective(ip)
        if not host_opened and target not in opened_addresses:
            reason = _refusal(ip)
            if reason is not None:
                shown = f"{host} ({ip})" if literal is None or str(ip) != host else host
                raise AddressNotAllowed(
                    f"refused {display_url(url)}: address {shown} is {reason}; "
                    "open it with STEPWISE_HTTP_ALLOWED_HOSTS or "
                    "STEPWISE_ALLOW_PRIVATE_NETWORKS"
                )
        if target not in addresses:
            addresses.append(target)
    return addresses


# --------------------------------------------------------------------------- the client


class NoCookies(CookiePolicy):
    """A shared client must not carry one workflow's cookies into another's requests."""

    netscape = True
    rfc2965 = False
    hide_cookie2 = False

    def set_ok(self, cookie: Any, request: UrllibRequest) -> bool:
        return False

    def return_ok(self, cookie: Any, request: UrllibRequest) -> bool:
        return False

    def domain_return_ok(self, domain: str, request: UrllibRequest) -> bool:
        return False

    def path_return_ok(self, path: str, request: UrllibRequest) -> bool:
        return False


class OutboundClient(httpx.AsyncClient):
    """The client :func:`make_http_client` builds. :func:`send_guarded` hands its pinned
    requests straight to the pools (``pinned``): it follows redirects itself and the
    client has no auth, no cookies and no hooks, so the client's own send loop would only
    add its per-request cost (a third of an outbound step's CPU)."""

    def __init__(self, pinned: TlsNamePartitionedTransport, **kwargs: Any) -> None:
        super().__init__(transport=pinned, **kwargs)
        self.pinned = pinned


def make_http_client(
    *,
    verify: ssl.SSLContext | bool = True,
    timeout_s: float = 30.0,
    max_pools: int = 64,
) -> OutboundClient:
    """The shared client for outbound steps: no environment proxies, no redirects, no
    cookies, TLS connection pools per server name. Use it through :func:`send_guarded`.

    ``verify``: True (the certifi bundle), False, or an SSLContext (e.g. trusting a
    private CA).
    """
    ssl_context = (
        verify
        if isinstance(verify, ssl.SSLContext)
        else httpx.create_ssl_context(verify=verify, trust_env=False)
    )
    limits = httpx.Limits(max_connections=100, max_keepalive_connections=20, keepalive_expiry=15)
    return OutboundClient(
        TlsNamePartitionedTransport(partial(pooled_transport, ssl_context, limits), max_pools),
        trust_env=False,
        follow_redirects=False,
        timeout=httpx.Timeout(timeout_s, connect=min(timeout_s, 10.0)),
        cookies=CookieJar(policy=NoCookies()),
        headers={"User-Agent": "stepwise"},
    )


# --------------------------------------------------------------------------- sending


class _Unset:
    def __repr__(self) -> str:
        return "UNSET"


UNSET: Final[Any] = _Unset()
_BODY_HEADERS: Final = ("content-type", "content-length", "transfer-encoding", "content-encoding")
_CREDENTIAL_HEADERS: Final = ("authorization", "proxy-authorization", "cookie")


def _origin(url: httpx.URL) -> tuple[str, bytes, int | None]:
    return url.scheme, url.raw_host.lower(), url.port


async def send_guarded(
    client: OutboundClient,
    policy: OutboundPolicy,
    method: str,
    url: str | httpx.URL,
    *,
    headers: Mapping[str, str] | None = None,
    params: httpx.QueryParams | Mapping[str, Any] | None = None,
    json: Any = UNSET,
    content: bytes | str | None = None,
    timeout_s: float,
    follow_redirects: bool = False,
    max_redirects: int = 10,
) -> GuardedResponse:
    """Send one request through the guard and read its (capped) body.

    ``json`` (any JSON value, ``None`` included) and ``content`` are exclusive.
    ``timeout_s`` bounds the whole exchange — resolution, connection, every redirect hop
    and the body — as well as each network operation.

    Raises :class:`AddressNotAllowed` (before connecting), :class:`ResponseTooLarge`,
    :class:`TooManyRedirects`, :class:`httpx.InvalidURL`, and httpx's
    :class:`~httpx.TimeoutException` / :class:`~httpx.TransportError` for network
    failures (:class:`HostResolutionError` among them). ``ValueError`` for misuse: a
    client not made by :func:`make_http_client` (one trusting environment proxies would
    bypass the guard), both bodies, a non-positive timeout.
    """
    if not isinstance(client, OutboundClient) or client.trust_env:
        raise ValueError(
            "send_guarded needs a client made by make_http_client (trust_env=False): "
            "environment proxies would bypass the outbound guard"
        )
    if json is not UNSET and content is not None:
        raise ValueError("give either json or content, not both")
    if not timeout_s > 0:
        raise ValueError(f"timeout_s must be positive, got {timeout_s!r}")

    target = parse_url(url)
    _check_scheme(target)
    if params:
        target = target.copy_merge_params(params)
    request_headers = httpx.Headers(headers or {})
    request_headers.pop("host", None)
    body: bytes | None
    if json is not UNSET:
        body = jsonlib.dumps(
            json, ensure_ascii=False, separators=(",", ":"), allow_nan=False
        ).encode("utf-8")
        request_headers.setdefault("Content-Type", "application/json")
    else:
        body = content.encode("utf-8") if isinstance(content, str) else content

    try:
        async with asyncio.timeout(timeout_s):
            return await _exchange(
                client,
                policy,
                method.upper(),
                target,
                request_headers,
                body,
                httpx.Timeout(timeout_s),
                max_redirects if follow_redirects else None,
            )
    except TimeoutError as exc:
        raise httpx.TimeoutException(
            f"{method.upper()} {display_url(target)} did not complete within {timeout_s:g} s"
        ) from exc


async def _exchange(
    client: OutboundClient,
    policy: OutboundPolicy,
    method: str,
    url: httpx.URL,
    headers: httpx.Headers,
    body: bytes | None,
    limits: httpx.Timeout,
    max_redirects: int | None,
) -> GuardedResponse:
    redirects = 0
    while True:
        addresses = await resolve_checked(url, policy)
        url = _canonical(url)
        response = await _send_pinned(client, method, url, addresses, headers, body, limits)
        try:
            location = response.headers.get("location")
            if max_redirects is not None and response.status_code in REDIRECT_STATUSES and location:
                try:
                    next_url = url.join(location)
                except Exception:  # an unusable Location: hand back the 3xx as it is
                    next_url = None
                if next_url is not None:
                    if redirects >= max_redirects:
                        raise TooManyRedirects(
                            f"{method} {display_url(url)}: more than {max_redirects} redirects"
                        )
                    redirects += 1
                    method, body, headers = _redirected_request(
                        response.status_code, method, body, headers, url, next_url
                    )
                    url = next_url
                    continue
            content = await _read_capped(response, method, url, policy.max_response_bytes)
            return GuardedResponse(
                status_code=response.status_code,
                headers=dict(response.headers.items()),
                body=content,
                url=str(url),
                reason_phrase=response.reason_phrase,
            )
        finally:
            await response.aclose()


def _redirected_request(
    status: int,
    method: str,
    body: bytes | None,
    headers: httpx.Headers,
    url: httpx.URL,
    next_url: httpx.URL,
) -> tuple[str, bytes | None, httpx.Headers]:
    """Method, body and headers of the next hop, as browsers (and httpx) do it."""
    headers = headers.copy()
    if (status == 303 and method != "HEAD") or (status in (301, 302) and method == "POST"):
        method, body = "GET", None
        for name in _BODY_HEADERS:
            headers.pop(name, None)
    if _origin(url) != _origin(next_url):
        for name in _CREDENTIAL_HEADERS:
            headers.pop(name, None)
    return method, body, headers


async def _send_pinned(
    client: OutboundClient,
    method: str,
    url: httpx.URL,
    addresses: list[IPAddress],
    headers: httpx.Headers,
    body: bytes | None,
    limits: httpx.Timeout,
) -> httpx.Response:
    """Send to the checked addresses only, in order, moving on when one cannot connect.
    The response streams: the caller reads and closes it."""
    hop_headers = client.headers.copy()  # the client's User-Agent, Accept-Encoding, …
    hop_headers.update(headers)
    hop_headers["Host"] = url.netloc.decode("ascii")
    extensions: dict[str, Any] = {"timeout": limits.as_dict()}
    if url.scheme == "https":
        # TLS keeps the URL's name: SNI and certificate verification are against it,
        # not against the IP the connection is pinned to.
        extensions["sni_hostname"] = url.raw_host.decode("ascii")
    last_error: httpx.TransportError | None = None
    for ip in addresses:
        request = httpx.Request(
            method,
            url.copy_with(host=str(ip)),
            headers=hop_headers,
            content=body,
            extensions=extensions,
        )
        try:
            response = await client.pinned.handle_async_request(request)
        except (httpx.ConnectError, httpx.ConnectTimeout) as exc:
            last_error = exc  # nothing was sent: the next checked address may answer
            continue
        response.request = request
        return response
    assert last_error is not None
    raise last_error


async def _read_capped(response: httpx.Response, method: str, url: httpx.URL, limit: int) -> bytes:
    def too_large() -> ResponseTooLarge:
        return ResponseTooLarge(
            f"the response of {method} {display_url(url)} is larger than the limit of "
            f"{limit} bytes",
            limit=limit,
        )

    declared = response.headers.get("content-length", "")
    if (
        method != "HEAD"
        and response.status_code not in (204, 304)
        and declared.isdigit()
        and int(declared) > limit
        and "content-encoding" not in response.headers
    ):
        raise too_large()
    buffer = bytearray()
    async for chunk in response.aiter_bytes():
        if len(buffer) + len(chunk) > limit:
            raise too_large()
        buffer += chunk
    return bytes(buffer)


# --------------------------------------------------------------------------- for libraries


class GuardedTransport(httpx.AsyncBaseTransport):
    """A transport that checks every request against the policy, as ``send_guarded`` does.

    For client libraries that send through an ``httpx.AsyncClient`` of their own (the
    language-model SDKs): each request — each redirect hop too, since a client following
    redirects sends every hop through its transport — is resolved and checked before any
    connection is made, and sent to the checked addresses only. Responses stream.
    """

    def __init__(self, policy: OutboundPolicy, inner: httpx.AsyncBaseTransport) -> None:
        self._policy = policy
        self._inner = inner

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        addresses = await resolve_checked(request.url, self._policy)
        url = _canonical(request.url)
        headers = request.headers.copy()
        headers["Host"] = url.netloc.decode("ascii")
        extensions = dict(request.extensions)
        if url.scheme == "https":
            extensions["sni_hostname"] = url.raw_host.decode("ascii")
        last_error: httpx.TransportError | None = None
        for ip in addresses:
            pinned = httpx.Request(
                request.method,
                url.copy_with(host=str(ip)),
                headers=headers,
                stream=request.stream,
                extensions=extensions,
            )
            try:
                return await self._inner.handle_async_request(pinned)
            except (httpx.ConnectError, httpx.ConnectTimeout) as exc:
                last_error = exc  # nothing was sent: the next checked address may answer
        assert last_error is not None
        raise last_error

    async def aclose(self) -> None:
        await self._inner.aclose()


@functools.cache
def _default_ssl_context() -> ssl.SSLContext:
    """The certifi-trusting context, built once: loading the CA bundle costs ~15 ms of CPU,
    which an agent step paid on every model call (a context is safe to share)."""
    return httpx.create_ssl_context(trust_env=False)


def make_guarded_client(policy: OutboundPolicy, *, timeout_s: float) -> httpx.AsyncClient:
    """A client whose every request goes through the outbound guard: no environment
    proxies, no redirects followed, no cookies, TLS pools per server name."""
    factory = partial(pooled_transport, _default_ssl_context(), httpx.Limits())
    return httpx.AsyncClient(
        transport=GuardedTransport(policy, TlsNamePartitionedTransport(factory, max_pools=8)),
        trust_env=False,
        follow_redirects=False,
        timeout=httpx.Timeout(timeout_s, connect=min(timeout_s, 10.0)),
        cookies=CookieJar(policy=NoCookies()),
    )
