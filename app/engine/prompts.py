"""Stored prompts, as the agent step uses them (DESIGN §9).

This module is the interface the agent step is written against; the prompts resource
(``POST/GET /prompts``, the ``prompts`` table) replaces :func:`resolve_prompt` with a
query. Until then no prompt is stored, so every reference is unknown.
"""

from __future__ import annotations

from dataclasses import dataclass

from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from app.errors import NotFound


@dataclass(frozen=True)
class ResolvedPrompt:
    name: str
    version: int
    template: str


async def resolve_prompt(sessions: async_sessionmaker[AsyncSession], ref: str) -> ResolvedPrompt:
    """The prompt ``ref`` names: ``name`` (its latest version) or ``name@3``."""
    raise NotFound(f"prompt {ref!r} not found", code="unknown_prompt")
