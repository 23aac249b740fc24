"""A run's events: an SSE stream (stored, then live) or a JSON page."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Header, Query, Request
from sse_starlette import EventSourceResponse, ServerSentEvent

from app.api import deps
from app.api.runs import CommandsDep, IdempotencyKey
from app.engine.lifecycle import PAUSED, TERMINAL
from app.engine.services import Engine
from app.errors import Invalid, NotFound, error_item
from app.events.bus import EventBus
from app.schemas.runs import EventList, EventOut, RunCreate
from app.store import events as event_store
from app.store import runs as run_store
from app.store.database import transaction
from app.store.models import Event

router = APIRouter(tags=["events"])

EngineDep = Annotated[Engine, Depends(deps.engine)]
BusDep = Annotated[EventBus, Depends(deps.bus)]
BATCH = 500


def event_out(event: Event) -> EventOut:
    return EventOut(
        run_id=event.run_id,
        seq=event.seq,
        type=event.type,
        node=event.node,
        ts=event.ts,
        data=event.data,
    )


def parse_types(types: str | None) -> list[str]:
    return [t.strip() for t in (types or "").split(",") if t.strip()]


async def stream_events(
    engine: Engine,
    bus: EventBus,
    request: Request,
    run_id: str,
    after: int,
    until: str | None,
    types: list[str],
) -> AsyncIterator[ServerSentEvent]:
    cursor = after
    async with bus.subscribe(run_id) as signal:
        while True:
            async with transaction(engine.sessions) as session:
                # status first: events read afterwards include everything up to it
                run = await run_store.get(session, run_id)
                if run is None:
                    return
                batch = await event_store.list_events(session, run_id, after=cursor, limit=BATCH)
            for event in batch:
                cursor = event.seq
                if types and not any(
                    event.type.startswith(t[:-1]) if t.endswith("*") else event.type == t
                    for t in types
                ):
                    continue
                data = event_out(event).model_dump_json()
                yield ServerSentEvent(data=data, event=event.type, id=str(event.seq))
            if len(batch) == BATCH:
                continue
            if run.status in TERMINAL or (until == "paused" and run.status in PAUSED):
                return
            if await request.is_disconnected():
                return
            await signal.wait_past(cursor, 1.0)


@router.get(
    "/runs/{run_id}/events",
    response_model=EventList,
    responses={
        200: {
            "content": {"text/event-stream": {}, "application/json": {}},
            "description": "SSE stream by default; a JSON page with Accept: application/json",
        }
    },
)
async def run_events(
    run_id: str,
    request: Request,
    engine: EngineDep,
    bus: BusDep,
    after: Annotated[int | None, Query(ge=0)] = None,
    limit: Annotated[int, Query(ge=1, le=500)] = 50,
    cursor: str | None = None,
    until: Annotated[str | None, Query(pattern="^(paused|terminal)$")] = None,
    types: str | None = None,
    last_event_id: Annotated[str | None, Header(alias="Last-Event-ID")] = None,
) -> Any:
    async with transaction(engine.sessions) as session:
        if await run_store.get(session, run_id) is None:
            raise NotFound(f"run {run_id!r} not found", code="run_not_found")
    filters = parse_types(types)
    accept = request.headers.get("accept", "")
    if "application/json" in accept and "text/event-stream" not in accept:
        start = after or 0
        if cursor is not None:
            decoded = deps.decode_cursor(cursor)
            start = decoded if isinstance(decoded, int) else start
        async with transaction(engine.sessions) as session:
            rows = await event_store.list_events(
                session, run_id, after=start, limit=limit + 1, types=filters
            )
        more = len(rows) > limit
        rows = rows[:limit]
        return EventList(
            items=[event_out(r) for r in rows],
            next_cursor=deps.encode_cursor(rows[-1].seq) if more else None,
        )
    start = after or 0
    if last_event_id is not None:
        if not last_event_id.strip().isdigit():
            raise Invalid(
                "Last-Event-ID must be an event seq",
                code="validation_error",
                errors=[error_item(["header", "Last-Event-ID"], "not an integer")],
            )
        start = int(last_event_id)
    return EventSourceResponse(
        stream_events(engine, bus, request, run_id, start, until, filters),
        ping=int(engine.settings.sse_keepalive_s),
    )


@router.post("/runs/stream", responses={200: {"content": {"text/event-stream": {}}}})
async def start_and_stream(
    body: RunCreate,
    request: Request,
    commands: CommandsDep,
    engine: EngineDep,
    bus: BusDep,
    idempotency_key: IdempotencyKey = None,
    until: Annotated[str | None, Query(pattern="^(paused|terminal)$")] = None,
) -> Any:
    started = await commands.start(body, idempotency_key)
    return EventSourceResponse(
        stream_events(engine, bus, request, started.run.id, 0, until, []),
        ping=int(engine.settings.sse_keepalive_s),
        headers={"X-Run-Id": started.run.id},
    )
