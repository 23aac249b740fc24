"""Liveness, readiness and Prometheus metrics."""

from __future__ import annotations

import asyncio

from fastapi import APIRouter, Request, Response
from sqlalchemy import text

from app import metrics
from app.api.problems import PROBLEM_RESPONSE, problem
from app.engine.services import Engine

router = APIRouter(tags=["operations"])

READY_TIMEOUT_S = 5.0


@router.get("/healthz")
async def healthz() -> dict[str, str]:
    """Liveness: the process answers. Open without an API key."""
    return {"status": "ok"}


@router.get("/readyz", response_model=None, responses={503: PROBLEM_RESPONSE})
async def readyz(request: Request) -> dict[str, str] | Response:
    """Readiness: the database answers a query. Open without an API key."""
    engine: Engine = request.app.state.engine
    try:
        async with asyncio.timeout(READY_TIMEOUT_S), engine.sessions() as session:
            await session.execute(text("SELECT 1"))
    except Exception as exc:
        return problem(
            503,
            "database_unavailable",
            f"the database is not reachable ({type(exc).__name__})",
            headers={"Retry-After": "5"},
        )
    return {"status": "ready"}


@router.get(
    "/metrics",
    response_class=Response,
    responses={200: {"content": {metrics.CONTENT_TYPE_LATEST: {"schema": {"type": "string"}}}}},
)
async def metrics_endpoint() -> Response:
    """Prometheus metrics, in the text exposition format."""
    return Response(metrics.exposition(), media_type=metrics.CONTENT_TYPE_LATEST)
