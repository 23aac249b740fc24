"""Test fixtures: real databases (SQLite and Postgres), the app over ASGI, live servers.

Every API test runs on both backends. Postgres tests need a server (STEPWISE_TEST_PG,
default postgresql://postgres@127.0.0.1:5432/postgres); without one they are skipped
with a loud warning — and CI (STEPWISE_REQUIRE_POSTGRES=1) fails instead.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import socket
import uuid
import warnings
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import httpx
import pytest
import uvicorn
from sqlalchemy import text
from sqlalchemy.ext.asyncio import create_async_engine

from app.main import create_app
from app.settings import Settings
from app.steps.registry import StepRegistry
from app.store.database import migrate

PG_ADMIN_URL = os.environ.get("STEPWISE_TEST_PG", "postgresql://postgres@127.0.0.1:5432/postgres")
REQUIRE_PG = os.environ.get("STEPWISE_REQUIRE_POSTGRES") == "1"
TABLES = (
    "agent_turns",
    "events",
    "checkpoints",
    "runs",
    "workflows",
    "prompts",
    "webhook_deliveries",
)


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Tests marked ``postgres_only`` exist for the Postgres backend only: their SQLite
    variants are deselected (not skipped), so a skip in CI always means trouble."""
    keep, drop = [], []
    for item in items:
        callspec = getattr(item, "callspec", None)
        sqlite = callspec is not None and callspec.params.get("database_url") == "sqlite"
        (drop if sqlite and item.get_closest_marker("postgres_only") else keep).append(item)
    if drop:
        config.hook.pytest_deselected(items=drop)
        items[:] = keep


def _pg_url(database: str) -> str:
    base = PG_ADMIN_URL.replace("postgresql://", "postgresql+asyncpg://", 1)
    return base.rsplit("/", 1)[0] + "/" + database


async def _pg_admin(sql: str) -> None:
    engine = create_async_engine(
        _pg_url(PG_ADMIN_URL.rsplit("/", 1)[1]), isolation_level="AUTOCOMMIT"
    )
    try:
        async with engine.connect() as conn:
            await conn.execute(text(sql))
    finally:
        await engine.dispose()


async def _pg_available() -> bool:
    try:
        await asyncio.wait_for(_pg_admin("SELECT 1"), 5)
    except Exception:
        return False
    return True


@pytest.fixture(scope="session", params=["sqlite", "postgres"])
async def database_url(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> AsyncIterator[str]:
    if request.param == "sqlite":
        url = f"sqlite+aiosqlite:///{tmp_path_factory.mktemp('db') / 'stepwise.db'}"
        await migrate(url)
        yield url
        return
    async with scratch_pg_database("stepwise_test", "Postgres tests") as url:
        yield url


@contextlib.asynccontextmanager
async def scratch_pg_database(prefix: str, what: str) -> AsyncIterator[str]:
    """A new, migrated Postgres database, dropped afterwards; skips ``what`` loudly (or
    fails, with STEPWISE_REQUIRE_POSTGRES=1) when Postgres is not reachable."""
    if not await _pg_available():
        message = f"Postgres is not reachable at {PG_ADMIN_URL}: {what} are SKIPPED"
        if REQUIRE_PG:
            pytest.fail(message + " (STEPWISE_REQUIRE_POSTGRES=1)")
        warnings.warn(message, stacklevel=1)
        pytest.skip(message)
    name = f"{prefix}_{os.getpid()}_{uuid.uuid4().hex[:6]}"
    await _pg_admin(f'CREATE DATABASE "{name}"')
    url = _pg_url(name)
    try:
        await migrate(url)
        yield url
    finally:
        await _pg_admin(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@pytest.fixture
def backend(database_url: str) -> str:
    return "sqlite" if database_url.startswith("sqlite") else "postgres"


async def truncate(url: str) -> None:
    # SQLite: wait for the lock as the app does (busy_timeout 30 s), not sqlite3's 5 s; a
    # previous test's server may still be committing its last step while it stops
    connect_args = {"timeout": 30} if url.startswith("sqlite") else {}
    engine = create_async_engine(url, connect_args=connect_args)
    try:
        async with engine.begin() as conn:
            for table in TABLES:
                await conn.execute(text(f"DELETE FROM {table}"))
    finally:
        await engine.dispose()


def settings_for(database_url: str, **overrides: Any) -> Settings:
    values: dict[str, Any] = {
        "database_url": database_url,
        "migrate_on_start": False,
        "workers": 8,
        "poll_interval_s": 0.2,
        "lease_s": 10.0,
        "allow_private_networks": True,
        "shutdown_grace_s": 2.0,
    }
    values.update(overrides)
    return Settings(**values)


AppFactory = Callable[..., Awaitable[httpx.AsyncClient]]


@pytest.fixture
async def make_client(database_url: str) -> AsyncIterator[AppFactory]:
    """Build the app (lifespan running) with settings overrides; an httpx client over ASGI."""
    await truncate(database_url)
    stack: list[httpx.AsyncClient] = []

    async def make(registry: StepRegistry | None = None, **overrides: Any) -> httpx.AsyncClient:
        app = create_app(settings_for(database_url, **overrides), registry=registry)
        lifespan = app.router.lifespan_context(app)
        await lifespan.__aenter__()
        client = httpx.AsyncClient(
            transport=httpx.ASGITransport(app=app), base_url="http://stepwise.test", timeout=30
        )
        stopped = False

        async def stop() -> None:
            """Shut the app down (its lifespan), as a process would on SIGTERM."""
            nonlocal stopped
            if not stopped:
                stopped = True
                await lifespan.__aexit__(None, None, None)

        client.app = app  # type: ignore[attr-defined]
        client.stop = stop  # type: ignore[attr-defined]
        stack.append(client)
        return client

    yield make
    for client in reversed(stack):
        await client.aclose()
        await client.stop()  # type: ignore[attr-defined]


@pytest.fixture
async def client(make_client: AppFactory) -> httpx.AsyncClient:
    return await make_client()


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@pytest.fixture
async def live_server(database_url: str) -> AsyncIterator[str]:
    """The app served by uvicorn on a real port, in this event loop (for SSE)."""
    await truncate(database_url)
    port = free_port()
    app = create_app(settings_for(database_url))
    server = uvicorn.Server(
        uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning", lifespan="on")
    )
    task = asyncio.create_task(server.serve())
    while not server.started:
        await asyncio.sleep(0.02)
    yield f"http://127.0.0.1:{port}"
    server.should_exit = True
    await task


# -- helpers used across tests -----------------------------------------------------------------


async def store(client: httpx.AsyncClient, definition: dict[str, Any]) -> dict[str, Any]:
    response = await client.post("/workflows", json=definition)
    assert response.status_code in (200, 201), response.text
    return dict(response.json())


async def run_and_wait(
    client: httpx.AsyncClient, body: dict[str, Any], timeout_s: float = 20
) -> dict[str, Any]:
    response = await client.post("/runs/wait", json=body, params={"timeout_s": timeout_s})
    assert response.status_code == 200, response.text
    return dict(response.json())


async def wait_run(client: httpx.AsyncClient, run_id: str, timeout_s: float = 20) -> dict[str, Any]:
    response = await client.get(f"/runs/{run_id}/wait", params={"timeout_s": timeout_s})
    assert response.status_code == 200, response.text
    return dict(response.json())


async def until_status(
    client: httpx.AsyncClient, run_id: str, *statuses: str, within_s: float = 20
) -> dict[str, Any]:
    """Poll until the run reaches one of ``statuses`` (for pauses that /wait returns at once)."""
    for _ in range(int(within_s / 0.05)):
        run = dict((await client.get(f"/runs/{run_id}")).json())
        if run["status"] in statuses:
            return run
        await asyncio.sleep(0.05)
    raise AssertionError(f"run {run_id} never reached {statuses}: {run}")


async def events_of(client: httpx.AsyncClient, run_id: str, **params: Any) -> list[dict[str, Any]]:
    items: list[dict[str, Any]] = []
    cursor = None
    while True:
        query = {"limit": 500, **params, **({"cursor": cursor} if cursor else {})}
        response = await client.get(
            f"/runs/{run_id}/events", params=query, headers={"Accept": "application/json"}
        )
        assert response.status_code == 200, response.text
        page = response.json()
        items += page["items"]
        cursor = page["next_cursor"]
        if cursor is None:
            return items
