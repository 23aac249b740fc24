"""``start_at`` (DESIGN §8): RFC 3339; a run waiting for it is ``queued``."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime, timedelta

import httpx

from tests.conftest import wait_run
from tests.engine.test_runner import wf

ONE_STEP = wf("later", {"a": {"step": "set", "set": {"done": True}}})


async def test_a_run_waits_queued_for_its_start_at(client: httpx.AsyncClient) -> None:
    at = datetime.now(UTC) + timedelta(seconds=1.5)
    # given with an offset: shown in UTC, the same instant
    sent = at.astimezone(datetime.now().astimezone().tzinfo).isoformat()
    body = {"definition": ONE_STEP, "inputs": {}, "start_at": sent}
    started = await client.post("/runs", json=body)
    assert started.status_code == 202, started.text
    run = started.json()
    assert run["status"] == "queued"
    assert datetime.fromisoformat(run["start_at"].replace("Z", "+00:00")) == at
    await asyncio.sleep(0.5)
    assert (await client.get(f"/runs/{run['id']}")).json()["status"] == "queued"
    done = await wait_run(client, run["id"])
    assert done["status"] == "completed", done
    assert done["state"] == {"done": True}
    assert datetime.now(UTC) >= at


async def test_start_at_must_be_an_aware_time_within_range(client: httpx.AsyncClient) -> None:
    for bad in (
        "2030-01-01T00:00:00",  # no offset
        "tomorrow",
        "9999-12-31T23:59:59-23:59",  # past year 9999 in UTC
        "0001-01-01T00:00:00+23:59",  # before year 1 in UTC
    ):
        body = {"definition": ONE_STEP, "inputs": {}, "start_at": bad}
        response = await client.post("/runs", json=body)
        assert response.status_code == 422, (bad, response.text)
        problem = response.json()
        assert response.headers["content-type"] == "application/problem+json"
        assert problem["errors"][0]["loc"] == ["body", "start_at"], problem
    listed = (await client.get("/runs")).json()
    assert listed["items"] == []  # nothing was half started
