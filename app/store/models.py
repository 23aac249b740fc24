"""ORM models: workflows, prompts, runs, checkpoints, events, agent turns, the prompt
versions runs use, webhook deliveries.

These classes are the storage shape only; API schemas live in ``app.schemas``.
"""

from __future__ import annotations

from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Any, TypeVar

from sqlalchemy import (
    JSON,
    BigInteger,
    DateTime,
    ForeignKey,
    Index,
    Integer,
    MetaData,
    String,
    Table,
    Text,
    TypeDecorator,
    UniqueConstraint,
    text,
)
from sqlalchemy.engine import Dialect
from sqlalchemy.orm import DeclarativeBase, Mapped, class_mapper, mapped_column

NAMING_CONVENTION = {
    "ix": "ix_%(table_name)s_%(column_0_N_name)s",
    "uq": "uq_%(table_name)s_%(column_0_N_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}

# Plain JSON (text), not JSONB: key order is kept (a definition's first node is its
# default entry; states read back as written) and nothing here queries inside documents.
Json = JSON()


class UtcDateTime(TypeDecorator[datetime]):
    """A timezone-aware UTC timestamp on every backend (SQLite keeps no zone)."""

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            raise ValueError("naive datetime given to a UTC column")
        value = value.astimezone(UTC)
        return value.replace(tzinfo=None) if dialect.name == "sqlite" else value

    def process_result_value(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


def utcnow() -> datetime:
    return datetime.now(UTC)


def rfc3339(moment: datetime) -> str:
    """A UTC time as the API writes every time: ``2026-12-07T06:40:00.123456Z``."""
    return moment.astimezone(UTC).isoformat().replace("+00:00", "Z")


class Base(DeclarativeBase):
    metadata = MetaData(naming_convention=NAMING_CONVENTION)


M = TypeVar("M", bound=Base)


def detached(model: type[M], values: Mapping[str, Any]) -> M:
    """An instance of ``model`` holding ``values`` (by attribute name), as a loaded row
    would: no session, no change history. The constructor's per-attribute instrumentation
    cost ~45 µs for a run, a few per cent of the server's CPU per run; this costs ~3 µs.
    For copies that are read, never added to a session."""
    instance: M = class_mapper(model).class_manager.new_instance()
    instance.__dict__.update(values)
    return instance


def table(model: type[Base]) -> Table:
    """A model's table, for Core statements (the hot path skips the ORM)."""
    found = model.__table__
    assert isinstance(found, Table)
    return found


class Workflow(Base):
    __tablename__ = "workflows"
    __table_args__ = (UniqueConstraint("name", "version"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    name: Mapped[str] = mapped_column(String(100), index=True)
    version: Mapped[int] = mapped_column(Integer)
    description: Mapped[str | None] = mapped_column(Text)
    definition: Mapped[dict[str, Any]] = mapped_column(Json)
    hash: Mapped[str] = mapped_column(String(64), index=True)
    created_at: Mapped[datetime] = mapped_column(UtcDateTime, default=utcnow)


class Prompt(Base):
    """One version of a stored prompt (DESIGN §9). Rows are definitions: never changed or
    deleted, so the versions of a name are 1..latest without gaps."""

    __tablename__ = "prompts"
    __table_args__ = (UniqueConstraint("name", "version"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    name: Mapped[str] = mapped_column(String(100))
    version: Mapped[int] = mapped_column(Integer)
    template: Mapped[str] = mapped_column(Text)
    description: Mapped[str | None] = mapped_column(Text)
    hash: Mapped[str] = mapped_column(String(64))
    created_at: Mapped[datetime] = mapped_column(UtcDateTime, default=utcnow)


class Run(Base):
    __tablename__ = "runs"
    __table_args__ = (
        # claimable work: queued or suspended runs by due time
        Index(
            "ix_runs_claim_due",
            "status",
            "due_at",
            postgresql_where=text("status IN ('queued', 'suspended')"),
            sqlite_where=text("status IN ('queued', 'suspended')"),
        ),
        # runs waiting for people whose parallel branch has a timer (a `wait`) due
        Index(
            "ix_runs_paused_due",
            "due_at",
            postgresql_where=text(
                "status IN ('interrupted', 'awaiting_input') AND due_at IS NOT NULL"
            ),
            sqlite_where=text("status IN ('interrupted', 'awaiting_input') AND due_at IS NOT NULL"),
        ),
        # running runs by lease expiry, for recovery
        Index(
            "ix_runs_lease",
            "lease_expires_at",
            postgresql_where=text("status = 'running'"),
            sqlite_where=text("status = 'running'"),
        ),
        Index("ix_runs_list", "created_at", "id"),
        Index("ix_runs_workflow_created", "workflow_name", "created_at"),
        Index("ix_runs_status_created", "status", "created_at"),
        # ended runs by age, for retention
        Index(
            "ix_runs_ended",
            "updated_at",
            "id",
            postgresql_where=text("status IN ('completed', 'failed', 'cancelled')"),
            sqlite_where=text("status IN ('completed', 'failed', 'cancelled')"),
        ),
    )

    id: Mapped[str] = mapped_column(String(36), primary_key=True)
    workflow_name: Mapped[str] = mapped_column(String(100))
    workflow_version: Mapped[int | None] = mapped_column(Integer)
    definition_hash: Mapped[str] = mapped_column(String(64))
    inline_definition: Mapped[dict[str, Any] | None] = mapped_column(Json)
    status: Mapped[str] = mapped_column(String(20))
    inputs: Mapped[dict[str, Any]] = mapped_column(Json)
    meta: Mapped[dict[str, Any] | None] = mapped_column("metadata", Json)
    output: Mapped[Any] = mapped_column(Json, nullable=True)
    error: Mapped[dict[str, Any] | None] = mapped_column(Json)
    current_node: Mapped[str | None] = mapped_column(String(200))
    interrupt: Mapped[dict[str, Any] | None] = mapped_column(Json)
    awaiting: Mapped[dict[str, Any] | None] = mapped_column(Json)
    # what a response, message, resume or state edit left for the runner to pick up
    resume_data: Mapped[dict[str, Any] | None] = mapped_column(Json)
    # answers to pauses inside parallel branches of a running run, until its execution
    # takes them into a checkpoint (DESIGN §10)
    answers: Mapped[list[dict[str, Any]] | None] = mapped_column(Json)
    due_at: Mapped[datetime | None] = mapped_column(UtcDateTime)
    parent_run_id: Mapped[str | None] = mapped_column(
        String(36), ForeignKey("runs.id", ondelete="SET NULL"), index=True
    )
    forked_from_checkpoint_id: Mapped[str | None] = mapped_column(String(36))
    step_count: Mapped[int] = mapped_column(Integer, default=0)
    attempt: Mapped[int] = mapped_column(Integer, default=0)
    head_checkpoint_id: Mapped[str | None] = mapped_column(String(36))
    event_seq: Mapped[int] = mapped_column(Integer, default=0)
    checkpoint_seq: Mapped[int] = mapped_column(Integer, default=0)
    lease_owner: Mapped[str | None] = mapped_column(String(100))
    lease_expires_at: Mapped[datetime | None] = mapped_column(UtcDateTime)
    lease_token: Mapped[int] = mapped_column(Integer, default=0)
    # since the head checkpoint: leases that lapsed (its worker died) and executions that
    # raised inside the service; past their limits the run fails instead of looping
    recoveries: Mapped[int] = mapped_column(Integer, default=0, server_default="0")
    error_attempts: Mapped[int] = mapped_column(Integer, default=0, server_default="0")
    idempotency_key: Mapped[str | None] = mapped_column(String(255), unique=True)
    request_hash: Mapped[str | None] = mapped_column(String(64))
    webhook: Mapped[str | None] = mapped_column(Text)
    created_at: Mapped[datetime] = mapped_column(UtcDateTime, default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(UtcDateTime, default=utcnow)


class Checkpoint(Base):
    __tablename__ = "checkpoints"
    __table_args__ = (UniqueConstraint("run_id", "seq"),)

    id: Mapped[str] = mapped_column(String(36), primary_key=True)
    run_id: Mapped[str] = mapped_column(String(36), ForeignKey("runs.id", ondelete="CASCADE"))
    parent_id: Mapped[str | None] = mapped_column(String(36))
    seq: Mapped[int] = mapped_column(Integer)
    last_node: Mapped[str | None] = mapped_column(String(200))
    next_node: Mapped[str | None] = mapped_column(String(200))
    status: Mapped[str] = mapped_column(String(20))
    steps_completed: Mapped[int] = mapped_column(Integer)
    # null: `data` is a full snapshot; else `data` is a delta against that snapshot
    base_id: Mapped[str | None] = mapped_column(String(36))
    data: Mapped[Any] = mapped_column(Json)
    created_at: Mapped[datetime] = mapped_column(UtcDateTime, default=utcnow)


class Event(Base):
    __tablename__ = "events"

    run_id: Mapped[str] = mapped_column(
        String(36), ForeignKey("runs.id", ondelete="CASCADE"), primary_key=True
    )
    seq: Mapped[int] = mapped_column(Integer, primary_key=True)
    type: Mapped[str] = mapped_column(String(40))
    node: Mapped[str | None] = mapped_column(String(200))
    ts: Mapped[datetime] = mapped_column(UtcDateTime, default=utcnow)
    data: Mapped[Any] = mapped_column(Json)


class AgentTurn(Base):
    """The durable journal of an agent step's loop (DESIGN §9): each model answer and
    each tool result of one visit of a node, recorded before the loop goes on."""

    __tablename__ = "agent_turns"

    run_id: Mapped[str] = mapped_column(
        String(36), ForeignKey("runs.id", ondelete="CASCADE"), primary_key=True
    )
    node: Mapped[str] = mapped_column(String(200), primary_key=True)
    visit: Mapped[int] = mapped_column(Integer, primary_key=True)
    seq: Mapped[int] = mapped_column(Integer, primary_key=True)
    kind: Mapped[str] = mapped_column(String(20))  # model, tool, human, user
    data: Mapped[Any] = mapped_column(Json)
    created_at: Mapped[datetime] = mapped_column(UtcDateTime, default=utcnow)
    # the run's checkpoint_seq when the turn was recorded: every checkpoint up to it was
    # committed before the turn, and none after it (a fork takes the turns before its
    # checkpoint by this, not by clocks); 0 in a fork for the turns copied into it, NULL
    # for turns recorded before the column existed
    checkpoint_seq: Mapped[int | None] = mapped_column(Integer)


class RunPrompt(Base):
    """The version of a stored prompt a run uses where it names the prompt without one:
    the latest when the run first used it (DESIGN §9: a resume or a replay, time travel
    included, uses the same text). Kept by forks."""

    __tablename__ = "run_prompts"

    run_id: Mapped[str] = mapped_column(
        String(36), ForeignKey("runs.id", ondelete="CASCADE"), primary_key=True
    )
    name: Mapped[str] = mapped_column(String(100), primary_key=True)
    version: Mapped[int] = mapped_column(Integer)
    created_at: Mapped[datetime] = mapped_column(UtcDateTime, default=utcnow)


class WebhookDelivery(Base):
    """The outbox of webhooks (``app.engine.webhooks``): a POST of the run resource owed
    to a run's ``webhook`` URL, written by the transaction that paused or ended the run,
    deleted once delivered or given up. ``due_at`` is when it may next be claimed: a claim
    moves it past the attempt's end, so a delivery whose process died is claimed again."""

    __tablename__ = "webhook_deliveries"
    __table_args__ = (
        Index("ix_webhook_deliveries_due_at", "due_at"),
        Index("ix_webhook_deliveries_run_id", "run_id", "id"),
    )

    # the order of a run's deliveries (its pauses and its end): each waits for the last
    id: Mapped[int] = mapped_column(
        BigInteger().with_variant(Integer, "sqlite"), primary_key=True, autoincrement=True
    )
    run_id: Mapped[str] = mapped_column(
        String(36)
    )  # no foreign key: a deleted run's end is owed too
    url: Mapped[str] = mapped_column(Text)
    body: Mapped[Any] = mapped_column(Json)  # the run resource as the settling write left it
    key: Mapped[str] = mapped_column(Text)  # its Idempotency-Key
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    due_at: Mapped[datetime] = mapped_column(UtcDateTime)
    last_error: Mapped[str | None] = mapped_column(Text)
    created_at: Mapped[datetime] = mapped_column(UtcDateTime, default=utcnow)
