"""Queries over stored prompts (name, version, template, description, hash)."""

from __future__ import annotations

from collections.abc import Collection

from sqlalchemy import func, select
from sqlalchemy.ext.asyncio import AsyncSession

from app.store.database import Executor
from app.store.models import Prompt


async def latest(session: AsyncSession, name: str) -> Prompt | None:
    stmt = select(Prompt).where(Prompt.name == name).order_by(Prompt.version.desc()).limit(1)
    return (await session.execute(stmt)).scalar_one_or_none()


async def get_version(session: AsyncSession, name: str, version: int) -> Prompt | None:
    stmt = select(Prompt).where(Prompt.name == name, Prompt.version == version)
    return (await session.execute(stmt)).scalar_one_or_none()


async def latest_versions(session: Executor, names: Collection[str]) -> dict[str, int]:
    """The latest version of each of ``names`` that exists. Versions are never deleted,
    so every version from 1 to the latest exists."""
    if not names:
        return {}
    stmt = (
        select(Prompt.name, func.max(Prompt.version))
        .where(Prompt.name.in_(sorted(names)))
        .group_by(Prompt.name)
    )
    return {str(name): int(version) for name, version in (await session.execute(stmt)).all()}


async def add_version(
    session: AsyncSession,
    name: str,
    version: int,
    template: str,
    description: str | None,
    digest: str,
) -> Prompt:
    row = Prompt(
        name=name, version=version, template=template, description=description, hash=digest
    )
    session.add(row)
    await session.flush()
    return row


async def list_latest(
    session: AsyncSession, *, after: str | None, limit: int
) -> list[tuple[Prompt, int]]:
    """Latest version of each prompt, by name, with its version count."""
    newest = (
        select(
            Prompt.name,
            func.max(Prompt.version).label("version"),
            func.count().label("versions"),
        )
        .group_by(Prompt.name)
        .subquery()
    )
    stmt = (
        select(Prompt, newest.c.versions)
        .join(newest, (Prompt.name == newest.c.name) & (Prompt.version == newest.c.version))
        .order_by(Prompt.name)
        .limit(limit)
    )
    if after is not None:
        stmt = stmt.where(Prompt.name > after)
    return [(row, count) for row, count in (await session.execute(stmt)).all()]


async def list_versions(
    session: AsyncSession, name: str, *, before: int | None, limit: int
) -> list[Prompt]:
    stmt = select(Prompt).where(Prompt.name == name).order_by(Prompt.version.desc()).limit(limit)
    if before is not None:
        stmt = stmt.where(Prompt.version < before)
    return list((await session.execute(stmt)).scalars())
