"""The model clients of a runtime, kept for its life so that connections are reused.

One provider (an SDK client over its own guarded HTTP client, so one pool of kept-alive
connections) per (provider, base URL, outbound policy, timeout), shared by every agent
step and run of the :class:`app.runtime.Runtime` that builds it and closes it at
shutdown. Before, each model call built an SDK client and a guarded client, so opened a
new connection, and closed them after.

A shared client holds no credentials (its API key is a placeholder, never the
environment's): a step's key goes to a copy of the client made for that step
(:meth:`Provider.with_api_key`, the SDK's ``with_options``), which sends through the same
HTTP client. Two nodes with one base URL share connections, never each other's key, and
no key outlives the step that rendered it. Every request still passes the outbound guard
(:func:`app.agents.transport.model_http_client`).
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass

from app.agents.providers import Provider, make_provider
from app.agents.transport import model_http_client
from app.steps.destinations import OutboundPolicy

MAX_CLIENTS = 32  # beyond it, the least recently used idle clients are closed


@dataclass(frozen=True, slots=True)
class ClientKey:
    provider: str
    base_url: str | None
    policy: OutboundPolicy
    timeout_s: float


@dataclass(slots=True)
class _Entry:
    provider: Provider
    active: int = 0  # steps using it now


class ModelClients:
    def __init__(self, max_clients: int = MAX_CLIENTS) -> None:
        self._max_clients = max_clients
        self._entries: OrderedDict[ClientKey, _Entry] = OrderedDict()

    @asynccontextmanager
    async def provider(self, key: ClientKey, api_key: str | None) -> AsyncIterator[Provider]:
        """The shared provider for ``key``, sending ``api_key``, while the block runs."""
        entry = self._entries.get(key)
        if entry is None:
            http_client = model_http_client(key.policy, timeout_s=key.timeout_s)
            entry = self._entries[key] = _Entry(
                make_provider(key.provider, base_url=key.base_url, http_client=http_client)
            )
        self._entries.move_to_end(key)
        entry.active += 1
        try:
            yield entry.provider.with_api_key(api_key)
        finally:
            entry.active -= 1
            await self._close_idle()

    async def _close_idle(self) -> None:
        excess = len(self._entries) - self._max_clients
        if excess <= 0:
            return
        idle = [key for key, entry in self._entries.items() if entry.active == 0][:excess]
        for entry in [self._entries.pop(key) for key in idle]:
            await entry.provider.aclose()

    async def aclose(self) -> None:
        entries, self._entries = list(self._entries.values()), OrderedDict()
        for entry in entries:
            await entry.provider.aclose()
