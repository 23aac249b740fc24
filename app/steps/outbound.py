"""Sending through the outbound guard: every request of the ``http`` and ``call`` steps
goes through :func:`send_guarded` here.

A workflow author chooses the URLs, so without a guard a step could reach the service's
own network (cloud metadata at 169.254.169.254, databases on 10.x, admin ports on
loopback). :func:`send_guarded` therefore:

1. accepts only ``http`` and ``https``;
2. resolves the host ONCE (an IP literal in any of the forms ``inet_aton`` accepts —
   ``2130706433``, ``0x7f000001``, ``127.1`` — is parsed, never looked up) and refuses the
   request unless EVERY resolved address is allowed
   (:func:`app.steps.destinations.resolve_checked`, with the policy and address rules);
3. connects to the checked address only: the request URL's host is replaced by the IP,
   the ``Host`` header keeps the original name, and for https the TLS server name (SNI
   and certificate verification) stays the original name through the ``sni_hostname``
   request extension. There is no second DNS lookup, so DNS rebinding cannot swap the
   address between the check and the connection;
4. follows redirects itself (httpx never does), re-checking every hop;
5. reads the body with a cap, failing fast instead of buffering an unbounded response.

The client must not use environment proxies (a proxy would do its own DNS lookup):
:func:`app.steps.clients.make_http_client` builds one with ``trust_env=False``, and
:func:`send_guarded` refuses a client that trusts the environment.
"""

from __future__ import annotations

import asyncio
import json as jsonlib
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Final

import httpx

from app.steps.clients import OutboundClient
from app.steps.destinations import (
    IPAddress,
    OutboundError,
    OutboundPolicy,
    canonical_url,
    check_scheme,
    display_url,
    parse_url,
    resolve_checked,
)

REDIRECT_STATUSES: Final = frozenset({301, 302, 303, 307, 308})


# --------------------------------------------------------------------------- errors


class ResponseTooLarge(OutboundError):
    """The response body is larger than ``OutboundPolicy.max_response_bytes``."""

    def __init__(self, message: str, *, limit: int) -> None:
        super().__init__(message)
        self.limit = limit


class TooManyRedirects(OutboundError):
    """More than ``max_redirects`` redirects were followed."""


# --------------------------------------------------------------------------- sending


@dataclass(frozen=True, slots=True)
class GuardedResponse:
    status_code: int
    headers: dict[str, str]  # lower-case names; repeated headers joined with ", "
    body: bytes
    url: str  # the final URL (after redirects), with its original host name
    reason_phrase: str = ""


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
    client not made by :func:`~app.steps.clients.make_http_client` (one trusting
    environment proxies would bypass the guard), both bodies, a non-positive timeout.
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
    check_scheme(target)
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
        url = canonical_url(url)
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
