"""What the client raises: every error is a ``StepwiseError``.

``ApiError`` is an answer of the server in RFC 9457 problem details (``status``, ``code``,
``detail``, ``errors``); ``CannotConnect`` means the server was not reached at all.
"""

from __future__ import annotations

import errno
from typing import Any

import httpx


class StepwiseError(Exception):
    """Any failure of a client call."""


class CannotConnect(StepwiseError):
    """The server did not answer: not running, wrong address, or the network is down."""

    def __init__(self, url: str, reason: str) -> None:
        super().__init__(f"cannot reach {url}: {reason}")
        self.url = url
        self.reason = reason


class ApiError(StepwiseError):
    """The server answered with an error (problem+json)."""

    def __init__(
        self,
        status: int,
        code: str,
        detail: str,
        *,
        title: str | None = None,
        errors: list[dict[str, Any]] | None = None,
        body: Any = None,
    ) -> None:
        super().__init__(f"{status} {code}: {detail}")
        self.status = status
        self.code = code
        self.detail = detail
        self.title = title
        self.errors = errors or []
        self.body = body


class Unauthorized(ApiError):
    """401: a missing or unknown API key."""


class NotFound(ApiError):
    """404: no such workflow, run or checkpoint."""


class Conflict(ApiError):
    """409: the run is not in a state that allows this (``code`` says why)."""


class InvalidRequest(ApiError):
    """422: ``errors`` names each offending value by its ``loc``."""


_BY_STATUS: dict[int, type[ApiError]] = {
    401: Unauthorized,
    404: NotFound,
    409: Conflict,
    422: InvalidRequest,
}


def api_error(response: httpx.Response) -> ApiError:
    """The exception for an error response, from its problem details when it has them."""
    body: Any
    try:
        body = response.json()
    except ValueError:
        body = response.text
    problem = body if isinstance(body, dict) else {}
    status = response.status_code
    code = str(problem.get("code") or response.reason_phrase.lower().replace(" ", "_") or status)
    detail = (
        str(
            problem.get("detail") or problem.get("title") or (body if isinstance(body, str) else "")
        ).strip()
        or response.reason_phrase
    )
    errors = problem.get("errors")
    cls = _BY_STATUS.get(status, ApiError)
    return cls(
        status,
        code,
        detail,
        title=problem.get("title"),
        errors=errors if isinstance(errors, list) else None,
        body=body,
    )


def connect_reason(exc: BaseException) -> str:
    """A short, lower-case reason for a failed connection (``connection refused``)."""
    if isinstance(exc, httpx.ConnectTimeout | httpx.PoolTimeout):
        return "timed out connecting"
    seen: BaseException | None = exc
    while seen is not None:
        if isinstance(seen, OSError) and seen.errno is not None:
            if seen.errno == errno.ECONNREFUSED:
                return "connection refused"
            return (seen.strerror or str(seen)).lower()
        if "refused" in str(seen).lower():
            return "connection refused"
        seen = seen.__cause__ or seen.__context__
    text = str(exc).strip()
    if "all connection attempts failed" in text.lower():
        return "connection refused"
    return text.lower() or type(exc).__name__
