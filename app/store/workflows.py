"""Queries over stored workflow definitions that only workflows need (the rest are
``app.store.versions``)."""

from __future__ import annotations

from typing import Any

from sqlalchemy import bindparam, select
from sqlalchemy.ext.asyncio import AsyncConnection

from app.store.database import Executor, dialect_name, driver_fetchrow
from app.store.models import Workflow

_LATEST_REF = (
    select(Workflow.version, Workflow.hash)
    .where(Workflow.name == bindparam("name"))
    .order_by(Workflow.version.desc())
    .limit(1)
)
_VERSION_REF = select(Workflow.version, Workflow.hash).where(
    Workflow.name == bindparam("name"), Workflow.version == bindparam("version")
)


_LATEST_REF_SQL = (
    "SELECT version, hash FROM workflows WHERE name = $1 ORDER BY version DESC LIMIT 1"
)
_VERSION_REF_SQL = "SELECT version, hash FROM workflows WHERE name = $1 AND version = $2"


async def find_ref(session: Executor, name: str, version: int | None) -> tuple[int, str] | None:
    """``(version, hash)`` of a stored workflow (the latest unless ``version``), without
    reading its definition: a caller that has parsed that hash already needs no more.
    On a Postgres connection with no transaction begun, straight through the driver (no
    ``BEGIN`` for one read)."""
    if (
        isinstance(session, AsyncConnection)
        and not session.in_transaction()
        and dialect_name(session) == "postgresql"
    ):
        if version is None:
            found = await driver_fetchrow(session, _LATEST_REF_SQL, [name])
        else:
            found = await driver_fetchrow(session, _VERSION_REF_SQL, [name, version])
        return None if found is None else (int(found[0]), str(found[1]))
    if version is None:
        row = (await session.execute(_LATEST_REF, {"name": name})).first()
    else:
        row = (await session.execute(_VERSION_REF, {"name": name, "version": version})).first()
    return None if row is None else (int(row[0]), str(row[1]))


async def definition_by_hash(session: Executor, digest: str) -> dict[str, Any] | None:
    stmt = select(Workflow.definition).where(Workflow.hash == digest).limit(1)
    found: dict[str, Any] | None = (await session.execute(stmt)).scalar_one_or_none()
    return found
