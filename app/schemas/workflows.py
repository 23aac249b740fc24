"""Response models of the workflows API."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from pydantic import BaseModel


class WorkflowOut(BaseModel):
    name: str
    version: int
    hash: str
    description: str | None
    definition: dict[str, Any]
    created_at: datetime


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


class ValidationIssue(BaseModel):
    loc: list[str | int]
    msg: str
    type: str


class ValidationResult(BaseModel):
    valid: bool
    errors: list[ValidationIssue]
