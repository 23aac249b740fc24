"""A run's start: on Postgres one statement that writes the run, its first checkpoint and
its first events (app/store/statements.py), committing by itself; all of it or nothing.
The stored workflow is read only when this process has not met it; a start that took
the latest version from memory writes nothing if a newer one is stored, and starts again
from a fresh read."""

from __future__ import annotations

import asyncio
import collections

import httpx
import pytest

from app.engine.validation import definition_hash
from app.store import versions
from app.store.database import transaction
from app.store.models import Workflow
from tests.conftest import events_of
from tests.engine.test_answer_and_wait import statements_sent
from tests.engine.test_runner import types_of, wf

TWO = wf(
    "two-steps",
    {"a": {"step": "set", "set": {"n": 1}}, "b": {"step": "set", "set": {"n": 2}}},
    [{"from": "a", "to": "b"}],
)
# its version 2: `b` sets n to 3
NEWER = {**TWO, "nodes": {**TWO["nodes"], "b": {"step": "set", "set": {"n": 3}}}}


READ_REF = "SELECT version, hash FROM workflows"
INSERT = "WITH r AS (INSERT INTO runs"
RUNNER_WRITE = "WITH u AS (UPDATE runs"


def _kinds(statements: list[str]) -> collections.Counter[str]:
    """What a start sent: reads of the latest version's hash and of a definition, inserts
    of a run, and any other statement as itself; not the claim loops' statements, nor the
    write of a runner executing a run meanwhile (this one's, or an earlier one's)."""
    kinds: collections.Counter[str] = collections.Counter()
    for s in statements:
        if "SKIP LOCKED" in s.upper() or "min(runs." in s or s.startswith(RUNNER_WRITE):
            continue
        if "current_setting(" in s or "set_config(" in s or "pg_catalog" in s:
            continue  # asyncpg's type introspection, on a connection new to a statement
        if s.startswith(READ_REF):
            kinds["read"] += 1
        elif s.startswith("SELECT workflows.definition"):
            kinds["definition"] += 1
        elif s.startswith(INSERT):
            kinds["insert"] += 1
        else:
            kinds[s.strip()] += 1
    return kinds


@pytest.mark.postgres_only
async def test_a_run_starts_in_one_statement_and_no_transaction(
    client: httpx.AsyncClient,
) -> None:
    assert (await client.post("/workflows", json=TWO)).status_code == 201
    engine = client.app.state.runtime.db.sync_engine  # type: ignore[attr-defined]
    # the process's first start of a workflow reads which version is the latest (and
    # parses its definition once); every later start is the run's one statement
    async with statements_sent(engine) as statements:
        first = await client.post("/runs", json={"workflow": "two-steps", "inputs": {}})
    assert first.status_code == 202, first.text
    kinds = _kinds(statements)
    assert (kinds["read"], kinds["definition"], kinds["insert"]) == (1, 1, 1), statements
    async with statements_sent(engine) as statements:
        started = await client.post("/runs", json={"workflow": "two-steps", "inputs": {}})
    assert started.status_code == 202, started.text
    run_id = started.json()["id"]
    assert _kinds(statements) == {"insert": 1}, statements

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


@pytest.mark.postgres_only
async def test_a_start_runs_the_latest_version_though_another_process_stored_it(
    client: httpx.AsyncClient,
) -> None:
    """This process remembers v1 as the latest; v2 is stored behind its back (as another
    process would store it): the next start writes nothing on its first try, reads the
    latest, and runs v2."""
    assert (await client.post("/workflows", json=TWO)).status_code == 201
    first = await client.post("/runs", json={"workflow": "two-steps", "inputs": {}})
    assert first.json()["workflow"] == {"name": "two-steps", "version": 1}
    sessions = client.app.state.engine.sessions  # type: ignore[attr-defined]
    async with transaction(sessions) as session:
        newer = Workflow(name="two-steps", version=2, definition=NEWER, hash=definition_hash(NEWER))
        await versions.add(session, newer)

    engine = client.app.state.runtime.db.sync_engine  # type: ignore[attr-defined]
    async with statements_sent(engine) as statements:
        started = await client.post("/runs", json={"workflow": "two-steps", "inputs": {}})
    assert started.status_code == 202, started.text
    assert started.json()["workflow"] == {"name": "two-steps", "version": 2}
    # the insert refused, the latest's read, v2's definition parsed, the insert again
    kinds = _kinds(statements)
    assert (kinds["insert"], kinds["read"], kinds["definition"]) == (2, 1, 1), statements
    done = await client.get(f"/runs/{started.json()['id']}/wait", params={"timeout_s": 10})
    assert done.json()["state"] == {"n": 3}
    listed = (await client.get("/runs", params={"workflow": "two-steps"})).json()["items"]
    assert len(listed) == 2  # the refused first try left nothing behind

    async with statements_sent(engine) as statements:  # v2 is now the one remembered
        again = await client.post("/runs", json={"workflow": "two-steps", "inputs": {}})
    assert again.json()["workflow"] == {"name": "two-steps", "version": 2}
    assert _kinds(statements) == {"insert": 1}, statements
    # a pinned version is read once, then known for good
    pinned = {"workflow": "two-steps", "version": 1, "inputs": {}}
    assert (await client.post("/runs", json=pinned)).json()["workflow"]["version"] == 1
    async with statements_sent(engine) as statements:
        old = await client.post("/runs", json=pinned)
    assert old.json()["workflow"] == {"name": "two-steps", "version": 1}
    assert _kinds(statements) == {"insert": 1}, statements


@pytest.mark.postgres_only
async def test_a_version_stored_through_this_process_is_read_by_the_next_start(
    client: httpx.AsyncClient,
) -> None:
    """Storing a version makes this process forget the latest it knew: the next start
    reads the new one at once, with no refused insert first."""
    assert (await client.post("/workflows", json=TWO)).status_code == 201
    await client.post("/runs", json={"workflow": "two-steps", "inputs": {}})
    assert (await client.post("/workflows", json=NEWER)).status_code == 201
    engine = client.app.state.runtime.db.sync_engine  # type: ignore[attr-defined]
    async with statements_sent(engine) as statements:
        started = await client.post("/runs", json={"workflow": "two-steps", "inputs": {}})
    kinds = _kinds(statements)
    assert (kinds["read"], kinds["insert"]) == (1, 1), statements
    assert started.json()["workflow"] == {"name": "two-steps", "version": 2}
    done = await client.get(f"/runs/{started.json()['id']}/wait", params={"timeout_s": 10})
    assert done.json()["state"] == {"n": 3}
