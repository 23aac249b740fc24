"""Workflow definitions: store (versioned, content-hashed), validate, read."""

from __future__ import annotations

import asyncio
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Path, Query, Request, Response

from app import metrics
from app.api import deps
from app.api.bodies import parse_document
from app.api.problems import PROBLEM_RESPONSE
from app.api.versioned import VersionedResource
from app.engine.prompts import check_prompt_refs
from app.engine.services import Engine
from app.engine.validation import definition_hash
from app.errors import Invalid, error_item
from app.schemas.workflows import (
    ValidationResult,
    VersionList,
    WorkflowList,
    WorkflowOut,
    WorkflowSummary,
)
from app.store.database import transaction
from app.store.models import Workflow

router = APIRouter(tags=["workflows"])

_DEFINITION_BODY: dict[str, Any] = {
    "requestBody": {
        "required": True,
        "description": "A workflow definition (DESIGN §2), as JSON or YAML.",
        "content": {
            "application/json": {"schema": {"type": "object"}},
            "application/yaml": {"schema": {"type": "string"}},
        },
    }
}

EngineDep = Annotated[Engine, Depends(deps.engine)]
Version = Annotated[int, Path(ge=1, le=2**31 - 1)]
Limit = Annotated[int, Query(ge=1, le=500)]

WORKFLOWS = VersionedResource(Workflow, "workflow")
# A document may be this many times larger than the definition limit (which counts compact
# JSON): room for indentation and comments, none for a document that could never pass.
_DOCUMENT_SLACK = 4
# Parsing (YAML is pure Python) and validating a large document leaves the event loop.
_THREAD_ABOVE_BYTES = 64 << 10


def _out(row: Workflow, warnings: list[dict[str, Any]] | None = None) -> WorkflowOut:
    return WorkflowOut.model_validate(
        {
            "name": row.name,
            "version": row.version,
            "hash": row.hash,
            "description": row.description,
            "definition": row.definition,
            "created_at": row.created_at,
            "warnings": warnings or None,
        }
    )


def _parse_and_validate(
    engine: Engine, body: bytes, content_type: str | None
) -> tuple[Any, list[dict[str, Any]]]:
    """The document and its validation errors; a document that does not parse raises."""
    limit = engine.settings.max_definition_bytes
    if len(body) > _DOCUMENT_SLACK * limit:
        msg = f"the document is {len(body)} bytes; a definition may be at most {limit} bytes"
        raise Invalid(msg, code="invalid_definition", errors=[error_item([], msg, "too_large")])
    raw = parse_document(body, content_type, engine.settings.max_json_depth)
    return raw, engine.validator.validate(raw)[1]


async def _document(
    request: Request, engine: Engine
) -> tuple[Any, list[dict[str, Any]], list[dict[str, Any]]]:
    """The document, its errors, and its warnings (prompts it names that are not stored
    yet: a run of it is refused until they are)."""
    body = await request.body()
    content_type = request.headers.get("content-type")
    if len(body) > _THREAD_ABOVE_BYTES:
        raw, errors = await asyncio.to_thread(_parse_and_validate, engine, body, content_type)
    else:
        raw, errors = _parse_and_validate(engine, body, content_type)
    async with transaction(engine.sessions) as session:
        malformed, missing = await check_prompt_refs(session, raw)
    return raw, errors + malformed, missing


@router.post(
    "/workflows",
    response_model=WorkflowOut,
    status_code=201,
    openapi_extra=_DEFINITION_BODY,
    responses={
        200: {"model": WorkflowOut, "description": "Identical to the latest version: that one"},
        201: {"description": "Stored as a new version"},
        409: PROBLEM_RESPONSE,
        415: PROBLEM_RESPONSE,
        422: PROBLEM_RESPONSE,
    },
)
async def store_workflow(request: Request, response: Response, engine: EngineDep) -> WorkflowOut:
    """Store a definition: 201 with a new version, or 200 with the latest version when its
    content is identical (compared as canonical JSON: key order and YAML versus JSON do
    not matter)."""
    raw, errors, warnings = await _document(request, engine)
    if errors:
        raise Invalid(
            f"the workflow definition is invalid: {_first(errors)}",
            code="invalid_definition",
            errors=errors,
        )
    name: str = raw["name"]
    digest = definition_hash(raw)

    def make(version: int) -> Workflow:
        return Workflow(
            name=name,
            version=version,
            definition=raw,
            hash=digest,
            description=raw.get("description"),
        )

    row, created = await WORKFLOWS.store(engine, name, digest, make)
    if not created:
        response.status_code = 200
        return _out(row, warnings)
    engine.definitions.forget_latest(name)  # starts here read the new latest at once
    metrics.workflow_stored()
    response.headers["Location"] = f"/workflows/{name}/versions/{row.version}"
    return _out(row, warnings)


@router.post(
    "/workflows/validate",
    response_model=ValidationResult,
    openapi_extra=_DEFINITION_BODY,
    responses={415: PROBLEM_RESPONSE},
)
async def validate_workflow(request: Request, engine: EngineDep) -> ValidationResult:
    """Validate a definition without storing it: 200 with ``{valid, errors}``, also when
    the document does not parse (a media type other than JSON or YAML is still a 415)."""
    try:
        _, errors, _ = await _document(request, engine)
    except Invalid as exc:
        errors = exc.errors
    # Prompts not stored yet are no error of the definition: `POST /workflows` reports
    # them as warnings, and a run refuses to start without them.
    return ValidationResult.model_validate({"valid": not errors, "errors": errors})


def _first(errors: list[dict[str, Any]]) -> str:
    first = errors[0]
    where = ".".join(str(part) for part in first["loc"])
    more = f" (and {len(errors) - 1} more)" if len(errors) > 1 else ""
    return f"{where + ': ' if where else ''}{first['msg']}{more}"


@router.get("/workflows", response_model=WorkflowList)
async def list_workflows(
    engine: EngineDep,
    cursor: str | None = None,
    limit: Limit = 50,
) -> WorkflowList:
    """The latest version of every workflow, by name."""
    rows, next_cursor = await WORKFLOWS.names(engine, cursor, limit)
    items = [
        WorkflowSummary(
            name=row.name,
            latest_version=row.version,
            versions=count,
            description=row.description,
            updated_at=row.created_at,
        )
        for row, count in rows
    ]
    return WorkflowList(items=items, next_cursor=next_cursor)


@router.get("/workflows/{name}", response_model=WorkflowOut, responses={404: PROBLEM_RESPONSE})
async def get_workflow(name: str, engine: EngineDep) -> WorkflowOut:
    """The latest version of a workflow."""
    return _out(await WORKFLOWS.latest(engine, name))


@router.get(
    "/workflows/{name}/versions", response_model=VersionList, responses={404: PROBLEM_RESPONSE}
)
async def list_versions(
    name: str,
    engine: EngineDep,
    cursor: str | None = None,
    limit: Limit = 50,
) -> VersionList:
    """The versions of a workflow, newest first."""
    rows, next_cursor = await WORKFLOWS.versions(engine, name, cursor, limit)
    return VersionList(items=[_out(r) for r in rows], next_cursor=next_cursor)


@router.get(
    "/workflows/{name}/versions/{version}",
    response_model=WorkflowOut,
    responses={404: PROBLEM_RESPONSE},
)
async def get_version(name: str, version: Version, engine: EngineDep) -> WorkflowOut:
    """One version of a workflow."""
    return _out(await WORKFLOWS.version(engine, name, version))
