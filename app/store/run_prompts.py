"""The prompt versions a run uses (``run_prompts``): one row per prompt name the run
named without a version, holding the version it took the first time."""

from __future__ import annotations

from sqlalchemy import insert, literal, select
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert

from app.store.database import Executor, dialect_name
from app.store.models import RunPrompt, table, utcnow


async def pinned(session: Executor, run_id: str, name: str) -> int | None:
    stmt = select(RunPrompt.version).where(RunPrompt.run_id == run_id, RunPrompt.name == name)
    return (await session.execute(stmt)).scalar_one_or_none()


async def pin(session: Executor, run_id: str, name: str, version: int) -> int:
    """Pin ``version`` unless the run has a version of ``name`` already (two branches of
    one run may race to pin): the version the run uses from now on."""
    insert_ = pg_insert if dialect_name(session) == "postgresql" else sqlite_insert
    values = {"run_id": run_id, "name": name, "version": version, "created_at": utcnow()}
    await session.execute(insert_(table(RunPrompt)).values(**values).on_conflict_do_nothing())
    kept = await pinned(session, run_id, name)
    return version if kept is None else kept


async def copy_to_fork(session: Executor, source_id: str, fork_id: str) -> None:
    """A fork uses the prompt versions its source used (it replays the source's history)."""
    columns = ("run_id", "name", "version", "created_at")
    rows = select(literal(fork_id), RunPrompt.name, RunPrompt.version, RunPrompt.created_at).where(
        RunPrompt.run_id == source_id
    )
    await session.execute(insert(table(RunPrompt)).from_select(columns, rows))
