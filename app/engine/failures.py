"""Runs that break the service instead of a step: never left to loop for ever.

An unexpected exception while executing a run (a bug, a corrupt checkpoint, a plugin
failing outside its ``execute``) is logged with its stack by the pool; the run is then
given back to the queue with a short backoff, and after ``MAX_ERROR_ATTEMPTS`` such
attempts at one checkpoint it fails with ``internal_error``. A run whose worker dies
again and again at one checkpoint is counted by the claims (``runs.recoveries``) and
failed by the runner with ``recovery_limit_exceeded``. Writing a checkpoint resets both
counters, and a failed run can be resumed once the cause is fixed.
"""

from __future__ import annotations

import logging
from datetime import timedelta
from typing import Any

from app.engine import webhooks
from app.engine.lifecycle import RunStatus, allowed
from app.engine.resources import run_out
from app.engine.services import Engine
from app.store import runs as run_store
from app.store.database import transaction
from app.store.events import NewEvent
from app.store.models import utcnow
from app.store.progress import record_step, take_written

log = logging.getLogger(__name__)

MAX_ERROR_ATTEMPTS = 3
RETRY_DELAY_S = 1.0  # then 2 s: a transient cause gets a moment to pass


async def record_internal_error(
    engine: Engine, run_id: str, lease: run_store.Lease, exc: BaseException, node: str | None
) -> str | None:
    """Count a failed execution of a run this worker holds: requeue it with a backoff,
    or fail it for good. ``node`` is where it raised, when known. Returns the run's new
    status (None: the run is no longer this worker's)."""
    async with transaction(engine.sessions) as session:
        run = await run_store.get(session, run_id)
        if run is None or run.status not in run_store.HELD or run.lease_token != lease.token:
            return None
        attempts = (run.error_attempts or 0) + 1
        guard = run_store.lease_guard(lease)
        released: dict[str, Any] = {
            "lease_owner": None,
            "lease_expires_at": None,
            "error_attempts": attempts,
        }
        if attempts < MAX_ERROR_ATTEMPTS:
            due = utcnow() + timedelta(seconds=RETRY_DELAY_S * attempts)
            values = {"status": str(RunStatus.QUEUED), "due_at": due, **released}
            recorded = await record_step(session, run_id, guard=guard, values=values, events=[])
            if recorded is None:
                return None
            await run_store.notify(session, "stepwise_work", run_id)
            status = RunStatus.QUEUED
        else:
            assert allowed(run.status, RunStatus.FAILED)
            error = {
                "code": "internal_error",
                "message": (
                    f"executing the run raised {type(exc).__name__} inside the service "
                    f"{attempts} times; see the service log, then resume the run"
                ),
                "node": node or run.current_node,
            }
            values = {"status": str(RunStatus.FAILED), "error": error, "due_at": None, **released}
            events = [NewEvent("run.failed", error["node"], {"error": error})]
            recorded = await record_step(session, run_id, guard=guard, values=values, events=events)
            if recorded is None:
                return None
            await webhooks.owe(session, await run_out(session, take_written(run, recorded)))
            status = RunStatus.FAILED
    engine.on_events(run_id, recorded.last_event_seq, recorded.status)
    if status is RunStatus.QUEUED:
        engine.on_work()
    elif run.webhook:
        engine.on_settled()
    return str(status)
