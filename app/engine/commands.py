"""What clients do to runs: start, answer, message, resume, fork, edit, cancel, delete.

Each command is one transaction that locks the run, checks the transition
(``app.engine.lifecycle``) and writes the change with its events; the runner pool and
other processes are woken only after the commit.
"""

from __future__ import annotations

import hashlib
import uuid
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from jsonschema.validators import validator_for
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncSession

from app.engine import memory
from app.engine.lifecycle import PAUSED, TERMINAL, RunStatus, change_status
from app.engine.services import Engine
from app.engine.subgraphs import SubgraphFrames
from app.engine.templates import TemplateError
from app.engine.validation import canonical_json, definition_hash
from app.errors import Conflict, Invalid, NotFound, error_item
from app.schemas.definition import WorkflowDefinition
from app.schemas.runs import ForkRequest, InterruptResponse, RunCreate, StateEdit
from app.store import checkpoints as checkpoint_store
from app.store import runs as run_store
from app.store.checkpoints import CheckpointRow
from app.store.database import transaction
from app.store.events import NewEvent, insert_events
from app.store.models import Run, utcnow
from app.store.progress import record_step

Loc = list[str | int]


@dataclass(frozen=True, slots=True)
class Started:
    run: Run
    created: bool
    state: Any = None  # the initial state of a run just created (no read-back needed)


@dataclass(frozen=True, slots=True)
class Answered:
    run: Run
    doc: memory.Doc | None = None  # the head checkpoint's document, when it was read


def schema_errors(schema: dict[str, Any], value: Any, loc: Loc) -> list[dict[str, Any]]:
    validator = validator_for(schema)(schema)
    return [
        error_item([*loc, *err.absolute_path], err.message, "schema")
        for err in sorted(validator.iter_errors(value), key=lambda e: list(e.absolute_path))
    ]


async def _load_doc(
    session: AsyncSession, run: Run, checkpoint_id: str | None = None
) -> tuple[Any, Any]:
    cid = checkpoint_id or run.head_checkpoint_id
    loaded = await checkpoint_store.load(session, cid) if cid else None
    if loaded is None or loaded[0].run_id != run.id:
        raise NotFound(
            f"checkpoint {checkpoint_id!r} not found in run {run.id}", code="checkpoint_not_found"
        )
    checkpoint, doc, _ = loaded
    return checkpoint, doc


async def _load_memory(
    session: AsyncSession, run: Run
) -> tuple[Any, memory.Doc, checkpoint_store.CheckpointChain]:
    assert run.head_checkpoint_id is not None
    loaded = await checkpoint_store.load(session, run.head_checkpoint_id)
    assert loaded is not None, f"run {run.id} has no head checkpoint"
    return loaded


async def _write_snapshot(
    session: AsyncSession,
    run: Run,
    doc: Any,
    *,
    status: str,
    last_node: str | None,
    events: list[NewEvent],
    values: dict[str, Any] | None = None,
    parent_id: str | None = None,
    steps: int | None = None,
) -> str:
    """A full checkpoint written by a command (not a runner), with its events."""
    inner = len(doc["frames"]) - 1
    row = CheckpointRow(
        str(uuid.uuid4()),
        run.id,
        parent_id if parent_id is not None else run.head_checkpoint_id,
        0,
        last_node,
        memory.node_path(doc, inner, doc["frames"][inner]["node"]),
        status,
        run.step_count if steps is None else steps,
    )
    current = {"current_node": row.next_node, **(values or {})}
    recorded = await record_step(
        session,
        run.id,
        guard=(Run.status == run.status),
        values=current,
        events=events,
        checkpoint=row,
        base_id=None,
        data=doc,
    )
    if recorded is None:
        raise Conflict("the run changed meanwhile; try again", code="run_busy")
    return row.id


class RunCommands:
    def __init__(self, engine: Engine) -> None:
        self.engine = engine

    def _can_reserve(self) -> bool:
        return self.engine.runner_owner is not None and self.engine.can_adopt()

    def _reservation(self) -> dict[str, Any]:
        """Lease columns that queue a run for this process's runners (see
        ``run_store.reservation``), when they can take it now; else none."""
        if self.engine.runner_owner is None or not self._can_reserve():
            return {}
        now, lease_s = utcnow(), self.engine.settings.lease_s
        return run_store.reservation(self.engine.runner_owner, now, lease_s, Run.lease_token + 1)

    def _lease_for_new(self, local: bool, now: datetime) -> dict[str, Any]:
        if not local or self.engine.runner_owner is None:
            return {"lease_token": 0}
        return run_store.reservation(self.engine.runner_owner, now, self.engine.settings.lease_s, 1)

    def _reserved(self, run: Run) -> bool:
        return run.lease_owner is not None and run.lease_owner == self.engine.runner_owner

    async def _hand_over(
        self,
        session: AsyncSession,
        run: Run,
        loaded: tuple[Any, memory.Doc, checkpoint_store.CheckpointChain] | None = None,
    ) -> memory.Handover | None:
        """What this process's runner needs of a run queued for it (None if it was not)."""
        if not self._reserved(run):
            return None
        checkpoint, doc, chain = loaded or await _load_memory(session, run)
        definitions = await SubgraphFrames.definitions_of(self.engine, session, run, doc)
        return memory.Handover(run, checkpoint.id, doc, definitions, chain, checkpoint.status)

    def _after_commit(
        self, run: Run, *, work: bool = False, handover: memory.Handover | None = None
    ) -> None:
        self.engine.on_events(run.id, run.event_seq, run.status)
        reserved = self._reserved(run)
        if work and not (
            run.status == RunStatus.QUEUED
            and run.due_at is None
            and self.engine.adopt(
                run.id, handover if reserved else None, run.lease_token if reserved else None
            )
        ):
            self.engine.on_work()
        if run.webhook and run.status in TERMINAL:
            self.engine.on_settled(run.id)

    # -- start ------------------------------------------------------------------------------

    async def _definition(
        self, session: AsyncSession, body: RunCreate
    ) -> tuple[WorkflowDefinition, str, int | None, str, dict[str, Any] | None]:
        if body.definition is not None:
            raw = {"name": "inline", **body.definition}
            definition, errors = self.engine.validator.validate(raw)
            if definition is None:
                errors = [{**e, "loc": ["body", "definition", *e["loc"]]} for e in errors]
                raise Invalid(
                    "the inline definition is invalid", code="invalid_definition", errors=errors
                )
            return definition, definition.name, None, definition_hash(raw), raw
        assert body.workflow is not None
        definition, version, digest = await self.engine.definitions.stored(
            session, body.workflow, body.version
        )
        return definition, body.workflow, version, digest, None

    async def start(self, body: RunCreate, idempotency_key: str | None) -> Started:
        request_hash = hashlib.sha256(
            canonical_json(body.model_dump(mode="json")).encode()
        ).hexdigest()
        if idempotency_key is not None:
            async with transaction(self.engine.sessions) as session:
                existing = await run_store.get_by_idempotency_key(session, idempotency_key)
            if existing is not None:
                return self._replay(existing, request_hash)
        # a run due now that this process can execute at once is reserved for it
        local = body.start_at is None and self._can_reserve()
        try:
            async with transaction(self.engine.sessions) as session:
                handover = await self._insert(session, body, idempotency_key, request_hash, local)
        except IntegrityError:
            if idempotency_key is None:
                raise
            async with transaction(self.engine.sessions) as session:
                existing = await run_store.get_by_idempotency_key(session, idempotency_key)
            if existing is None:
                raise
            return self._replay(existing, request_hash)
        self._after_commit(handover.run, work=True, handover=handover)
        return Started(handover.run, True, handover.doc["frames"][0]["state"])

    def _replay(self, existing: Run, request_hash: str) -> Started:
        if existing.request_hash != request_hash:
            raise Conflict(
                "this Idempotency-Key was used with another request body",
                code="idempotency_key_reused",
            )
        return Started(existing, False)

    async def _insert(
        self,
        session: AsyncSession,
        body: RunCreate,
        key: str | None,
        request_hash: str,
        local: bool,
    ) -> memory.Handover:
        definition, name, version, digest, inline = await self._definition(session, body)
        if definition.inputs is not None:
            errors = schema_errors(definition.inputs, body.inputs, ["body", "inputs"])
            if errors:
                raise Invalid(
                    "the inputs do not match the workflow's input schema",
                    code="invalid_inputs",
                    errors=errors,
                )
        try:
            frame = memory.new_frame(definition, body.inputs, self.engine.templates)
        except TemplateError as exc:
            raise Invalid(
                f"the initial state does not render: {exc.message}",
                code="invalid_inputs",
                errors=[error_item(["body", "inputs"], exc.message)],
            ) from None
        now = utcnow()
        run_id = str(uuid.uuid4())
        checkpoint_id = str(uuid.uuid4())
        doc = memory.new_document(frame)
        events = [
            NewEvent("run.queued", None, {"workflow": {"name": name, "version": version}}),
            NewEvent("checkpoint.saved", frame["node"], {"checkpoint_id": checkpoint_id, "seq": 1}),
        ]
        run = await run_store.insert_run(
            session,
            {
                "id": run_id,
                "workflow_name": name,
                "workflow_version": version,
                "definition_hash": digest,
                "inline_definition": inline,
                "status": "queued",
                "inputs": body.inputs,
                "meta": body.metadata,
                "current_node": frame["node"],
                "due_at": body.start_at,
                "step_count": 0,
                "attempt": 0,
                "head_checkpoint_id": checkpoint_id,
                "event_seq": len(events),
                "checkpoint_seq": 1,
                **self._lease_for_new(local, now),
                "idempotency_key": key,
                "request_hash": request_hash,
                "webhook": body.webhook,
                "created_at": now,
                "updated_at": now,
            },
        )
        await checkpoint_store.insert_checkpoint(
            session,
            CheckpointRow(checkpoint_id, run_id, None, 1, None, frame["node"], "queued", 0, now),
            None,
            doc,
        )
        await insert_events(session, run_id, len(events), events, now)
        if not local:
            await run_store.notify(session, "stepwise_work", run_id)
        chain = checkpoint_store.CheckpointChain.snapshot(checkpoint_id, doc)
        return memory.Handover(run, checkpoint_id, doc, [definition], chain)

    # -- answers ----------------------------------------------------------------------------

    async def respond(self, run_id: str, body: InterruptResponse) -> Answered:
        handover = doc = None
        async with transaction(self.engine.sessions) as session:
            run = await self._locked(session, run_id)
            pending = run.interrupt if run.status == RunStatus.INTERRUPTED else None
            if pending is None:
                raise Conflict(
                    f"run {run_id} has no pending interrupt (it is {run.status})",
                    code="interrupt_not_pending",
                    extra={"reason": "no_pending_interrupt"},
                )
            if body.interrupt_id != pending["id"]:
                raise Conflict(
                    f"interrupt {body.interrupt_id!r} is not the pending one",
                    code="interrupt_not_pending",
                    extra={"reason": "stale_interrupt_id"},
                )
            answer = body.model_dump(exclude={"interrupt_id"})
            answer["interrupt_id"] = body.interrupt_id
            who = body.responded_by or "someone"
            if body.status == "approved":
                checkpoint, doc, chain = await _load_memory(session, run)
                schema = doc.get("interrupt_schema")
                if isinstance(schema, dict):
                    errors = schema_errors(schema, body.value, ["body", "value"])
                    if errors:
                        raise Invalid(
                            "the value does not match the interrupt's schema",
                            code="invalid_response",
                            errors=errors,
                        )
                run = await change_status(
                    session,
                    run_id,
                    RunStatus.QUEUED,
                    values={
                        "resume_data": {
                            "response": answer,
                            "info": {"interrupt_id": body.interrupt_id},
                        },
                        "interrupt": None,
                        **self._reservation(),
                    },
                )
                handover = await self._hand_over(session, run, (checkpoint, doc, chain))
            elif body.status == "cancelled":
                run = await change_status(
                    session,
                    run_id,
                    RunStatus.CANCELLED,
                    values={"interrupt": None},
                    events=[NewEvent("run.cancelled", pending["node"], {"by": who})],
                )
            else:
                code = "interrupt_rejected" if body.status == "rejected" else "interrupt_timed_out"
                verb = "rejected" if body.status == "rejected" else "timed out"
                message = f"interrupt {verb} by {who}" + (
                    f": {body.comment}" if body.comment else ""
                )
                error = {
                    "code": code,
                    "message": message,
                    "node": pending["node"],
                    "details": {"responded_by": body.responded_by, "comment": body.comment},
                }
                run = await change_status(
                    session,
                    run_id,
                    RunStatus.FAILED,
                    values={"interrupt": None, "error": error},
                    events=[NewEvent("run.failed", pending["node"], {"error": error})],
                )
        self._after_commit(run, work=True, handover=handover)
        return Answered(run, doc)

    async def message(self, run_id: str, message: Any) -> Answered:
        async with transaction(self.engine.sessions) as session:
            await self._locked(session, run_id)
            run = await change_status(
                session,
                run_id,
                RunStatus.QUEUED,
                expect=[RunStatus.AWAITING_INPUT],
                code="run_not_awaiting_input",
                values={
                    "resume_data": {"message": message, "ts": utcnow().isoformat()},
                    "awaiting": None,
                    **self._reservation(),
                },
            )
            handover = await self._hand_over(session, run)
        self._after_commit(run, work=True, handover=handover)
        return Answered(run, handover.doc if handover else None)

    async def resume(self, run_id: str, checkpoint_id: str | None) -> Run:
        async with transaction(self.engine.sessions) as session:
            run = await self._locked(session, run_id)
            if checkpoint_id is None:
                run = await change_status(
                    session,
                    run_id,
                    RunStatus.QUEUED,
                    code="run_not_resumable",
                    expect=[RunStatus.SUSPENDED, RunStatus.FAILED],
                    values={
                        "resume_data": {"info": {"requested": True}},
                        "due_at": None,
                        "error": None,
                    },
                )
            else:
                if run.status in (RunStatus.QUEUED, RunStatus.RUNNING):
                    raise Conflict(f"run {run_id} is {run.status}", code="run_not_resumable")
                checkpoint, doc = await _load_doc(session, run, checkpoint_id)
                run = await change_status(
                    session,
                    run_id,
                    RunStatus.QUEUED,
                    code="run_not_resumable",
                    values={
                        "head_checkpoint_id": checkpoint.id,
                        "step_count": checkpoint.steps_completed,
                        "resume_data": {"info": {"checkpoint_id": checkpoint.id}},
                        "due_at": None,
                        "error": None,
                        "output": None,
                        "interrupt": doc.get("interrupt"),
                        "awaiting": doc.get("awaiting"),
                        "current_node": checkpoint.next_node,
                    },
                )
        self._after_commit(run, work=True)
        return run

    # -- history -----------------------------------------------------------------------------

    async def fork(self, run_id: str, body: ForkRequest) -> Run:
        async with transaction(self.engine.sessions) as session:
            source = await self._locked(session, run_id)
            checkpoint, doc = await _load_doc(session, source, body.checkpoint_id)
            frames = list(doc["frames"])
            frames[0] = {
                **frames[0],
                "state": memory.merge_patch(frames[0]["state"], body.state_patch),
            }
            doc = {"frames": frames, "interrupt": None, "awaiting": None}
            inputs = (
                memory.merge_patch(source.inputs, body.inputs_patch)
                if body.inputs_patch
                else source.inputs
            )
            now = utcnow()
            fork_id, fork_checkpoint = str(uuid.uuid4()), str(uuid.uuid4())
            next_node = checkpoint.next_node
            forked = {"from_run_id": source.id, "run_id": fork_id, "checkpoint_id": checkpoint.id}
            events = [
                NewEvent(
                    "run.queued",
                    None,
                    {
                        "workflow": {
                            "name": source.workflow_name,
                            "version": source.workflow_version,
                        }
                    },
                ),
                NewEvent("run.forked", None, forked),
                NewEvent(
                    "checkpoint.saved", next_node, {"checkpoint_id": fork_checkpoint, "seq": 1}
                ),
            ]
            run = await run_store.insert_run(
                session,
                {
                    "id": fork_id,
                    "workflow_name": source.workflow_name,
                    "workflow_version": source.workflow_version,
                    "definition_hash": source.definition_hash,
                    "inline_definition": source.inline_definition,
                    "status": "queued",
                    "inputs": inputs,
                    "meta": source.meta,
                    "current_node": next_node,
                    "step_count": checkpoint.steps_completed,
                    "attempt": 0,
                    "head_checkpoint_id": fork_checkpoint,
                    "event_seq": len(events),
                    "checkpoint_seq": 1,
                    "lease_token": 0,
                    "webhook": source.webhook,
                    "parent_run_id": source.id,
                    "forked_from_checkpoint_id": checkpoint.id,
                    "created_at": now,
                    "updated_at": now,
                },
            )
            await checkpoint_store.insert_checkpoint(
                session,
                CheckpointRow(
                    fork_checkpoint,
                    fork_id,
                    None,
                    1,
                    checkpoint.last_node,
                    next_node,
                    "queued",
                    checkpoint.steps_completed,
                    now,
                ),
                None,
                doc,
            )
            await insert_events(session, fork_id, len(events), events, now)
            recorded = await record_step(
                session,
                source.id,
                guard=None,
                values={},
                events=[NewEvent("run.forked", None, forked)],
            )
            assert recorded is not None
            await run_store.notify(session, "stepwise_work", fork_id)
        self.engine.on_events(source.id, recorded.last_event_seq, recorded.status)
        self._after_commit(run, work=True)
        return run

    async def edit_state(self, run_id: str, body: StateEdit) -> Run:
        async with transaction(self.engine.sessions) as session:
            run = await self._locked(session, run_id)
            if run.status not in (*PAUSED, RunStatus.FAILED):
                raise Conflict(
                    f"run {run_id} is {run.status}; only a paused or failed run's state can be edited",
                    code="run_not_editable",
                )
            _, doc = await _load_doc(session, run)
            frames = list(doc["frames"])
            top = {**frames[0], "state": memory.merge_patch(frames[0]["state"], body.state_patch)}
            if body.goto is not None:
                definition = await self.engine.definitions.for_run(session, run)
                if body.goto not in definition.nodes:
                    raise Invalid(
                        f"goto: unknown node {body.goto!r}",
                        code="unknown_node",
                        errors=[error_item(["body", "goto"], f"no node {body.goto!r}")],
                    )
                visits = {**top["visits"], body.goto: top["visits"].get(body.goto, 0) + 1}
                top = {**top, "node": body.goto, "visits": visits}
                frames = [top]
            else:
                frames[0] = top
            doc = {**doc, "frames": frames}
            info = {"keys": sorted(body.state_patch), "goto": body.goto, "by": "api"}
            await _write_snapshot(
                session,
                run,
                doc,
                status=run.status,
                last_node=None,
                events=[NewEvent("state.updated", None, info)],
            )
            await session.refresh(run)
        self._after_commit(run)
        return run

    # -- ending ---------------------------------------------------------------------------

    async def cancel(self, run_id: str) -> Run:
        async with transaction(self.engine.sessions) as session:
            run = await self._locked(session, run_id)
            if run.status in TERMINAL:
                raise Conflict(f"run {run_id} is already {run.status}", code="run_not_cancellable")
            run = await change_status(
                session,
                run_id,
                RunStatus.CANCELLED,
                code="run_not_cancellable",
                values={"interrupt": None, "awaiting": None, "due_at": None},
                events=[NewEvent("run.cancelled", run.current_node, {"by": "api"})],
            )
            await run_store.notify(session, "stepwise_control", f"cancel:{run_id}")
        self._after_commit(run)
        self.engine.on_cancel(run_id)
        return run

    async def delete(self, run_id: str) -> None:
        async with transaction(self.engine.sessions) as session:
            run = await self._locked(session, run_id)
            if run.status in (RunStatus.QUEUED, RunStatus.RUNNING):
                raise Conflict(f"run {run_id} is {run.status}; cancel it first", code="run_active")
            await run_store.delete_run(session, run_id)

    async def _locked(self, session: AsyncSession, run_id: str) -> Run:
        run = await run_store.get(session, run_id, lock=True)
        if run is None:
            raise NotFound(f"run {run_id!r} not found", code="run_not_found")
        return run
