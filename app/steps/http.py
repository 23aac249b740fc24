"""The ``http`` built-in step: one outbound HTTP request through the outbound guard.

``with``: ``method`` (default GET), ``url``, ``headers``, ``query``, ``json`` or ``body``,
``timeout_s`` (default 30), ``follow_redirects`` (default false), ``retry_on_4xx``
(default true). Output: ``{status, headers, body}``, ``body`` being parsed JSON when
the response is JSON and text otherwise.

Failures (codes): ``http_error`` (a non-2xx answer; retryable, as DESIGN §2 says, honouring
``Retry-After``; with ``retry_on_4xx: false`` only 5xx, 408 and 429 are), ``timeout`` and
``network_error`` (retryable), ``address_not_allowed``, ``response_too_large``,
``too_many_redirects`` and ``invalid_step_config`` (not retryable).

The helpers here (:func:`outbound_failure`, :func:`http_error_result`,
:func:`decode_body`...) are shared with the ``call`` step.
"""

from __future__ import annotations

import json
import re
from collections.abc import AsyncIterator, Mapping
from contextlib import asynccontextmanager
from datetime import UTC, datetime
from email.utils import parsedate_to_datetime
from typing import Annotated, Any, Final

import httpx
from pydantic import AliasChoices, BaseModel, ConfigDict, Field, ValidationError, field_validator

from app.steps.base import StepContext, StepResult
from app.steps.clients import OutboundClient, make_http_client
from app.steps.destinations import AddressNotAllowed, OutboundPolicy, display_url
from app.steps.outbound import GuardedResponse, ResponseTooLarge, TooManyRedirects, send_guarded

METHODS: Final = ("GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS")
DETAILS_BODY_LIMIT: Final = 64 * 1024  # bytes of a failed response's body kept in details
MAX_TIMEOUT_S: Final = 3600.0

_TOKEN = re.compile(r"^[!#$%&'*+\-.^_`|~0-9A-Za-z]+$")
_RETRYABLE_STATUSES: Final = frozenset({408, 429})

Scalar = str | int | float | bool
PositiveSeconds = Annotated[float, Field(gt=0, le=MAX_TIMEOUT_S, allow_inf_nan=False)]


# --------------------------------------------------------------------------- config


class OutboundConfig(BaseModel):
    """What ``http`` and ``call`` have in common."""

    model_config = ConfigDict(strict=True, frozen=True)

    url: str = Field(min_length=1)
    headers: dict[str, Scalar] = Field(default_factory=dict)
    # DESIGN §2 names it ``timeout``: either key, in seconds (both at once: an extra key)
    timeout_s: PositiveSeconds = Field(
        default=30.0, validation_alias=AliasChoices("timeout_s", "timeout")
    )

    @field_validator("headers")
    @classmethod
    def _valid_headers(cls, headers: dict[str, Scalar]) -> dict[str, Scalar]:
        for name, value in headers.items():
            if not _TOKEN.match(name):
                raise ValueError(f"{name!r} is not a valid header name")
            if any(ch in str(value) for ch in "\r\n\0"):
                raise ValueError(f"the value of header {name!r} contains a line break or NUL")
            if not str(value).isascii():
                # httpx sends header values as ASCII: refuse here rather than raise later
                raise ValueError(f"the value of header {name!r} is not ASCII")
        return headers

    def header_values(self, idempotency_key: str) -> dict[str, str]:
        """Headers as strings, with ``Idempotency-Key`` unless the user set one."""
        values = {name: _header_text(value) for name, value in self.headers.items()}
        if not any(name.lower() == "idempotency-key" for name in values):
            values["Idempotency-Key"] = idempotency_key
        return values


class HttpConfig(OutboundConfig):
    model_config = ConfigDict(strict=True, frozen=True, extra="forbid")

    method: str = "GET"
    query: dict[str, Scalar | list[Scalar] | None] = Field(default_factory=dict)
    json_body: Any = Field(default=None, alias="json")
    body: str | None = None
    follow_redirects: bool = False
    retry_on_4xx: bool = True  # every non-2xx answer is retryable (DESIGN §2)

    @field_validator("method")
    @classmethod
    def _known_method(cls, value: str) -> str:
        method = value.upper()
        if method not in METHODS:
            raise ValueError(f"must be one of {', '.join(METHODS)}, not {value!r}")
        return method

    @property
    def has_json(self) -> bool:
        return "json_body" in self.model_fields_set


def _header_text(value: Scalar) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value)


_UNION_MEMBER = re.compile(r"^(str|int|float|bool|none|(list|dict|union)\[.*\])$")


def _json_type(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, int | float):
        return "a number"
    if isinstance(value, str):
        return "a string"
    return "an array" if isinstance(value, list | tuple) else "an object"


def describe_validation_error(error: ValidationError, *, skip_first: bool = False) -> str:
    """``path: problem; ...`` — one problem per path, union members folded together.

    ``skip_first`` drops the first path segment (the tag of a discriminated union).
    """
    by_path: dict[str, list[Any]] = {}
    for item in error.errors(include_url=False):
        loc = (
            list(item["loc"])[1:]
            if skip_first and item["type"] != "union_tag_invalid"
            else item["loc"]
        )
        path = ".".join(
            str(part) for part in loc if not (isinstance(part, str) and _UNION_MEMBER.match(part))
        )
        by_path.setdefault(path, []).append(item)
    problems = []
    for path, items in by_path.items():
        if len(items) == 1:
            message = str(items[0]["msg"]).removeprefix("Value error, ")
        else:
            message = f"{_json_type(items[0]['input'])} is not accepted here"
        problems.append(f"{path}: {message}" if path else message)
    return "; ".join(problems)


def config_error(step: str, error: ValidationError | str) -> StepResult:
    """``invalid_step_config``: what is wrong, with the path of each problem."""
    problems = error if isinstance(error, str) else describe_validation_error(error)
    return StepResult.failed(
        "invalid_step_config", f"invalid `with` of the {step} step: {problems}"
    )


# --------------------------------------------------------------------------- shared helpers


def outbound_policy(ctx: StepContext) -> OutboundPolicy:
    """The guard's policy from the engine's services; the strictest one when absent."""
    policy = getattr(ctx.services, "outbound_policy", None)
    return policy if isinstance(policy, OutboundPolicy) else OutboundPolicy()


@asynccontextmanager
async def outbound_client(ctx: StepContext) -> AsyncIterator[OutboundClient]:
    """The shared client, or a short-lived guarded one when the engine gave none."""
    if ctx.http is not None:
        yield ctx.http
        return
    async with make_http_client() as client:
        yield client


def is_json_media_type(content_type: str | None) -> bool:
    media = (content_type or "").split(";", 1)[0].strip().lower()
    return media == "application/json" or (
        media.startswith("application/") and media.endswith("+json")
    )


def _charset(content_type: str | None) -> str:
    for param in (content_type or "").split(";")[1:]:
        key, _, value = param.partition("=")
        if key.strip().lower() == "charset" and value.strip():
            return value.strip().strip('"')
    return "utf-8"


def _reject_constant(name: str) -> Any:
    raise ValueError(f"{name} is not JSON")


def parse_json(raw: bytes) -> Any:
    """Strict JSON (no NaN or Infinity); ValueError otherwise."""
    try:
        return json.loads(raw, parse_constant=_reject_constant)
    except RecursionError as exc:
        raise ValueError("JSON nested too deeply") from exc


def decode_text(raw: bytes, content_type: str | None) -> str:
    try:
        return raw.decode(_charset(content_type), errors="replace")
    except LookupError:  # an unknown charset
        return raw.decode("utf-8", errors="replace")


def decode_body(raw: bytes, content_type: str | None) -> Any:
    """Parsed JSON when the content type says JSON (and it parses), text otherwise."""
    if is_json_media_type(content_type):
        try:
            return parse_json(raw)
        except ValueError:
            pass
    return decode_text(raw, content_type)


def parse_retry_after(value: str | None, *, now: datetime | None = None) -> float | None:
    """``Retry-After`` as seconds to wait: delay-seconds or an HTTP date; None if unusable."""
    if not value:
        return None
    value = value.strip()
    if value.isdigit():
        return float(value)
    try:
        when = parsedate_to_datetime(value)
    except (TypeError, ValueError, IndexError):
        return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    return max(0.0, (when - (now or datetime.now(UTC))).total_seconds())


def is_retryable_status(status: int, *, retry_on_4xx: bool = False) -> bool:
    """5xx, 408 and 429 always; with ``retry_on_4xx`` (an ``http`` step's default) any
    status but 2xx (an unfollowed 3xx included)."""
    return status >= 500 or status in _RETRYABLE_STATUSES or (retry_on_4xx and status >= 300)


def http_error_result(
    response: GuardedResponse, method: str, *, retry_on_4xx: bool = False
) -> StepResult:
    """``http_error`` for a non-2xx answer, with ``{status, body}`` in the details."""
    status = response.status_code
    retryable = is_retryable_status(status, retry_on_4xx=retry_on_4xx)
    content_type = response.headers.get("content-type")
    details: dict[str, Any] = {"status": status}
    if len(response.body) > DETAILS_BODY_LIMIT:
        details["body"] = decode_text(response.body[:DETAILS_BODY_LIMIT], content_type)
        details["body_truncated"] = True
    else:
        details["body"] = decode_body(response.body, content_type)
    if status in (301, 302, 303, 307, 308) and "location" in response.headers:
        details["location"] = response.headers["location"]
    reason = f" {response.reason_phrase}" if response.reason_phrase else ""
    return StepResult.failed(
        "http_error",
        f"{method} {display_url(response.url)} answered HTTP {status}{reason}",
        retryable=retryable,
        retry_after_s=(
            parse_retry_after(response.headers.get("retry-after")) if retryable else None
        ),
        details=details,
    )


def encode_json(value: Any) -> bytes:
    """Compact UTF-8 JSON; ValueError for NaN or Infinity, TypeError for non-JSON types."""
    return json.dumps(value, ensure_ascii=False, separators=(",", ":"), allow_nan=False).encode()


def outbound_failure(exc: Exception, method: str, url: str, timeout_s: float) -> StepResult | None:
    """The StepResult for an exception of :func:`send_guarded`; None if it is not one."""
    where = f"{method} {display_url(url)}"
    if isinstance(exc, AddressNotAllowed):
        return StepResult.failed("address_not_allowed", str(exc))
    if isinstance(exc, ResponseTooLarge):
        return StepResult.failed("response_too_large", str(exc), details={"limit": exc.limit})
    if isinstance(exc, TooManyRedirects):
        return StepResult.failed("too_many_redirects", str(exc))
    if isinstance(exc, httpx.InvalidURL):
        return StepResult.failed("invalid_step_config", f"invalid url: {exc}")
    if isinstance(exc, httpx.TimeoutException):
        return StepResult.failed(
            "timeout", f"{where} did not complete within {timeout_s:g} s", retryable=True
        )
    if isinstance(exc, httpx.RequestError):  # connection, protocol, decoding, resolution
        detail = str(exc) or type(exc).__name__
        return StepResult.failed("network_error", f"{where} failed: {detail}", retryable=True)
    return None


# --------------------------------------------------------------------------- the step


def accepted_keys(model: type[BaseModel]) -> frozenset[str]:
    """The keys a ``with`` validated by ``model`` may have (its fields as they are given:
    by alias where one is set, every choice of a validation alias)."""
    keys: set[str] = set()
    for name, field in model.model_fields.items():
        keys.add(field.alias or name)
        choices = field.validation_alias
        if isinstance(choices, AliasChoices):
            keys.update(c for c in choices.choices if isinstance(c, str))
    return frozenset(keys)


class HttpStep:
    """``step: http``."""

    # checked when a definition is stored (app.engine.validation), not only when it runs
    config_keys = accepted_keys(HttpConfig)

    async def execute(self, ctx: StepContext) -> StepResult:
        try:
            config = HttpConfig.model_validate(ctx.config)
        except ValidationError as exc:
            return config_error("http", exc)
        if config.has_json and config.body is not None:
            return config_error("http", "give either `json` or `body`, not both")
        headers = config.header_values(ctx.idempotency_key)
        content: bytes | None = None
        if config.has_json:
            try:
                content = encode_json(config.json_body)
            except (TypeError, ValueError) as exc:
                return config_error("http", f"json: cannot be sent as JSON ({exc})")
            if not any(name.lower() == "content-type" for name in headers):
                headers["Content-Type"] = "application/json"
        elif config.body is not None:
            content = config.body.encode("utf-8")

        try:
            async with outbound_client(ctx) as client:
                response = await send_guarded(
                    client,
                    outbound_policy(ctx),
                    config.method,
                    config.url,
                    headers=headers,
                    params=_query(config.query),
                    content=content,
                    timeout_s=config.timeout_s,
                    follow_redirects=config.follow_redirects,
                )
        except Exception as exc:
            failure = outbound_failure(exc, config.method, config.url, config.timeout_s)
            if failure is None:
                raise
            return failure

        if not 200 <= response.status_code < 300:
            return http_error_result(response, config.method, retry_on_4xx=config.retry_on_4xx)
        return StepResult.succeeded(
            {
                "status": response.status_code,
                "headers": response.headers,
                "body": decode_body(response.body, response.headers.get("content-type")),
            }
        )


def _query(query: Mapping[str, Scalar | list[Scalar] | None]) -> httpx.QueryParams | None:
    if not query:
        return None
    return httpx.QueryParams({key: value for key, value in query.items()})
