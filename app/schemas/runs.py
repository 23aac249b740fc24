"""Request and response models of the runs API."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any, Literal

from pydantic import AwareDatetime, BaseModel, ConfigDict, Field, field_validator, model_validator


class _Action(BaseModel):
    model_config = ConfigDict(extra="forbid")


class RunCreate(_Action):
    workflow: str | None = Field(default=None, description="name of a stored workflow")
    version: int | None = Field(
        default=None, ge=1, le=2**31 - 1, description="pinned version (default: latest)"
    )
    definition: dict[str, Any] | None = Field(default=None, description="an inline definition")
    inputs: dict[str, Any] = Field(default_factory=dict)
    metadata: dict[str, Any] | None = None
    start_at: AwareDatetime | None = Field(
        default=None, description="RFC 3339; the run stays queued until then"
    )
    webhook: str | None = Field(
        default=None,
        max_length=2048,
        pattern=r"^https?://",
        description=(
            "receives a POST of the run resource whenever the run pauses or ends, with an "
            "Idempotency-Key; durable, at least once, in order for the run"
        ),
    )

    @field_validator("start_at")
    @classmethod
    def _in_utc(cls, value: datetime | None) -> datetime | None:
        """Stored in UTC: a time whose offset takes it out of the years 1-9999 there
        (``0001-01-01T00:00:00+01:00``) is refused here, not by the database."""
        if value is None:
            return None
        try:
            return value.astimezone(UTC)
        except OverflowError:
            raise ValueError("is out of range once converted to UTC") from None

    @model_validator(mode="after")
    def _one_source(self) -> RunCreate:
        if (self.workflow is None) == (self.definition is None):
            raise ValueError(
                "give exactly one of `workflow` (a stored name) or `definition` (inline)"
            )
        if self.version is not None and self.workflow is None:
            raise ValueError("`version` goes with `workflow`")
        return self


class InterruptResponse(_Action):
    interrupt_id: str = Field(min_length=1, max_length=100)
    status: Literal["approved", "rejected", "timed_out", "cancelled"] = "approved"
    value: Any = None
    comment: str | None = Field(default=None, max_length=10_000)
    responded_by: str | None = Field(default=None, max_length=200)


class SessionMessage(_Action):
    message: Any = Field(description="the user's message: text or any JSON value")
    branch: str | None = Field(
        default=None,
        max_length=500,
        description="the parallel branch it is for (default: the first awaiting input); "
        "a branch awaiting input can be sent a message while the others still run",
    )


class ResumeRequest(_Action):
    checkpoint_id: str | None = Field(default=None, min_length=1)


class ForkRequest(_Action):
    checkpoint_id: str = Field(min_length=1)
    state_patch: dict[str, Any] | None = None
    inputs_patch: dict[str, Any] | None = None


class StateEdit(_Action):
    state_patch: dict[str, Any]
    goto: str | None = None


class WorkflowRef(BaseModel):
    name: str
    version: int | None


class RunError(BaseModel):
    code: str
    message: str
    node: str | None = None
    details: dict[str, Any] | None = None


class Usage(BaseModel):
    """Language-model usage of the run's agent steps (DESIGN §9)."""

    input_tokens: int = 0
    output_tokens: int = 0
    model_calls: int = 0


class RunOut(BaseModel):
    id: str
    workflow: WorkflowRef
    status: str
    inputs: dict[str, Any]
    state: Any
    output: Any
    error: RunError | None
    current_node: str | None
    interrupt: dict[str, Any] | None
    interrupts: list[dict[str, Any]] = Field(
        default_factory=list,
        description="every pending interrupt (parallel branches may wait for several, also "
        "while the run is running); `interrupt` is the first",
    )
    awaiting_input: dict[str, Any] | None
    resume_at: datetime | None
    start_at: datetime | None
    parent_run_id: str | None
    forked_from_checkpoint_id: str | None
    step_count: int
    usage: Usage = Usage()
    metadata: dict[str, Any] | None
    webhook: str | None
    created_at: datetime
    updated_at: datetime


class RunList(BaseModel):
    items: list[RunOut]
    next_cursor: str | None


class CheckpointOut(BaseModel):
    model_config = ConfigDict(from_attributes=True)

    id: str
    parent_id: str | None
    seq: int
    last_node: str | None
    next_node: str | None
    status: str
    steps_completed: int
    created_at: datetime


class CheckpointDetail(CheckpointOut):
    state: Any
    nodes: dict[str, Any]
    visits: dict[str, int]
    interrupt: dict[str, Any] | None
    frames: list[dict[str, Any]]


class CheckpointList(BaseModel):
    items: list[CheckpointOut]
    next_cursor: str | None


class EventOut(BaseModel):
    run_id: str
    seq: int
    type: str
    node: str | None
    ts: datetime
    data: Any


class EventList(BaseModel):
    items: list[EventOut]
    next_cursor: str | None
