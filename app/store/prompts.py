"""Queries over stored prompts that only prompts need (the rest are
``app.store.versions``)."""

from __future__ import annotations

from collections.abc import Collection

from sqlalchemy import func, select

from app.store.database import Executor
from app.store.models import Prompt


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
