"""Where outbound requests may go: the destination half of the outbound guard.

A workflow author chooses the URLs, so without a guard a step could reach the service's
own network (cloud metadata at 169.254.169.254, databases on 10.x, admin ports on
loopback). This module decides whether a URL may be reached, and makes no connection:

- :class:`OutboundPolicy`: what may be reached (by default only globally routable
  addresses; ``allowed_hosts`` and ``allow_private_networks`` open more);
- the address rules (:func:`is_public_address`): the blocked ranges, and the IPv4
  address inside IPv4-mapped, 6to4 and NAT64 addresses;
- URLs and host names: only ``http`` and ``https``; an IP literal in any of the forms
  ``inet_aton`` accepts (``2130706433``, ``0x7f000001``, ``127.1``) is parsed, never
  looked up; :func:`display_url`, :func:`parse_url`;
- :func:`resolve_checked`: the host resolved ONCE, refused unless EVERY resolved
  address is allowed; the caller connects to those addresses only;
- the guard's errors: :class:`OutboundError` (the base of every refusal, those raised
  while sending too), :class:`AddressNotAllowed`, :class:`HostResolutionError`.

Sending to the checked addresses is :mod:`app.steps.outbound`; the clients,
:mod:`app.steps.clients`.
"""

from __future__ import annotations

import asyncio
import functools
import ipaddress
import re
import socket
from dataclasses import dataclass
from typing import Final

import httpx

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address

ALLOWED_SCHEMES: Final = frozenset({"http", "https"})

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


def canonical_url(url: httpx.URL) -> httpx.URL:
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


def check_scheme(url: httpx.URL) -> None:
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
    check_scheme(url)
    host = url.raw_host.decode("ascii")
    port = url.port or (443 if url.scheme == "https" else 80)
    literal = _literal(url, host)
    resolved = [literal] if literal is not None else await _resolve(host, port)
    return _checked(url, host, literal, resolved, policy)


def check_without_lookup(url: httpx.URL, policy: OutboundPolicy) -> None:
    """``resolve_checked`` where it needs no resolver: the scheme, and a host written as
    an address, or ``localhost``, against ``policy`` (other names are checked when
    resolved). Raises :class:`AddressNotAllowed`."""
    check_scheme(url)
    host = url.raw_host.decode("ascii")
    literal = _literal(url, host)
    name = _normalize_name(host)
    if literal is None and (name == "localhost" or name.endswith(".localhost")):
        _checked(url, host, None, [ipaddress.IPv4Address("127.0.0.1")], policy)
    elif literal is not None:
        _checked(url, host, literal, [literal], policy)


def _literal(url: httpx.URL, host: str) -> IPAddress | None:
    literal: IPAddress | str | None
    try:
        literal = ipaddress.ip_address(host)
    except ValueError:
        literal = _parse_ipv4_literal(host)
    if isinstance(literal, str):
        raise AddressNotAllowed(f"refused {display_url(url)}: {literal}")
    return literal


def _checked(
    url: httpx.URL,
    host: str,
    literal: IPAddress | None,
    resolved: list[IPAddress],
    policy: OutboundPolicy,
) -> list[IPAddress]:
    name = _normalize_name(host)
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
