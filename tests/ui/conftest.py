"""Fixtures for the web inspector's tests: the system's Chromium driven by Playwright,
against the app served by uvicorn on a real port.

Playwright's own browser download is not used: the browser is /usr/bin/chromium (override
with STEPWISE_CHROMIUM). Without it the tests are skipped with a loud warning — and fail
in CI (STEPWISE_REQUIRE_POSTGRES=1, the same signal the database tests use).
"""

from __future__ import annotations

import asyncio
import os
import warnings
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import httpx
import pytest
import uvicorn
from playwright.async_api import Browser, Page, async_playwright, expect

from app.main import create_app
from app.steps.registry import StepRegistry
from tests.conftest import REQUIRE_PG, free_port, settings_for, truncate

CHROMIUM = os.environ.get("STEPWISE_CHROMIUM", "/usr/bin/chromium")
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
TIMEOUT_MS = 15_000

Serve = Callable[..., Awaitable[str]]

# generous: the machines running CI are shared
expect.set_options(timeout=TIMEOUT_MS)


@pytest.fixture(scope="session")
async def browser() -> AsyncIterator[Browser]:
    if not Path(CHROMIUM).is_file():
        message = f"Chromium is not installed at {CHROMIUM}: the web inspector tests are SKIPPED"
        if REQUIRE_PG:
            pytest.fail(message + " (CI: .ci/run installs it with apt-get)")
        warnings.warn(message, stacklevel=1)
        pytest.skip(message)
    async with async_playwright() as playwright:
        launched = await playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        yield launched
        await launched.close()


@pytest.fixture
async def page(browser: Browser, serve: Serve) -> AsyncIterator[Page]:
    """A fresh browser context (its own local storage); a script error fails the test.
    (It closes before the servers stop: their open event streams end with it.)"""
    context = await browser.new_context(viewport={"width": 1400, "height": 1000})
    context.set_default_timeout(TIMEOUT_MS)
    new_page = await context.new_page()
    errors: list[str] = []
    new_page.on("pageerror", lambda error: errors.append(str(error)))
    yield new_page
    await context.close()
    assert not errors, f"the page raised: {errors}"


@pytest.fixture
async def serve(database_url: str) -> AsyncIterator[Serve]:
    """Start the app on a real port with settings overrides; returns its base URL."""
    await truncate(database_url)
    running: list[tuple[uvicorn.Server, asyncio.Task[None]]] = []

    async def start(registry: StepRegistry | None = None, **overrides: Any) -> str:
        port = free_port()
        app = create_app(settings_for(database_url, **overrides), registry=registry)
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
        running.append((server, task))
        while not server.started:
            assert not task.done(), "the server did not start"
            await asyncio.sleep(0.02)
        return f"http://127.0.0.1:{port}"

    yield start
    for server, task in running:
        server.should_exit = True
        await task


@pytest.fixture
async def api(serve: Serve) -> AsyncIterator[httpx.AsyncClient]:
    """An HTTP client of a freshly served app (``api.base_url`` is what the page opens)."""
    base = await serve()
    async with httpx.AsyncClient(base_url=base, timeout=30) as client:
        yield client
