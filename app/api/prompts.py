"""Prompts: store (versioned, content-hashed like workflows), read, list (DESIGN §9)."""

from __future__ import annotations

import asyncio
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Path, Query, Request, Response
from pydantic import ValidationError

from app.api import deps
from app.api.bodies import parse_document
from app.api.problems import PROBLEM_RESPONSE
from app.api.versioned import VersionedResource
from app.engine.prompts import prompt_hash, template_errors
from app.engine.services import Engine
from app.engine.validation import pydantic_errors
from app.errors import Invalid, error_item
from app.schemas.prompts import (
    PromptCreate,
    PromptList,
    PromptOut,
    PromptSummary,
    PromptVersionList,
)
from app.store.models import Prompt

router = APIRouter(tags=["prompts"])

EngineDep = Annotated[Engine, Depends(deps.engine)]
Version = Annotated[int, Path(ge=1, le=2**31 - 1)]
Limit = Annotated[int, Query(ge=1, le=500)]

PROMPTS = VersionedResource(Prompt, "prompt")
# Compiling a large template leaves the event loop.
_THREAD_ABOVE_BYTES = 64 << 10

_PROMPT_BODY: dict[str, Any] = {
    "requestBody": {
        "required": True,
        "description": "A prompt, as JSON or YAML (a block scalar keeps a long template readable).",
        "content": {
            "application/json": {"schema": PromptCreate.model_json_schema()},
            "application/yaml": {"schema": {"type": "string"}},
        },
    }
}


def _out(row: Prompt) -> PromptOut:
    return PromptOut(
        name=row.name,
        version=row.version,
        hash=row.hash,
        description=row.description,
        template=row.template,
        created_at=row.created_at,
    )


def _invalid(errors: list[dict[str, Any]]) -> Invalid:
    first = errors[0]
    where = ".".join(str(part) for part in first["loc"])
    return Invalid(
        f"the prompt is invalid: {where + ': ' if where else ''}{first['msg']}",
        code="invalid_prompt",
        errors=errors,
    )


def _parse(engine: Engine, body: bytes, content_type: str | None) -> PromptCreate:
    """The prompt a request body holds, its template checked."""
    document = parse_document(body, content_type, engine.settings.max_json_depth)
    try:
        prompt = PromptCreate.model_validate(document)
    except ValidationError as exc:
        raise _invalid(pydantic_errors(exc)) from None
    limit = engine.settings.max_definition_bytes
    size = len(prompt.template.encode())
    if size > limit:
        msg = f"the template is {size} bytes; a prompt may be at most {limit} bytes"
        raise _invalid([error_item(["template"], msg, "too_large")])
    errors = template_errors(engine.templates, prompt.template)
    if errors:
        raise _invalid(errors)
    return prompt


@router.post(
    "/prompts",
    response_model=PromptOut,
    status_code=201,
    openapi_extra=_PROMPT_BODY,
    responses={
        200: {"model": PromptOut, "description": "Identical to the latest version: that one"},
        201: {"description": "Stored as a new version"},
        409: PROBLEM_RESPONSE,
        415: PROBLEM_RESPONSE,
        422: PROBLEM_RESPONSE,
    },
)
async def store_prompt(request: Request, response: Response, engine: EngineDep) -> PromptOut:
    """Store a prompt: 201 with a new version, or 200 with the latest version when its
    template and description are identical to it."""
    body = await request.body()
    content_type = request.headers.get("content-type")
    if len(body) > _THREAD_ABOVE_BYTES:
        prompt = await asyncio.to_thread(_parse, engine, body, content_type)
    else:
        prompt = _parse(engine, body, content_type)
    digest = prompt_hash(prompt.template, prompt.description)

    def make(version: int) -> Prompt:
        return Prompt(
            name=prompt.name,
            version=version,
            template=prompt.template,
            description=prompt.description,
            hash=digest,
        )

    row, created = await PROMPTS.store(engine, prompt.name, digest, make)
    if created:
        response.headers["Location"] = f"/prompts/{row.name}/versions/{row.version}"
    else:
        response.status_code = 200
    return _out(row)


@router.get("/prompts", response_model=PromptList)
async def list_prompts(
    engine: EngineDep,
    cursor: str | None = None,
    limit: Limit = 50,
) -> PromptList:
    """The latest version of every prompt, by name."""
    rows, next_cursor = await PROMPTS.names(engine, cursor, limit)
    items = [
        PromptSummary(
            name=row.name,
            latest_version=row.version,
            versions=count,
            description=row.description,
            updated_at=row.created_at,
        )
        for row, count in rows
    ]
    return PromptList(items=items, next_cursor=next_cursor)


@router.get("/prompts/{name}", response_model=PromptOut, responses={404: PROBLEM_RESPONSE})
async def get_prompt(name: str, engine: EngineDep) -> PromptOut:
    """The latest version of a prompt."""
    return _out(await PROMPTS.latest(engine, name))


@router.get(
    "/prompts/{name}/versions", response_model=PromptVersionList, responses={404: PROBLEM_RESPONSE}
)
async def list_prompt_versions(
    name: str,
    engine: EngineDep,
    cursor: str | None = None,
    limit: Limit = 50,
) -> PromptVersionList:
    """The versions of a prompt, newest first."""
    rows, next_cursor = await PROMPTS.versions(engine, name, cursor, limit)
    return PromptVersionList(items=[_out(r) for r in rows], next_cursor=next_cursor)


@router.get(
    "/prompts/{name}/versions/{version}",
    response_model=PromptOut,
    responses={404: PROBLEM_RESPONSE},
)
async def get_prompt_version(name: str, version: Version, engine: EngineDep) -> PromptOut:
    """One version of a prompt."""
    return _out(await PROMPTS.version(engine, name, version))
