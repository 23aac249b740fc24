"""Fixtures of the event tests: real servers (SSE needs a socket) and an SSE reader."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

import httpx
import pytest
import uvicorn

from app.main import create_app
from app.steps.base import StepContext, StepResult
from app.steps.registry import StepRegistry, builtin_steps
from tests.conftest import free_port, settings_for, truncate


class EmitStep:
    """A plugin step that reports progress ``with.count`` times, then succeeds."""

    async def execute(self, ctx: StepContext) -> StepResult:
        count = int(ctx.config.get("count", 3))
        for i in range(count):
            await ctx.progress(i=i, of=count)
        return StepResult.succeeded({"emitted": count})


def registry() -> StepRegistry:
    return StepRegistry({**builtin_steps(), "emit": EmitStep()})


ServerFactory = Callable[..., Awaitable[httpx.AsyncClient]]


@pytest.fixture
async def serve(database_url: str) -> AsyncIterator[ServerFactory]:
    """Start the app (with the ``emit`` step) under uvicorn on a real port; a client for it."""
    await truncate(database_url)
    started: list[tuple[uvicorn.Server, asyncio.Task[None], httpx.AsyncClient]] = []

    async def start(**overrides: Any) -> httpx.AsyncClient:
        port = free_port()
        app = create_app(settings_for(database_url, **overrides), registry=registry())
        server = uvicorn.Server(
            uvicorn.Config(
                app,
                host="127.0.0.1",
                port=port,
                log_level="warning",
                lifespan="on",
                timeout_graceful_shutdown=5,
            )
        )
        task = asyncio.create_task(server.serve())
        while not server.started:
            if task.done():
                task.result()
            await asyncio.sleep(0.02)
        client = httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}", timeout=30)
        client.app = app  # type: ignore[attr-defined]
        started.append((server, task, client))
        return client

    yield start
    for server, task, client in reversed(started):
        await client.aclose()
        server.should_exit = True
        await task


@dataclass
class Stream:
    status: int
    headers: httpx.Headers
    frames: list[dict[str, Any]] = field(default_factory=list)
    comments: int = 0
    closed_by_server: bool = False
    body: str = ""

    @property
    def events(self) -> list[dict[str, Any]]:
        return [f["data"] for f in self.frames]

    @property
    def seqs(self) -> list[int]:
        return [e["seq"] for e in self.events]

    @property
    def types(self) -> list[str]:
        return [e["type"] for e in self.events]


async def read_sse(
    client: httpx.AsyncClient,
    url: str,
    *,
    method: str = "GET",
    stop: Callable[[dict[str, Any]], bool] | None = None,
    **kwargs: Any,
) -> Stream:
    """Read an SSE response until the server closes it, or until ``stop(event)`` is true
    (then the client disconnects)."""
    async with client.stream(method, url, **kwargs) as response:
        result = Stream(response.status_code, response.headers)
        if response.status_code != 200:
            result.body = (await response.aread()).decode()
            return result
        assert response.headers["content-type"].startswith("text/event-stream")
        frame: dict[str, Any] = {}
        async for line in response.aiter_lines():
            if line == "":
                if frame:
                    frame["data"] = json.loads(frame["data"])
                    assert frame["id"] == str(frame["data"]["seq"])
                    assert frame["event"] == frame["data"]["type"]
                    result.frames.append(frame)
                    if stop is not None and stop(frame["data"]):
                        return result
                frame = {}
            elif line.startswith(":"):
                result.comments += 1
            else:
                name, _, value = line.partition(":")
                value = value.removeprefix(" ")
                frame[name] = frame[name] + "\n" + value if name in frame else value
        result.closed_by_server = True
        return result
