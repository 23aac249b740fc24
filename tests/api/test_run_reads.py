"""Reading a run (``GET /runs/{id}`` and the ``/wait`` endpoints once the run has
settled): the resource is the run as committed, its state from the head checkpoint —
on Postgres read in one statement with no transaction (``resources.read_resource``)."""

from __future__ import annotations

from typing import Any

import httpx
import pytest

from app.engine.resources import run_out
from app.store import runs as run_store
from app.store.database import transaction
from app.store.models import Checkpoint
from tests.engine.test_answer_and_wait import statements_sent
from tests.engine.test_runner import wf

# three steps that each change a little of a nested state: the head checkpoint is a delta
# against the first snapshot
DELTAS = wf(
    "read-deltas",
    {
        "a": {"step": "set", "set": {"doc": {"items": [1, 2], "name": "x"}, "n": 1}},
        "b": {"step": "set", "set": {"n": "{{ state.n + 1 }}"}},
        "ask": {"step": "interrupt", "with": {"question": "go on?"}},
        "c": {"step": "set", "set": {"doc": {"items": [1, 2, 3], "name": "y"}}},
    },
    [{"from": "a", "to": "b"}, {"from": "b", "to": "ask"}, {"from": "ask", "to": "c"}],
    state={"doc": {}, "n": 0},
)


async def _orm_resource(client: httpx.AsyncClient, run_id: str) -> dict[str, Any]:
    """The resource as the ORM reads it (the run, then its head checkpoint)."""
    sessions = client.app.state.runtime.engine.sessions  # type: ignore[attr-defined]
    async with transaction(sessions) as session:
        run = await run_store.get(session, run_id)
        assert run is not None
        return (await run_out(session, run)).model_dump(mode="json")


async def _head_is_a_delta(client: httpx.AsyncClient, run_id: str) -> bool:
    sessions = client.app.state.runtime.engine.sessions  # type: ignore[attr-defined]
    async with transaction(sessions) as session:
        run = await run_store.get(session, run_id)
        assert run is not None and run.head_checkpoint_id is not None
        head = await session.get(Checkpoint, run.head_checkpoint_id)
        return head is not None and head.base_id is not None


async def test_a_paused_and_then_completed_run_reads_as_the_orm_reads_it(
    client: httpx.AsyncClient,
) -> None:
    assert (await client.post("/workflows", json=DELTAS)).status_code == 201
    started = await client.post("/runs", json={"workflow": "read-deltas", "inputs": {"k": 1}})
    run_id = started.json()["id"]
    paused = await client.get(f"/runs/{run_id}/wait", params={"timeout_s": 10})
    assert paused.json()["status"] == "interrupted"
    assert paused.json()["state"] == {"doc": {"items": [1, 2], "name": "x"}, "n": 2}
    read = await client.get(f"/runs/{run_id}")
    assert read.status_code == 200
    assert read.json() == await _orm_resource(client, run_id)
    assert await _head_is_a_delta(client, run_id)  # the state read is base + delta

    interrupt_id = paused.json()["interrupt"]["id"]
    answered = await client.post(
        f"/runs/{run_id}/response", json={"interrupt_id": interrupt_id, "value": "yes"}
    )
    assert answered.status_code == 202, answered.text
    done = await client.get(f"/runs/{run_id}/wait", params={"timeout_s": 10})
    assert done.json()["status"] == "completed"
    assert done.json()["state"] == {"doc": {"items": [1, 2, 3], "name": "y"}, "n": 2}
    assert done.json() == await _orm_resource(client, run_id)
    assert (await client.get(f"/runs/{run_id}")).json() == done.json()


async def test_reading_a_run_that_does_not_exist_is_a_404(client: httpx.AsyncClient) -> None:
    for path in ("/runs/nope", "/runs/nope/wait"):
        response = await client.get(path)
        assert response.status_code == 404
        assert response.json()["code"] == "run_not_found"


@pytest.mark.postgres_only
async def test_on_postgres_a_run_is_read_in_one_statement_and_no_transaction(
    client: httpx.AsyncClient,
) -> None:
    assert (await client.post("/workflows", json=DELTAS)).status_code in (200, 201)
    started = await client.post("/runs", json={"workflow": "read-deltas", "inputs": {}})
    run_id = started.json()["id"]
    assert (await client.get(f"/runs/{run_id}/wait", params={"timeout_s": 10})).status_code == 200
    engine = client.app.state.runtime.db.sync_engine  # type: ignore[attr-defined]
    async with statements_sent(engine) as statements:
        read = await client.get(f"/runs/{run_id}")
    assert read.status_code == 200
    ours = [s for s in statements if "SKIP LOCKED" not in s.upper()]  # not the claim loops'
    assert not [s for s in ours if s.strip().rstrip(";").upper() in ("BEGIN", "COMMIT")], ours
    assert len([s for s in ours if "FROM runs r LEFT JOIN checkpoints" in s]) == 1, ours
