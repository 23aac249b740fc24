"""Webhooks: the run resource POSTed to the run's `webhook` URL whenever it pauses or ends.

Delivery goes through the outbound guard like any `http` step and is retried with
backoff. It is best-effort across crashes (a process that dies mid-delivery does not
redeliver); the run's events remain the durable record.
"""

from __future__ import annotations

import asyncio
import logging

from app.engine.resources import run_out
from app.engine.services import Engine
from app.schemas.runs import RunOut
from app.steps.destinations import OutboundError
from app.steps.outbound import send_guarded
from app.store import runs as run_store
from app.store.database import transaction

log = logging.getLogger(__name__)

ATTEMPTS = 5
FIRST_DELAY_S = 1.0


class WebhookSender:
    def __init__(self, engine: Engine) -> None:
        self.engine = engine
        self._tasks: set[asyncio.Task[None]] = set()

    def notify(self, run_id: str, resource: RunOut | None = None) -> None:
        """Deliver the run's resource: ``resource``, the run as the commit that paused or
        ended it left it, or else the run as read when the delivery starts."""
        task = asyncio.create_task(self._deliver(run_id, resource), name=f"webhook-{run_id}")
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def close(self) -> None:
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)

    async def _deliver(self, run_id: str, resource: RunOut | None) -> None:
        if resource is None:
            async with transaction(self.engine.sessions) as session:
                run = await run_store.get(session, run_id)
                if run is None:
                    return
                resource = await run_out(session, run)
        if not resource.webhook:
            return
        url = resource.webhook
        body = resource.model_dump(mode="json")
        delay = FIRST_DELAY_S
        for attempt in range(1, ATTEMPTS + 1):
            try:
                response = await send_guarded(
                    self.engine.http,
                    self.engine.outbound_policy,
                    "POST",
                    url,
                    json=body,
                    timeout_s=10,
                    headers={"Idempotency-Key": f"{run_id}:{body['status']}:{body['updated_at']}"},
                )
                if response.status_code < 300:
                    return
                reason = f"HTTP {response.status_code}"
            except (OutboundError, OSError, ValueError) as exc:
                reason = f"{type(exc).__name__}: {exc}"
            except Exception as exc:  # httpx errors and the like: retry, never crash the runner
                reason = f"{type(exc).__name__}: {exc}"
            log.warning(
                "webhook of run %s failed (attempt %d/%d): %s", run_id, attempt, ATTEMPTS, reason
            )
            if attempt < ATTEMPTS:
                await asyncio.sleep(delay)
                delay *= 2
