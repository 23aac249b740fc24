"""The run lifecycle: one table of allowed status transitions, one function to change it."""

from __future__ import annotations

from collections.abc import Sequence
from enum import StrEnum
from typing import Any

from sqlalchemy.ext.asyncio import AsyncSession

from app.engine import webhooks
from app.engine.resources import run_out
from app.errors import Conflict, NotFound
from app.store import runs as run_store
from app.store.events import NewEvent
from app.store.models import Run
from app.store.progress import record_step, take_written
from app.store.statements import Unchanged


class RunStatus(StrEnum):
    QUEUED = "queued"
    RUNNING = "running"
    INTERRUPTED = "interrupted"
    AWAITING_INPUT = "awaiting_input"
    SUSPENDED = "suspended"
    COMPLETED = "completed"
    FAILED = "failed"
    CANCELLED = "cancelled"


TERMINAL = frozenset({RunStatus.COMPLETED, RunStatus.FAILED, RunStatus.CANCELLED})
PAUSED = frozenset({RunStatus.INTERRUPTED, RunStatus.AWAITING_INPUT, RunStatus.SUSPENDED})

S = RunStatus
# from → allowed targets ("running → running" is a step checkpoint). "queued" is also where paused runs go when answered or resumed,
# and where a worker that shuts down gives its running runs back.
TRANSITIONS: dict[RunStatus, frozenset[RunStatus]] = {
    # queued → failed: a run whose execution kept raising inside the service
    S.QUEUED: frozenset({S.RUNNING, S.CANCELLED, S.FAILED}),
    S.RUNNING: frozenset(
        {
            S.RUNNING,
            S.QUEUED,
            S.INTERRUPTED,
            S.AWAITING_INPUT,
            S.SUSPENDED,
            S.COMPLETED,
            S.FAILED,
            S.CANCELLED,
        }
    ),
    # → running: a parallel branch's timer came due while others wait for people (a claim)
    S.INTERRUPTED: frozenset({S.RUNNING, S.QUEUED, S.FAILED, S.CANCELLED}),
    S.AWAITING_INPUT: frozenset({S.RUNNING, S.QUEUED, S.CANCELLED}),
    S.SUSPENDED: frozenset({S.RUNNING, S.QUEUED, S.CANCELLED}),
    S.FAILED: frozenset({S.QUEUED}),
    S.COMPLETED: frozenset({S.QUEUED}),  # resume from an earlier checkpoint only
    S.CANCELLED: frozenset({S.QUEUED}),  # resume from an earlier checkpoint only
}

STATUS_EVENTS: dict[RunStatus, str] = {
    S.INTERRUPTED: "run.interrupted",
    S.AWAITING_INPUT: "run.awaiting_input",
    S.SUSPENDED: "run.suspended",
    S.COMPLETED: "run.completed",
    S.FAILED: "run.failed",
    S.CANCELLED: "run.cancelled",
}


def allowed(current: str, target: str) -> bool:
    return RunStatus(target) in TRANSITIONS[RunStatus(current)]


def check_transition(current: str, target: str, *, code: str = "invalid_transition") -> None:
    if not allowed(current, target):
        raise Conflict(f"a {current} run cannot become {target}", code=code)


async def change_status(
    session: AsyncSession,
    run_id: str,
    target: RunStatus,
    *,
    expect: Sequence[RunStatus] | None = None,
    code: str = "invalid_transition",
    values: dict[str, Any] | None = None,
    events: Sequence[NewEvent] = (),
    locked: Run | None = None,
) -> Run:
    """Lock the run, check the transition, write the change and its events.

    ``expect`` narrows which current statuses this caller accepts (409 ``code`` else);
    ``locked`` is the run when the caller has locked it already in this transaction.
    """
    run = locked if locked is not None else await run_store.get(session, run_id, lock=True)
    if run is None:
        raise NotFound(f"run {run_id!r} not found", code="run_not_found")
    if (expect is not None and run.status not in expect) or not allowed(run.status, target):
        raise Conflict(f"the run is {run.status}; it cannot become {target}", code=code)
    changes: dict[str, Any] = {"status": str(target), **(values or {})}
    if target in TERMINAL or target in PAUSED:
        changes.setdefault("lease_owner", None)
        changes.setdefault("lease_expires_at", None)
    recorded = await record_step(
        session,
        run_id,
        guard=Unchanged(run.status),
        values=changes,
        events=events,
        whole_row=True,
    )
    if target is RunStatus.QUEUED and changes.get("lease_owner") is None:
        # a run reserved for this process's runners needs no claim anywhere (its
        # reservation lapses, and the sweep NOTIFYs, should this process die first)
        await run_store.notify(session, "stepwise_work", run_id)
    written = take_written(run, recorded)
    if written.webhook and (target in TERMINAL or target in PAUSED):
        await webhooks.owe(session, await run_out(session, written))
    return written
