"""Configuration: environment variables prefixed ``STEPWISE_``, validated at start."""

from __future__ import annotations

import os
from typing import Annotated

from pydantic import Field, field_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict


def normalize_database_url(url: str) -> str:
    """Accept the four forms of DESIGN §7 and return the async-driver form."""
    if url.startswith(("postgresql://", "postgres://")):
        return "postgresql+asyncpg://" + url.split("://", 1)[1]
    if url.startswith("sqlite:///"):
        return "sqlite+aiosqlite:///" + url[len("sqlite:///") :]
    if url.startswith(("postgresql+asyncpg://", "sqlite+aiosqlite:///")):
        return url
    raise ValueError(
        "database_url must start with postgresql://, postgresql+asyncpg://, "
        "sqlite:/// or sqlite+aiosqlite:///"
    )


def _split_csv(value: object) -> object:
    if isinstance(value, str):
        return [part.strip() for part in value.split(",") if part.strip()]
    return value


# a duration setting is at most a year: beyond that a time computed from it overflows
YEAR_S = 365 * 24 * 3600.0
Seconds = Annotated[float, Field(gt=0, le=YEAR_S)]


class Settings(BaseSettings):
    # inf and nan are refused for every float (a lease of inf seconds has no end time)
    model_config = SettingsConfigDict(env_prefix="STEPWISE_", extra="ignore", allow_inf_nan=False)

    database_url: str = "sqlite+aiosqlite:///./stepwise.db"
    migrate_on_start: bool = True
    host: str = "127.0.0.1"
    port: int = Field(default=8000, ge=1, le=65535)
    processes: int = Field(default=1, ge=1)  # `serve` processes on the port (PostgreSQL only)

    # runners
    workers: int = Field(default_factory=lambda: max(4, 8 * (os.cpu_count() or 1)), ge=0)
    lease_s: Seconds = 30.0
    poll_interval_s: Seconds = 1.0
    sweep_interval_s: Seconds = 5.0
    shutdown_grace_s: float = Field(default=10.0, ge=0, le=YEAR_S)
    db_pool_size: int = Field(default=20, ge=1)

    # limits
    max_body_bytes: int = Field(default=10 << 20, gt=0)
    max_json_depth: int = Field(default=64, gt=0)
    max_definition_bytes: int = Field(default=1 << 20, gt=0)
    max_nodes: int = Field(default=1000, gt=0)
    max_state_bytes: int = Field(default=16 << 20, gt=0)
    max_steps: int = Field(default=10_000, gt=0)
    # lapsed leases at one checkpoint (its worker died each time) before the run fails
    max_recoveries: int = Field(default=5, ge=1)
    max_subgraph_depth: int = Field(default=8, gt=0)
    template_max_output_bytes: int = Field(default=1 << 20, gt=0)
    template_timeout_s: Seconds = 1.0
    max_wait_s: Seconds = 300.0

    # security
    api_keys: Annotated[list[str], NoDecode] = []
    allow_private_networks: bool = False
    http_allowed_hosts: Annotated[list[str], NoDecode] = []
    http_max_response_bytes: int = Field(default=10 << 20, gt=0)
    secrets_file: str | None = None

    # webhooks: attempts per delivery (backoff from 1 s, doubling, at most 5 min apart)
    webhook_attempts: int = Field(default=10, ge=1, le=100)
    webhook_timeout_s: Seconds = 10.0

    # events
    sse_keepalive_s: Seconds = 15.0
    sse_max_connections: int = Field(default=10_000, gt=0)
    sse_max_stream_s: Seconds = 3600.0

    # retention: ended runs older than this many days are deleted (None: kept)
    retention_days: int | None = Field(default=None, ge=1)
    retention_interval_s: Seconds = 3600.0
    retention_batch_runs: int = Field(default=500, ge=1)
    retention_batch_rows: int = Field(default=5000, ge=1)

    log_level: str = "INFO"
    log_json: bool = False

    _split = field_validator("api_keys", "http_allowed_hosts", mode="before")(_split_csv)

    @field_validator("database_url")
    @classmethod
    def _normalize_url(cls, value: str) -> str:
        return normalize_database_url(value)

    @field_validator("log_level")
    @classmethod
    def _known_level(cls, value: str) -> str:
        level = value.strip().upper()
        if level not in ("CRITICAL", "ERROR", "WARNING", "INFO", "DEBUG"):
            raise ValueError("log_level must be one of DEBUG, INFO, WARNING, ERROR, CRITICAL")
        return level

    @property
    def is_sqlite(self) -> bool:
        return self.database_url.startswith("sqlite")
