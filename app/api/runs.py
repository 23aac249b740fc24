"""Runs: start, read, list, wait, answer, message, resume, fork, edit, cancel, delete."""

from __future__ import annotations

import time
from typing import Annotated, Any

from fastapi import APIRouter, Body, Depends, Header, Query, Response
from pydantic import BaseModel

from app.api import deps
from app.engine import branchdoc
from app.engine.approvals import Answered
from app.engine.commands import RunCommands
from app.engine.lifecycle import RunStatus
from app.engine.resources import doc_resource, read_resource, run_out, run_resource
from app.engine.services import Engine
from app.errors import Invalid, NotFound, error_item
from app.events.bus import EventBus, RunSignal
from app.schemas.runs import (
    CheckpointDetail,
    CheckpointList,
    CheckpointOut,
    ForkRequest,
    InterruptResponse,
    ResumeRequest,
    RunCreate,
    RunList,
    RunOut,
    SessionMessage,
    StateEdit,
)
from app.store import checkpoints as checkpoint_store
from app.store import runs as run_store
from app.store.database import transaction
from app.store.models import Run

router = APIRouter(tags=["runs"])

EngineDep = Annotated[Engine, Depends(deps.engine)]
CommandsDep = Annotated[RunCommands, Depends(deps.commands)]
BusDep = Annotated[EventBus, Depends(deps.bus)]
IdempotencyKey = Annotated[
    str | None, Header(alias="Idempotency-Key", min_length=1, max_length=255)
]
TimeoutS = Annotated[float, Query(ge=0, description="seconds to wait at most")]

STATUSES = {s.value for s in RunStatus}
BLOCKING = (RunStatus.QUEUED, RunStatus.RUNNING)


def json_response(
    resource: BaseModel, status_code: int = 200, headers: dict[str, str] | None = None
) -> Response:
    """A resource serialized once: a returned model would be dumped, validated again
    against ``response_model`` and dumped once more (the hot endpoints skip that)."""
    return Response(
        resource.model_dump_json(),
        status_code=status_code,
        headers=headers,
        media_type="application/json",
    )


async def load_run(engine: Engine, run_id: str) -> tuple[Run, RunOut]:
    read = await read_resource(engine.sessions, run_id, postgres=not engine.settings.is_sqlite)
    if read is None:
        raise NotFound(f"run {run_id!r} not found", code="run_not_found")
    return read


async def _resource(engine: Engine, run: Run) -> RunOut:
    async with transaction(engine.sessions) as session:
        return await run_out(session, run)


async def _answered(engine: Engine, answered: Answered) -> RunOut:
    """The resource of an answered run, from the document the answer read if it did."""
    if answered.doc is None:
        return await _resource(engine, answered.run)
    return doc_resource(answered.run, answered.doc)


async def wait_for_run(engine: Engine, bus: EventBus, run_id: str, timeout_s: float) -> Response:
    """The run once it is no longer queued or running, or when the timeout passes."""
    deadline = time.monotonic() + min(timeout_s, engine.settings.max_wait_s)
    async with bus.subscribe(run_id) as signal:
        known = bus.known(run_id)
        if known is not None and known.status in BLOCKING:
            # this process just saw it queued or running: no read until that changes
            settled = await _while_blocking(signal, known.seq, deadline)
            if settled and signal.resource is not None:
                # a runner of this process settled it meanwhile: its row as committed
                return Response(signal.resource, media_type="application/json")
        while True:
            run, resource = await load_run(engine, run_id)
            if run.status not in BLOCKING or deadline - time.monotonic() <= 0:
                return json_response(resource)
            seen = run.event_seq
            while True:
                settled = await _while_blocking(signal, seen, deadline)
                if settled and signal.resource is not None:
                    return Response(signal.resource, media_type="application/json")
                if settled or deadline - time.monotonic() <= 0:
                    break  # read the run as it is now
                # a quiet second (a long step, or a wake-up lost): the status alone says
                # whether the run needs reading, not its whole state
                position = await _position(engine, run_id)
                if position is None or position[0] not in BLOCKING:
                    break
                seen = position[1]


async def _position(engine: Engine, run_id: str) -> tuple[str, int] | None:
    async with transaction(engine.sessions) as session:
        return await run_store.event_position(session, run_id)


async def _while_blocking(signal: RunSignal, seen: int, deadline: float) -> bool:
    """Sleep until the bus says the status left queued/running (wake-ups that only bring
    more events of a running run need no read); the 1 s timeout bounds a lost wake-up.
    True when it did, with an event after ``seen``: then ``signal.resource``, if set, is
    the run as settled during this wait (a signal kept open by other watchers may still
    hold an older pause's resource otherwise)."""
    remaining = deadline - time.monotonic()
    while remaining > 0 and await signal.wait_past(seen, min(remaining, 1.0)):
        seen = signal.seq
        if signal.status is None or signal.status not in BLOCKING:
            return signal.status is not None
        remaining = deadline - time.monotonic()
    return False


@router.post("/runs", response_model=RunOut, status_code=202)
async def start_run(
    body: RunCreate,
    commands: CommandsDep,
    engine: EngineDep,
    idempotency_key: IdempotencyKey = None,
) -> Response:
    started = await commands.start(body, idempotency_key)
    if started.created:  # as just written: no need to read it back
        resource = run_resource(started.run, started.state)
    else:
        resource = await _resource(engine, started.run)
    headers = {"Location": f"/runs/{resource.id}"}
    if not started.created:
        headers["Idempotent-Replayed"] = "true"
    return json_response(resource, 202, headers)


@router.post("/runs/wait", response_model=RunOut)
async def start_and_wait(
    body: RunCreate,
    commands: CommandsDep,
    engine: EngineDep,
    bus: BusDep,
    timeout_s: TimeoutS = 30.0,
    idempotency_key: IdempotencyKey = None,
) -> Response:
    started = await commands.start(body, idempotency_key)
    return await wait_for_run(engine, bus, started.run.id, timeout_s)


@router.get("/runs", response_model=RunList)
async def list_runs(
    engine: EngineDep,
    status: Annotated[
        list[str] | None, Query(description="statuses, comma-separated or repeated")
    ] = None,
    workflow: str | None = None,
    cursor: str | None = None,
    limit: Annotated[int, Query(ge=1, le=500)] = 50,
) -> RunList:
    statuses = [s.strip() for item in status or [] for s in item.split(",") if s.strip()]
    unknown = [s for s in statuses if s not in STATUSES]
    if unknown:
        raise Invalid(
            f"unknown status {unknown[0]!r}",
            code="validation_error",
            errors=[error_item(["query", "status"], f"must be one of {sorted(STATUSES)}")],
        )
    before = deps.decode_run_cursor(cursor)
    async with transaction(engine.sessions) as session:
        rows = await run_store.list_runs(
            session, statuses=statuses, workflow=workflow, before=before, limit=limit + 1
        )
        items = [await run_out(session, row) for row in rows[:limit]]
    next_cursor = None
    if len(rows) > limit:
        last = rows[limit - 1]
        next_cursor = deps.encode_cursor([last.created_at.isoformat(), last.id])
    return RunList(items=items, next_cursor=next_cursor)


@router.get("/runs/{run_id}", response_model=RunOut)
async def get_run(run_id: str, engine: EngineDep) -> Response:
    return json_response((await load_run(engine, run_id))[1])


@router.get("/runs/{run_id}/wait", response_model=RunOut)
async def wait_run(
    run_id: str, engine: EngineDep, bus: BusDep, timeout_s: TimeoutS = 30.0
) -> Response:
    return await wait_for_run(engine, bus, run_id, timeout_s)


@router.delete("/runs/{run_id}", status_code=204)
async def delete_run(run_id: str, commands: CommandsDep) -> Response:
    await commands.delete(run_id)
    return Response(status_code=204)


@router.post("/runs/{run_id}/state", response_model=RunOut)
async def edit_state(
    run_id: str, body: StateEdit, commands: CommandsDep, engine: EngineDep
) -> RunOut:
    return await _resource(engine, await commands.edit_state(run_id, body))


WaitS = Annotated[
    float,
    Query(
        ge=0,
        description="wait up to this many seconds for the run to leave queued/running "
        "and answer 200 with it then (0: answer 202 at once)",
    ),
]
SETTLED_RESPONSE: dict[int | str, dict[str, Any]] = {
    200: {"model": RunOut, "description": "the run after `wait_s` (see there)"}
}


async def _answer_response(
    engine: Engine, bus: EventBus, answered: Answered, wait_s: float
) -> Response:
    """202 with the answered run, or, with ``wait_s``, 200 with the run once it paused or
    ended (or when ``wait_s`` passes): the answer and its outcome in one request."""
    if wait_s > 0:
        return await wait_for_run(engine, bus, answered.run.id, wait_s)
    return json_response(await _answered(engine, answered), 202)


@router.post(
    "/runs/{run_id}/response", response_model=RunOut, status_code=202, responses=SETTLED_RESPONSE
)
async def respond(
    run_id: str,
    body: InterruptResponse,
    commands: CommandsDep,
    engine: EngineDep,
    bus: BusDep,
    wait_s: WaitS = 0.0,
) -> Response:
    answered = await commands.respond(run_id, body)
    return await _answer_response(engine, bus, answered, wait_s)


@router.post(
    "/runs/{run_id}/messages", response_model=RunOut, status_code=202, responses=SETTLED_RESPONSE
)
async def send_message(
    run_id: str,
    body: SessionMessage,
    commands: CommandsDep,
    engine: EngineDep,
    bus: BusDep,
    wait_s: WaitS = 0.0,
) -> Response:
    answered = await commands.message(run_id, body.message, body.branch)
    return await _answer_response(engine, bus, answered, wait_s)


@router.post("/runs/{run_id}/resume", response_model=RunOut, status_code=202)
async def resume(
    run_id: str,
    commands: CommandsDep,
    engine: EngineDep,
    body: Annotated[ResumeRequest | None, Body()] = None,
) -> RunOut:
    run = await commands.resume(run_id, body.checkpoint_id if body else None)
    return await _resource(engine, run)


@router.post("/runs/{run_id}/fork", response_model=RunOut, status_code=201)
async def fork(run_id: str, body: ForkRequest, commands: CommandsDep, engine: EngineDep) -> RunOut:
    return await _resource(engine, await commands.fork(run_id, body))


@router.post("/runs/{run_id}/cancel", response_model=RunOut, status_code=202)
async def cancel(run_id: str, commands: CommandsDep, engine: EngineDep) -> RunOut:
    return await _resource(engine, await commands.cancel(run_id))


@router.get("/runs/{run_id}/checkpoints", response_model=CheckpointList)
async def list_checkpoints(
    run_id: str,
    engine: EngineDep,
    cursor: str | None = None,
    limit: Annotated[int, Query(ge=1, le=500)] = 50,
) -> CheckpointList:
    after = deps.decode_seq_cursor(cursor)
    async with transaction(engine.sessions) as session:
        if await run_store.get(session, run_id) is None:
            raise NotFound(f"run {run_id!r} not found", code="run_not_found")
        rows = await checkpoint_store.list_for_run(session, run_id, after=after, limit=limit + 1)
    more = len(rows) > limit
    rows = rows[:limit]
    return CheckpointList(
        items=[CheckpointOut.model_validate(r) for r in rows],
        next_cursor=deps.encode_cursor(rows[-1].seq) if more else None,
    )


@router.get("/runs/{run_id}/checkpoints/{checkpoint_id}", response_model=CheckpointDetail)
async def get_checkpoint(run_id: str, checkpoint_id: str, engine: EngineDep) -> CheckpointDetail:
    async with transaction(engine.sessions) as session:
        loaded = await checkpoint_store.load(session, checkpoint_id)
        if (loaded is None or loaded[0].run_id != run_id) and await run_store.get(
            session, run_id
        ) is None:
            raise NotFound(f"run {run_id!r} not found", code="run_not_found")
    if loaded is None or loaded[0].run_id != run_id:
        raise NotFound(
            f"checkpoint {checkpoint_id!r} not found in run {run_id}", code="checkpoint_not_found"
        )
    checkpoint, doc, _ = loaded
    top = doc["frames"][0]
    return CheckpointDetail(
        **CheckpointOut.model_validate(checkpoint).model_dump(),
        state=top["state"],
        nodes=top["nodes"],
        visits=top["visits"],
        interrupt=next(iter(branchdoc.pending_interrupts(doc)), None),
        frames=doc["frames"],
    )
