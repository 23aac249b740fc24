"""The run resource (API responses and webhook bodies), built from stored rows."""

from __future__ import annotations

import logging
from typing import Any

from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from app.engine import branchdoc, memory
from app.schemas.runs import RunError, RunOut, Usage, WorkflowRef
from app.store import checkpoints as checkpoint_store
from app.store import runs as run_store
from app.store.database import lone_statement, transaction
from app.store.models import Run
from app.store.statements import run_and_head

log = logging.getLogger(__name__)


async def run_out(session: AsyncSession, run: Run) -> RunOut:
    """The run resource; its state is read from the run's head checkpoint (null, and
    logged, when that checkpoint cannot be read: the run is still listed and shown)."""
    loaded = None
    if run.head_checkpoint_id is not None:
        try:
            loaded = await checkpoint_store.load(session, run.head_checkpoint_id)
        except checkpoint_store.CorruptCheckpoint as exc:
            log.error("run %s: %s", run.id, exc)
    return doc_resource(run, loaded[1] if loaded is not None else None)


async def read_resource(
    sessions: async_sessionmaker[AsyncSession], run_id: str, *, postgres: bool
) -> tuple[Run, RunOut] | None:
    """The run and its resource as committed now, or None if there is no such run. On
    Postgres one statement outside any transaction (the run joined with its head
    checkpoint and that one's snapshot), where the ORM took a transaction and two reads."""
    if postgres:
        try:
            async with lone_statement(sessions) as connection:
                read = await run_and_head(connection, run_id)
        except checkpoint_store.CorruptCheckpoint:
            pass  # read again below, where run_out shows it without its state
        else:
            if read is None:
                return None
            run, head = read
            return run, doc_resource(run, head[1] if head is not None else None)
    async with transaction(sessions) as session:
        found = await run_store.get(session, run_id)
        return None if found is None else (found, await run_out(session, found))


def doc_resource(run: Run, doc: memory.Doc | None) -> RunOut:
    """The run resource with the state and usage of ``doc``, the full document of its
    head checkpoint (None: the run has none)."""
    if doc is None:
        return run_resource(run, None)
    return run_resource(run, memory.top_state(doc), doc.get("usage"))


def run_resource(run: Run, state: Any, usage: dict[str, int] | None = None) -> RunOut:
    queued = run.status == "queued"
    # a running run lists the interrupts its paused branches wait for (DESIGN §10)
    listed = run.status in ("interrupted", "running", "queued")
    pending = branchdoc.interrupts_of(run.interrupt) if listed else []
    return RunOut(
        id=run.id,
        workflow=WorkflowRef(name=run.workflow_name, version=run.workflow_version),
        status=run.status,
        inputs=run.inputs,
        state=state,
        output=run.output,
        error=RunError.model_validate(run.error) if run.error else None,
        current_node=run.current_node,
        interrupt=pending[0] if pending else None,
        interrupts=pending,
        awaiting_input=run.awaiting if run.status == "awaiting_input" else None,
        resume_at=run.due_at if run.status == "suspended" else None,
        start_at=run.due_at if queued else None,
        parent_run_id=run.parent_run_id,
        forked_from_checkpoint_id=run.forked_from_checkpoint_id,
        step_count=run.step_count,
        usage=Usage.model_validate(usage) if usage else Usage(),
        metadata=run.meta,
        webhook=run.webhook,
        created_at=run.created_at,
        updated_at=run.updated_at,
    )
