"""The runner's write (``record_step`` with a lease): on Postgres it goes straight through
asyncpg, and must write exactly what the SQLAlchemy statement writes, inside the
transaction SQLAlchemy began (a rollback undoes it), fenced by the lease."""

from __future__ import annotations

import json
import uuid
from collections.abc import AsyncIterator
from datetime import timedelta
from typing import Any

import pytest
from sqlalchemy import JSON, and_, select, text
from sqlalchemy.exc import OperationalError
from sqlalchemy.ext.asyncio import AsyncEngine

from app.settings import Settings
from app.store import checkpoints as checkpoint_store
from app.store import deltas
from app.store.checkpoints import CheckpointRow
from app.store.database import create_engine, create_sessionmaker, lone_statement
from app.store.events import NewEvent, expand
from app.store.models import Checkpoint, Event, Run, utcnow
from app.store.progress import StepWrite, record_step
from app.store.runs import Lease, lease_guard
from app.store.statements import RUN_KEYS, Unchanged, run_and_head

from ..conftest import truncate

LEASE = Lease("worker-1", 7)


@pytest.fixture
async def engine(database_url: str) -> AsyncIterator[AsyncEngine]:
    await truncate(database_url)
    engine = create_engine(Settings(database_url=database_url))
    yield engine
    await engine.dispose()


async def _new_run(engine: AsyncEngine, owner: str = LEASE.owner) -> str:
    run_id = str(uuid.uuid4())
    now = utcnow()
    async with engine.begin() as conn:
        await conn.execute(
            Run.__table__.insert().values(  # type: ignore[attr-defined]
                id=run_id,
                workflow_name="w",
                definition_hash="h",
                status="running",
                inputs={},
                lease_owner=owner,
                lease_token=LEASE.token,
                lease_expires_at=now + timedelta(seconds=30),
                created_at=now,
                updated_at=now,
            )
        )
    return run_id


def _values(status: str) -> dict[str, Any]:
    return {
        "status": status,
        "current_node": None if status == "completed" else "b",
        "step_count": 3,
        "attempt": 0,
        "resume_data": None,
        "interrupt": None,
        "awaiting": {"branch": "x", "node": "ask"} if status == "running" else None,
        "error": None,
        "output": {"total": 5, "names": ["ä", "b"]} if status == "completed" else None,
        "due_at": None,
        "lease_expires_at": utcnow() + timedelta(seconds=30) if status == "running" else None,
    }


async def _write(
    engine: AsyncEngine,
    run_id: str,
    guard: Any,
    status: str,
    *,
    rollback: bool = False,
    alone: bool = False,
    data: Any = None,
) -> Any:
    """One write of two steps; ``alone``: given a connection with no transaction begun
    (on Postgres one statement that commits by itself)."""
    first = CheckpointRow(str(uuid.uuid4()), run_id, None, 0, "a", "a2", "running", 2)
    checkpoint = CheckpointRow(str(uuid.uuid4()), run_id, first.id, 0, "a2", "b", status, 3)
    earlier = StepWrite(
        [NewEvent("node.started", "a"), NewEvent("node.completed", "a", {"output": 0})],
        first,
        None,
        {"frames": [{"state": {"n": 0}}]},
    )
    async with engine.connect() as conn:
        transaction = None if alone else await conn.begin()
        recorded = await record_step(
            conn,
            run_id,
            guard=guard,
            values=_values(status),
            events=[NewEvent("node.completed", "a2", {"output": {"n": 1}}), *_ended(status)],
            checkpoint=checkpoint,
            base_id=first.id,
            data={"n": 1} if data is None else data,
            earlier=[earlier],
        )
        if transaction is not None:
            await (transaction.rollback() if rollback else transaction.commit())
        elif conn.in_transaction():  # SQLite: the write began one
            await conn.commit()
    return recorded


def _ended(status: str) -> list[NewEvent]:
    return [NewEvent("run.completed", None, {"output": 5})] if status == "completed" else []


async def _row(engine: AsyncEngine, run_id: str) -> dict[str, Any]:
    async with engine.connect() as conn:
        # JSON as stored (text): SQL NULL and JSON null are told apart
        columns = ", ".join(
            f"CAST({c.name} AS TEXT) AS {c.name}" if isinstance(c.type, JSON) else c.name
            for c in Run.__table__.columns  # type: ignore[attr-defined]
        )
        query = text(f"SELECT {columns} FROM runs WHERE id = :id")
        row = (await conn.execute(query, {"id": run_id})).one()
        events = (
            await conn.execute(
                text("SELECT seq, type, node, data FROM event_log WHERE run_id = :id ORDER BY seq"),
                {"id": run_id},
            )
        ).all()
        checkpoints = (
            await conn.execute(
                text(
                    "SELECT seq, last_node, next_node, status, steps_completed, base_id IS NULL,"
                    " CAST(data AS TEXT) FROM checkpoints WHERE run_id = :id ORDER BY seq"
                ),
                {"id": run_id},
            )
        ).all()
    found = dict(row._mapping)
    for key in ("id", "updated_at", "head_checkpoint_id", "lease_expires_at", "created_at"):
        found.pop(key)
    # a checkpoint's id is the run's own
    found["events"] = [
        (s, t, n, {k: v for k, v in _json(d).items() if k != "checkpoint_id"})
        for s, t, n, d in events
    ]
    found["checkpoints"] = [tuple(c) for c in checkpoints]
    return found


def _json(value: Any) -> Any:
    return json.loads(value) if isinstance(value, str) else value


FENCES = {
    "lease": (LEASE, lease_guard(LEASE)),
    "unchanged": (Unchanged("running"), Run.status == "running"),
    # (event_seq, checkpoint_seq, lease_token) as read: a new run's
    "versions": (
        Unchanged("running", (0, 0, LEASE.token)),
        and_(
            Run.status == "running",
            Run.event_seq == 0,
            Run.checkpoint_seq == 0,
            Run.lease_token == LEASE.token,
        ),
    ),
}


@pytest.mark.parametrize("alone", [False, True], ids=["in-transaction", "alone"])
@pytest.mark.parametrize("fence", FENCES)
@pytest.mark.parametrize("status", ["running", "completed"])
async def test_the_fenced_write_writes_what_the_statement_writes(
    engine: AsyncEngine, status: str, fence: str, alone: bool
) -> None:
    direct, core = await _new_run(engine), await _new_run(engine)
    by_fence = await _write(engine, direct, FENCES[fence][0], status, alone=alone)
    by_statement = await _write(engine, core, FENCES[fence][1], status)

    assert await _row(engine, direct) == await _row(engine, core)
    assert (by_fence.checkpoint_seq, by_fence.last_event_seq, by_fence.status) == (
        by_statement.checkpoint_seq,
        by_statement.last_event_seq,
        by_statement.status,
    )
    types = ["node.started", "node.completed", "checkpoint.saved", "node.completed"]
    types += ["checkpoint.saved", *(["run.completed"] if status == "completed" else [])]
    assert [e["type"] for e in by_fence.events] == types
    assert [e["seq"] for e in by_fence.events] == list(range(1, len(types) + 1))
    assert by_fence.events[-1 if status == "running" else -2]["data"]["seq"] == 2
    if status == "completed":  # a settling write returns the whole row
        assert by_fence.run.output == by_statement.run.output == {"total": 5, "names": ["ä", "b"]}
        assert by_fence.run.lease_owner == LEASE.owner
    else:
        assert by_fence.run is None


async def test_the_lease_write_is_undone_by_a_rollback(engine: AsyncEngine) -> None:
    run_id = await _new_run(engine)
    recorded = await _write(engine, run_id, LEASE, "running", rollback=True)
    assert recorded is not None
    found = await _row(engine, run_id)
    assert (found["event_seq"], found["checkpoint_seq"], found["step_count"]) == (0, 0, 0)
    assert found["events"] == [] and found["checkpoints"] == []


@pytest.mark.parametrize("alone", [False, True], ids=["in-transaction", "alone"])
@pytest.mark.parametrize(
    "fence",
    [
        LEASE,
        Unchanged("interrupted"),
        Unchanged("running", (1, 0, LEASE.token)),  # an event written since the read
        Unchanged("running", (0, 1, LEASE.token)),  # a checkpoint
        Unchanged("running", (0, 0, LEASE.token - 1)),  # claimed or reserved meanwhile
    ],
    ids=["lease", "status", "event_seq", "checkpoint_seq", "lease_token"],
)
async def test_the_fenced_write_is_refused_when_the_fence_fails(
    engine: AsyncEngine, fence: Any, alone: bool
) -> None:
    run_id = await _new_run(engine, owner="worker-2")
    assert await _write(engine, run_id, fence, "running", alone=alone) is None
    found = await _row(engine, run_id)
    assert (found["event_seq"], found["checkpoint_seq"], found["status"]) == (0, 0, "running")
    assert found["events"] == [] and found["checkpoints"] == []


@pytest.mark.postgres_only
async def test_the_run_and_its_head_read_together_are_what_the_store_loads(
    engine: AsyncEngine,
) -> None:
    """``run_and_head`` (one driver read, for the unlocked answer) gives the run's row and
    its head checkpoint's full document and chain, as the session's reads do."""
    run_id = await _new_run(engine)
    # a snapshot, then a delta against it
    delta = deltas.diff({"frames": [{"state": {"n": 0}}]}, {"frames": [{"state": {"n": 1}}]})
    await _write(engine, run_id, LEASE, "running", data=delta)
    async with lone_statement(create_sessionmaker(engine)) as conn:
        read = await run_and_head(conn, run_id)
        assert not conn.in_transaction()  # a read of its own: nothing left open
        assert await run_and_head(conn, str(uuid.uuid4())) is None
    async with create_sessionmaker(engine)() as session:
        run = await session.get(Run, run_id)
        assert run is not None and run.head_checkpoint_id is not None
        loaded = await checkpoint_store.load(session, run.head_checkpoint_id)
    assert read is not None and loaded is not None
    found, head = read
    assert {key: getattr(found, key) for key in RUN_KEYS} == {
        key: getattr(run, key) for key in RUN_KEYS
    }
    assert head is not None
    assert head[0].base_id is not None  # the head is a delta: the document is rebuilt
    assert head[1] == {"frames": [{"state": {"n": 1}}]}
    assert (head[0].id, head[0].seq, head[1], head[2]) == (
        loaded[0].id,
        loaded[0].seq,
        loaded[1],
        loaded[2],
    )


async def test_a_lone_statement_connection_commits_what_sqlalchemy_began(
    engine: AsyncEngine,
) -> None:
    """A write that is not one statement (here: fenced by a SQL expression) on a
    ``lone_statement`` connection is still committed when the block ends."""
    run_id = await _new_run(engine)
    async with lone_statement(create_sessionmaker(engine)) as conn:
        recorded = await record_step(
            conn, run_id, guard=lease_guard(LEASE), values={"step_count": 4}, events=[]
        )
    assert recorded is not None
    assert (await _row(engine, run_id))["step_count"] == 4


@pytest.mark.postgres_only
async def test_a_connection_the_server_ended_is_an_outage_and_is_never_reused(
    engine: AsyncEngine,
) -> None:
    """The driver's errors on a connection the server terminated are SQLAlchemy's
    ``OperationalError`` (an outage the runner retries, not a bug in the run) and the
    connection is invalidated: the pool's next connection is a new one that works."""
    run_id = await _new_run(engine)
    async with engine.connect() as conn:
        pid = (await conn.execute(text("SELECT pg_backend_pid()"))).scalar_one()
        await conn.commit()
        async with engine.connect() as other:
            await other.execute(text("SELECT pg_terminate_backend(:pid)"), {"pid": pid})
            await other.commit()
        with pytest.raises(OperationalError) as raised:
            await record_step(conn, run_id, guard=LEASE, values={"step_count": 4}, events=[])
        assert raised.value.connection_invalidated
    async with engine.connect() as conn:
        assert (await conn.execute(text("SELECT pg_backend_pid()"))).scalar_one() != pid
    assert await _write(engine, run_id, LEASE, "running", alone=True) is not None


async def test_a_lone_write_stores_any_text_and_its_exact_stamps(engine: AsyncEngine) -> None:
    """The one-statement write sends its rows as JSON: node names, ids and data with
    quotes, backslashes, escapes, control characters and non-ASCII text, and integers
    beyond 64 bits, are stored as given, and every stamp to the microsecond."""
    run_id = await _new_run(engine)
    odd = 'nœud "a"\\b\t\u2028'
    data = {"s": 'q"\\u0000\x00\x1f é 🧪', "big": 2**70 + 1, "neg": -(2**65), "f": 0.1}
    stamp = utcnow().replace(microsecond=123456)
    first = CheckpointRow(str(uuid.uuid4()), run_id, None, 0, odd, odd + "2", "running", 2)
    last = CheckpointRow(str(uuid.uuid4()), run_id, first.id, 0, odd + "2", None, "completed", 3)
    earlier = StepWrite([NewEvent("node.started", odd, data)], first, None, data, stamp)
    async with engine.connect() as conn:
        recorded = await record_step(
            conn,
            run_id,
            guard=LEASE,
            values=_values("completed"),
            events=[NewEvent("node.completed", odd + "2", {"output": data})],
            checkpoint=last,
            base_id=first.id,
            data=[0, data],
            earlier=[earlier],
        )
        if conn.in_transaction():  # SQLite: the write began one
            await conn.commit()
    assert recorded is not None
    async with engine.connect() as conn:
        # the rows themselves (the event_log view's JSON functions refuse \u0000)
        events = (
            await conn.execute(select(Event).where(Event.run_id == run_id).order_by(Event.seq))
        ).all()
        checkpoints = (
            await conn.execute(
                select(Checkpoint).where(Checkpoint.run_id == run_id).order_by(Checkpoint.seq)
            )
        ).all()
    stored = [e for r in events for e in expand(run_id, r.seq, r.type, r.node, r.ts, r.data)]
    assert [(e.seq, e.type, e.node, e.ts, e.data) for e in stored] == [
        (e["seq"], e["type"], e["node"], e["ts"], e["data"]) for e in recorded.events
    ]
    assert [e.node for e in stored] == [odd, odd + "2", odd + "2", None]
    assert stored[0].data == data
    assert stored[0].ts == stored[1].ts == stamp
    assert [(c.id, c.parent_id, c.last_node, c.next_node, c.created_at) for c in checkpoints] == [
        (first.id, None, odd, odd + "2", stamp),
        (last.id, first.id, odd + "2", None, stored[-1].ts),
    ]
    assert [c.data for c in checkpoints] == [data, [0, data]]
