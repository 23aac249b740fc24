"""The database engine and session factory, and schema migrations."""

from __future__ import annotations

import asyncio
import json
import os
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

from sqlalchemy import event, make_url
from sqlalchemy.ext.asyncio import (
    AsyncEngine,
    AsyncSession,
    async_sessionmaker,
    create_async_engine,
)

from app.settings import Settings


def _dumps(value: Any) -> str:
    return json.dumps(value, separators=(",", ":"), ensure_ascii=False)


def create_engine(settings: Settings) -> AsyncEngine:
    if settings.is_sqlite:
        # One connection: SQLite allows one writer, and serializing every transaction
        # through a single connection keeps "database is locked" out of the picture.
        engine = create_async_engine(
            settings.database_url,
            json_serializer=_dumps,
            pool_size=1,
            max_overflow=0,
            pool_timeout=60,
            connect_args={"timeout": 30},
        )

        @event.listens_for(engine.sync_engine, "connect")
        def _pragmas(dbapi_connection: Any, _: Any) -> None:
            cursor = dbapi_connection.cursor()
            cursor.execute("PRAGMA journal_mode=WAL")
            cursor.execute("PRAGMA synchronous=FULL")  # a commit survives a power cut too
            cursor.execute("PRAGMA foreign_keys=ON")
            cursor.execute("PRAGMA busy_timeout=30000")
            cursor.close()

        return engine
    connect_args: dict[str, Any] = {
        "server_settings": {
            "application_name": "stepwise",
            # a frozen process must not keep row locks that others wait on
            "idle_in_transaction_session_timeout": str(int(settings.lease_s * 1000)),
        }
    }
    if make_url(settings.database_url).host in ("127.0.0.1", "localhost", "::1"):
        connect_args["ssl"] = False  # loopback: skip the TLS negotiation on every connect
    # No pre-ping (it costs a round trip per checkout): a connection that died with the
    # server fails once, SQLAlchemy then invalidates the pool, and callers retry.
    return create_async_engine(
        settings.database_url,
        json_serializer=_dumps,
        pool_size=settings.db_pool_size,
        max_overflow=max(2, settings.db_pool_size // 4),
        pool_recycle=1800,
        connect_args=connect_args,
    )


def create_sessionmaker(engine: AsyncEngine) -> async_sessionmaker[AsyncSession]:
    return async_sessionmaker(engine, expire_on_commit=False, autoflush=False)


@asynccontextmanager
async def transaction(
    sessions: async_sessionmaker[AsyncSession],
) -> AsyncIterator[AsyncSession]:
    """The one transaction boundary: commit on success, roll back on any error."""
    async with sessions() as session, session.begin():
        yield session


def migrations_dir() -> Path:
    configured = os.environ.get("STEPWISE_MIGRATIONS_DIR")
    if configured:
        return Path(configured)
    return Path(__file__).resolve().parents[2] / "migrations"


def _alembic_config(database_url: str) -> Any:
    from alembic.config import Config

    config = Config()
    config.set_main_option("script_location", str(migrations_dir()))
    config.set_main_option("sqlalchemy.url", database_url.replace("%", "%%"))
    return config


def _run_alembic(database_url: str, action: str, revision: str) -> None:
    from alembic import command

    config = _alembic_config(database_url)
    if action == "upgrade":
        command.upgrade(config, revision)
    else:
        command.downgrade(config, revision)


async def migrate(database_url: str, revision: str = "head", *, down: bool = False) -> None:
    """Apply (or revert) migrations. Alembic's env.py runs its own event loop, so it
    runs in a thread here."""
    if database_url.startswith("sqlite+aiosqlite:///"):
        path = database_url[len("sqlite+aiosqlite:///") :]
        if path and path != ":memory:":
            Path(path).parent.mkdir(parents=True, exist_ok=True)
    await asyncio.to_thread(
        _run_alembic, database_url, "downgrade" if down else "upgrade", revision
    )
