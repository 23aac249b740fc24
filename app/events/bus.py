"""The wake-up bus. It carries no events, only "run X has events up to seq N" and
"there is work": readers take the events from the database (or, for runs executed in
this process, from what the runner committed: ``FeedHub.offer``), so a lost wake-up
only delays a reader until its bounded fallback poll.

In one process the bus is a set of asyncio signals. With Postgres, a listener
connection turns ``NOTIFY`` (sent by writers inside their transaction, so delivered on
commit) from any process into the same signals.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections import OrderedDict
from collections.abc import AsyncIterator, Callable, Collection
from dataclasses import dataclass, field
from typing import Any

log = logging.getLogger(__name__)

EVENTS_CHANNEL = "stepwise_events"
WORK_CHANNEL = "stepwise_work"
CONTROL_CHANNEL = "stepwise_control"


@dataclass(slots=True)
class RunSignal:
    """Wakes every waiter of one run when its event seq moves past theirs."""

    seq: int = 0
    status: str | None = None  # the run's status as of ``seq``, when the publisher said
    # the run's resource as of ``seq``, when a runner of this process settled it there
    resource: bytes | None = None
    subscribers: int = 0
    _event: asyncio.Event = field(default_factory=asyncio.Event)

    def advance(self, seq: int, status: str | None = None, resource: bytes | None = None) -> None:
        if seq > self.seq:
            self.seq = seq
            self.status = status
            self.resource = resource
            self._event.set()
            self._event = asyncio.Event()

    async def wait_past(self, seq: int, timeout_s: float) -> bool:
        """True when the run has an event after ``seq``, False on timeout."""
        if self.seq > seq:
            return True
        event = self._event
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(event.wait(), timeout_s)
        return self.seq > seq


@dataclass(frozen=True, slots=True)
class Known:
    seq: int
    status: str | None


class EventBus:
    #: how many runs' last known (seq, status) are remembered, most recent first
    KNOWN_RUNS = 4096

    def __init__(self) -> None:
        self._signals: dict[str, RunSignal] = {}
        self._known: OrderedDict[str, Known] = OrderedDict()
        self._work_listeners: list[Callable[[], None]] = []
        self._control_listeners: list[Callable[[str, str], None]] = []

    # -- runs' events ------------------------------------------------------------------

    def publish(
        self,
        run_id: str,
        seq: int,
        status: str | None = None,
        resource: Callable[[], bytes] | None = None,
        *,
        local: bool = True,
    ) -> None:
        """The run's events reached ``seq``; ``resource`` builds the run's resource as of
        then (a runner of this process settled it), used only if someone waits here."""
        known = self._known.get(run_id)
        # a status change of this process may write no event (an answer queues the run):
        # the same seq then brings news; from another process (NOTIFY), only a later seq
        # does, since a late echo of an earlier commit carries the same seq
        news = local and known is not None and seq == known.seq and status != known.status
        if known is None or seq > known.seq or news:
            self._known[run_id] = Known(seq, status)
            self._known.move_to_end(run_id)
            if len(self._known) > self.KNOWN_RUNS:
                self._known.popitem(last=False)
        signal = self._signals.get(run_id)
        if signal is not None:
            signal.advance(seq, status, resource() if resource is not None else None)

    def known(self, run_id: str) -> Known | None:
        """The run's latest seq and status this process heard of, if it did recently: a
        hint (a wake-up may have been lost), never a substitute for reading the run."""
        return self._known.get(run_id)

    @contextlib.asynccontextmanager
    async def subscribe(self, run_id: str) -> AsyncIterator[RunSignal]:
        signal = self._signals.get(run_id)
        if signal is None:
            signal = self._signals[run_id] = RunSignal()
        signal.subscribers += 1
        try:
            yield signal
        finally:
            signal.subscribers -= 1
            if signal.subscribers == 0:
                self._signals.pop(run_id, None)

    @property
    def subscriber_count(self) -> int:
        return sum(s.subscribers for s in self._signals.values())

    # -- work and control ---------------------------------------------------------------

    def on_work(self, listener: Callable[[], None]) -> None:
        self._work_listeners.append(listener)

    def wake_work(self) -> None:
        for listener in self._work_listeners:
            listener()

    def on_control(self, listener: Callable[[str, str], None]) -> None:
        self._control_listeners.append(listener)

    def control(self, action: str, run_id: str) -> None:
        for listener in self._control_listeners:
            listener(action, run_id)

    def dispatch(self, channel: str, payload: str) -> None:
        """Route a notification from another process."""
        if channel == EVENTS_CHANNEL:
            # "<run_id>:<seq>:<status>"
            run_id, _, rest = payload.partition(":")
            seq, _, status = rest.partition(":")
            if run_id and seq.isdigit():
                self.publish(run_id, int(seq), status or None, local=False)
        elif channel == WORK_CHANNEL:
            self.wake_work()
        elif channel == CONTROL_CHANNEL:
            action, _, run_id = payload.partition(":")
            self.control(action, run_id)


class PostgresListener:
    """One dedicated connection LISTENing for every channel; reconnects when it drops."""

    def __init__(
        self,
        dsn: str,
        bus: EventBus,
        *,
        retry_s: float = 1.0,
        own_pids: Collection[int] = (),
    ) -> None:
        self._dsn = dsn.replace("postgresql+asyncpg://", "postgresql://", 1)
        self._bus = bus
        # this process's own database backends: their event NOTIFYs echo commits it has
        # published already, with more (a settled run's resource); a late echo must not
        # overtake that
        self._own_pids = own_pids
        self._retry_s = retry_s
        self._task: asyncio.Task[None] | None = None
        self.connected = asyncio.Event()

    async def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name="stepwise-listener")
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self.connected.wait(), 10)

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task

    async def _run(self) -> None:
        import asyncpg

        while True:
            lost = asyncio.Event()
            try:
                conn = await asyncpg.connect(
                    self._dsn, timeout=5, server_settings={"application_name": "stepwise-listener"}
                )
            except Exception as exc:  # any failure to connect: try again shortly
                log.warning("event listener cannot connect (%s); retrying", exc)
                await asyncio.sleep(self._retry_s)
                continue
            try:
                conn.add_termination_listener(lambda _c, lost=lost: lost.set())

                def deliver(_c: Any, pid: int, channel: str, payload: str) -> None:
                    if channel == EVENTS_CHANNEL and pid in self._own_pids:
                        return
                    self._bus.dispatch(channel, payload)

                for channel in (EVENTS_CHANNEL, WORK_CHANNEL, CONTROL_CHANNEL):
                    await conn.add_listener(channel, deliver)
                self.connected.set()
                log.info("event listener connected")
                # Anything committed while we were away is found by the readers' fallback
                # polls; wake the runners now so they look for work at once.
                self._bus.wake_work()
                while not lost.is_set():
                    with contextlib.suppress(TimeoutError):
                        await asyncio.wait_for(lost.wait(), 5)
                    if not lost.is_set() and conn.is_closed():
                        break
                    if not lost.is_set():
                        try:
                            await asyncio.wait_for(conn.execute("SELECT 1"), 5)
                        except Exception:  # asyncpg raises several kinds when a connection dies
                            break
                log.warning("event listener connection lost; reconnecting")
            except Exception as exc:  # never let the listener die: reconnect
                log.warning("event listener failed (%s); reconnecting", exc)
            finally:
                self.connected.clear()
                with contextlib.suppress(Exception):
                    await conn.close(timeout=1)
            await asyncio.sleep(self._retry_s)
