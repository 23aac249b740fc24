"""The process runtime: database, engine, event bus, listener and runner pool.

Built and torn down by the app's lifespan (``stepwise serve``) or by ``stepwise worker``;
nothing here exists at import time.
"""

from __future__ import annotations

import asyncio
import logging

from sqlalchemy.ext.asyncio import AsyncEngine

from app import tracing
from app.agents.clients import ModelClients
from app.engine.commands import RunCommands
from app.engine.pool import RunnerPool
from app.engine.retention import RetentionSweeper
from app.engine.services import Engine
from app.engine.webhooks import WebhookSender
from app.events.bus import EventBus, PostgresListener
from app.events.hub import FeedHub
from app.settings import Settings
from app.steps.clients import make_http_client
from app.steps.registry import StepRegistry
from app.store import held
from app.store.database import (
    PING_AFTER_IDLE_S,
    backend_pids,
    create_engine,
    create_sessionmaker,
    migrate,
)

log = logging.getLogger(__name__)


class Runtime:
    def __init__(
        self, settings: Settings, *, run_workers: bool = True, registry: StepRegistry | None = None
    ) -> None:
        self.settings = settings
        self.run_workers = run_workers and settings.workers > 0
        self._registry = registry
        self.db: AsyncEngine | None = None
        self.listener: PostgresListener | None = None
        self.pool: RunnerPool | None = None
        self.retention: RetentionSweeper | None = None
        self._closing_feeds: asyncio.Task[None] | None = None

    async def start(self) -> None:
        settings = self.settings
        if settings.migrate_on_start:
            await migrate(settings.database_url)
        tracing.configure()
        self.db = create_engine(settings)
        own_pids = set() if settings.is_sqlite else backend_pids(self.db)
        if not settings.is_sqlite:
            # up to half the pool lent in turn to statements needing no transaction (app.store.held)
            held.hold(self.db, max(1, settings.db_pool_size // 2), PING_AFTER_IDLE_S)
        self.bus = EventBus()
        self.http = make_http_client()
        self.model_clients = ModelClients()
        self.engine = Engine.build(
            settings, create_sessionmaker(self.db), self.http, self.model_clients, self._registry
        )
        self.engine.on_events = self.bus.publish
        self.commands = RunCommands(self.engine)
        self.webhooks = WebhookSender(self.engine)
        self.feeds = FeedHub(
            self.bus,
            self.engine.sessions,
            max_streams=settings.sse_max_connections,
            poll_s=settings.poll_interval_s,
            # deadlines and keep-alives are seen at this granularity
            tick_s=min(1.0, settings.sse_keepalive_s / 2, settings.sse_max_stream_s / 4),
        )
        self.engine.on_committed = self.feeds.offer
        self.engine.on_settled = self.webhooks.notify
        self.bus.on_control(
            lambda action, run_id: self.engine.signal_answer(run_id) if action == "answer" else None
        )
        if not settings.is_sqlite:
            self.listener = PostgresListener(settings.database_url, self.bus, own_pids=own_pids)
            await self.listener.start()
        if self.run_workers:
            self.pool = RunnerPool(self.engine, workers=settings.workers)
            pool = self.pool
            self.engine.on_work = pool.wake
            self.engine.on_cancel = pool.cancel
            self.engine.can_adopt = pool.has_capacity
            self.engine.adopt = pool.adopt
            self.engine.runner_owner = pool.owner
            self.bus.on_work(pool.wake)
            self.bus.on_control(
                lambda action, run_id: pool.cancel(run_id) if action == "cancel" else None
            )
            await pool.start()
        self.webhooks.start()
        self.retention = RetentionSweeper(settings, self.engine.sessions)
        self.retention.start()
        log.info(
            "stepwise started (%s, %d runners)",
            "sqlite" if settings.is_sqlite else "postgres",
            settings.workers if self.run_workers else 0,
        )

    def begin_shutdown(self) -> None:
        """Stop claiming and start draining the runs in flight, at once (SIGTERM).

        The HTTP server may still be finishing its requests; the runs are given back
        meanwhile, so they continue on other processes without waiting for it. The event
        streams end now too (their clients reconnect elsewhere with ``Last-Event-ID``):
        the server waits for its open responses before the shutdown goes on.
        """
        if self.pool is not None:
            self.pool.begin_stop()
        self._closing_feeds = asyncio.get_running_loop().create_task(self.feeds.close())

    async def stop(self) -> None:
        await self.feeds.close()  # end the streams first: they hold no runs, only clients
        if self.retention is not None:
            await self.retention.stop()
        if self.pool is not None:
            await self.pool.stop()
        if self.listener is not None:
            await self.listener.stop()
        await self.webhooks.close()
        await self.http.aclose()
        await self.model_clients.aclose()
        if self.db is not None:
            held_connections = held.held_for(self.db)
            if held_connections is not None:
                await held_connections.close()
            await self.db.dispose()
        tracing.shutdown()
