"""Webhooks: the run resource POSTed to the run's `webhook` URL whenever it pauses or ends.

Deliveries are durable. The transaction that pauses or ends a run also writes the
delivery it owes (``owe``, into the outbox ``app.store.webhooks``), with the run resource
as that transaction left it. Every process runs a ``WebhookSender``: woken after such a
commit, and every sweep interval in any case, it claims due deliveries and POSTs each
through the outbound guard with its Idempotency-Key. A 2xx answer ends the delivery. A
failed attempt is due again after a backoff (1 s, doubling, at most 5 min apart) until
``STEPWISE_WEBHOOK_ATTEMPTS`` are spent. A claim lapses a little after the attempt's
timeout, so a delivery whose process died mid-attempt or between attempts is made by
another process, or by this one restarted: at least once, in order for each run.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from datetime import timedelta

from app import metrics
from app.engine.services import Engine
from app.schemas.runs import RunOut
from app.steps.outbound import send_guarded
from app.store import webhooks as webhook_store
from app.store.database import Executor, transaction
from app.store.models import utcnow
from app.store.webhooks import Delivery

log = logging.getLogger(__name__)

FIRST_DELAY_S = 1.0
MAX_DELAY_S = 300.0
CLAIM_MARGIN_S = 5.0  # a claim lasts the attempt's timeout and this
MAX_IN_FLIGHT = 64  # attempts under way in one process
BATCH = 32  # deliveries claimed by one statement


async def owe(executor: Executor, resource: RunOut) -> None:
    """In the transaction that paused or ended the run: the delivery of ``resource``,
    if the run has a webhook."""
    if resource.webhook:
        await webhook_store.enqueue(executor, resource.model_dump(mode="json"))


def backoff_s(attempts: int) -> float:
    """The wait after the ``attempts``-th failed attempt."""
    return float(min(FIRST_DELAY_S * 2.0 ** (attempts - 1), MAX_DELAY_S))


class WebhookSender:
    def __init__(self, engine: Engine) -> None:
        self.engine = engine
        self._wake = asyncio.Event()
        self._loop: asyncio.Task[None] | None = None
        self._attempts: dict[int, asyncio.Task[None]] = {}
        self._starved = False  # the last sweep left due deliveries for want of a slot

    def start(self) -> None:
        self._loop = asyncio.create_task(self._run(), name="stepwise-webhooks")

    def notify(self) -> None:
        """A commit owed deliveries (or may have): sweep now."""
        self._wake.set()

    async def close(self) -> None:
        """Stop; deliveries in the middle of an attempt are due again at once, for the
        processes still running (the receiver may get such an attempt twice)."""
        tasks = [t for t in (self._loop, *self._attempts.values()) if t is not None]
        stopped = list(self._attempts)
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        self._loop = None
        if stopped:
            try:
                async with transaction(self.engine.sessions) as session:
                    await webhook_store.release(session, stopped)
            except Exception as exc:  # their claims lapse by themselves
                log.warning("could not release %d webhook(s): %s", len(stopped), exc)

    @property
    def _claim_s(self) -> float:
        return self.engine.settings.webhook_timeout_s + CLAIM_MARGIN_S

    async def _run(self) -> None:
        while True:  # a first sweep at once: what was owed before this process started
            self._wake.clear()
            try:
                await self.sweep()
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # the database is away: the next sweep tries again
                log.warning("webhook sweep failed (%s: %s)", type(exc).__name__, exc)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), self.engine.settings.sweep_interval_s)

    async def sweep(self) -> int:
        """Claim the due deliveries this process has room for and start their attempts;
        how many were started."""
        started = 0
        while (room := min(MAX_IN_FLIGHT - len(self._attempts), BATCH)) > 0:
            async with transaction(self.engine.sessions) as session:
                claimed = await webhook_store.claim(session, room, self._claim_s)
            for delivery in claimed:
                task = asyncio.create_task(self._attempt(delivery), name=f"webhook-{delivery.id}")
                self._attempts[delivery.id] = task
            started += len(claimed)
            if len(claimed) < room:
                self._starved = False
                return started
        self._starved = True
        return started

    async def _attempt(self, delivery: Delivery) -> None:
        try:
            error = await self._post(delivery)
            last = delivery.attempts >= self.engine.settings.webhook_attempts
            outcome = "delivered" if error is None else "failed" if last else "retrying"
            if error is not None:
                log.warning(
                    "webhook of run %s failed (attempt %d/%d%s): %s",
                    delivery.run_id,
                    delivery.attempts,
                    self.engine.settings.webhook_attempts,
                    ", given up" if last else "",
                    error,
                )
            async with transaction(self.engine.sessions) as session:
                if outcome == "retrying":
                    assert error is not None
                    delay = backoff_s(delivery.attempts)
                    due = utcnow() + timedelta(seconds=delay)
                    await webhook_store.retry_at(session, delivery.id, due, error)
                else:
                    await webhook_store.done(session, delivery.id)
            metrics.webhook_attempt(outcome)
            if outcome == "retrying":
                asyncio.get_running_loop().call_later(delay, self._wake.set)
            else:  # the run's next delivery, if any, may go now
                self._wake.set()
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # the outcome was not written: the claim lapses, and
            # the delivery is attempted again (at least once)
            log.warning("webhook %d of run %s: %s", delivery.id, delivery.run_id, exc)
        finally:
            self._attempts.pop(delivery.id, None)
            if self._starved:
                self._wake.set()

    async def _post(self, delivery: Delivery) -> str | None:
        """One attempt; None when the receiver took it, else why not."""
        try:
            response = await send_guarded(
                self.engine.http,
                self.engine.outbound_policy,
                "POST",
                delivery.url,
                json=delivery.body,
                timeout_s=self.engine.settings.webhook_timeout_s,
                headers={"Idempotency-Key": delivery.key},
            )
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # refused by the guard, unreachable, timed out, …
            return f"{type(exc).__name__}: {exc}"
        return None if 200 <= response.status_code < 300 else f"HTTP {response.status_code}"
