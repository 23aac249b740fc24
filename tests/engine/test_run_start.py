"""A run's start: on Postgres the stored workflow's read and one statement that writes
the run, its first checkpoint and its first events (app/store/statements.py), each
committing by itself; all of it or nothing."""

from __future__ import annotations

import asyncio

import httpx
import pytest

from tests.conftest import events_of
from tests.engine.test_answer_and_wait import statements_sent
from tests.engine.test_runner import types_of, wf

TWO = wf(
    "two-steps",
    {"a": {"step": "set", "set": {"n": 1}}, "b": {"step": "set", "set": {"n": 2}}},
    [{"from": "a", "to": "b"}],
)


@pytest.mark.postgres_only
async def test_a_run_starts_in_two_statements_and_no_transaction(
    client: httpx.AsyncClient,
) -> None:
    assert (await client.post("/workflows", json=TWO)).status_code == 201
    # the process's first start of a version reads its definition into the cache (an ORM
    # read in a transaction of its own); every later start is the two statements
    first = await client.post("/runs", json={"workflow": "two-steps", "inputs": {}})
    assert first.status_code == 202, first.text
    engine = client.app.state.runtime.db.sync_engine  # type: ignore[attr-defined]
    with statements_sent(engine) as statements:
        started = await client.post("/runs", json={"workflow": "two-steps", "inputs": {}})
    assert started.status_code == 202, started.text
    run_id = started.json()["id"]
    ours = [s for s in statements if "SKIP LOCKED" not in s.upper()]  # not the claim loops'
    assert not [s for s in ours if s.strip().rstrip(";").upper() in ("BEGIN", "COMMIT")], ours
    assert any(s.startswith("SELECT version, hash FROM workflows") for s in ours), ours
    assert any(s.startswith("WITH r AS (INSERT INTO runs") for s in ours), ours

    done = await client.get(f"/runs/{run_id}/wait", params={"timeout_s": 10})
    assert done.json()["status"] == "completed"
    assert done.json()["state"] == {"n": 2}
    events = await events_of(client, run_id)
    assert types_of(events)[:2] == ["run.queued", "checkpoint.saved"]
    assert [e["seq"] for e in events] == list(range(1, len(events) + 1))
    assert events[0]["data"] == {"workflow": {"name": "two-steps", "version": 1}}
    first = (await client.get(f"/runs/{run_id}/checkpoints")).json()["items"][0]
    assert events[1]["data"] == {"checkpoint_id": first["id"], "seq": 1}


async def test_racing_starts_with_one_idempotency_key_make_one_run(
    client: httpx.AsyncClient,
) -> None:
    """Every request finds no run for the key before it writes; all but one write fail
    on the key and answer with the run that won, which was written whole."""
    assert (await client.post("/workflows", json=TWO)).status_code == 201
    body = {"workflow": "two-steps", "inputs": {}}
    answers = await asyncio.gather(
        *(client.post("/runs", json=body, headers={"Idempotency-Key": "once"}) for _ in range(8))
    )
    assert {a.status_code for a in answers} <= {200, 202}, [a.text for a in answers]
    ids = {a.json()["id"] for a in answers}
    assert len(ids) == 1
    assert [a.headers.get("Idempotent-Replayed") for a in answers].count("true") == 7
    listed = (await client.get("/runs", params={"workflow": "two-steps"})).json()
    assert [r["id"] for r in listed["items"]] == list(ids)
    run_id = ids.pop()
    done = await client.get(f"/runs/{run_id}/wait", params={"timeout_s": 10})
    assert done.json()["status"] == "completed"
    events = await events_of(client, run_id)
    assert types_of(events).count("run.queued") == 1
    checkpoints = (await client.get(f"/runs/{run_id}/checkpoints")).json()["items"]
    assert [c["seq"] for c in checkpoints] == list(range(1, len(checkpoints) + 1))
