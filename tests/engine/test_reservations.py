"""Runs queued *for* a process (started or answered there) skip the claim, yet a
reservation whose process died lapses like any lease and another worker takes the run."""

from __future__ import annotations

import asyncio
from datetime import timedelta

from sqlalchemy import update

from app.store.database import transaction
from app.store.models import Run, utcnow
from tests.conftest import AppFactory, wait_run

LINEAR = {
    "name": "reserved",
    "state": {"n": 0},
    "nodes": {"a": {"step": "set", "set": {"n": "{{ state.n + 1 }}"}}},
}


async def test_a_started_run_answers_queued_and_runs_where_it_was_started(
    make_client: AppFactory,
) -> None:
    client = await make_client()
    created = await client.post("/runs", json={"definition": LINEAR})
    assert created.status_code == 202
    assert created.json()["status"] == "queued"
    done = await wait_run(client, created.json()["id"])
    assert done["status"] == "completed"
    assert done["state"] == {"n": 1}


async def test_a_lapsed_reservation_is_claimed_by_another_worker(make_client: AppFactory) -> None:
    api_only = await make_client(workers=0)  # queues the run, runs nothing
    run_id = (await api_only.post("/runs", json={"definition": LINEAR})).json()["id"]
    # as if a process had reserved it and died before its first write
    sessions = api_only.app.state.runtime.engine.sessions  # type: ignore[attr-defined]
    async with transaction(sessions) as session:
        await session.execute(
            update(Run)
            .where(Run.id == run_id)
            .values(
                lease_owner="gone",
                lease_token=1,
                lease_expires_at=utcnow() + timedelta(seconds=3),
            )
        )
    worker = await make_client(poll_interval_s=0.1)
    await asyncio.sleep(0.5)
    held = (await worker.get(f"/runs/{run_id}")).json()
    assert held["status"] == "queued"  # the reservation is respected while it lasts
    done = await wait_run(worker, run_id)
    assert done["status"] == "completed"
    assert done["state"] == {"n": 1}
