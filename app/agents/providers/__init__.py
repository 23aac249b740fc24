"""Model providers behind one small protocol.

A conversation is a list of neutral messages (:data:`Message`)::

    {"role": "user", "content": "..."}
    {"role": "assistant", "content": "...", "tool_calls": [{"id", "name", "args"}]}
    {"role": "tool", "tool_call_id": "...", "name": "...", "content": "...", "is_error"?: true}

A provider sends it (with the system prompt and the tools) in its wire format, calls
``on_text`` with each streamed text delta, and returns the whole :class:`ModelAnswer`.
Failures are :class:`ModelError`, already classified (retryable or not).
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any, Protocol

import httpx
import httpx2

from app.steps.destinations import AddressNotAllowed
from app.steps.http import parse_retry_after

Message = dict[str, Any]
OnText = Callable[[str], Awaitable[None]]


@dataclass(frozen=True, slots=True)
class ToolSpec:
    name: str
    description: str
    parameters: dict[str, Any]


@dataclass(frozen=True, slots=True)
class ModelRequest:
    model: str
    system: str | None
    messages: list[Message]
    tools: list[ToolSpec]
    temperature: float | None
    max_tokens: int | None
    stream: bool


@dataclass(slots=True)
class ModelAnswer:
    text: str
    tool_calls: list[dict[str, Any]]  # {id, name, args}; args is the raw text if not JSON
    input_tokens: int
    output_tokens: int
    finish_reason: str  # stop, tool_calls, length, content_filter or the provider's own

    def __post_init__(self) -> None:
        """The SDKs build answers without checking field types: one that is wrong is
        refused here (``model_bad_response``), not later in the loop or the usage sums."""
        problem = _answer_problem(self)
        if problem is not None:
            raise BadAnswer(problem)

    def as_record(self) -> dict[str, Any]:
        return {
            "text": self.text,
            "tool_calls": self.tool_calls,
            "usage": {"input_tokens": self.input_tokens, "output_tokens": self.output_tokens},
            "finish_reason": self.finish_reason,
        }


class BadAnswer(ValueError):
    """An answer whose fields are not what the protocol says (read as ``model_bad_response``)."""


def _is_count(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 0


def _answer_problem(answer: ModelAnswer) -> str | None:
    if not isinstance(answer.text, str):
        return "the answer's text is not a string"
    if not isinstance(answer.finish_reason, str):
        return "the answer's finish reason is not a string"
    if not (_is_count(answer.input_tokens) and _is_count(answer.output_tokens)):
        return "the answer's token counts are not whole numbers"
    for call in answer.tool_calls:
        if not (isinstance(call.get("id"), str) and isinstance(call.get("name"), str)):
            return "a tool call of the answer has no id or name"
    return None


@dataclass(frozen=True, slots=True)
class ModelError(Exception):
    code: str
    message: str
    retryable: bool = False
    retry_after_s: float | None = None
    details: dict[str, Any] | None = field(default=None)

    def __str__(self) -> str:
        return self.message


# the shared clients' API key: never a real one, and never the environment's (an SDK
# reads OPENAI_API_KEY / ANTHROPIC_API_KEY when given none)
NO_API_KEY = "unused"


class Provider(Protocol):
    async def complete(self, request: ModelRequest, on_text: OnText) -> ModelAnswer: ...

    def with_api_key(self, api_key: str | None) -> Provider:
        """This provider sending ``api_key`` (a copy sharing its HTTP client), or itself
        when there is none. Close only the original: a copy's close would close the shared client."""
        ...

    async def aclose(self) -> None: ...


def _root_causes(exc: BaseException) -> list[BaseException]:
    seen: list[BaseException] = []
    current: BaseException | None = exc
    while current is not None and current not in seen:
        seen.append(current)
        current = current.__cause__ or current.__context__
    return seen


def transport_error(exc: BaseException, where: str) -> ModelError | None:
    """A ModelError for the guard's refusals and network failures found in ``exc``'s
    causes (the SDKs wrap them); None when there is none."""
    for cause in _root_causes(exc):
        if isinstance(cause, AddressNotAllowed):
            return ModelError("address_not_allowed", str(cause))
        if isinstance(cause, httpx.TimeoutException | httpx2.TimeoutException | TimeoutError):
            return ModelError("timeout", f"{where}: the model did not answer in time", True)
        if isinstance(cause, httpx.TransportError | httpx2.TransportError):
            detail = str(cause) or type(cause).__name__
            return ModelError("network_error", f"{where}: {detail}", True)
    return None


def status_error(status: int, headers: Any, body: Any, where: str) -> ModelError:
    """``model_error`` for an HTTP error answer: 408, 409, 429 and 5xx are retryable."""
    retryable = status >= 500 or status in (408, 409, 429)
    retry_after = None
    if retryable and headers is not None:
        ms = headers.get("retry-after-ms")
        retry_after = (
            float(ms) / 1000
            if ms and ms.isdigit()
            else parse_retry_after(headers.get("retry-after"))
        )
    return ModelError(
        "model_error",
        f"{where} answered HTTP {status}",
        retryable,
        retry_after,
        {"status": status, "body": body},
    )


def malformed(where: str, what: str) -> ModelError:
    return ModelError("model_bad_response", f"{where}: {what}", retryable=True)


def unusable(where: str, exc: Exception) -> ModelError | None:
    """``model_bad_response`` for what reading an answer raised, or None for an exception
    that is no reading error."""
    if isinstance(exc, BadAnswer):
        return malformed(where, str(exc))
    if isinstance(exc, ValueError | KeyError | TypeError | AttributeError | IndexError):
        return malformed(where, f"unusable answer ({type(exc).__name__})")
    return None


def make_provider(
    provider: str, *, base_url: str | None, http_client: httpx2.AsyncClient
) -> Provider:
    """A provider sending through ``http_client``, with no API key (see ``with_api_key``)."""
    if provider == "anthropic":
        from app.agents.providers.anthropic import AnthropicProvider

        return AnthropicProvider.connect(base_url, http_client)
    from app.agents.providers.openai import OpenAIProvider

    return OpenAIProvider.connect(base_url, http_client)
