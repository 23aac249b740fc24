"""What clients do to runs: start, answer, message, resume, fork, edit, cancel, delete.

Each command is one transaction that locks the run, checks the transition
(``app.engine.lifecycle``) and writes the change with its events; the runner pool and
other processes are woken only after the commit. The exception is the most common
answer (an interrupted run's one interrupt approved, on Postgres): one read and one write
fenced on the versions read, with no lock held in between (``app.engine.approvals``).
"""

from __future__ import annotations

from typing import Any

from app.engine import branchdoc
from app.engine.approvals import Answered, ApprovalCommands, answer_of, approval, check_value
from app.engine.history import HistoryCommands
from app.engine.lifecycle import TERMINAL, RunStatus, change_status
from app.engine.queueing import load_doc
from app.engine.starts import StartCommands
from app.errors import Conflict
from app.schemas.runs import InterruptResponse
from app.store import runs as run_store
from app.store.database import transaction
from app.store.events import NewEvent
from app.store.models import Run, rfc3339, utcnow

# a run whose branches may be answered: paused, or executing with some branches paused
ANSWERABLE = (RunStatus.INTERRUPTED, RunStatus.RUNNING, RunStatus.QUEUED)
EXECUTING = (RunStatus.RUNNING, RunStatus.QUEUED)


class RunCommands(StartCommands, HistoryCommands, ApprovalCommands):
    """Every command a client can give (``StartCommands`` brings the start,
    ``HistoryCommands`` resume, fork and state edits)."""

    # -- answers ----------------------------------------------------------------------------

    async def respond(self, run_id: str, body: InterruptResponse) -> Answered:
        if body.status == "approved" and not self.engine.settings.is_sqlite:
            answered = await self._approve_unlocked(run_id, body)
            if answered is not None:
                return answered
        handover = doc = None
        async with transaction(self.engine.sessions) as session:
            run = await self._locked(session, run_id)
            # parallel branches may wait for several interrupts: each is answered by its id,
            # also while other branches go on (the run is then running, or queued)
            every = branchdoc.interrupts_of(run.interrupt) if run.status in ANSWERABLE else []
            if not every:
                raise Conflict(
                    f"run {run_id} has no pending interrupt (it is {run.status})",
                    code="interrupt_not_pending",
                    extra={"reason": "no_pending_interrupt"},
                )
            pending = next((i for i in every if i["id"] == body.interrupt_id), None)
            if pending is None:
                raise Conflict(
                    f"interrupt {body.interrupt_id!r} is not a pending one",
                    code="interrupt_not_pending",
                    extra={"reason": "stale_interrupt_id"},
                )
            others = [i for i in every if i["id"] != body.interrupt_id]
            answer = answer_of(body)
            who = body.responded_by or "someone"
            executing = run.status != RunStatus.INTERRUPTED
            if body.status == "approved":
                checkpoint, doc, chain = await load_doc(session, run)
                check_value(doc, body)
            if body.status == "approved" and executing:
                left = {
                    "response": answer,
                    "interrupt_id": body.interrupt_id,
                    "info": {"interrupt_id": body.interrupt_id},
                }
                run = await self._leave_answer(
                    session, run, left, interrupt=branchdoc.column_of(others)
                )
            elif body.status == "approved":
                run = await change_status(
                    session,
                    run_id,
                    RunStatus.QUEUED,
                    locked=run,
                    values={
                        **approval(body, others),
                        **self._reservation(run.lease_token + 1),
                    },
                )
                assert doc is not None
                handover = await self._hand_over(session, run, (checkpoint, doc, chain))
            elif body.status == "cancelled":
                run = await change_status(
                    session,
                    run_id,
                    RunStatus.CANCELLED,
                    locked=run,
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
                    locked=run,
                    values={"interrupt": None, "error": error},
                    events=[NewEvent("run.failed", pending["node"], {"error": error})],
                )
            if executing and body.status != "approved":  # stop it where it executes
                await run_store.notify(session, "stepwise_control", f"cancel:{run_id}")
        self._after_commit(run, work=True, handover=handover)
        if executing:
            if body.status == "approved":
                self.engine.signal_answer(run_id)
            else:
                self.engine.on_cancel(run_id)
        return Answered(run, doc)

    async def message(self, run_id: str, message: Any, branch: str | None = None) -> Answered:
        async with transaction(self.engine.sessions) as session:
            current = await self._locked(session, run_id)
            if branch is not None:
                _, doc, _ = await load_doc(session, current)
                messaged = {str(a["branch"]) for a in current.answers or [] if "message" in a}
                if branch not in branchdoc.awaiting_branches(doc) or branch in messaged:
                    raise Conflict(
                        f"branch {branch!r} of run {run_id} is not awaiting input",
                        code="run_not_awaiting_input",
                    )
            executing = branch is not None and current.status in EXECUTING
            if executing:  # other branches go on: the execution holding the run takes it
                assert branch is not None
                left = {"message": message, "ts": rfc3339(utcnow()), "branch": branch}
                awaiting = branchdoc.first_awaiting(doc, {*messaged, branch})
                run = await self._leave_answer(
                    session, current, left, interrupt=current.interrupt, awaiting=awaiting
                )
                handover = None
            else:
                # a branch awaiting input takes its message while others wait for answers
                # (the run is then `interrupted`: DESIGN §10's order of statuses)
                paused = [RunStatus.AWAITING_INPUT]
                awaiting = None
                if branch is not None:
                    paused.append(RunStatus.INTERRUPTED)
                    awaiting = branchdoc.first_awaiting(doc, {*messaged, branch})
                run = await change_status(
                    session,
                    run_id,
                    RunStatus.QUEUED,
                    locked=current,
                    expect=paused,
                    code="run_not_awaiting_input",
                    values={
                        "resume_data": {
                            "message": message,
                            "ts": rfc3339(utcnow()),
                            **({"branch": branch} if branch is not None else {}),
                        },
                        "awaiting": awaiting,
                        "due_at": None,
                        **self._reservation(current.lease_token + 1),
                    },
                )
                handover = await self._hand_over(session, run)
        self._after_commit(run, work=not executing, handover=handover)
        if executing:
            self.engine.signal_answer(run_id)
        return Answered(run, handover.doc if handover else None)

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
                locked=run,
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
