"""Queries over a table of versioned documents (workflows, prompts): rows keyed by
``(name, version)``, never changed or deleted, so the versions of a name are 1..latest."""

from __future__ import annotations

from typing import TypeVar

from sqlalchemy import func, select
from sqlalchemy.ext.asyncio import AsyncSession

from app.store.models import Prompt, Workflow

Versioned = TypeVar("Versioned", Workflow, Prompt)


async def latest(session: AsyncSession, model: type[Versioned], name: str) -> Versioned | None:
    stmt = select(model).where(model.name == name).order_by(model.version.desc()).limit(1)
    return (await session.execute(stmt)).scalar_one_or_none()


async def get_version(
    session: AsyncSession, model: type[Versioned], name: str, version: int
) -> Versioned | None:
    stmt = select(model).where(model.name == name, model.version == version)
    return (await session.execute(stmt)).scalar_one_or_none()


async def add(session: AsyncSession, row: Versioned) -> Versioned:
    """Insert ``row``; a version of its name stored meanwhile raises ``IntegrityError``."""
    session.add(row)
    await session.flush()
    return row


async def list_latest(
    session: AsyncSession, model: type[Versioned], *, after: str | None, limit: int
) -> list[tuple[Versioned, int]]:
    """The latest version of each name, by name, with its version count."""
    newest = (
        select(
            model.name,
            func.max(model.version).label("version"),
            func.count().label("versions"),
        )
        .group_by(model.name)
        .subquery()
    )
    stmt = (
        select(model, newest.c.versions)
        .join(newest, (model.name == newest.c.name) & (model.version == newest.c.version))
        .order_by(model.name)
        .limit(limit)
    )
    if after is not None:
        stmt = stmt.where(model.name > after)
    return [(row, count) for row, count in (await session.execute(stmt)).all()]


async def list_versions(
    session: AsyncSession, model: type[Versioned], name: str, *, before: int | None, limit: int
) -> list[Versioned]:
    """The versions of ``name``, newest first, older than ``before``."""
    stmt = select(model).where(model.name == name).order_by(model.version.desc()).limit(limit)
    if before is not None:
        stmt = stmt.where(model.version < before)
    return list((await session.execute(stmt)).scalars())
