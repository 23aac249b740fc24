"""Commands over a run's history: resume (from the latest or any earlier checkpoint),
fork a new run from a checkpoint, and edit a paused run's state in place."""

from __future__ import annotations

from typing import Any

from sqlalchemy.ext.asyncio import AsyncSession

from app.engine import branchdoc, memory
from app.engine.lifecycle import PAUSED, RunStatus, change_status
from app.engine.queueing import CommandBase, load_doc
from app.engine.schema_checks import instance_errors
from app.errors import Conflict, Invalid, error_item
from app.schemas.runs import ForkRequest, StateEdit
from app.store import agent_turns as agent_turn_store
from app.store import checkpoints as checkpoint_store
from app.store import run_prompts as run_prompt_store
from app.store import runs as run_store
from app.store.checkpoints import CheckpointRow
from app.store.database import transaction
from app.store.events import NewEvent, insert_events
from app.store.ids import new_id
from app.store.models import Run, utcnow
from app.store.progress import record_step
from app.store.statements import Unchanged


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
    row = CheckpointRow(
        new_id(),
        run.id,
        parent_id if parent_id is not None else run.head_checkpoint_id,
        0,
        last_node,
        branchdoc.current_node(doc),
        status,
        run.step_count if steps is None else steps,
    )
    current = {"current_node": row.next_node, **(values or {})}
    recorded = await record_step(
        session,
        run.id,
        guard=Unchanged(run.status),
        values=current,
        events=events,
        checkpoint=row,
        base_id=None,
        data=doc,
    )
    if recorded is None:
        raise Conflict("the run changed meanwhile; try again", code="run_busy")
    return row.id


# a resumed run starts counting lapsed leases and internal errors anew
FRESH_COUNTERS = {"recoveries": 0, "error_attempts": 0}


async def _usage(session: AsyncSession, run: Run) -> dict[str, Any]:
    """The model usage of the run's head, to carry into the timeline it goes to (none
    when the head cannot be read: time travel is how such a run is brought back)."""
    try:
        _, head, _ = await load_doc(session, run)
    except checkpoint_store.CorruptCheckpoint:
        return {}
    return {"usage": head["usage"]} if head.get("usage") else {}


def _marks_for_fork(doc: Any, source_id: str, fork_id: str) -> Any:
    """``doc`` with the model turns its usage counted (``usage_marks``, keyed by the step
    visit's idempotency key ``run:node:visit``) keyed by the fork's id: the fork replays
    the journal turns copied from the source under its own id, and a turn the checkpoint's
    usage counted is not counted again (one it had not counted yet is, once)."""
    prefix = f"{source_id}:"
    marks = doc.get("usage_marks")
    if marks:
        renamed = {
            f"{fork_id}:{key[len(prefix) :]}" if key.startswith(prefix) else key: seq
            for key, seq in marks.items()
        }
        doc = {**doc, "usage_marks": renamed}
    i = branchdoc.section_index(doc)
    if i is None:
        return doc
    section = doc["frames"][i][branchdoc.PARALLEL]
    branches = [
        {**entry, "doc": _marks_for_fork(entry["doc"], source_id, fork_id)}
        for entry in section["branches"]
    ]
    return memory.replace_frame(doc, i, **{branchdoc.PARALLEL: {**section, "branches": branches}})


class HistoryCommands(CommandBase):
    async def resume(self, run_id: str, checkpoint_id: str | None) -> Run:
        waking = False
        async with transaction(self.engine.sessions) as session:
            run = await self._locked(session, run_id)
            if checkpoint_id is None and run.status in (RunStatus.QUEUED, RunStatus.RUNNING):
                # branches held by `wait` while others run: they go on now
                _, doc, _ = await load_doc(session, run)
                if not any(status == "suspended" for _, _, status in branchdoc.leaves(doc)):
                    raise Conflict(f"run {run_id} is {run.status}", code="run_not_resumable")
                wake = {"wake": True, "info": {"requested": True}}
                run = await self._leave_answer(session, run, wake)
                waking = True
            elif checkpoint_id is None:
                if run.status in (RunStatus.INTERRUPTED, RunStatus.AWAITING_INPUT):
                    await self._refuse_paused_branches(session, run)
                run = await change_status(
                    session,
                    run_id,
                    RunStatus.QUEUED,
                    code="run_not_resumable",
                    expect=[
                        RunStatus.SUSPENDED,
                        RunStatus.FAILED,
                        RunStatus.INTERRUPTED,
                        RunStatus.AWAITING_INPUT,
                    ],
                    values={
                        # run.resumed says the status the run was in, not the checkpoint's
                        "resume_data": {"info": {"requested": True}, "from": str(run.status)},
                        "due_at": None,
                        "error": None,
                        "interrupt": None,
                        "awaiting": None,
                        **FRESH_COUNTERS,
                    },
                )
            else:
                if run.status in (RunStatus.QUEUED, RunStatus.RUNNING):
                    raise Conflict(f"run {run_id} is {run.status}", code="run_not_resumable")
                checkpoint, doc, _ = await load_doc(session, run, checkpoint_id)
                await agent_turn_store.discard_after(
                    session, run_id, checkpoint.seq, checkpoint.created_at
                )
                # run.resumed says the status the run was in, not the checkpoint's
                info = {"checkpoint_id": checkpoint.id, "from": str(run.status)}
                # the model calls of the timeline left stay counted (a run's usage, and
                # its token_budget, count each call once, whatever timeline made it)
                spent = await _usage(session, run)
                run = await change_status(
                    session,
                    run_id,
                    RunStatus.QUEUED,
                    code="run_not_resumable",
                    values={
                        "head_checkpoint_id": checkpoint.id,
                        "step_count": checkpoint.steps_completed,
                        "resume_data": {"info": info, **spent},
                        "due_at": None,
                        "error": None,
                        "output": None,
                        "interrupt": branchdoc.interrupt_column(doc),
                        "awaiting": branchdoc.first_awaiting(doc),
                        "current_node": checkpoint.next_node,
                        **FRESH_COUNTERS,
                    },
                )
        self._after_commit(run, work=not waking)
        if waking:
            self.engine.signal_answer(run_id)
        return run

    # -- history -----------------------------------------------------------------------------

    async def fork(self, run_id: str, body: ForkRequest) -> Run:
        async with transaction(self.engine.sessions) as session:
            source = await self._locked(session, run_id)
            checkpoint, doc, _ = await load_doc(session, source, body.checkpoint_id)
            # the patch reaches the branches of a fan-out too; pending pauses stay pending
            doc = branchdoc.patch_state(doc, body.state_patch)
            self._check_state_size(memory.top_state(doc), ["body", "state_patch"], "the state")
            if branchdoc.section_index(doc) is None:
                # its paused node runs again (an agent from its journal, copied below) and
                # pauses anew; the model usage counted so far stays the fork's
                counted: dict[str, Any] = {k: doc[k] for k in ("usage", "usage_marks") if k in doc}
                # an interrupt_after's node has run: the runner asks it again, not the node
                kept = doc["interrupt"] if memory.pending_after(doc) else None
                doc = {"frames": doc["frames"], "interrupt": kept, "awaiting": None, **counted}
            inputs = source.inputs
            if body.inputs_patch is not None:
                inputs = memory.merge_patch(source.inputs, body.inputs_patch)
                definition = await self.engine.definitions.for_run(session, source)
                if definition.inputs is not None:
                    errors = instance_errors(definition.inputs, inputs, ["body", "inputs_patch"])
                    if errors:
                        raise Invalid(
                            "the patched inputs do not match the workflow's input schema",
                            code="invalid_inputs",
                            errors=errors,
                        )
            now = utcnow()
            fork_id, fork_checkpoint = new_id(), new_id()
            doc = _marks_for_fork(doc, source.id, fork_id)
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
            # an agent paused (or cut short) at the checkpoint goes on from its last turn
            # recorded before it: the fork gets the source's journal as of the checkpoint
            await agent_turn_store.copy_to_fork(
                session, source.id, fork_id, checkpoint.seq, checkpoint.created_at
            )
            await run_prompt_store.copy_to_fork(session, source.id, fork_id)
            await insert_events(session, fork_id, len(events), events, now, groups=[len(events)])
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

    async def _refuse_paused_branches(self, session: AsyncSession, run: Run) -> None:
        """A resume of a run waiting for a person goes on from its latest checkpoint: the
        node there runs again (and asks anew, with a new interrupt id), or the node a
        ``goto`` moved it to runs. Parallel branches are answered one by one instead."""
        _, doc, _ = await load_doc(session, run)
        if any(branchdoc.PARALLEL in frame for frame in doc["frames"]):
            raise Conflict(
                f"run {run.id} is {run.status} in parallel branches; answer them "
                "(POST /response, /messages) or resume it from a checkpoint",
                code="run_not_resumable",
            )

    async def edit_state(self, run_id: str, body: StateEdit) -> Run:
        async with transaction(self.engine.sessions) as session:
            run = await self._locked(session, run_id)
            if run.status not in (*PAUSED, RunStatus.FAILED):
                raise Conflict(
                    f"run {run_id} is {run.status}; only a paused or failed run's state can be edited",
                    code="run_not_editable",
                )
            _, doc, _ = await load_doc(session, run)
            doc = branchdoc.patch_state(doc, body.state_patch)
            self._check_state_size(memory.top_state(doc), ["body", "state_patch"], "the state")
            frames = list(doc["frames"])
            top = frames[0]
            values: dict[str, Any] = {}
            if body.goto is not None:
                definition = await self.engine.definitions.for_run(session, run)
                if body.goto not in definition.nodes:
                    raise Invalid(
                        f"goto: unknown node {body.goto!r}",
                        code="unknown_node",
                        errors=[error_item(["body", "goto"], f"no node {body.goto!r}")],
                    )
                visits = {**top["visits"], body.goto: top["visits"].get(body.goto, 0) + 1}
                # (a node whose edge was to be chosen again is left: the goto node runs)
                top = {k: v for k, v in top.items() if k != memory.ROUTE_AGAIN}
                top = {**top, "node": body.goto, "visits": visits}
                if top.pop(branchdoc.PARALLEL, None) is not None:  # it leaves the branches
                    # as in a run with no branches, one pending interrupt (the first) goes
                    # on with the run when answered; the others went with their branches
                    values = {"interrupt": branchdoc.column_of(
                        branchdoc.interrupts_of(run.interrupt)[:1])}  # fmt: skip
                doc = {**doc, "frames": [top], "interrupt": None, "awaiting": None}
            info = {"keys": sorted(body.state_patch), "goto": body.goto, "by": "api"}
            await _write_snapshot(
                session,
                run,
                doc,
                status=run.status,
                last_node=None,
                events=[NewEvent("state.updated", None, info)],
                values=values,
            )
            await session.refresh(run)
        self._after_commit(run)
        return run
