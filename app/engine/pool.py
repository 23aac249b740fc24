"""The runner pool: claims runnable runs from the database and executes them.

Work is claimed, never handed over in memory, so a restart, a crash or another
process picks up whatever is queued, due or left behind by a dead worker. The pool
wakes at once when this process (or, through NOTIFY, another) makes work, and
otherwise polls on a bounded interval; timers are met by sleeping until the next due
time. A heartbeat extends the leases of the runs in flight and drops those it lost.
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import logging
import os
import socket
import uuid
from pathlib import Path
from typing import IO

from app.engine.runner import RunExecution
from app.engine.services import Engine
from app.store import runs as run_store
from app.store.database import transaction
from app.store.models import utcnow

log = logging.getLogger(__name__)


class SqliteAlreadyServed(RuntimeError):
    pass


def _lock_sqlite(database_url: str) -> IO[str] | None:
    """The embedded SQLite store is single-process: hold an exclusive lock beside it."""
    path = database_url.split(":///", 1)[1]
    if not path or path == ":memory:":
        return None
    lock_path = Path(path + ".runner.lock")
    handle = lock_path.open("a+")
    try:
        fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        handle.close()
        raise SqliteAlreadyServed(
            f"another Stepwise process is already running the runs of {path}; SQLite is "
            "single-process — use Postgres (STEPWISE_DATABASE_URL=postgresql://…) to run several"
        ) from None
    return handle


class RunnerPool:
    def __init__(self, engine: Engine, *, workers: int, owner: str | None = None) -> None:
        self.engine = engine
        self.workers = workers
        self.owner = owner or f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"
        self.active: dict[str, asyncio.Task[None]] = {}
        self._wake = asyncio.Event()
        self._stopping = False
        self._tasks: list[asyncio.Task[None]] = []
        self._lock: IO[str] | None = None

    async def start(self) -> None:
        if self.engine.settings.is_sqlite:
            self._lock = _lock_sqlite(self.engine.settings.database_url)
        self._tasks = [
            asyncio.create_task(self._claim_loop(), name="stepwise-claim"),
            asyncio.create_task(self._heartbeat_loop(), name="stepwise-heartbeat"),
        ]

    def wake(self) -> None:
        self._wake.set()

    def cancel(self, run_id: str) -> None:
        """Stop executing a run (it was cancelled); its writes would be refused anyway."""
        task = self.active.get(run_id)
        if task is not None:
            task.cancel()

    async def stop(self, grace_s: float | None = None) -> None:
        """Stop claiming, let runs in flight finish within the grace period, give back the rest."""
        self._stopping = True
        self._wake.set()
        grace = self.engine.settings.shutdown_grace_s if grace_s is None else grace_s
        claim_task = self._tasks[0] if self._tasks else None
        if claim_task is not None:
            claim_task.cancel()
        if self.active:
            await asyncio.wait(list(self.active.values()), timeout=grace)
        unfinished = list(self.active)
        for task in list(self.active.values()):
            task.cancel()
        for task in self._tasks[1:]:
            task.cancel()
        await asyncio.gather(*self._tasks, *self.active.values(), return_exceptions=True)
        if unfinished:
            try:
                async with transaction(self.engine.sessions) as session:
                    released = await run_store.release(session, self.owner, unfinished)
                    await run_store.notify(session, "stepwise_work", "")
                log.info("released %d run(s) for other workers", len(released))
            except Exception:
                log.exception(
                    "could not release leases; they lapse in %ss", self.engine.settings.lease_s
                )
        if self._lock is not None:
            self._lock.close()

    async def _claim_loop(self) -> None:
        settings = self.engine.settings
        while not self._stopping:
            self._wake.clear()
            capacity = self.workers - len(self.active)
            timeout = settings.poll_interval_s
            if capacity > 0:
                try:
                    async with transaction(self.engine.sessions) as session:
                        claimed = await run_store.claim(
                            session, self.owner, capacity, settings.lease_s
                        )
                        due = None if claimed else await run_store.next_due_at(session)
                except Exception:
                    log.exception("claiming runs failed; retrying")
                    await asyncio.sleep(settings.poll_interval_s)
                    continue
                for run_id, token in claimed:
                    self._spawn(run_id, token)
                if len(claimed) == capacity:
                    await asyncio.sleep(0)
                    continue
                if due is not None:
                    timeout = max(0.0, min(timeout, (due - utcnow()).total_seconds() + 0.01))
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), timeout)

    def _spawn(self, run_id: str, token: int) -> None:
        execution = RunExecution(self.engine, run_id, run_store.Lease(self.owner, token))
        task = asyncio.create_task(self._execute(execution), name=f"run-{run_id}")
        self.active[run_id] = task

        def done(_: asyncio.Task[None]) -> None:
            if self.active.get(run_id) is task:
                del self.active[run_id]
            self._wake.set()

        task.add_done_callback(done)

    async def _execute(self, execution: RunExecution) -> None:
        try:
            await execution.execute()
        except asyncio.CancelledError:
            raise
        except Exception:
            # The database or a bug: the lease lapses and the run is picked up again.
            log.exception("run %s stopped unexpectedly", execution.run_id)

    async def _heartbeat_loop(self) -> None:
        interval = self.engine.settings.lease_s / 3
        while True:
            await asyncio.sleep(interval)
            ids = list(self.active)
            if not ids:
                continue
            try:
                async with transaction(self.engine.sessions) as session:
                    held = await run_store.extend_leases(
                        session, self.owner, ids, self.engine.settings.lease_s
                    )
            except Exception:
                log.exception("lease heartbeat failed")
                continue
            for run_id in set(ids) - held:
                if run_id in self.active:
                    log.warning("run %s: lease lost, stopping it here", run_id)
                    self.active[run_id].cancel()
