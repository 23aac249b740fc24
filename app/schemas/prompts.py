"""Request and response models of the prompts API."""

from __future__ import annotations

from datetime import datetime

from pydantic import BaseModel, ConfigDict, Field

from app.schemas.definition import NAME_PATTERN

MAX_DESCRIPTION_CHARS = 10_000


class PromptCreate(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: str = Field(pattern=NAME_PATTERN, description="as a workflow name")
    template: str = Field(
        min_length=1,
        description="The prompt text; `{{ … }}` templates in it are rendered with the "
        "run's scope. At most the definition size limit (1 MiB by default).",
    )
    description: str | None = Field(default=None, max_length=MAX_DESCRIPTION_CHARS)


class PromptOut(BaseModel):
    name: str
    version: int
    hash: str
    description: str | None
    template: str
    created_at: datetime


class PromptSummary(BaseModel):
    name: str
    latest_version: int
    versions: int
    description: str | None
    updated_at: datetime


class PromptList(BaseModel):
    items: list[PromptSummary]
    next_cursor: str | None


class PromptVersionList(BaseModel):
    items: list[PromptOut]
    next_cursor: str | None
