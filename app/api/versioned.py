"""What the routes of a versioned resource (workflows, prompts) share: a new version
stored by insert-or-retry, the latest version, one version, and the pages of versions
and of names, each name that is not stored a 404 with the resource's own code."""

from __future__ import annotations

import asyncio
import random
import re
from collections.abc import Callable
from typing import Generic

from sqlalchemy.exc import IntegrityError

from app.api import deps
from app.engine.services import Engine
from app.errors import Conflict, NotFound
from app.schemas.definition import NAME_PATTERN
from app.store import versions
from app.store.database import transaction
from app.store.versions import Versioned

_NAME = re.compile(NAME_PATTERN)
_STORE_ATTEMPTS = 20


class VersionedResource(Generic[Versioned]):
    def __init__(self, model: type[Versioned], kind: str) -> None:
        self.model: type[Versioned] = model
        self.kind = kind  # "workflow": in messages, and its 404's code is workflow_not_found

    def not_found(self, name: str, version: int | None = None) -> NotFound:
        which = f"{self.kind} {name!r}" + ("" if version is None else f" version {version}")
        return NotFound(f"{which} not found", code=f"{self.kind}_not_found")

    async def store(
        self, engine: Engine, name: str, digest: str, make: Callable[[int], Versioned]
    ) -> tuple[Versioned, bool]:
        """``(row, True)``: ``make(version)`` stored as the next version of ``name``; or
        ``(latest, False)`` when the latest version's hash is ``digest`` already. Versions
        are numbered by insert-or-retry: a concurrent store of the same name makes the
        insert fail on ``(name, version)``, and the next round sees its version."""
        for attempt in range(_STORE_ATTEMPTS):
            if attempt:
                await asyncio.sleep(random.uniform(0, 0.005 * attempt))
            try:
                async with transaction(engine.sessions) as session:
                    latest = await versions.latest(session, self.model, name)
                    if latest is not None and latest.hash == digest:
                        return latest, False
                    version = 1 if latest is None else latest.version + 1
                    return await versions.add(session, make(version)), True
            except IntegrityError:
                continue
        msg = f"could not store the {self.kind} under concurrent updates; retry"
        raise Conflict(msg, code="conflict")

    async def latest(self, engine: Engine, name: str) -> Versioned:
        if not _NAME.match(name):
            raise self.not_found(name)
        async with transaction(engine.sessions) as session:
            row = await versions.latest(session, self.model, name)
        if row is None:
            raise self.not_found(name)
        return row

    async def version(self, engine: Engine, name: str, version: int) -> Versioned:
        if not _NAME.match(name):
            raise self.not_found(name, version)
        async with transaction(engine.sessions) as session:
            row = await versions.get_version(session, self.model, name, version)
        if row is None:
            raise self.not_found(name, version)
        return row

    async def versions(
        self, engine: Engine, name: str, cursor: str | None, limit: int
    ) -> tuple[list[Versioned], str | None]:
        """A page of ``name``'s versions, newest first, and the next page's cursor."""
        if not _NAME.match(name):
            raise self.not_found(name)
        before = deps.decode_version_cursor(cursor)
        async with transaction(engine.sessions) as session:
            rows = await versions.list_versions(
                session, self.model, name, before=before, limit=limit + 1
            )
            # an empty page past the oldest version is a page; a name never stored is not
            if not rows and (
                before is None or await versions.latest(session, self.model, name) is None
            ):
                raise self.not_found(name)
        more = len(rows) > limit
        rows = rows[:limit]
        return rows, deps.encode_cursor(rows[-1].version) if more else None

    async def names(
        self, engine: Engine, cursor: str | None, limit: int
    ) -> tuple[list[tuple[Versioned, int]], str | None]:
        """A page of the latest version of every name (by name) with its version count,
        and the next page's cursor."""
        after = deps.decode_name_cursor(cursor)
        async with transaction(engine.sessions) as session:
            rows = await versions.list_latest(session, self.model, after=after, limit=limit + 1)
        more = len(rows) > limit
        rows = rows[:limit]
        return rows, deps.encode_cursor(rows[-1][0].name) if more else None
