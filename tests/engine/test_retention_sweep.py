"""The retention sweep runs inside a serving process: ended runs past their retention
disappear by themselves; paused ones stay."""

from __future__ import annotations

import asyncio
from datetime import timedelta

from sqlalchemy import update
from sqlalchemy.ext.asyncio import create_async_engine

from app.store.models import Run, utcnow
from tests.conftest import AppFactory, run_and_wait, store

PAUSING = {
    "name": "asks",
    "nodes": {"ask": {"step": "interrupt", "with": {"question": "ok?"}}},
}


async def backdate(database_url: str, *run_ids: str, days: int) -> None:
    engine = create_async_engine(database_url)
    try:
        async with engine.begin() as conn:
            await conn.execute(
                update(Run)
                .where(Run.id.in_(run_ids))
                .values(updated_at=utcnow() - timedelta(days=days))
            )
    finally:
        await engine.dispose()


async def test_sweep_deletes_ended_runs_past_retention(
    make_client: AppFactory, database_url: str
) -> None:
    client = await make_client(retention_days=30, retention_interval_s=0.2)
    bad = await client.post(
        "/workflows", json={"name": "bad", "retention_days": 0, "nodes": {"a": {"step": "set"}}}
    )
    assert bad.status_code == 422
    assert bad.json()["errors"][0]["loc"][-1] == "retention_days"
    await store(client, {"name": "quick", "nodes": {"a": {"step": "set"}}})
    await store(client, {"name": "brief", "retention_days": 1, "nodes": {"a": {"step": "set"}}})
    await store(client, PAUSING)
    old = await run_and_wait(client, {"workflow": "quick", "inputs": {}})
    young = await run_and_wait(client, {"workflow": "quick", "inputs": {}})
    brief = await run_and_wait(client, {"workflow": "brief", "inputs": {}})
    paused = await run_and_wait(client, {"workflow": "asks", "inputs": {}})
    assert (old["status"], brief["status"], paused["status"]) == (
        "completed",
        "completed",
        "interrupted",
    )
    await backdate(database_url, old["id"], paused["id"], days=31)
    await backdate(database_url, young["id"], days=20)
    await backdate(database_url, brief["id"], days=2)

    for _ in range(200):
        gone = [(await client.get(f"/runs/{run['id']}")).status_code == 404 for run in (old, brief)]
        if all(gone):
            break
        await asyncio.sleep(0.05)
    assert all(gone)
    assert (await client.get(f"/runs/{young['id']}")).status_code == 200
    still = await client.get(f"/runs/{paused['id']}")
    assert still.status_code == 200 and still.json()["status"] == "interrupted"
    events = await client.get(
        f"/runs/{paused['id']}/events", headers={"Accept": "application/json"}
    )
    assert events.json()["items"]
