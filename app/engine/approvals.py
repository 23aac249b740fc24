"""Answers to interrupts: what an approval writes, the check of the approved value, and
the common approval made without a lock.

An interrupted run's one interrupt approved, on Postgres, with the run queued for this
process's runners, is the answer clients send most. It needs no lock: the run and its head
checkpoint are read together outside any transaction, and one statement, fenced on the
versions read (``Unchanged.versions``), makes the change and commits by itself. Anything
else, or a run changed in between, is answered by the locked command
(``RunCommands.respond``).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from sqlalchemy.exc import SQLAlchemyError

from app.engine import branchdoc, memory
from app.engine.lifecycle import RunStatus
from app.engine.queueing import CommandBase
from app.engine.schema_checks import instance_errors
from app.errors import Invalid, NotFound
from app.schemas.runs import InterruptResponse
from app.store.database import lone_statement
from app.store.models import Run
from app.store.progress import record_step, take_written
from app.store.statements import Unchanged, run_and_head


@dataclass(frozen=True, slots=True)
class Answered:
    run: Run
    doc: memory.Doc | None = None  # the head checkpoint's document, when it was read


class ApprovalCommands(CommandBase):
    """The run commands' unlocked approval (``RunCommands.respond`` tries it first)."""

    async def _approve_unlocked(self, run_id: str, body: InterruptResponse) -> Answered | None:
        """The common answer — the one interrupt of an interrupted run approved, the run
        queued for this process's runners — in two statements and no transaction: the
        run and its head checkpoint read together, then the change written by one
        statement fenced on the versions read (Postgres). None, with nothing written,
        where that does not apply or the run changed in between: the locked path then
        answers (and refuses what must be refused)."""
        if not self._can_reserve():  # (no runner here to hand it to: not worth a read)
            return None
        async with lone_statement(self.engine.sessions) as connection:
            read = await run_and_head(connection, run_id)
            if read is None:
                return None
            run, loaded = read
            if loaded is None or run.status != RunStatus.INTERRUPTED:
                return None
            every = branchdoc.interrupts_of(run.interrupt)
            reservation = self._reservation(run.lease_token + 1)
            if [i["id"] for i in every] != [body.interrupt_id] or not reservation:
                return None
            check_value(loaded[1], body)
            recorded = await record_step(
                connection,
                run_id,
                guard=Unchanged(run.status, (run.event_seq, run.checkpoint_seq, run.lease_token)),
                values={"status": str(RunStatus.QUEUED), **approval(body, []), **reservation},
                events=[],
                whole_row=True,
            )
            if recorded is None:
                return None
            run = take_written(run, recorded)
        try:  # the definitions a runner needs are nearly always in memory already
            async with self.engine.sessions() as session:
                handover = await self._hand_over(session, run, loaded)
        except (SQLAlchemyError, NotFound):  # (the answer is in: the runner reads the run
            handover = None  # itself, and fails it if its definition is gone)
        self._after_commit(run, work=True, handover=handover)
        return Answered(run, loaded[1])


def answer_of(body: InterruptResponse) -> dict[str, Any]:
    answer = body.model_dump(exclude={"interrupt_id"})
    answer["interrupt_id"] = body.interrupt_id
    return answer


def approval(body: InterruptResponse, others: list[dict[str, Any]]) -> dict[str, Any]:
    """The run's values when an interrupted run's interrupt is approved (``others``: the
    interrupts of its branches still pending)."""
    return {
        "resume_data": {"response": answer_of(body), "info": {"interrupt_id": body.interrupt_id}},
        "interrupt": (others[0] if len(others) == 1 else others) or None,
        "due_at": None,  # (a branch's timer: the run runs now anyway)
    }


def check_value(doc: memory.Doc, body: InterruptResponse) -> None:
    """422 when the approved value does not match the interrupt's schema."""
    schema = branchdoc.interrupt_schema(doc, body.interrupt_id)
    if isinstance(schema, dict):
        errors = instance_errors(schema, body.value, ["body", "value"])
        if errors:
            raise Invalid(
                "the value does not match the interrupt's schema",
                code="invalid_response",
                errors=errors,
            )
