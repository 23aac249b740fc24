"""How a run execution records its progress: buffered events, checkpoints, and the
fenced transaction that writes them (``app.store.progress``).

Group commit: a *pure* step (``pure = True``: no I/O, no side effect, e.g. ``set``) may
share its commit with the steps after it, up to ``MAX_GROUP`` steps. Every step still
gets its own checkpoint and events, committed together, in order, before any step with
side effects starts and whenever the run pauses or ends. A crash loses only pure steps
nobody could see yet (nothing outside the run observed them), and they run again from
the last durable checkpoint.

A step with side effects (``call``, ``http``, an agent) commits its checkpoint and events
together with the *next* step's start (its ``node.started``, flushed before that step
runs anything), or at once when the run pauses or ends: one transaction per such step
instead of two. Nothing runs between the step's answer and that commit but the choice
of the next node and the rendering of its ``with``: no I/O, no other side effect. A crash
in that window is a crash during the step: it runs again with the same idempotency key,
as it would had the crash come a moment earlier.
"""

from __future__ import annotations

from datetime import datetime, timedelta
from functools import partial
from typing import Any

from app.engine import branchdoc, memory, webhooks
from app.engine.lifecycle import RunStatus, check_transition
from app.engine.resources import doc_resource
from app.engine.services import Engine
from app.steps.base import StepError
from app.store import runs as run_store
from app.store.checkpoints import CheckpointChain, CheckpointRow
from app.store.database import lone_statement, write_transaction
from app.store.events import NewEvent
from app.store.ids import new_id
from app.store.models import Run, utcnow
from app.store.progress import StepWrite, record_step

MAX_GROUP = 32  # pure steps that may share one commit
EMPTY_USAGE = {"input_tokens": 0, "output_tokens": 0, "model_calls": 0}


class LeaseLost(Exception):
    """The run's lease moved to another worker (or the run was cancelled)."""


class AnswersArrived(Exception):
    """The run was about to pause, but answers to its paused branches wait in its row
    (``runs.answers``): it goes on with them instead (nothing was written)."""

    def __init__(self, answers: list[dict[str, Any]]) -> None:
        super().__init__(f"{len(answers)} answer(s) arrived")
        self.answers = answers


PAUSED = frozenset({"interrupted", "awaiting_input", "suspended"})
PAUSE_EVENTS = frozenset(f"run.{status}" for status in PAUSED)


class RunRecorder:
    """The write side of a run's execution; ``RunExecution`` drives it."""

    # the run's memory, kept by the execution
    doc: memory.Doc
    chain: CheckpointChain
    head_id: str
    step_count: int
    attempt: int
    webhook: str | None

    def __init__(self, engine: Engine, run_id: str, lease: run_store.Lease) -> None:
        self.engine = engine
        self.run_id = run_id
        self.lease = lease
        self.events: list[NewEvent] = []
        # pure steps checkpointed but not yet committed, each with the run row after it
        self.staged: list[tuple[StepWrite, dict[str, Any]]] = []
        self.pure = False  # whether the step that just ran may share its commit
        # ids of answers (``runs.answers``) routed into the document, to be removed from
        # the row by the next write that checkpoints the document
        self.taken: set[str] = set()
        # perf (W1C): a step with side effects just ran; its checkpoint waits for the
        # next step's start (effect_staged), which commits it before that step runs
        self.effect_pending = False
        self.effect_staged = False

    async def _progress(self, path: str | None, data: dict[str, Any]) -> None:
        await self._step_event(path, "step.progress", data)

    async def _step_event(self, path: str | None, type_: str, data: dict[str, Any]) -> None:
        """An event a step emits itself, written at once (so watchers see it live)."""
        self.events.append(NewEvent(type_, path, self.engine.redactor.json(data)))
        await self._flush()

    def _account(
        self, delta: dict[str, int] | None = None, turn: tuple[str, int] | None = None
    ) -> dict[str, int]:
        """Add a step's model usage to the run's (kept in the run's document, so resume
        and fork carry it); the run's total (``counted``)."""
        self.doc, usage = counted(self.doc, delta, turn)
        return usage

    async def _retrying(self, attempt: int, delay: float, error: StepError, node: str) -> None:
        self.attempt = attempt
        info = {
            "attempt": attempt,
            "delay_s": delay,
            "error": {"code": error.code, "message": self.engine.redactor.text(error.message)},
        }
        self.events.append(NewEvent("node.retrying", node, info))
        await self._flush(attempt=attempt)

    async def _flush(self, **values: Any) -> None:
        """Write the staged steps and buffered events (and counters) without a new
        checkpoint."""
        if not self.events and not values and not self.staged:
            return
        lease_until = utcnow() + timedelta(seconds=self.engine.settings.lease_s)
        run_values = self.staged[-1][1] if self.staged else {}
        await self._write(
            {**run_values, "status": "running", "lease_expires_at": lease_until, **values},
            StepWrite(self.events),
        )

    async def _write(self, values: dict[str, Any], last: StepWrite) -> None:
        """Commit the staged steps and ``last`` in one fenced transaction. A write that
        pauses or ends a run with a webhook also writes the delivery it owes
        (``app.engine.webhooks``)."""
        earlier = [write for write, _ in self.staged]
        watch = bool(self.taken) or branchdoc.section_index(self.doc) is not None
        removed: set[str] = set()
        hook = bool(self.webhook) and values.get("status") not in (None, "running")
        # with nothing to read or write besides, a write on Postgres is one statement
        alone = not watch and not hook and not self.engine.settings.is_sqlite
        opened = lone_statement if alone else write_transaction
        async with opened(self.engine.sessions) as session:
            if watch:
                answers = await run_store.locked_answers(session, self.run_id)
                if answers:
                    values, removed = self._with_answers(values, answers, last)
            recorded = await record_step(
                session,
                self.run_id,
                guard=self.lease,
                values=values,
                events=last.events,
                checkpoint=last.checkpoint,
                base_id=last.base_id,
                data=last.data,
                earlier=earlier,
                saved=last.saved,
            )
            if hook and recorded is not None and recorded.run is not None:
                await webhooks.owe(session, doc_resource(recorded.run, self.doc))
        if recorded is None:
            raise LeaseLost
        self.taken -= removed
        self.staged = []
        self.effect_staged = False
        self.events = []
        # local watchers get the rows themselves first, so the wake-up finds them read
        self.engine.on_committed(self.run_id, recorded.events, recorded.status)
        resource = None
        if recorded.run is not None:  # the run paused or ended: its resource, if waited for
            resource = partial(_resource_json, recorded.run, self.doc)
        self.engine.on_events(self.run_id, recorded.last_event_seq, recorded.status, resource)
        if hook:
            self.engine.on_settled()

    def _with_answers(
        self, values: dict[str, Any], answers: list[dict[str, Any]], last: StepWrite
    ) -> tuple[dict[str, Any], set[str]]:
        """The run row's ``values`` given the answers its row holds, and the ids of those
        this write removes (AnswersArrived when the run would pause with some untaken)."""
        status = values.get("status")
        fresh = [a for a in answers if a["id"] not in self.taken]
        if status in PAUSED and fresh:
            raise AnswersArrived(fresh)
        if status != "running" or last.checkpoint is not None:
            # the checkpoint holds the taken answers' routes (or the run ends or pauses)
            left = fresh if status == "running" else []
            removed = {a["id"] for a in answers} - {a["id"] for a in left}
        else:
            left, removed = answers, set()
        values = {**values, "answers": left or None}
        if "interrupt" in values:  # answered ones are no longer pending
            ids = {a.get("interrupt_id") for a in left}
            pending = branchdoc.interrupts_of(values["interrupt"])
            values["interrupt"] = branchdoc.column_of([i for i in pending if i["id"] not in ids])
        if "awaiting" in values:
            messaged = {a["branch"] for a in left if "message" in a}
            values["awaiting"] = branchdoc.first_awaiting(self.doc, messaged)
        return values, removed

    async def _commit(
        self,
        status: RunStatus,
        i: int,
        last_node: str | None,
        *,
        due_at: datetime | None = None,
        error: dict[str, Any] | None = None,
        output: Any = None,
    ) -> bool:
        """Checkpoint the document with the step's events; True while the run goes on.

        After a pure step that leaves the run running, the checkpoint is staged (see the
        module's docstring) and committed with a later step's."""
        last = memory.node_path(self.doc, i, last_node)
        return await self._checkpoint(status, last, due_at=due_at, error=error, output=output)

    async def _checkpoint(
        self,
        status: RunStatus,
        last_path: str | None,
        *,
        due_at: datetime | None = None,
        error: dict[str, Any] | None = None,
        output: Any = None,
        branch: str | None = None,
    ) -> bool:
        """``_commit`` with the last node's path given (parallel branches name theirs, and
        themselves in its ``checkpoint.saved``)."""
        check_transition(RunStatus.RUNNING, status)
        checkpoint_id = new_id()
        next_node = branchdoc.current_node(self.doc)
        if status is RunStatus.COMPLETED:
            next_node = None
        base_id, data, chain = self.chain.encode(checkpoint_id, self.doc)
        now = utcnow()
        row = CheckpointRow(
            checkpoint_id,
            self.run_id,
            self.head_id,
            0,
            last_path,
            next_node,
            str(status),
            self.step_count,
            now,
        )
        running = status is RunStatus.RUNNING
        values: dict[str, Any] = {
            "status": str(status),
            "current_node": next_node,
            "step_count": self.step_count,
            "attempt": 0,
            "resume_data": None,
            "recoveries": 0,
            "error_attempts": 0,
            "interrupt": branchdoc.interrupt_column(self.doc),
            "awaiting": branchdoc.first_awaiting(self.doc),
            "error": error,
            "output": output,
            "due_at": due_at,
            "lease_expires_at": now + timedelta(seconds=self.engine.settings.lease_s)
            if running
            else None,
        }
        if not running:
            values["lease_owner"] = None
        saved = {"branch": branch} if branch is not None else None
        write = StepWrite(self.events, row, base_id, data, now, saved)
        before = self.chain, self.head_id, self.attempt
        self.events = []
        self.chain = chain
        self.head_id = checkpoint_id
        self.attempt = 0
        effect, self.effect_pending = self.effect_pending, False
        if running and (self.pure or effect) and len(self.staged) + 1 < MAX_GROUP:
            self.staged.append((write, values))
            self.effect_staged = self.effect_staged or effect
            return True
        try:
            await self._write(values, write)
        except AnswersArrived:  # nothing written: the run goes on instead of pausing
            self.chain, self.head_id, self.attempt = before
            self.events = [e for e in write.events if e.type not in PAUSE_EVENTS]
            raise
        if due_at is not None:  # a timer: the claim loop must look at its time
            self.engine.on_work()
        return running


def counted(
    doc: memory.Doc, delta: dict[str, int] | None, turn: tuple[str, int] | None
) -> tuple[memory.Doc, dict[str, int]]:
    """``doc`` with ``delta`` added to its model usage, and the usage it then holds. With
    ``turn``, a delta is counted once: the document keeps the last counted turn per key
    (``usage_marks``)."""
    usage = dict(doc.get("usage") or EMPTY_USAGE)
    if not delta:
        return doc, usage
    marks = doc.get("usage_marks") or {}
    if turn is not None:
        key, seq = turn
        if seq <= marks.get(key, -1):
            return doc, usage
        marks = {**marks, key: seq}
    for name in EMPTY_USAGE:
        usage[name] = usage.get(name, 0) + int(delta.get(name, 0))
    return {**doc, "usage": usage, "usage_marks": marks}, usage


def _resource_json(run: Run, doc: memory.Doc) -> bytes:
    return doc_resource(run, doc).model_dump_json().encode()
