"""A live server with settings of the test's choosing (the ``live_server`` fixture with
overrides), served by uvicorn in this event loop."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Callable
from typing import Any

import pytest
import uvicorn

from app.main import create_app
from tests.conftest import free_port, settings_for, truncate

ServerFactory = Callable[..., contextlib.AbstractAsyncContextManager[str]]


@pytest.fixture
def serve(database_url: str) -> ServerFactory:
    @contextlib.asynccontextmanager
    async def start(**overrides: Any) -> AsyncIterator[str]:
        await truncate(database_url)
        port = free_port()
        app = create_app(settings_for(database_url, **overrides))
        server = uvicorn.Server(
            uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning", lifespan="on")
        )
        task = asyncio.create_task(server.serve())
        while not server.started:
            await asyncio.sleep(0.02)
        try:
            yield f"http://127.0.0.1:{port}"
        finally:
            server.should_exit = True
            await task

    return start
