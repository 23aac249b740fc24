"""The one error hierarchy of Stepwise.

Every error a client can see carries a stable ``code`` and an HTTP ``status``; the API
maps them to problem+json in one handler (``app.api.problems``). Lower layers raise
these and never know about HTTP beyond the status number.
"""

from __future__ import annotations

from typing import Any


class StepwiseError(Exception):
    """Base of all domain errors: a stable code, a status and a human message."""

    status: int = 400
    code: str = "bad_request"
    title: str = "Bad request"

    def __init__(
        self,
        message: str,
        *,
        code: str | None = None,
        errors: list[dict[str, Any]] | None = None,
        extra: dict[str, Any] | None = None,
    ) -> None:
        super().__init__(message)
        self.message = message
        if code is not None:
            self.code = code
        self.errors = errors or []
        self.extra = extra or {}


class NotFound(StepwiseError):
    status = 404
    code = "not_found"
    title = "Not found"


class Conflict(StepwiseError):
    status = 409
    code = "conflict"
    title = "Conflict"


class Invalid(StepwiseError):
    """The request is well-formed but its content is refused (422)."""

    status = 422
    code = "validation_error"
    title = "Unprocessable content"


class PayloadTooLarge(StepwiseError):
    status = 413
    code = "payload_too_large"
    title = "Payload too large"


class Unauthorized(StepwiseError):
    status = 401
    code = "unauthorized"
    title = "Unauthorized"


class ServiceUnavailable(StepwiseError):
    status = 503
    code = "unavailable"
    title = "Service unavailable"


def error_item(loc: list[str | int], msg: str, type_: str = "invalid") -> dict[str, Any]:
    """One entry of a problem's ``errors[]``: where (path segments) and what."""
    return {"loc": list(loc), "msg": msg, "type": type_}
