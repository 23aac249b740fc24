"""The HTTP client the model SDKs send through: every request passes the outbound guard.

The ``openai`` and ``anthropic`` libraries take an ``httpx2.AsyncClient``. Its transport
here hands each request to :class:`app.steps.clients.GuardedTransport` (the same
address, scheme and redirect-hop checks as ``http`` steps) and streams the answer back.
"""

from __future__ import annotations

from collections.abc import AsyncGenerator, AsyncIterator
from http.cookiejar import CookieJar
from typing import cast

import httpx
import httpx2

from app.steps.clients import NoCookies, make_guarded_client
from app.steps.destinations import OutboundPolicy


class _Body(httpx2.AsyncByteStream):
    """The guarded response's body. One pass over it, which every reader resumes: the
    ``openai`` library stops reading at ``[DONE]`` and then drains the rest through a new
    iteration, so that the connection goes back to the pool; a second ``aiter_raw`` would
    fail, and the unread connection be closed."""

    def __init__(self, response: httpx.Response) -> None:
        self._response = response
        self._chunks = cast(AsyncGenerator[bytes, None], response.aiter_raw())

    async def __aiter__(self) -> AsyncIterator[bytes]:
        async for chunk in self._chunks:
            yield chunk

    async def aclose(self) -> None:
        try:
            await self._chunks.aclose()
        finally:
            await self._response.aclose()


class _GuardBridge(httpx2.AsyncBaseTransport):
    def __init__(self, guarded: httpx.AsyncClient) -> None:
        self._guarded = guarded

    async def handle_async_request(self, request: httpx2.Request) -> httpx2.Response:
        body = await request.aread()
        outbound = httpx.Request(
            request.method,
            str(request.url),
            headers=list(request.headers.raw),
            content=body,
            extensions={"timeout": request.extensions.get("timeout", {})},
        )
        response = await self._guarded.send(outbound, stream=True, follow_redirects=False)
        return httpx2.Response(
            response.status_code,
            headers=list(response.headers.raw),
            stream=_Body(response),
            extensions={"http_version": b"HTTP/1.1"},
        )

    async def aclose(self) -> None:
        await self._guarded.aclose()


def model_http_client(policy: OutboundPolicy, *, timeout_s: float) -> httpx2.AsyncClient:
    """An ``httpx2`` client for a model SDK: guarded, no proxies from the environment, no
    cookies kept; redirects, when the SDK follows them, are checked hop by hop."""
    guarded = make_guarded_client(policy, timeout_s=timeout_s)
    return httpx2.AsyncClient(
        transport=_GuardBridge(guarded),
        # shared by every node using this model: one node's cookies must not reach another's
        cookies=CookieJar(policy=NoCookies()),
        trust_env=False,
        follow_redirects=False,
        timeout=httpx2.Timeout(timeout_s, connect=min(timeout_s, 10.0)),
    )
