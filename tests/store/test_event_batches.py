"""A write's events are stored as one row (a batch); every reader sees events only: the
API's pages and filters, SSE, ``has_event``, retention's counts and the ``event_log``
view. Both backends, through the real runner."""

from __future__ import annotations

import itertools
from collections.abc import AsyncIterator
from datetime import timedelta
from typing import Any

import httpx
import orjson
import pytest
from sqlalchemy import text, true
from sqlalchemy.ext.asyncio import AsyncEngine

from app.engine.retention import prune
from app.settings import Settings
from app.store import events as event_store
from app.store import runs as run_store
from app.store.database import create_engine, create_sessionmaker, transaction
from app.store.events import BATCH, NewEvent, stored_json
from app.store.models import utcnow
from app.store.retention import RetentionRule, due_totals

from ..conftest import events_of, run_and_wait, store

NODES = ["a", "b", "c", "d"]
WORKFLOW = {
    "name": "batches",
    "state": {"n": 0},
    "nodes": {name: {"step": "set", "set": {"n": "{{ state.n + 1 }}"}} for name in NODES},
    "edges": [{"from": a, "to": b} for a, b in itertools.pairwise(NODES)],
}


@pytest.fixture
async def engine(database_url: str) -> AsyncIterator[AsyncEngine]:
    engine = create_engine(Settings(database_url=database_url))
    yield engine
    await engine.dispose()


async def _finished_run(client: httpx.AsyncClient) -> str:
    await store(client, WORKFLOW)
    run = await run_and_wait(client, {"workflow": "batches"})
    assert run["status"] == "completed", run
    return str(run["id"])


async def _stored(engine: AsyncEngine, table: str, run_id: str) -> list[tuple[Any, ...]]:
    async with engine.connect() as conn:
        result = await conn.execute(
            text(f"SELECT seq, type, node, data FROM {table} WHERE run_id = :id ORDER BY seq"),
            {"id": run_id},
        )
        return [tuple(row) for row in result]


def _json(value: Any) -> Any:
    return orjson.loads(value) if isinstance(value, str | bytes) else value


async def test_a_steps_events_are_one_row_and_read_back_as_events(
    client: httpx.AsyncClient, engine: AsyncEngine
) -> None:
    run_id = await _finished_run(client)
    events = await events_of(client, run_id)
    assert [e["seq"] for e in events] == list(range(1, len(events) + 1))  # gapless
    completed = [e["node"] for e in events if e["type"] == "node.completed"]
    assert completed == NODES
    saved = [e["data"] for e in events if e["type"] == "checkpoint.saved"]
    assert [s["seq"] for s in saved] == list(range(1, len(NODES) + 2))

    rows = await _stored(engine, "events", run_id)
    assert len(rows) < len(events) / 2, rows  # batches, not a row an event
    assert any(row[1] == BATCH for row in rows)
    # the view shows exactly what the API shows
    log = await _stored(engine, "event_log", run_id)
    assert [(s, t, n, _json(d)) for s, t, n, d in log] == [
        (e["seq"], e["type"], e["node"], e["data"]) for e in events
    ]


async def test_pages_and_filters_cut_through_batches(
    client: httpx.AsyncClient, engine: AsyncEngine
) -> None:
    run_id = await _finished_run(client)
    every = await events_of(client, run_id)
    for types in ("", "checkpoint.saved", "node.*", "run.completed,state.updated", "nothing"):
        patterns = [t for t in types.split(",") if t]
        wanted = [e for e in every if event_store.matches(e["type"], patterns)]
        for after in range(len(every) + 1):  # from inside every batch
            for limit in (1, 2, 3):
                response = await client.get(
                    f"/runs/{run_id}/events",
                    params={"after": after, "limit": limit, "types": types},
                    headers={"Accept": "application/json"},
                )
                assert response.status_code == 200, response.text
                expected = [e for e in wanted if e["seq"] > after]
                assert response.json()["items"] == expected[:limit], (types, after, limit)
                assert (response.json()["next_cursor"] is not None) == (len(expected) > limit)


async def test_sse_replay_from_inside_a_batch(client: httpx.AsyncClient) -> None:
    run_id = await _finished_run(client)
    every = await events_of(client, run_id)
    after = every[3]["seq"]  # node.started, state.updated ... of the first step's batch
    response = await client.get(
        f"/runs/{run_id}/events",
        headers={"Accept": "text/event-stream", "Last-Event-ID": str(after)},
    )
    ids = [int(line[4:]) for line in response.text.splitlines() if line.startswith("id: ")]
    assert ids == [e["seq"] for e in every if e["seq"] > after]


async def test_has_event_and_pruning_count_events_not_rows(
    client: httpx.AsyncClient, engine: AsyncEngine
) -> None:
    run_id = await _finished_run(client)
    every = await events_of(client, run_id)
    sessions = create_sessionmaker(engine)
    async with transaction(sessions) as session:
        assert await event_store.has_event(session, run_id, "state.updated")  # in a batch
        assert await event_store.has_event(session, run_id, "run.queued")
        assert not await event_store.has_event(session, run_id, "run.failed")
        rule = RetentionRule(utcnow() + timedelta(days=1), true(), "all")
        totals = await due_totals(session, rule)
    assert (totals.runs, totals.events) == (1, len(every))
    # dry run, then for real in transactions of at most 2 rows: both count events
    report = await prune(sessions, [rule], dry_run=True)
    assert (report.runs, report.events) == (1, len(every))
    report = await prune(sessions, [rule], batch_rows=2)
    assert (report.runs, report.events) == (1, len(every))
    *of_events, of_the_run = report.transactions
    assert len(of_events) >= 2 and max(of_events) <= 2  # event rows, two at a time
    assert of_the_run == 1 + len(NODES) + 1  # the run and its checkpoints
    assert await _stored(engine, "events", run_id) == []


async def test_deleting_a_run_counts_its_events(
    client: httpx.AsyncClient, engine: AsyncEngine
) -> None:
    run_id = await _finished_run(client)
    every = await events_of(client, run_id)
    sessions = create_sessionmaker(engine)
    async with transaction(sessions) as session:
        events, _ = await run_store.delete_runs(session, [run_id])
    assert events == len(every)
    assert await _stored(engine, "events", run_id) == []


@pytest.mark.parametrize(
    ("count", "at"), [(n, at) for n in (1, 2, 5) for at in (None, 0, 1, 4) if at is None or at < n]
)
def test_a_rows_json_is_head_seq_tail(count: int, at: int | None) -> None:
    """``at``: the event that is a checkpoint's ``checkpoint.saved`` (its seq unknown;
    its own data, the branch that wrote it, follows)."""
    events = [
        NewEvent(f"t.{i}", f"n{i}" if i % 2 else None, {"i": i, "s": '"}],['}) for i in range(count)
    ]
    checkpoint = "0b1c" if at is not None else None
    head, tail = stored_json(events, at if at is not None else -1, checkpoint)
    data = orjson.loads(head + "17" + tail if checkpoint else head)
    expected: list[list[Any]] = [[e.type, e.node, e.data] for e in events]
    if at is not None:
        saved = {"checkpoint_id": "0b1c", "seq": 17, **events[at].data}
        expected[at] = [events[at].type, events[at].node, saved]
    assert data == (expected[0][2] if count == 1 else expected)
