"""Liveness, readiness and Prometheus metrics."""

from __future__ import annotations

from fastapi import APIRouter, Request, Response
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from sqlalchemy import text

from app.api.problems import problem
from app.engine.services import Engine

router = APIRouter(tags=["operations"])


@router.get("/healthz")
async def healthz() -> dict[str, str]:
    return {"status": "ok"}


@router.get("/readyz", response_model=None)
async def readyz(request: Request) -> dict[str, str] | Response:
    engine: Engine = request.app.state.engine
    try:
        async with engine.sessions() as session:
            await session.execute(text("SELECT 1"))
    except Exception as exc:
        return problem(
            503, "database_unavailable", f"the database is not reachable: {type(exc).__name__}"
        )
    return {"status": "ready"}


@router.get("/metrics", response_class=Response)
async def metrics() -> Response:
    return Response(generate_latest(), media_type=CONTENT_TYPE_LATEST)
