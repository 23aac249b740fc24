"""The database engine and session factory, and schema migrations."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import sqlite3
import time
from collections.abc import AsyncIterator, Callable, Sequence
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import asyncpg
import orjson
from sqlalchemy import event, make_url
from sqlalchemy.exc import (
    DataError,
    DBAPIError,
    DisconnectionError,
    IntegrityError,
    OperationalError,
    ProgrammingError,
)
from sqlalchemy.ext.asyncio import (
    AsyncConnection,
    AsyncEngine,
    AsyncSession,
    async_sessionmaker,
    create_async_engine,
)

from app.settings import Settings
from app.store.held import HELD_SINCE, IDLE_SINCE, held_for, pooled


def _dumps(value: Any) -> str:
    return encode_json(value).decode()


def encode_json(value: Any, default: Callable[[Any], Any] | None = None) -> bytes:
    """Compact UTF-8 JSON (orjson, several times faster than ``json`` on the hot path);
    what orjson refuses (an integer beyond 64 bits, say) goes through ``json``.
    ``default``: as json's, for values JSON has no type for."""
    try:
        return orjson.dumps(value, default=default)
    except TypeError:  # orjson.JSONEncodeError is a TypeError
        return json.dumps(
            value, separators=(",", ":"), ensure_ascii=False, default=default
        ).encode()


PING_AFTER_IDLE_S = 1.0


class SQLiteConnection(sqlite3.Connection):
    """A SQLite connection that rolls back before it closes.

    The pool closes a connection in mid-transaction when the task using it is cancelled
    (a watcher leaving, a shutdown). sqlite3's ``close`` leaves a connection with an
    unfinished statement alive, in its transaction, until that statement is garbage
    collected, and with it our ``BEGIN IMMEDIATE``'s write lock: every other writer then
    waits, possibly for minutes. Rolling back first ends the transaction at once.
    """

    def close(self) -> None:
        with contextlib.suppress(sqlite3.Error):  # (closed already: in_transaction raises)
            if self.in_transaction:
                self.rollback()
        super().close()


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
            connect_args={"timeout": 30, "factory": SQLiteConnection},
        )

        @event.listens_for(engine.sync_engine, "connect")
        def _pragmas(dbapi_connection: Any, _: Any) -> None:
            # we issue BEGIN ourselves (below), not the driver
            dbapi_connection.isolation_level = None
            cursor = dbapi_connection.cursor()
            cursor.execute("PRAGMA journal_mode=WAL")
            cursor.execute("PRAGMA synchronous=FULL")  # a commit survives a power cut too
            cursor.execute("PRAGMA foreign_keys=ON")
            cursor.execute("PRAGMA busy_timeout=30000")
            cursor.close()

        @event.listens_for(engine.sync_engine, "begin")
        def _begin(connection: Any) -> None:
            # Take the write lock up front: a deferred transaction that reads, then writes
            # after another connection committed, fails at once with "database is locked"
            # (its snapshot is stale); an immediate one waits for the lock (busy_timeout).
            connection.exec_driver_sql("BEGIN IMMEDIATE")

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
    engine = create_async_engine(
        settings.database_url,
        json_serializer=_dumps,
        pool_size=settings.db_pool_size,
        max_overflow=max(2, settings.db_pool_size // 4),
        pool_recycle=1800,
        connect_args=connect_args,
    )

    # Ping a connection only when it sat idle (a ping on every checkout costs a round trip
    # per transaction on the hot path); a dead one is replaced before anyone uses it.
    @event.listens_for(engine.sync_engine, "checkin")
    def _checked_in(_: Any, record: Any) -> None:
        # a held connection's idle time began with its last use (app.store.held)
        record.info[IDLE_SINCE] = record.info.pop(HELD_SINCE, None) or time.monotonic()

    @event.listens_for(engine.sync_engine, "checkout")
    def _checked_out(dbapi_connection: Any, record: Any, _: Any) -> None:
        idle_since = record.info.get(IDLE_SINCE)
        if idle_since is not None and time.monotonic() - idle_since > PING_AFTER_IDLE_S:
            try:
                dbapi_connection.ping()
            except Exception as exc:
                raise DisconnectionError("the connection died while idle") from exc

    return engine


def backend_pids(engine: AsyncEngine) -> set[int]:
    """The Postgres backend pids of ``engine``'s connections, kept up to date: NOTIFYs that
    come from them are this process's own commits (already published locally)."""
    pids: set[int] = set()

    def pid_of(dbapi_connection: Any) -> int:
        return int(dbapi_connection.driver_connection.get_server_pid())

    @event.listens_for(engine.sync_engine, "connect")
    def _connected(dbapi_connection: Any, _: Any) -> None:
        pids.add(pid_of(dbapi_connection))

    @event.listens_for(engine.sync_engine, "close")
    def _closed(dbapi_connection: Any, _: Any) -> None:
        with contextlib.suppress(Exception):
            pids.discard(pid_of(dbapi_connection))

    return pids


def create_sessionmaker(engine: AsyncEngine) -> async_sessionmaker[AsyncSession]:
    return async_sessionmaker(engine, expire_on_commit=False, autoflush=False)


@asynccontextmanager
async def transaction(
    sessions: async_sessionmaker[AsyncSession],
) -> AsyncIterator[AsyncSession]:
    """The one transaction boundary: commit on success, roll back on any error."""
    async with sessions() as session, session.begin():
        yield session


Executor = AsyncSession | AsyncConnection


@asynccontextmanager
async def write_transaction(
    sessions: async_sessionmaker[AsyncSession],
) -> AsyncIterator[AsyncConnection]:
    """A Core transaction on the sessions' engine, for the runner's hot path: the same
    commit-or-rollback boundary as ``transaction`` without an ORM session's upkeep."""
    bind = sessions.kw["bind"]
    async with bind.begin() as connection:
        yield connection


@asynccontextmanager
async def lone_statement(
    sessions: async_sessionmaker[AsyncSession],
) -> AsyncIterator[AsyncConnection]:
    """A Core connection with no transaction begun, for a write that is one statement
    and commits by itself (Postgres, through the driver: ``app.store.statements``).
    Whatever SQLAlchemy itself began on it (a statement that was not such a write) is
    committed at the end, or rolled back on an error, as by ``write_transaction``."""
    bind = sessions.kw["bind"]
    held = held_for(bind)
    if held is None:
        async with bind.connect() as connection:
            yield connection
            if connection.in_transaction():
                await connection.commit()
        return
    connection = await held.lend()  # (app.store.held: a pool checkout costs more)
    try:
        yield connection
        if connection.in_transaction():
            await connection.commit()
    except BaseException:
        await held.discard(connection)
        raise
    await held.give_back(connection)


async def _driver(connection: AsyncConnection) -> Any:
    """The asyncpg connection under ``connection``, inside the transaction SQLAlchemy
    began on it: SQLAlchemy's adapter sends BEGIN with the first statement, so it is
    started here when no statement went through SQLAlchemy yet (commit and rollback stay
    SQLAlchemy's). With no transaction begun on ``connection``, none is started: each
    statement commits by itself."""
    raw = pooled(connection) or await connection.get_raw_connection()
    adapted: Any = raw.dbapi_connection
    if adapted._transaction is None and connection.in_transaction():
        await adapted._start_transaction()
    return raw.driver_connection


def _as_sqlalchemy_error(sql: str, exc: Exception, broken: bool) -> DBAPIError:
    """An asyncpg error as the one SQLAlchemy would have raised: the runner tells bugs
    from outages by them."""
    if isinstance(exc, asyncpg.IntegrityConstraintViolationError):
        return IntegrityError(sql, None, exc, connection_invalidated=broken)
    if isinstance(exc, asyncpg.DataError):
        return DataError(sql, None, exc, connection_invalidated=broken)
    if isinstance(exc, asyncpg.SyntaxOrAccessError):
        return ProgrammingError(sql, None, exc, connection_invalidated=broken)
    return OperationalError(sql, None, exc, connection_invalidated=broken)


# What asyncpg raises for a statement: the server's errors, a connection that is closed
# or whose protocol is mid-way through something else (the server just ended it: asyncpg
# is still reading the error when the next statement comes), and the socket's errors.
_DRIVER_ERRORS = (
    asyncpg.PostgresError,
    asyncpg.InterfaceError,
    asyncpg.InternalClientError,
    OSError,
)
# ...and those of them that leave the connection unusable (with the server's "terminating
# connection" errors, asyncpg may not have seen the socket close yet).
_BROKEN = (
    asyncpg.InterfaceError,
    asyncpg.InternalClientError,
    OSError,
    asyncpg.exceptions.PostgresConnectionError,
    asyncpg.exceptions.AdminShutdownError,
    asyncpg.exceptions.CrashShutdownError,
    asyncpg.exceptions.IdleSessionTimeoutError,
)


async def _on_driver(connection: AsyncConnection, sql: str, call: Any) -> Any:
    """``call(driver)`` on the asyncpg connection under ``connection``, its errors raised
    as SQLAlchemy's. A connection the error leaves unusable is invalidated, as SQLAlchemy
    does for its own statements, so the pool never hands it out again."""
    driver = await _driver(connection)
    try:
        return await call(driver)
    except _DRIVER_ERRORS as exc:
        broken = driver.is_closed() or isinstance(exc, _BROKEN)
        if broken:
            with contextlib.suppress(Exception):
                await connection.invalidate(exc)
            held = held_for(connection.engine)
            if held is not None:
                held.invalidate_idle()
        raise _as_sqlalchemy_error(sql, exc, broken) from exc


async def driver_executemany(
    connection: AsyncConnection, sql: str, rows: Sequence[tuple[Any, ...]]
) -> None:
    """Postgres only: ``rows`` (JSON already encoded as text) straight through asyncpg, a
    statement it prepares once per connection, skipping SQLAlchemy's per-statement and
    per-row work — the runner's hot path. It joins the transaction ``connection`` is in."""
    await _on_driver(connection, sql, lambda driver: driver.executemany(sql, rows))


async def driver_fetchrow(
    connection: AsyncConnection, sql: str, args: Sequence[Any]
) -> Sequence[Any] | None:
    """Postgres only: one statement's first row straight through asyncpg (prepared once
    per connection), in the transaction ``connection`` is in (if any)."""
    row = await _on_driver(connection, sql, lambda driver: driver.fetchrow(sql, *args))
    return None if row is None else tuple(row)


def dialect_name(executor: Executor) -> str:
    if isinstance(executor, AsyncSession):
        return executor.get_bind().dialect.name
    return executor.dialect.name


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
