"""The Step protocol: what a step receives (StepContext) and returns (StepResult).

A step is any object with ``async def execute(ctx) -> StepResult``. Built-in steps and
plugins (entry-point group ``stepwise.steps``) implement the same protocol; a remote
``call`` step answers with the JSON form of the same result.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from datetime import datetime
from enum import StrEnum
from typing import Any, Protocol

from app.steps.clients import OutboundClient


class StepStatus(StrEnum):
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    NEEDS_CONTINUATION = "needs_continuation"
    INTERRUPTED = "interrupted"
    AWAITING_INPUT = "awaiting_input"
    HANDOFF = "handoff"


@dataclass(frozen=True, slots=True)
class StepError:
    code: str
    message: str
    retryable: bool = False
    retry_after_s: float | None = None
    details: dict[str, Any] | None = None


@dataclass(frozen=True, slots=True)
class StepResult:
    status: StepStatus
    output: Any = None
    error: StepError | None = None
    resume_at: datetime | None = None
    interrupt: dict[str, Any] | None = None  # {"payload": ..., "schema"?: {...}}
    prompt: str | None = None
    handoff: dict[str, Any] | None = None  # {"to": agent_id, "payload": ...}

    @classmethod
    def succeeded(cls, output: Any = None) -> StepResult:
        return cls(StepStatus.SUCCEEDED, output=output)

    @classmethod
    def failed(
        cls,
        code: str,
        message: str,
        *,
        retryable: bool = False,
        retry_after_s: float | None = None,
        details: dict[str, Any] | None = None,
    ) -> StepResult:
        return cls(
            StepStatus.FAILED,
            error=StepError(code, message, retryable, retry_after_s, details),
        )

    @classmethod
    def needs_continuation(
        cls, resume_at: datetime | None = None, output: Any = None
    ) -> StepResult:
        return cls(StepStatus.NEEDS_CONTINUATION, output=output, resume_at=resume_at)

    @classmethod
    def interrupted(
        cls, payload: Any = None, schema: dict[str, Any] | None = None, *, kind: str = "interrupt"
    ) -> StepResult:
        """``kind``: ``interrupt``, or ``agent_question`` (an agent's ``ask_human``)."""
        interrupt: dict[str, Any] = {"payload": payload}
        if schema is not None:
            interrupt["schema"] = schema
        if kind != "interrupt":
            interrupt["kind"] = kind
        return cls(StepStatus.INTERRUPTED, interrupt=interrupt)

    @classmethod
    def awaiting_input(cls, prompt: str | None = None) -> StepResult:
        return cls(StepStatus.AWAITING_INPUT, prompt=prompt)

    @classmethod
    def handoff_to(
        cls, to: str, payload: Any = None, messages: list[dict[str, Any]] | None = None
    ) -> StepResult:
        """``messages``: the conversation handed to the target (an agent's handoff)."""
        handoff: dict[str, Any] = {"to": to, "payload": payload}
        if messages is not None:
            handoff["messages"] = messages
        return cls(StepStatus.HANDOFF, handoff=handoff)


ProgressEmitter = Callable[[dict[str, Any]], Awaitable[None]]
EventEmitter = Callable[[str, dict[str, Any]], Awaitable[None]]


class UsageMeter(Protocol):
    """Adds a usage delta (``{input_tokens, output_tokens, model_calls}``) to the run's and
    returns the run's total. ``turn`` (a key and a sequence number, e.g. a node visit and a
    model call's turn) counts a delta once: a turn at or below the key's last counted one
    is not added again, so replaying recorded turns after a crash counts each call once."""

    def __call__(
        self, delta: dict[str, int] | None = None, turn: tuple[str, int] | None = None
    ) -> dict[str, int]: ...


STEP_EVENT_TYPES = frozenset({"step.progress", "message.delta", "tool.called", "tool.completed"})


async def _no_progress(_: dict[str, Any]) -> None:
    return None


async def _no_event(_: str, __: dict[str, Any]) -> None:
    return None


def _no_usage(
    delta: dict[str, int] | None = None, turn: tuple[str, int] | None = None
) -> dict[str, int]:
    return {"input_tokens": 0, "output_tokens": 0, "model_calls": 0}


@dataclass(slots=True)
class StepContext:
    """What a step sees. ``config`` is the node's rendered ``with``."""

    run_id: str
    node: str
    step: str
    config: dict[str, Any]
    inputs: Mapping[str, Any]
    state: Mapping[str, Any]
    context: dict[str, Any]
    attempt: int = 1
    visit: int = 1
    http: OutboundClient | None = None
    services: Any = None  # the engine's StepServices (settings, outbound guard, subgraphs)
    emit: ProgressEmitter = field(default=_no_progress)
    emit_event: EventEmitter = field(default=_no_event)  # see ``event``
    usage: UsageMeter = field(default=_no_usage)
    definition: Any = None  # the workflow definition of the node (models, tools, agents)
    scope: Mapping[str, Any] | None = None  # the run's template scope at this node

    @property
    def idempotency_key(self) -> str:
        """Stable per step visit: the same across retries and crash recovery."""
        return f"{self.run_id}:{self.node}:{self.visit}"

    async def progress(self, **data: Any) -> None:
        """Emit a ``step.progress`` event (progress, partial output, tokens...)."""
        await self.emit(data)

    async def event(self, type_: str, **data: Any) -> None:
        """Emit a stored event of a type steps may emit (``STEP_EVENT_TYPES``), e.g.
        ``message.delta``; it is redacted and written at once, like progress."""
        if type_ not in STEP_EVENT_TYPES:
            raise ValueError(f"steps may not emit {type_!r} events")
        await self.emit_event(type_, data)


class Step(Protocol):
    async def execute(self, ctx: StepContext) -> StepResult: ...
