"""``create_app()``: the ASGI application, its lifespan, routers and error handlers."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

from fastapi import FastAPI

from app import __version__, metrics
from app.api import events, health, lean, problems, prompts, runs, ui, workflows
from app.api.guards import RequestGuards
from app.openapi import build_openapi
from app.runtime import Runtime
from app.settings import Settings
from app.steps.registry import StepRegistry

DESCRIPTION = """Stepwise executes workflow graphs durably: every step is checkpointed,
runs pause for people and timers, and can be resumed, rewound, forked and watched live."""


def create_app(
    settings: Settings | None = None, *, registry: StepRegistry | None = None
) -> FastAPI:
    settings = settings or Settings()

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        runtime = Runtime(settings, registry=registry)
        await runtime.start()
        app.state.runtime = runtime
        app.state.engine = runtime.engine
        app.state.commands = runtime.commands
        app.state.bus = runtime.bus
        app.state.feeds = runtime.feeds
        pool = runtime.pool
        metrics.watch_executions((lambda: len(pool.active)) if pool is not None else (lambda: 0))
        try:
            yield
        finally:
            await runtime.stop()

    app = FastAPI(
        title="Stepwise",
        version=__version__,
        description=DESCRIPTION,
        lifespan=lifespan,
        # The service traces runs and steps itself (app/tracing.py, docs/operations.md);
        # FastAPI's own HTTP telemetry would otherwise look up the global OpenTelemetry
        # providers on every request to find out that nobody configured them.
        telemetry={"tracing": False, "metrics": False, "logs": False},
    )
    app.state.settings = settings
    problems.install(app)
    for module in (workflows, prompts, runs, events, health, ui):
        # The routes themselves, not ``include_router``: FastAPI wraps an included router
        # in a layer that matches the request against it again on every call (~20 µs a
        # request against these routers). Ours add no prefix, tags or dependencies, so
        # their routes are the app's as they stand. What include_router would hand down
        # from the app does not reach them: ``app.dependency_overrides`` and app-wide
        # route options (none is used).
        app.router.routes.extend(module.router.routes)
    # the run endpoints clients call most (lean.LEAN) skip FastAPI's per-request work
    lean.install(app.router.routes)
    # added first, runs last: past the guards, a plain request for those goes straight in
    app.add_middleware(lean.LeanDispatch, fastapi_app=app)
    # added last, runs first: HttpMetrics sees every answer, guards' refusals included
    app.add_middleware(
        RequestGuards,
        api_keys=settings.api_keys,
        max_body_bytes=settings.max_body_bytes,
        max_json_depth=settings.max_json_depth,
    )
    app.add_middleware(metrics.HttpMetrics)

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is None:
            app.openapi_schema = build_openapi(app)
        return app.openapi_schema

    app.openapi = openapi  # type: ignore[method-assign]
    return app
