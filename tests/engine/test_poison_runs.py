"""Poison runs on both backends, in one process: an execution that raises inside the
service is retried twice and then fails with ``internal_error``; a run whose holders keep
dying at one checkpoint fails with ``recovery_limit_exceeded``. (The same with real
processes, a plugin raising and one killing its process: tests/process/test_poison_runs.py.)
"""

from __future__ import annotations

from datetime import timedelta
from typing import Any

from sqlalchemy import update
from sqlalchemy.ext.asyncio import create_async_engine

from app.steps.base import StepContext, StepResult
from app.steps.registry import StepRegistry, builtin_steps
from app.store.models import Checkpoint, Run, utcnow
from tests.conftest import AppFactory, events_of, until_status, wait_run
from tests.engine.test_runner import types_of, wf


class BrokenPlugin:
    """Raises outside ``execute`` (where the engine asks whether it is pure) while
    ``broken`` is set."""

    def __init__(self) -> None:
        self.broken = True
        self.asked = 0

    @property
    def pure(self) -> bool:
        self.asked += 1
        if self.broken:
            raise RuntimeError("plugin bug")
        return False

    async def execute(self, ctx: StepContext) -> StepResult:
        return StepResult.succeeded("fine")


FLOW = wf(
    "poison",
    {
        "first": {"step": "set", "set": {"a": 1}},
        "broken": {"step": "broken"},
        "last": {"step": "set", "set": {"b": 2}},
    },
    [{"from": "first", "to": "broken"}, {"from": "broken", "to": "last"}],
)


async def test_an_execution_raising_inside_the_service_fails_the_run_after_three_attempts(
    make_client: AppFactory,
) -> None:
    plugin = BrokenPlugin()
    client = await make_client(registry=StepRegistry({**builtin_steps(), "broken": plugin}))
    started = await client.post("/runs", json={"definition": FLOW, "inputs": {}})
    run_id = started.json()["id"]
    run = await until_status(client, run_id, "failed", within_s=30)
    assert plugin.asked == 3
    assert run["error"]["code"] == "internal_error"
    assert run["error"]["node"] == "broken"
    assert "RuntimeError" in run["error"]["message"]
    assert "plugin bug" not in run["error"]["message"]  # the type, not the details
    events = await events_of(client, run_id)
    assert types_of(events).count("run.failed") == 1
    assert events[-1]["type"] == "run.failed"

    plugin.broken = False
    assert (await client.post(f"/runs/{run_id}/resume", json={})).status_code == 202
    done = await wait_run(client, run_id)
    assert done["status"] == "completed", done
    assert done["state"] == {"a": 1, "b": 2}


async def test_a_run_whose_holders_keep_dying_fails_with_recovery_limit_exceeded(
    make_client: AppFactory, database_url: str
) -> None:
    """Each lapsed lease at one checkpoint counts; at the limit, the claiming worker
    fails the run instead of running the step again; below it, the run recovers."""
    api = await make_client(workers=0)
    definition = wf("dying", {"only": {"step": "set", "set": {"x": 1}}})
    ids = []
    for _ in range(2):
        started = await api.post("/runs", json={"definition": definition, "inputs": {}})
        ids.append(started.json()["id"])
    poisoned, recovering = ids
    engine = create_async_engine(database_url)
    try:
        async with engine.begin() as conn:
            for run_id, died in ((poisoned, 3), (recovering, 2)):
                # ``died`` holders died already; the lapse of this one is counted next
                await conn.execute(
                    update(Run)
                    .where(Run.id == run_id)
                    .values(
                        status="running",
                        lease_owner="dead-host:1:0",
                        lease_expires_at=utcnow() - timedelta(seconds=1),
                        recoveries=died,
                    )
                )
    finally:
        await engine.dispose()
    await api.stop()  # type: ignore[attr-defined]

    runner = await make_client(max_recoveries=4)
    run: dict[str, Any] = await until_status(runner, poisoned, "failed")
    assert run["error"]["code"] == "recovery_limit_exceeded"
    assert run["error"]["node"] == "only"
    assert "4 times" in run["error"]["message"]
    assert types_of(await events_of(runner, poisoned)).count("run.failed") == 1
    assert (await wait_run(runner, recovering))["status"] == "completed"

    assert (await runner.post(f"/runs/{poisoned}/resume", json={})).status_code == 202
    done = await wait_run(runner, poisoned)
    assert done["status"] == "completed", done
    assert done["state"] == {"x": 1}


async def _corrupt(database_url: str, checkpoint_id: str) -> None:
    """The checkpoint's document replaced outside the service (a JSON string)."""
    engine = create_async_engine(database_url)
    try:
        async with engine.begin() as conn:
            await conn.execute(
                update(Checkpoint).where(Checkpoint.id == checkpoint_id).values(data="garbage")
            )
    finally:
        await engine.dispose()


async def test_a_paused_run_with_a_corrupt_head_is_shown_and_brought_back_by_time_travel(
    make_client: AppFactory, database_url: str
) -> None:
    """The run and the run list still answer (its state null); a command that needs the
    document answers 409 checkpoint_unreadable; resuming from an earlier checkpoint works."""
    client = await make_client()
    definition = wf(
        "listening",
        {
            "first": {"step": "set", "set": {"a": 1}},
            "listen": {"step": "input", "set": {"said": "{{ output }}"}},
        },
        [{"from": "first", "to": "listen"}],
    )
    started = await client.post("/runs", json={"definition": definition, "inputs": {}})
    run_id = started.json()["id"]
    paused = await until_status(client, run_id, "awaiting_input")
    checkpoints = (await client.get(f"/runs/{run_id}/checkpoints")).json()["items"]
    head = checkpoints[-1]["id"]
    await _corrupt(database_url, head)

    shown = await client.get(f"/runs/{run_id}")
    assert shown.status_code == 200, shown.text
    assert shown.json()["status"] == "awaiting_input"
    assert shown.json()["state"] is None
    listed = await client.get("/runs")
    assert listed.status_code == 200, listed.text
    assert [r["state"] for r in listed.json()["items"] if r["id"] == run_id] == [None]

    sent = await client.post(f"/runs/{run_id}/messages", json={"message": "hi"})
    assert sent.status_code == 409, sent.text
    assert sent.headers["content-type"].startswith("application/problem+json")
    assert sent.json()["code"] == "checkpoint_unreadable"
    assert sent.json()["checkpoint_id"] == head
    detail = await client.get(f"/runs/{run_id}/checkpoints/{head}")
    assert detail.status_code == 409
    assert (await client.get(f"/runs/{run_id}")).json()["status"] == "awaiting_input"

    earlier = checkpoints[-2]["id"]
    resumed = await client.post(f"/runs/{run_id}/resume", json={"checkpoint_id": earlier})
    assert resumed.status_code == 202, resumed.text
    again = await until_status(client, run_id, "awaiting_input")
    assert again["state"] == paused["state"]
    assert (
        await client.post(f"/runs/{run_id}/messages", json={"message": "hi"})
    ).status_code == 202
    done = await wait_run(client, run_id)
    assert done["status"] == "completed", done
    assert done["state"] == {"a": 1, "said": "hi"}


async def test_a_run_whose_checkpoint_cannot_be_read_fails_with_internal_error(
    make_client: AppFactory, database_url: str
) -> None:
    api = await make_client(workers=0)
    definition = wf("plain", {"only": {"step": "set", "set": {"x": 1}}})
    started = await api.post("/runs", json={"definition": definition, "inputs": {}})
    run_id = started.json()["id"]
    head = (await api.get(f"/runs/{run_id}/checkpoints")).json()["items"][-1]["id"]
    await _corrupt(database_url, head)
    await api.stop()  # type: ignore[attr-defined]

    runner = await make_client()
    run = await until_status(runner, run_id, "failed", within_s=30)
    assert run["error"]["code"] == "internal_error"
    assert "CorruptCheckpoint" in run["error"]["message"]
    assert run["state"] is None
