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

import httpx


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
    def interrupted(cls, payload: Any = None, schema: dict[str, Any] | None = None) -> StepResult:
        interrupt: dict[str, Any] = {"payload": payload}
        if schema is not None:
            interrupt["schema"] = schema
        return cls(StepStatus.INTERRUPTED, interrupt=interrupt)

    @classmethod
    def awaiting_input(cls, prompt: str | None = None) -> StepResult:
        return cls(StepStatus.AWAITING_INPUT, prompt=prompt)

    @classmethod
    def handoff_to(cls, to: str, payload: Any = None) -> StepResult:
        return cls(StepStatus.HANDOFF, handoff={"to": to, "payload": payload})


ProgressEmitter = Callable[[dict[str, Any]], Awaitable[None]]


async def _no_progress(_: dict[str, Any]) -> None:
    return None


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
    http: httpx.AsyncClient | None = None
    services: Any = None  # the engine's StepServices (settings, outbound guard, subgraphs)
    emit: ProgressEmitter = field(default=_no_progress)

    @property
    def idempotency_key(self) -> str:
        """Stable per step visit: the same across retries and crash recovery."""
        return f"{self.run_id}:{self.node}:{self.visit}"

    async def progress(self, **data: Any) -> None:
        """Emit a ``step.progress`` event (progress, partial output, tokens...)."""
        await self.emit(data)


class Step(Protocol):
    async def execute(self, ctx: StepContext) -> StepResult: ...
