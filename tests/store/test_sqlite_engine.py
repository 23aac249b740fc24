"""The SQLite engine: a connection closed in mid-transaction gives the write lock back.

The pool closes a connection in mid-transaction when the task using it is cancelled (a
watcher leaving, a shutdown). Before the fix, sqlite3 kept such a connection alive while
a statement of it was unfinished, and with it the write lock: every writer of the
database then failed with "database is locked" until the statement was collected.
"""

from __future__ import annotations

import asyncio
import sqlite3
from pathlib import Path

from app.settings import Settings
from app.store.database import create_engine, migrate


async def test_a_connection_closed_mid_transaction_keeps_no_lock(tmp_path: Path) -> None:
    path = tmp_path / "stepwise.db"
    url = f"sqlite+aiosqlite:///{path}"
    await migrate(url)
    engine = create_engine(Settings(database_url=url))
    try:
        raw = await engine.raw_connection()
        driver = raw.driver_connection  # the aiosqlite connection
        assert driver is not None
        await driver.execute("BEGIN IMMEDIATE")
        # an unfinished statement: a read of several rows stopped after the first
        cursor = await driver.execute(
            "WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n LIMIT 50) "
            "SELECT i FROM n"
        )
        assert await cursor.fetchone() == (1,)
        raw.invalidate()  # what the pool does with a cancelled task's connection
        await asyncio.sleep(0.1)  # the close runs on aiosqlite's thread

        other = sqlite3.connect(path, timeout=0, isolation_level=None)
        try:
            other.execute("BEGIN IMMEDIATE")  # "database is locked" before the fix
            other.execute("DELETE FROM prompts")
            other.execute("COMMIT")
        finally:
            other.close()
        del cursor
    finally:
        await engine.dispose()
