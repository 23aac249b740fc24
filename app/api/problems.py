"""Every error as ``application/problem+json`` (RFC 9457) with a stable ``code``."""

from __future__ import annotations

import logging
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from pydantic import BaseModel, ConfigDict, Field
from sqlalchemy.exc import DBAPIError, InterfaceError, OperationalError
from sqlalchemy.exc import TimeoutError as PoolTimeout
from starlette.exceptions import HTTPException as StarletteHTTPException

from app.errors import StepwiseError
from app.store.checkpoints import CorruptCheckpoint

log = logging.getLogger("app.api")

PROBLEM = "application/problem+json"


class ProblemError(BaseModel):
    loc: list[str | int] = Field(description="Path to the offending value, as segments.")
    msg: str
    type: str


class Problem(BaseModel):
    """An error, as RFC 9457 problem details with a stable ``code``."""

    model_config = ConfigDict(extra="allow")

    type: str = Field(examples=["https://stepwise.dev/problems/workflow_not_found"])
    title: str
    status: int
    detail: str
    code: str = Field(description="Stable, machine-readable error code.")
    errors: list[ProblemError] | None = Field(
        default=None, description="For validation errors: each offending value."
    )


# ``responses=`` entry for a route; ``app.openapi`` rewrites every error response this way.
PROBLEM_RESPONSE: dict[str, Any] = {
    "description": "Problem details",
    "content": {PROBLEM: {"schema": {"$ref": "#/components/schemas/Problem"}}},
}

_HTTP_CODES = {
    400: ("bad_request", "Bad request"),
    401: ("unauthorized", "Unauthorized"),
    403: ("forbidden", "Forbidden"),
    404: ("not_found", "Not found"),
    405: ("method_not_allowed", "Method not allowed"),
    409: ("conflict", "Conflict"),
    413: ("payload_too_large", "Payload too large"),
    415: ("unsupported_media_type", "Unsupported media type"),
    422: ("validation_error", "Unprocessable content"),
    429: ("too_many_requests", "Too many requests"),
    503: ("unavailable", "Service unavailable"),
}


def problem(
    status: int,
    code: str,
    detail: str,
    *,
    title: str | None = None,
    errors: list[dict[str, Any]] | None = None,
    headers: dict[str, str] | None = None,
    **extra: Any,
) -> JSONResponse:
    body: dict[str, Any] = {
        "type": f"https://stepwise.dev/problems/{code}",
        "title": title or _HTTP_CODES.get(status, ("error", "Error"))[1],
        "status": status,
        "detail": detail,
        "code": code,
    }
    if errors is not None:
        body["errors"] = errors
    body.update(extra)
    return JSONResponse(body, status_code=status, media_type=PROBLEM, headers=headers)


def _jsonable_errors(errors: Any) -> list[dict[str, Any]]:
    out = []
    for err in errors:
        out.append(
            {
                "loc": [p for p in err.get("loc", ())],
                "msg": str(err.get("msg", "")),
                "type": str(err.get("type", "invalid")),
            }
        )
    return out


# SQLSTATE classes of a database that cannot serve us now: a connection exception, the
# server's resources, an operator's intervention (shutdown, restart), the database gone
# (invalid catalog name) or its login refused
_UNAVAILABLE_STATES = ("08", "53", "57P", "3D000", "28")


def _sqlstate(exc: BaseException) -> str:
    """The SQLSTATE of the driver's error under ``exc`` ('' when it has none)."""
    seen: BaseException | None = exc
    while seen is not None:
        state = getattr(seen, "sqlstate", None)
        if isinstance(state, str):
            return state
        seen = seen.__cause__ or getattr(seen, "orig", None)
    return ""


def _lost_connection(exc: DBAPIError) -> bool:
    """The database went away (as opposed to a query it refused: a bug, so a 500)."""
    if exc.connection_invalidated or isinstance(exc, OperationalError | InterfaceError):
        return True
    if _sqlstate(exc).startswith(_UNAVAILABLE_STATES):
        return True
    text = str(exc.orig)
    return any(hint in text for hint in ("shutting down", "starting up", "connection"))


def install(app: FastAPI) -> None:
    @app.exception_handler(StepwiseError)
    async def _domain(request: Request, exc: StepwiseError) -> JSONResponse:
        return problem(
            exc.status,
            exc.code,
            exc.message,
            title=exc.title,
            errors=exc.errors or ([] if exc.status == 422 else None),
            **exc.extra,
        )

    @app.exception_handler(RequestValidationError)
    async def _validation(request: Request, exc: RequestValidationError) -> JSONResponse:
        malformed = next((e for e in exc.errors() if e.get("type") == "json_invalid"), None)
        if malformed is not None:  # as a document that does not parse (app.api.bodies)
            reason = (malformed.get("ctx") or {}).get("error") or malformed.get("msg")
            message = f"the body is not valid JSON: {reason}"
            errors = [{"loc": ["body"], "msg": message, "type": "parse_error"}]
            return problem(422, "invalid_body", message, errors=errors)
        errors = _jsonable_errors(exc.errors())
        first = errors[0] if errors else None
        detail = "the request is invalid"
        if first is not None:
            detail = f"{'.'.join(str(p) for p in first['loc'])}: {first['msg']}"
        return problem(422, "validation_error", detail, errors=errors)

    @app.exception_handler(StarletteHTTPException)
    async def _http(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        code, title = _HTTP_CODES.get(exc.status_code, ("error", "Error"))
        detail = exc.detail if isinstance(exc.detail, str) else title
        if exc.status_code == 404 and detail == "Not Found":
            detail = f"no route for {request.method} {request.url.path}"
        if exc.status_code == 405:
            detail = f"{request.method} is not allowed on {request.url.path}"
        return problem(
            exc.status_code, code, detail, title=title, headers=getattr(exc, "headers", None)
        )

    async def _database_unavailable(request: Request, exc: Exception) -> JSONResponse:
        if isinstance(exc, DBAPIError) and not _lost_connection(exc):
            return await _unexpected(request, exc)
        log.warning(
            "database unavailable on %s %s (request %s): %s",
            request.method,
            request.url.path,
            getattr(request.state, "request_id", "-"),
            type(exc).__name__,
        )
        return problem(
            503,
            "database_unavailable",
            "the database is not reachable; retry later",
            headers={"Retry-After": "5"},
        )

    # asyncpg raises a refused connection as the bare OSError
    for db_error in (DBAPIError, PoolTimeout, ConnectionError):
        app.add_exception_handler(db_error, _database_unavailable)

    @app.exception_handler(CorruptCheckpoint)
    async def _corrupt_checkpoint(request: Request, exc: CorruptCheckpoint) -> JSONResponse:
        log.error("%s %s: %s", request.method, request.url.path, exc)
        return problem(
            409,
            "checkpoint_unreadable",
            f"{exc}; the run can be resumed from an earlier checkpoint "
            "(POST /runs/{id}/resume with a checkpoint_id)",
            title="Checkpoint cannot be read",
            checkpoint_id=exc.checkpoint_id,
        )

    @app.exception_handler(Exception)
    async def _unexpected(request: Request, exc: Exception) -> JSONResponse:
        # Runs outside the middleware stack (Starlette's ServerErrorMiddleware): the request
        # id header is added here. Nothing of the exception reaches the client.
        request_id = str(getattr(request.state, "request_id", None) or "-")
        log.error(
            "unhandled error on %s %s (request %s)",
            request.method,
            request.url.path,
            request_id,
            exc_info=exc,
        )
        return problem(
            500,
            "internal_error",
            "an unexpected error occurred; it was logged",
            title="Internal server error",
            headers={"X-Request-ID": request_id},
            request_id=request_id,
        )
