"""Stored prompts as the engine sees them: references (``name`` or ``name@N``), their
resolution to a template, and the check that a definition's references exist.

A definition names prompts in two places (DESIGN §9): an agent's ``system_prompt_ref``
and a node's ``with.prompt_ref``. A ``prompt_ref`` holding a template (``{{ … }}``) is
chosen at run time and is not checked when the definition is stored.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import jinja2
from jinja2 import meta
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from app.engine.templates import TemplateEngine, TemplateError, has_template
from app.engine.validation import canonical_json
from app.errors import NotFound, error_item
from app.schemas.definition import NAME_PATTERN
from app.store import prompts as prompt_store
from app.store import run_prompts as run_prompt_store
from app.store import versions
from app.store.database import Executor, transaction
from app.store.models import Prompt

Loc = list[str | int]

MAX_VERSION = 2**31 - 1
_REF = re.compile(rf"(?P<name>{NAME_PATTERN.strip('^$')})(?:@(?P<version>[1-9][0-9]{{0,9}}))?")
REF_SYNTAX = "a prompt reference is `name` (the latest version) or `name@N` (version N)"


@dataclass(frozen=True, slots=True)
class ResolvedPrompt:
    name: str
    version: int
    template: str


def prompt_hash(template: str, description: str | None) -> str:
    """Content hash of a prompt version: the same template and description are the same
    content, however the request was written."""
    content = canonical_json({"template": template, "description": description})
    return hashlib.sha256(content.encode()).hexdigest()


def template_errors(templates: TemplateEngine, template: str) -> list[dict[str, Any]]:
    """Why a prompt's template cannot be stored: it does not compile in the sandbox, or
    it names ``secrets`` (a prompt is sent to a model, where no secret may go)."""
    try:
        templates.check(template)
    except TemplateError as exc:
        msg = f"template does not parse: {exc.message}"
        return [error_item(["template"], msg, "bad_template")]
    if has_template(template):
        # parsing only (the sandbox compiled it above): which names the template reads
        names = meta.find_undeclared_variables(jinja2.Environment().parse(template))
        if "secrets" in names:
            msg = "a prompt is sent to a model: `secrets` cannot be used in a prompt"
            return [error_item(["template"], msg, "secret_in_prompt")]
    return []


def parse_prompt_ref(ref: str) -> tuple[str, int | None]:
    """``(name, version)`` of a reference; version None means the latest. A reference
    that is not ``name`` or ``name@N`` raises ValueError."""
    found = _REF.fullmatch(ref)
    if found is None:
        raise ValueError(f"{ref!r} is not a prompt reference: {REF_SYNTAX}")
    version = found["version"]
    if version is not None and int(version) > MAX_VERSION:
        raise ValueError(f"{ref!r}: version {version} is out of range")
    return found["name"], None if version is None else int(version)


def _unknown(name: str, version: int | None, latest: int | None) -> str:
    if latest is None:
        return f"prompt {name!r} not found"
    return f"prompt {name!r} has no version {version} (the latest is {latest})"


async def resolve_prompt(
    sessions: async_sessionmaker[AsyncSession], ref: str, run_id: str | None = None
) -> ResolvedPrompt:
    """The prompt a reference names: the version pinned by ``@N``, or else the run's
    version of it (``run_prompts``: the latest when ``run_id`` first used the name).
    A malformed reference or an unknown prompt or version raises ``unknown_prompt``."""
    try:
        name, version = parse_prompt_ref(ref)
    except ValueError as exc:
        raise NotFound(str(exc), code="unknown_prompt") from None
    async with transaction(sessions) as session:
        if version is None and run_id is not None:
            version = await run_prompt_store.pinned(session, run_id, name)
        if version is None:
            row = await versions.latest(session, Prompt, name)
            if row is not None and run_id is not None:
                kept = await run_prompt_store.pin(session, run_id, name, row.version)
                if kept != row.version:  # another branch of the run pinned it first
                    row = await versions.get_version(session, Prompt, name, kept)
        else:
            row = await versions.get_version(session, Prompt, name, version)
            if row is None:
                latest = await prompt_store.latest_versions(session, [name])
                raise NotFound(_unknown(name, version, latest.get(name)), code="unknown_prompt")
    if row is None:
        raise NotFound(_unknown(name, version, None), code="unknown_prompt")
    return ResolvedPrompt(row.name, row.version, row.template)


def _references(raw: dict[str, Any]) -> Iterator[tuple[Loc, Any]]:
    """Every prompt reference in a raw definition, with its path. The raw document is
    read (not the parsed definition), so this holds for documents the schema refuses."""
    agents = raw.get("agents")
    if isinstance(agents, dict):
        entries: list[tuple[str | int, Any]] = list(agents.items())
    elif isinstance(agents, list):
        entries = list(enumerate(agents))
    else:
        entries = []
    for key, agent in entries:
        # not a string: the definition schema reports its type
        if isinstance(agent, dict) and isinstance(agent.get("system_prompt_ref"), str):
            yield ["agents", key, "system_prompt_ref"], agent["system_prompt_ref"]
    nodes = raw.get("nodes")
    for node_id, node in nodes.items() if isinstance(nodes, dict) else ():
        config = node.get("with") if isinstance(node, dict) else None
        ref = config.get("prompt_ref") if isinstance(config, dict) else None
        if ref is not None and not has_template(ref):
            yield ["nodes", node_id, "with", "prompt_ref"], ref


async def prompt_ref_errors(session: Executor, raw: Any) -> list[dict[str, Any]]:
    """An ``unknown_prompt`` error for each reference in a raw definition that is
    malformed or does not name a stored prompt (and version): what a run refuses."""
    malformed, missing = await check_prompt_refs(session, raw)
    return malformed + missing


async def check_prompt_refs(
    session: Executor, raw: Any
) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """The references of a raw definition that are malformed, and those that name no
    stored prompt (yet). A workflow may be stored before its prompts (the second list is
    a warning then); a run cannot start without them. None, and no query, for a
    definition without references."""
    if not isinstance(raw, dict):
        return [], []
    found: list[tuple[Loc, str, int | None]] = []
    malformed: list[dict[str, Any]] = []
    for loc, ref in _references(raw):
        try:
            if not isinstance(ref, str):
                raise ValueError(REF_SYNTAX)
            found.append((loc, *parse_prompt_ref(ref)))
        except ValueError as exc:
            malformed.append(error_item(loc, str(exc), "unknown_prompt"))
    if not found:
        return malformed, []
    latest = await prompt_store.latest_versions(session, {name for _, name, _ in found})
    missing = []
    for loc, name, version in found:
        newest = latest.get(name)
        if newest is None or (version is not None and version > newest):
            missing.append(error_item(loc, _unknown(name, version, newest), "unknown_prompt"))
    return malformed, missing
