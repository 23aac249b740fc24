"""The httpx clients of outbound requests: one for the steps, one for client libraries.

- :func:`make_http_client` builds the shared :class:`OutboundClient` of the ``http`` and
  ``call`` steps, to be used through :func:`app.steps.outbound.send_guarded`: no
  environment proxies (a proxy would do its own DNS lookup), no redirects, no cookies
  (:class:`NoCookies`), TLS connection pools per server name (:mod:`app.steps.pools`).
- :func:`make_guarded_client` builds a client for libraries that send through an
  ``httpx.AsyncClient`` of their own (the language-model SDKs): its
  :class:`GuardedTransport` checks every request against the policy
  (:func:`app.steps.destinations.resolve_checked`) and sends it to the checked
  addresses only.
"""

from __future__ import annotations

import functools
import ssl
from functools import partial
from http.cookiejar import CookieJar, CookiePolicy
from typing import Any
from urllib.request import Request as UrllibRequest

import httpx

from app.steps.destinations import OutboundPolicy, canonical_url, resolve_checked
from app.steps.pools import TlsNamePartitionedTransport, pooled_transport

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
    """The client :func:`make_http_client` builds. :func:`~app.steps.outbound.send_guarded`
    hands its pinned requests straight to the pools (``pinned``): it follows redirects
    itself and the client has no auth, no cookies and no hooks, so the client's own send
    loop would only add its per-request cost (a third of an outbound step's CPU)."""

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
    cookies, TLS connection pools per server name. Use it through
    :func:`~app.steps.outbound.send_guarded`.

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
        url = canonical_url(request.url)
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
