"""Workflow definitions: store (versioned, content-hashed), validate, read."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Depends, Query, Request, Response
from sqlalchemy.exc import IntegrityError

from app.api import deps
from app.api.bodies import parse_document
from app.engine.services import Engine
from app.engine.validation import definition_hash
from app.errors import Conflict, Invalid, NotFound
from app.schemas.workflows import (
    ValidationResult,
    VersionList,
    WorkflowList,
    WorkflowOut,
    WorkflowSummary,
)
from app.store import workflows as workflow_store
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


def _out(row: Workflow) -> WorkflowOut:
    return WorkflowOut(
        name=row.name,
        version=row.version,
        hash=row.hash,
        description=row.description,
        definition=row.definition,
        created_at=row.created_at,
    )


async def _document(request: Request, engine: Engine) -> Any:
    return parse_document(
        await request.body(), request.headers.get("content-type"), engine.settings.max_json_depth
    )


@router.post(
    "/workflows",
    response_model=WorkflowOut,
    status_code=201,
    openapi_extra=_DEFINITION_BODY,
    responses={200: {"model": WorkflowOut, "description": "identical to the latest version"}},
)
async def store_workflow(request: Request, response: Response, engine: EngineDep) -> WorkflowOut:
    raw = await _document(request, engine)
    definition = engine.validator.parse(raw)
    digest = definition_hash(raw)
    for _ in range(3):
        try:
            async with transaction(engine.sessions) as session:
                latest = await workflow_store.latest(session, definition.name)
                if latest is not None and latest.hash == digest:
                    response.status_code = 200
                    return _out(latest)
                version = 1 if latest is None else latest.version + 1
                row = await workflow_store.add_version(
                    session, definition.name, version, raw, digest
                )
            return _out(row)
        except IntegrityError:
            continue  # another request stored a version of this name at the same time
    raise Conflict("could not store the workflow under concurrent updates; retry", code="conflict")


@router.post("/workflows/validate", response_model=ValidationResult, openapi_extra=_DEFINITION_BODY)
async def validate_workflow(request: Request, engine: EngineDep) -> ValidationResult:
    try:
        raw = await _document(request, engine)
    except Invalid as exc:
        return ValidationResult.model_validate({"valid": False, "errors": exc.errors})
    _, errors = engine.validator.validate(raw)
    return ValidationResult.model_validate({"valid": not errors, "errors": errors})


@router.get("/workflows", response_model=WorkflowList)
async def list_workflows(
    engine: EngineDep,
    cursor: str | None = None,
    limit: Annotated[int, Query(ge=1, le=500)] = 50,
) -> WorkflowList:
    after = deps.decode_cursor(cursor)
    async with transaction(engine.sessions) as session:
        rows = await workflow_store.list_latest(
            session, after=after if isinstance(after, str) else None, limit=limit + 1
        )
    items = [
        WorkflowSummary(
            name=row.name,
            latest_version=row.version,
            versions=count,
            description=row.description,
            updated_at=row.created_at,
        )
        for row, count in rows[:limit]
    ]
    more = len(rows) > limit
    return WorkflowList(
        items=items, next_cursor=deps.encode_cursor(items[-1].name) if more else None
    )


@router.get("/workflows/{name}", response_model=WorkflowOut)
async def get_workflow(name: str, engine: EngineDep) -> WorkflowOut:
    async with transaction(engine.sessions) as session:
        row = await workflow_store.latest(session, name)
    if row is None:
        raise NotFound(f"workflow {name!r} not found", code="workflow_not_found")
    return _out(row)


@router.get("/workflows/{name}/versions", response_model=VersionList)
async def list_versions(
    name: str,
    engine: EngineDep,
    cursor: str | None = None,
    limit: Annotated[int, Query(ge=1, le=500)] = 50,
) -> VersionList:
    before = deps.decode_cursor(cursor)
    async with transaction(engine.sessions) as session:
        rows = await workflow_store.list_versions(
            session, name, before=before if isinstance(before, int) else None, limit=limit + 1
        )
        if not rows and before is None:
            raise NotFound(f"workflow {name!r} not found", code="workflow_not_found")
    more = len(rows) > limit
    rows = rows[:limit]
    return VersionList(
        items=[_out(r) for r in rows],
        next_cursor=deps.encode_cursor(rows[-1].version) if more else None,
    )


@router.get("/workflows/{name}/versions/{version}", response_model=WorkflowOut)
async def get_version(name: str, version: int, engine: EngineDep) -> WorkflowOut:
    async with transaction(engine.sessions) as session:
        row = await workflow_store.get_version(session, name, version)
    if row is None:
        raise NotFound(f"workflow {name!r} version {version} not found", code="workflow_not_found")
    return _out(row)
