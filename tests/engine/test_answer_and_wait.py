"""An answer and its outcome in one request (``?wait_s=``), and waits answered from what
this process's runner just committed: the resource is the one a read would return."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest
from sqlalchemy import event

from app.store import held
from tests.conftest import AppFactory, events_of, store
from tests.engine.steps_for_tests import make_registry
from tests.engine.test_pauses import ASK
from tests.engine.test_runner import start, wf

CHAT = wf(
    "chat",
    {
        "listen": {"step": "input", "set": {"said": "{{ output }}"}},
        "reply": {"step": "set", "set": {"reply": "you said {{ state.said }}"}},
    },
    [{"from": "listen", "to": "reply"}, {"from": "reply", "to": "listen", "loop": True}],
)


async def fetch(client: httpx.AsyncClient, run_id: str) -> dict[str, Any]:
    response = await client.get(f"/runs/{run_id}")
    assert response.status_code == 200
    return dict(response.json())


async def test_an_answer_with_wait_s_returns_the_completed_run(client: httpx.AsyncClient) -> None:
    run = await start(client, ASK)
    response = await client.post(
        f"/runs/{run['id']}/response",
        params={"wait_s": 10},
        json={"interrupt_id": run["interrupt"]["id"], "value": {"ok": True}, "responded_by": "ana"},
    )
    assert response.status_code == 200
    done = response.json()
    assert done["status"] == "completed"
    assert done["state"] == {"answer": {"ok": True}, "who": "ana", "finished": True}
    assert done == await fetch(client, run["id"])  # what a read returns, field for field


async def test_a_refused_answer_with_wait_s_returns_the_failed_run(
    client: httpx.AsyncClient,
) -> None:
    run = await start(client, ASK)
    response = await client.post(
        f"/runs/{run['id']}/response",
        params={"wait_s": 10},
        json={"interrupt_id": run["interrupt"]["id"], "status": "rejected"},
    )
    assert response.status_code == 200
    failed = response.json()
    assert failed["status"] == "failed"
    assert failed["error"]["code"] == "interrupt_rejected"
    assert failed == await fetch(client, run["id"])


async def test_a_message_with_wait_s_returns_the_run_awaiting_the_next(
    client: httpx.AsyncClient,
) -> None:
    run = await start(client, CHAT)
    assert run["status"] == "awaiting_input"
    for text in ("hello", "again"):
        response = await client.post(
            f"/runs/{run['id']}/messages", params={"wait_s": 10}, json={"message": text}
        )
        assert response.status_code == 200
        run = response.json()
        assert run["status"] == "awaiting_input"
        assert run["state"]["reply"] == f"you said {text}"
        assert run == await fetch(client, run["id"])


async def test_without_wait_s_an_answer_is_accepted_at_once(client: httpx.AsyncClient) -> None:
    run = await start(client, ASK)
    response = await client.post(
        f"/runs/{run['id']}/response",
        json={"interrupt_id": run["interrupt"]["id"], "value": {"ok": True}},
    )
    assert response.status_code == 202
    assert response.json()["status"] in ("queued", "running")


async def test_a_bad_wait_s_is_refused_and_the_answer_not_taken(
    client: httpx.AsyncClient,
) -> None:
    run = await start(client, ASK)
    response = await client.post(
        f"/runs/{run['id']}/response",
        params={"wait_s": -1},
        json={"interrupt_id": run["interrupt"]["id"], "value": {"ok": True}},
    )
    assert response.status_code == 422
    assert response.headers["content-type"] == "application/problem+json"
    assert response.json()["code"] == "validation_error"
    assert (await fetch(client, run["id"]))["status"] == "interrupted"


@contextlib.asynccontextmanager
async def statements_sent(engine: Any) -> AsyncIterator[list[str]]:
    """Every statement sent to the database meanwhile: SQLAlchemy's, and those sent
    straight through asyncpg (its query logger on each connection checked out, or held
    checked out already; asyncpg calls its loggers soon after a statement, so the block's
    end lets the loop run once before it stops listening)."""
    statements: list[str] = []
    loggers: list[Any] = []

    def seen(_conn: Any, _cursor: Any, statement: str, *_args: Any) -> None:
        statements.append(statement)

    def checked_out(dbapi_connection: Any, *_args: Any) -> None:
        driver = dbapi_connection.driver_connection
        if hasattr(driver, "add_query_logger"):
            driver.add_query_logger(log)
            loggers.append(driver)

    def log(record: Any) -> None:
        statements.append(record.query)

    event.listen(engine, "before_cursor_execute", seen)
    event.listen(engine, "checkout", checked_out)
    # and the connections held checked out (app.store.held), as each is lent
    lent = held.held_for(engine)
    lend = lent.lend if lent is not None else None

    async def lend_logged() -> Any:
        assert lend is not None
        connection = await lend()
        checked_out(connection.sync_connection.connection.dbapi_connection)
        return connection

    if lent is not None:
        lent.lend = lend_logged  # type: ignore[method-assign]
    try:
        yield statements
    finally:
        await asyncio.sleep(0)
        if lent is not None:
            del lent.lend  # (the class's again)
        event.remove(engine, "before_cursor_execute", seen)
        event.remove(engine, "checkout", checked_out)
        for driver in loggers:
            driver.remove_query_logger(log)


async def test_a_wait_for_a_run_settled_here_reads_nothing(client: httpx.AsyncClient) -> None:
    """The runner of this process committed the run's end: the waiting request answers
    with that row and state, without reading the run back."""
    run = await start(client, ASK)
    engine = client.app.state.runtime.db.sync_engine  # type: ignore[attr-defined]
    async with statements_sent(engine) as statements:
        response = await client.post(
            f"/runs/{run['id']}/response",
            params={"wait_s": 10},
            json={"interrupt_id": run["interrupt"]["id"], "value": {"ok": True}},
        )
    assert response.json()["status"] == "completed"
    reads_of_runs = [
        s
        for s in statements
        if s.lstrip().upper().startswith("SELECT") and "FROM runs" in s and not _claims(s)
    ]
    # the answer reads the run once; nothing reads it after the runner's commit
    assert len(reads_of_runs) == 1, "\n".join(" ".join(s.split())[:90] for s in statements)


def _claims(statement: str) -> bool:
    """A read of the claim loop's, which may poll at any time (ids of due runs, the next
    due time, the next lease to lapse): not a read of the run's row."""
    flat = " ".join(statement.split())
    return flat.startswith(("SELECT runs.id FROM runs", "SELECT min("))


@pytest.mark.postgres_only
async def test_an_approval_locks_nothing(client: httpx.AsyncClient) -> None:
    """The common approval is one read and one fenced write (app/engine/approvals.py):
    no row lock is taken, and the run goes on from the answer."""
    run = await start(client, ASK)
    engine = client.app.state.runtime.db.sync_engine  # type: ignore[attr-defined]
    async with statements_sent(engine) as statements:
        response = await client.post(
            f"/runs/{run['id']}/response",
            json={"interrupt_id": run["interrupt"]["id"], "value": {"ok": True}},
        )
    assert response.status_code == 202
    assert any(s.startswith("SELECT") and "JOIN checkpoints" in s for s in statements)
    # (the claim loops' own statements skip locked rows; none of them is the answer's)
    locks = [s for s in statements if "FOR UPDATE" in s.upper() and "SKIP LOCKED" not in s.upper()]
    assert not locks, locks
    done = await client.get(f"/runs/{run['id']}/wait", params={"timeout_s": 10})
    assert done.json()["status"] == "completed"
    assert done.json()["state"]["answer"] == {"ok": True}


async def test_a_wait_never_answers_with_an_earlier_pause(make_client: AppFactory) -> None:
    """A watcher keeps the run's signal open across pauses: a wait that times out must
    read the run, not answer with the resource of the pause before the message."""
    client = await make_client()
    run = await start(client, CHAT)
    async with client.app.state.bus.subscribe(run["id"]):  # type: ignore[attr-defined]
        first = await client.post(
            f"/runs/{run['id']}/messages", params={"wait_s": 10}, json={"message": "hello"}
        )
        assert first.json()["status"] == "awaiting_input"
        await client.app.state.runtime.pool.stop()  # type: ignore[attr-defined]
        second = await client.post(
            f"/runs/{run['id']}/messages", params={"wait_s": 1.5}, json={"message": "again"}
        )
    assert second.status_code == 200
    assert second.json()["status"] == "queued"  # no runner here: the message waits
    assert second.json() == await fetch(client, run["id"])


async def test_a_wait_through_a_long_step_rereads_the_status_not_the_run(
    make_client: AppFactory,
) -> None:
    """While a step runs for seconds (no event, so no wake-up), ``/wait`` checks the run's
    status about once a second; the whole run (its checkpoint and state) is read at most
    once, and the answer is the completed run."""
    registry, _ = make_registry()
    client = await make_client(registry=registry)
    nodes = {"nap": {"step": "sleep", "with": {"seconds": 2.5}}, "after": {"step": "set"}}
    nodes["after"]["set"] = {"done": True}
    await store(client, wf("long", nodes, [{"from": "nap", "to": "after"}]))
    run = (await client.post("/runs", json={"workflow": "long", "inputs": {}})).json()
    for _ in range(200):
        if await events_of(client, run["id"], types="node.started"):
            break
        await asyncio.sleep(0.02)
    engine = client.app.state.runtime.db.sync_engine  # type: ignore[attr-defined]
    async with statements_sent(engine) as statements:
        response = await client.get(f"/runs/{run['id']}/wait", params={"timeout_s": 10})
    assert response.json()["status"] == "completed"
    assert response.json()["state"] == {"done": True}
    selects = [s for s in statements if s.lstrip().upper().startswith("SELECT")]
    whole = [s for s in selects if "checkpoints" in s]
    status = [s for s in selects if "FROM runs" in s and "checkpoints" not in s]
    shown = "\n".join(" ".join(s.split())[:90] for s in selects)
    assert len(whole) <= 1, shown
    assert status, shown  # it did look, in the quiet seconds
