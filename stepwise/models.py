"""Typed resources of the Stepwise API (they mirror ``openapi/openapi.json``).

Every model accepts fields it does not know, so a client keeps working against a
newer server; those fields are kept (``model.model_extra``).
"""

from __future__ import annotations

from datetime import datetime
from typing import Any, Generic, TypeVar

from pydantic import BaseModel, ConfigDict

T = TypeVar("T")

TERMINAL = frozenset({"completed", "failed", "cancelled"})
PAUSED = frozenset({"interrupted", "awaiting_input", "suspended"})


class Resource(BaseModel):
    model_config = ConfigDict(extra="allow")


class Page(Resource, Generic[T]):
    """One page of a list; ask for the next with ``cursor=page.next_cursor``."""

    items: list[T]
    next_cursor: str | None = None


class Workflow(Resource):
    name: str
    version: int
    hash: str
    description: str | None = None
    definition: dict[str, Any]
    created_at: datetime
    # when just stored: what may fail a run later (a prompt not stored yet), each with
    # ``loc``, ``msg`` and ``type``
    warnings: list[dict[str, Any]] | None = None


class WorkflowSummary(Resource):
    name: str
    latest_version: int
    versions: int
    description: str | None = None
    updated_at: datetime


class ValidationIssue(Resource):
    loc: list[str | int]
    msg: str
    type: str | None = None


class ValidationResult(Resource):
    valid: bool
    errors: list[ValidationIssue]


class WorkflowRef(Resource):
    name: str
    version: int | None = None


class RunError(Resource):
    code: str
    message: str
    node: str | None = None
    details: dict[str, Any] | None = None


class Interrupt(Resource):
    """A pending pause for an answer (``POST /runs/{id}/response``)."""

    id: str
    node: str | None = None
    kind: str
    payload: Any = None
    created_at: datetime | None = None


class Run(Resource):
    id: str
    workflow: WorkflowRef
    status: str
    inputs: dict[str, Any] = {}
    state: Any = None
    output: Any = None
    error: RunError | None = None
    current_node: str | None = None
    interrupt: Interrupt | None = None
    awaiting_input: dict[str, Any] | None = None
    resume_at: datetime | None = None
    start_at: datetime | None = None
    parent_run_id: str | None = None
    forked_from_checkpoint_id: str | None = None
    step_count: int = 0
    metadata: dict[str, Any] | None = None
    webhook: str | None = None
    created_at: datetime
    updated_at: datetime

    @property
    def terminal(self) -> bool:
        return self.status in TERMINAL

    @property
    def paused(self) -> bool:
        return self.status in PAUSED


class Checkpoint(Resource):
    id: str
    parent_id: str | None = None
    seq: int
    last_node: str | None = None
    next_node: str | None = None
    status: str
    steps_completed: int
    created_at: datetime


class CheckpointDetail(Checkpoint):
    state: Any = None
    nodes: dict[str, Any] = {}
    visits: dict[str, int] = {}
    interrupt: dict[str, Any] | None = None
    frames: list[dict[str, Any]] = []


class Event(Resource):
    run_id: str
    seq: int
    type: str
    node: str | None = None
    ts: datetime
    data: Any = None
