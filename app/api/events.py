"""A run's events: an SSE stream (stored, then live) or a JSON page.

The stream reads from the process's shared per-run feed (``app.events.feed``), so any
number of subscribers of one run cost one query per new batch of events, and none holds
a database connection while it waits.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Header, Query, Request

from app.api import deps
from app.api.runs import CommandsDep, IdempotencyKey
from app.api.sse import EventStreamResponse
from app.engine.services import Engine
from app.errors import Invalid, NotFound, ServiceUnavailable, error_item
from app.events.frames import FeedEvent
from app.events.hub import FeedHub, StreamLimitReached, StreamSlot
from app.events.waiting import Push
from app.schemas.runs import EventList, EventOut, RunCreate
from app.store import events as event_store
from app.store import runs as run_store
from app.store.database import transaction

router = APIRouter(tags=["events"])

EngineDep = Annotated[Engine, Depends(deps.engine)]
Until = Annotated[
    str | None,
    Query(
        pattern="^(paused|terminal)$",
        description="`paused`: close the stream at the next pause too (or at once, after the "
        "replay, when the run is paused already)",
    ),
]
Types = Annotated[
    str | None,
    Query(description="comma-separated event types or prefix globs: `node.*,run.completed`"),
]


async def feed_hub(request: Request) -> FeedHub:
    """The process's FeedHub (made by the lifespan)."""
    hub: FeedHub = request.app.state.feeds
    return hub


HubDep = Annotated[FeedHub, Depends(feed_hub)]


def event_out(event: event_store.StoredEvent) -> EventOut:
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


def reserve(hub: FeedHub) -> StreamSlot:
    try:
        return hub.reserve()
    except StreamLimitReached:
        raise ServiceUnavailable(
            f"too many event streams are open on this server (at most {hub.max_streams}); "
            "retry later",
            code="too_many_streams",
        ) from None


def event_stream(
    engine: Engine,
    hub: FeedHub,
    slot: StreamSlot,
    run_id: str,
    after: int,
    until: str | None,
    types: list[str],
    headers: dict[str, str] | None = None,
) -> EventStreamResponse:
    settings = engine.settings

    def open_batches(push: Push) -> AsyncIterator[list[FeedEvent]]:
        return hub.stream(
            run_id,
            after,
            types=types,
            until_paused=until == "paused",
            max_s=settings.sse_max_stream_s,
            keepalive_s=settings.sse_keepalive_s,
            push=push,
        )

    return EventStreamResponse(
        open_batches,
        on_close=slot.release,
        watchdog=hub,
        # a client that stops reading is dropped instead of holding the stream open
        send_timeout_s=max(30.0, settings.sse_keepalive_s * 2),
        headers=headers,
    )


def start_cursor(after: int | None, last_event_id: str | None) -> int:
    if last_event_id is not None and last_event_id.strip():
        if not last_event_id.strip().isdigit() or int(last_event_id) > deps.MAX_SEQ:
            raise Invalid(
                "Last-Event-ID must be an event seq",
                code="validation_error",
                errors=[error_item(["header", "Last-Event-ID"], "not a non-negative integer")],
            )
        return int(last_event_id)  # a reconnecting client: it wins over the URL's ?after
    return after or 0


@router.get(
    "/runs/{run_id}/events",
    response_model=EventList,
    responses={
        200: {
            "content": {"text/event-stream": {}, "application/json": {}},
            "description": "SSE stream by default; a JSON page with Accept: application/json",
        },
        503: {"description": "too many event streams are open (`too_many_streams`)"},
    },
)
async def run_events(
    run_id: str,
    request: Request,
    engine: EngineDep,
    hub: HubDep,
    after: Annotated[
        int | None, Query(ge=0, le=2**31 - 1, description="events after this seq")
    ] = None,
    limit: Annotated[int, Query(ge=1, le=500)] = 50,
    cursor: str | None = None,
    until: Until = None,
    types: Types = None,
    last_event_id: Annotated[str | None, Header(alias="Last-Event-ID")] = None,
) -> Any:
    async with transaction(engine.sessions) as session:
        if await run_store.get(session, run_id) is None:
            raise NotFound(f"run {run_id!r} not found", code="run_not_found")
    filters = parse_types(types)
    accept = request.headers.get("accept", "")
    if "application/json" in accept and "text/event-stream" not in accept:
        return await event_page(engine, run_id, after, limit, cursor, filters)
    start = start_cursor(after, last_event_id)
    return event_stream(engine, hub, reserve(hub), run_id, start, until, filters)


async def event_page(
    engine: Engine,
    run_id: str,
    after: int | None,
    limit: int,
    cursor: str | None,
    types: list[str],
) -> EventList:
    start = deps.decode_seq_cursor(cursor, after or 0)
    async with transaction(engine.sessions) as session:
        rows = await event_store.list_events(
            session, run_id, after=start, limit=limit + 1, types=types
        )
    more = len(rows) > limit
    rows = rows[:limit]
    return EventList(
        items=[event_out(r) for r in rows],
        next_cursor=deps.encode_cursor(rows[-1].seq) if more else None,
    )


@router.post(
    "/runs/stream",
    responses={
        200: {
            "content": {"text/event-stream": {}},
            "description": "the new run's event stream; its id is in the X-Run-Id header",
        },
        503: {"description": "too many event streams are open (`too_many_streams`)"},
    },
)
async def start_and_stream(
    body: RunCreate,
    commands: CommandsDep,
    engine: EngineDep,
    hub: HubDep,
    idempotency_key: IdempotencyKey = None,
    until: Until = None,
    types: Types = None,
) -> Any:
    slot = reserve(hub)  # before the run starts: a refused stream starts nothing
    try:
        started = await commands.start(body, idempotency_key)
    except BaseException:
        slot.release()
        raise
    return event_stream(
        engine,
        hub,
        slot,
        started.run.id,
        0,
        until,
        parse_types(types),
        headers={"X-Run-Id": started.run.id},
    )
