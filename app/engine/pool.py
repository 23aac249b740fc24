"""The runner pool: claims runnable runs from the database and executes them.

Work is claimed, never handed over in memory, so a restart, a crash or another
process picks up whatever is queued, due or left behind by a dead worker. The pool
wakes at once when this process (or, through NOTIFY, another) makes work, and
otherwise polls on a bounded interval; timers are met by sleeping until the next due
time. A heartbeat extends the leases of the runs in flight and drops those it lost; a
slower sweep repairs runs that no claim would ever take and wakes idle workers.

Shutdown (``begin_stop``, then ``stop``): claiming stops at once, runs in flight get
the grace period to finish or pause, and the leases of the rest are released so that
another process takes them without waiting for the leases to lapse.
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

from sqlalchemy.exc import DataError, DBAPIError, IntegrityError, ProgrammingError

from app import tracing
from app.engine.failures import record_internal_error
from app.engine.lifecycle import RunStatus
from app.engine.memory import Handover
from app.engine.runner import RunExecution
from app.engine.services import Engine
from app.store import runs as run_store
from app.store.database import transaction
from app.store.models import utcnow

log = logging.getLogger(__name__)

WORK_CHANNEL = "stepwise_work"
# How often a run whose database writes failed (a restart, a dropped connection) is
# retried in place, with the lease this pool still holds, before the lease is left to lapse.
DB_RETRIES = 5
DB_RETRY_FIRST_S = 0.5  # then doubling, up to half a lease
# A failed claim is retried this soon (or at the poll interval, if shorter).
CLAIM_RETRY_S = 1.0
# Errors that say "the database is unreachable right now" (a restart, a killed or broken
# connection: asyncpg reports these in several ways), not "this run has a bug".
DB_ERRORS: tuple[type[BaseException], ...] = (DBAPIError, OSError)
NOT_TRANSIENT: tuple[type[BaseException], ...] = (IntegrityError, ProgrammingError, DataError)


class SqliteAlreadyServed(RuntimeError):
    pass


# flock() locks belong to an open file description: two opens in one process would lock
# each other out. Runtimes of one process (tests, the CLI's early check) share one lock.
_sqlite_locks: dict[Path, tuple[IO[str], int]] = {}


def sqlite_path(database_url: str) -> Path | None:
    path = database_url.split(":///", 1)[1]
    if not path or path == ":memory:":
        return None
    return Path(path).resolve()


def lock_sqlite(database_url: str) -> Path | None:
    """The embedded SQLite store is single-process: hold an exclusive lock beside it."""
    path = sqlite_path(database_url)
    if path is None:
        return None
    held = _sqlite_locks.get(path)
    if held is not None:
        _sqlite_locks[path] = (held[0], held[1] + 1)
        return path
    path.parent.mkdir(parents=True, exist_ok=True)
    handle = Path(f"{path}.runner.lock").open("a+")  # noqa: SIM115 - held until unlock
    try:
        fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        handle.close()
        raise SqliteAlreadyServed(
            f"another Stepwise process is already running the runs of {path}. SQLite is "
            "single-process: stop that process, or use Postgres "
            "(STEPWISE_DATABASE_URL=postgresql://…) to run several processes"
        ) from None
    _sqlite_locks[path] = (handle, 1)
    return path


def unlock_sqlite(path: Path) -> None:
    held = _sqlite_locks.get(path)
    if held is None:
        return
    if held[1] > 1:
        _sqlite_locks[path] = (held[0], held[1] - 1)
        return
    del _sqlite_locks[path]
    held[0].close()


class RunnerPool:
    def __init__(self, engine: Engine, *, workers: int, owner: str | None = None) -> None:
        self.engine = engine
        self.workers = workers
        self.owner = owner or f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"
        self.active: dict[str, asyncio.Task[None]] = {}
        self._wake = asyncio.Event()
        self._stopping = False
        self._claim_task: asyncio.Task[None] | None = None
        self._background: list[asyncio.Task[None]] = []
        self._drain: asyncio.Task[None] | None = None
        self._lock: Path | None = None

    @property
    def stopping(self) -> bool:
        return self._stopping

    async def start(self) -> None:
        if self.engine.settings.is_sqlite:
            self._lock = lock_sqlite(self.engine.settings.database_url)
        self._claim_task = asyncio.create_task(self._claim_loop(), name="stepwise-claim")
        self._background = [
            asyncio.create_task(self._heartbeat_loop(), name="stepwise-heartbeat"),
            asyncio.create_task(self._sweep_loop(), name="stepwise-sweep"),
        ]
        log.info("runner pool %s: up to %d runs at once", self.owner, self.workers)

    def wake(self) -> None:
        self._wake.set()

    def cancel(self, run_id: str) -> None:
        """Stop executing a run (it was cancelled); its writes would be refused anyway."""
        task = self.active.get(run_id)
        if task is not None:
            task.cancel()

    # -- shutdown ---------------------------------------------------------------------------

    def begin_stop(self, grace_s: float | None = None) -> None:
        """Stop claiming now and start draining the runs in flight (idempotent).

        Safe to call from a signal handler's ``loop.call_soon_threadsafe``.
        """
        if self._drain is not None:
            return
        self._stopping = True
        self._wake.set()
        if self._claim_task is not None:
            self._claim_task.cancel()
        grace = self.engine.settings.shutdown_grace_s if grace_s is None else grace_s
        self._drain = asyncio.create_task(self._drain_runs(grace), name="stepwise-drain")

    async def stop(self, grace_s: float | None = None) -> None:
        """Stop claiming, let runs in flight finish within the grace period, give back the rest."""
        self.begin_stop(grace_s)
        assert self._drain is not None
        await asyncio.shield(self._drain)
        for task in self._background:
            task.cancel()
        await asyncio.gather(*self._background, return_exceptions=True)
        if self._lock is not None:
            unlock_sqlite(self._lock)
            self._lock = None

    async def _drain_runs(self, grace: float) -> None:
        if self._claim_task is not None:
            await asyncio.gather(self._claim_task, return_exceptions=True)
        if self.active:
            log.info("draining %d run(s) in flight (grace %ss)", len(self.active), grace)
            await asyncio.wait(list(self.active.values()), timeout=grace)
        tasks = list(self.active.values())
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        try:
            # every run still held, including those given up after a database error
            async with transaction(self.engine.sessions) as session:
                released = await run_store.release(session, self.owner)
                if released:
                    await run_store.notify(session, WORK_CHANNEL, "")
            if released:
                log.info("released %d run(s) for other workers", len(released))
        except Exception:
            log.exception(
                "could not release leases; they lapse in %ss", self.engine.settings.lease_s
            )

    # -- claiming ---------------------------------------------------------------------------

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
                except asyncio.CancelledError:
                    raise
                except DB_ERRORS as exc:
                    log.warning("claiming runs failed (%s); retrying", _short(exc))
                    await asyncio.sleep(min(settings.poll_interval_s, CLAIM_RETRY_S))
                    continue
                except Exception:
                    log.exception("claiming runs failed; retrying")
                    await asyncio.sleep(min(settings.poll_interval_s, CLAIM_RETRY_S))
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
        stale = self.active.get(run_id)
        if stale is not None:
            # Our own lease on it lapsed (a heartbeat could not reach the database) and we
            # claimed it again: the old execution's writes are refused, stop it now.
            stale.cancel()
        lease = run_store.Lease(self.owner, token)
        self._track(run_id, asyncio.create_task(self._execute(run_id, lease), name=f"run-{run_id}"))

    def has_capacity(self) -> bool:
        return not self._stopping and len(self.active) < self.workers

    def adopt(
        self, run_id: str, handover: Handover | None = None, token: int | None = None
    ) -> bool:
        """Execute a run this process just queued (created, answered, resumed) at once,
        without a claim-loop wake-up. With ``token`` the run was reserved for this pool in
        the transaction that queued it (``run_store.reservation``): no claim, taken even
        when the pool is full, and with its ``handover`` not read back either. False when
        it cannot be taken (the claim loop takes it then, or, if reserved, once the
        reservation lapses or the drain releases it)."""
        running = self.active.get(run_id)
        if self._stopping or (running is not None and not running.done()):
            return False  # (a done task may wait for its callback to leave ``active``)
        if token is not None:
            lease = run_store.Lease(self.owner, token)
            task = asyncio.create_task(self._execute(run_id, lease, handover), name=f"run-{run_id}")
            self._track(run_id, task)
            return True
        if not self.has_capacity():
            return False
        self._track(run_id, asyncio.create_task(self._adopt(run_id), name=f"run-{run_id}"))
        return True

    async def _adopt(self, run_id: str) -> None:
        try:
            async with transaction(self.engine.sessions) as session:
                token = await run_store.claim_queued(
                    session, self.owner, run_id, self.engine.settings.lease_s
                )
        except Exception as exc:
            log.warning(
                "run %s: claiming it failed (%s); the claim loop retries", run_id, _short(exc)
            )
            self._wake.set()
            return
        if token is not None:  # None: another worker was quicker, which is fine
            await self._execute(run_id, run_store.Lease(self.owner, token))

    def _track(self, run_id: str, task: asyncio.Task[None]) -> None:
        self.active[run_id] = task

        def done(_: asyncio.Task[None]) -> None:
            full = len(self.active) >= self.workers
            if self.active.get(run_id) is task:
                del self.active[run_id]
            if full or self._stopping:
                self._wake.set()  # the claim loop may have work it had no room for

        task.add_done_callback(done)

    async def _execute(
        self, run_id: str, lease: run_store.Lease, handover: Handover | None = None
    ) -> None:
        """Execute a claimed run; after a database failure, again in place while we hold it.

        A new ``RunExecution`` reloads the run from its last checkpoint and first checks that
        the lease is still ours, so a retry never overlaps another worker.
        """
        delay = DB_RETRY_FIRST_S
        execution: RunExecution | None = None
        for attempt in range(DB_RETRIES + 1):
            try:
                execution = RunExecution(
                    self.engine, run_id, lease, handover if attempt == 0 else None
                )
                with tracing.run_span(run_id):
                    await execution.execute(stop=lambda: self._stopping)
                return
            except asyncio.CancelledError:
                raise
            except DB_ERRORS as exc:
                if isinstance(exc, NOT_TRANSIENT):
                    await self._internal_error(run_id, lease, exc, execution)
                    return
                if attempt == DB_RETRIES or self._stopping:
                    log.warning(
                        "run %s: database unavailable (%s); its lease lapses for another worker",
                        run_id,
                        _short(exc),
                    )
                    return
                log.warning(
                    "run %s: database error (%s); resuming it in %.1fs", run_id, _short(exc), delay
                )
                await asyncio.sleep(delay)
                delay = min(delay * 2, max(self.engine.settings.lease_s / 2, DB_RETRY_FIRST_S))
            except Exception as exc:
                await self._internal_error(run_id, lease, exc, execution)
                return

    async def _internal_error(
        self,
        run_id: str,
        lease: run_store.Lease,
        exc: BaseException,
        execution: RunExecution | None,
    ) -> None:
        """A bug, not the database: log the stack, then retry the run or fail it
        (``app.engine.failures``); if even that fails, the lease lapses."""
        log.error("run %s: execution raised inside the service", run_id, exc_info=exc)
        try:
            node = execution.at_node if execution is not None else None
            status = await record_internal_error(self.engine, run_id, lease, exc, node)
        except asyncio.CancelledError:
            raise
        except Exception as again:
            log.warning("run %s: could not record the error (%s)", run_id, _short(again))
            return
        if status is not None:
            log.warning("run %s: after an internal error it is %s", run_id, status)
        if status == RunStatus.QUEUED:
            self._wake.set()  # it is due again soon: no NOTIFY needed to see it

    # -- leases -----------------------------------------------------------------------------

    async def _heartbeat_loop(self) -> None:
        interval = self.engine.settings.lease_s / 3
        while True:
            await asyncio.sleep(interval)
            ids = [run_id for run_id, task in self.active.items() if not task.done()]
            if not ids:
                continue
            try:
                async with transaction(self.engine.sessions) as session:
                    held = await run_store.extend_leases(
                        session, self.owner, ids, self.engine.settings.lease_s
                    )
            except Exception as exc:
                log.warning("lease heartbeat failed (%s)", _short(exc))
                continue
            for run_id in set(ids) - held:
                task = self.active.get(run_id)
                if task is not None and not task.done():
                    # Cancelled, or our lease lapsed and another worker took the run.
                    log.warning("run %s: lease lost, stopping it here", run_id)
                    task.cancel()

    async def _sweep_loop(self) -> None:
        """Requeue runs that nobody runs any more, and wake workers for work left lying.

        Claims already take lapsed leases and due timers; the sweep makes such runs
        visible as ``queued`` and NOTIFYs every process, so that work whose wake-up was
        lost (a listener reconnecting, a worker that was full) never waits for long.
        """
        settings = self.engine.settings
        while True:
            await asyncio.sleep(settings.sweep_interval_s)
            try:
                async with transaction(self.engine.sessions) as session:
                    requeued = await run_store.requeue_lapsed(session)
                    waiting = await run_store.has_claimable(session)
                    if waiting:
                        await run_store.notify(session, WORK_CHANNEL, "")
            except Exception as exc:
                log.warning("sweep failed (%s)", _short(exc))
                continue
            if requeued:
                log.warning(
                    "sweep: requeued %d run(s) whose lease lapsed: %s",
                    len(requeued),
                    ", ".join(requeued[:10]),
                )
            if waiting:
                self._wake.set()


def _short(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0] if text else ''}"[:300]
