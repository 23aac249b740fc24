"""The ``call`` built-in step: a step written in any language, behind a URL.

``with: {url, headers?, timeout_s?, ...}``. The step POSTs
``{run_id, node, attempt, idempotency_key, with, state, context}`` (``with`` being the
whole rendered ``with``, so any other keys are the remote step's own configuration),
through the outbound guard, with the ``Idempotency-Key`` header. A 2xx answer is a
StepResult in JSON (DESIGN §8)::

    {"status": "succeeded", "output": ...}
    {"status": "failed", "error": {"code", "message", "retryable": bool,
                                   "retry_after_s"?: n, "details"?: {...}}}
    {"status": "needs_continuation", "resume_after_s"?: n, "output"?: ...}
    {"status": "interrupted", "interrupt": {"payload": ..., "schema"?: {...}}}
    {"status": "awaiting_input", "prompt"?: "..."}
    {"status": "handoff", "handoff": {"to": "<agent>", "payload": ...}}

(``retry_after_s`` and ``details`` in ``error`` extend §8: they map onto StepError.)
A 2xx answer that is anything else fails with ``bad_step_result``; a non-2xx answer,
a timeout or a network error fails like the ``http`` step does (``http_error``,
``timeout``, ``network_error``; retryable where that step's are).
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Annotated, Any, Final, Literal

from pydantic import BaseModel, ConfigDict, Field, TypeAdapter, ValidationError

from app.steps.base import StepContext, StepResult
from app.steps.destinations import display_url
from app.steps.http import (
    OutboundConfig,
    config_error,
    describe_validation_error,
    encode_json,
    http_error_result,
    outbound_client,
    outbound_failure,
    outbound_policy,
    parse_json,
)
from app.steps.outbound import send_guarded
from app.steps.schemas import schema_problem

ANSWER_EXCERPT_BYTES: Final = 2048  # of a malformed answer, kept in the error's details

Seconds = Annotated[float, Field(ge=0, allow_inf_nan=False)]


# --------------------------------------------------------------------------- the answer


class _Strict(BaseModel):
    model_config = ConfigDict(strict=True, extra="forbid", frozen=True)


class _Error(_Strict):
    code: str = Field(min_length=1)
    message: str
    retryable: bool
    retry_after_s: Seconds | None = None
    details: dict[str, Any] | None = None


class _Interrupt(_Strict):
    payload: Any
    json_schema: dict[str, Any] | None = Field(default=None, alias="schema")


class _Handoff(_Strict):
    to: str = Field(min_length=1)
    payload: Any


class Succeeded(_Strict):
    status: Literal["succeeded"]
    output: Any


class Failed(_Strict):
    status: Literal["failed"]
    error: _Error


class NeedsContinuation(_Strict):
    status: Literal["needs_continuation"]
    resume_after_s: Seconds | None = None
    output: Any = None


class Interrupted(_Strict):
    status: Literal["interrupted"]
    interrupt: _Interrupt


class AwaitingInput(_Strict):
    status: Literal["awaiting_input"]
    prompt: str | None = None


class Handoff(_Strict):
    status: Literal["handoff"]
    handoff: _Handoff


CallAnswer = Annotated[
    Succeeded | Failed | NeedsContinuation | Interrupted | AwaitingInput | Handoff,
    Field(discriminator="status"),
]
_ANSWER: Final = TypeAdapter[CallAnswer](CallAnswer)


class _Unusable(ValueError):
    """A step result of the right form that cannot be acted on (said in ``bad_step_result``)."""


def _to_result(answer: CallAnswer, now: datetime) -> StepResult:
    match answer:
        case Succeeded():
            return StepResult.succeeded(answer.output)
        case Failed(error=error):
            return StepResult.failed(
                error.code,
                error.message,
                retryable=error.retryable,
                retry_after_s=error.retry_after_s,
                details=error.details,
            )
        case NeedsContinuation():
            resume_at = None
            if answer.resume_after_s is not None:
                resume_at = now + timedelta(seconds=answer.resume_after_s)
            return StepResult.needs_continuation(resume_at=resume_at, output=answer.output)
        case Interrupted(interrupt=interrupt):
            if interrupt.json_schema is not None:
                problem = schema_problem(interrupt.json_schema)
                if problem is not None:
                    raise _Unusable(f"the interrupt's schema: {problem}")
            return StepResult.interrupted(interrupt.payload, interrupt.json_schema)
        case AwaitingInput():
            return StepResult.awaiting_input(answer.prompt)
        case Handoff(handoff=handoff):
            return StepResult.handoff_to(handoff.to, handoff.payload)


def parse_answer(raw: bytes, *, now: datetime | None = None) -> StepResult | str:
    """The StepResult a 2xx answer of a ``call`` endpoint stands for, or what is wrong
    with the answer when it is not JSON or not one of the forms."""
    try:
        data = parse_json(raw)
    except ValueError as exc:
        return f"the answer is not JSON ({exc})"
    try:
        answer = _ANSWER.validate_python(data)
    except ValidationError as exc:
        problems = describe_validation_error(exc, skip_first=True)
        return f"the answer is not a valid step result: {problems}"
    try:
        return _to_result(answer, now or datetime.now(UTC))
    except OverflowError:
        return "the answer's resume_after_s is too large"
    except _Unusable as exc:
        return str(exc)


# --------------------------------------------------------------------------- the step


class CallConfig(OutboundConfig):
    # other keys are the remote step's own: they travel in the request's `with`
    model_config = ConfigDict(strict=True, frozen=True, extra="allow")


class CallStep:
    """``step: call``."""

    async def execute(self, ctx: StepContext) -> StepResult:
        try:
            config = CallConfig.model_validate(ctx.config)
        except ValidationError as exc:
            return config_error("call", exc)
        request = {
            "run_id": ctx.run_id,
            "node": ctx.node,
            "attempt": ctx.attempt,
            "idempotency_key": ctx.idempotency_key,
            "with": ctx.config,
            "state": dict(ctx.state),
            "context": ctx.context,
        }
        try:
            content = encode_json(request)
        except (TypeError, ValueError) as exc:
            return config_error("call", f"the request cannot be sent as JSON ({exc})")
        headers = config.header_values(ctx.idempotency_key)
        headers = {
            name: value
            for name, value in headers.items()
            if name.lower() not in ("content-type", "accept")
        }
        headers |= {"Content-Type": "application/json", "Accept": "application/json"}

        try:
            async with outbound_client(ctx) as client:
                response = await send_guarded(
                    client,
                    outbound_policy(ctx),
                    "POST",
                    config.url,
                    headers=headers,
                    content=content,
                    timeout_s=config.timeout_s,
                )
        except Exception as exc:
            failure = outbound_failure(exc, "POST", config.url, config.timeout_s)
            if failure is None:
                raise
            return failure

        if not 200 <= response.status_code < 300:
            return http_error_result(response, "POST")
        result = parse_answer(response.body)
        if isinstance(result, str):
            raw = response.body
            return StepResult.failed(
                "bad_step_result",
                f"POST {display_url(response.url)}: {result}",
                details={
                    "status": response.status_code,
                    "answer": raw[:ANSWER_EXCERPT_BYTES].decode("utf-8", errors="replace"),
                    "answer_truncated": len(raw) > ANSWER_EXCERPT_BYTES,
                },
            )
        return result
