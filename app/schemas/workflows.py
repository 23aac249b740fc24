"""Response models of the workflows API."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from pydantic import BaseModel, Field


class ValidationIssue(BaseModel):
    loc: list[str | int]
    msg: str
    type: str


class WorkflowOut(BaseModel):
    name: str
    version: int
    hash: str
    description: str | None
    definition: dict[str, Any]
    created_at: datetime
    # on a store, and only when there are some: what does not stop it from being stored
    # but would stop a run (prompts it names that are not stored yet, `unknown_prompt`)
    warnings: list[ValidationIssue] | None = Field(default=None, exclude_if=lambda v: v is None)


class WorkflowSummary(BaseModel):
    name: str
    latest_version: int
    versions: int
    description: str | None
    updated_at: datetime


class WorkflowList(BaseModel):
    items: list[WorkflowSummary]
    next_cursor: str | None


class VersionList(BaseModel):
    items: list[WorkflowOut]
    next_cursor: str | None


class ValidationResult(BaseModel):
    valid: bool
    errors: list[ValidationIssue]
