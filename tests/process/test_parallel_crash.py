"""A worker killed (SIGKILL) in the middle of a fan-out: another process takes the run
over from its last checkpoint, which holds every branch's position, and only the step
that had not finished runs again (DESIGN §10, §6)."""

from __future__ import annotations

import signal
from typing import Any

import httpx
import pytest
from sqlalchemy.ext.asyncio import AsyncEngine

from tests.process.conftest import (
    CallServer,
    Procs,
    event_count,
    lease_owner,
    step_visits,
    wait_until,
)
from tests.process.test_processes import start, store, wait_status

pytestmark = [pytest.mark.slow]


def fanout_flow(server: CallServer) -> dict[str, Any]:
    """plan → [quick → quick2, slow, other] → join → after; every step a `call`."""

    def call(path: str) -> dict[str, Any]:
        return {"step": "call", "with": {"url": server.url(path), "timeout_s": 60}}

    return {
        "name": "fanout-crash",
        "nodes": {
            "plan": call("/fast"),
            "quick": {**call("/fast"), "set": {"quick": "{{ output.key }}"}},
            "quick2": call("/fast?delay=0.2"),
            "slow": {**call("/slow"), "set": {"slow": "{{ output.key }}"}},
            "other": {**call("/fast?delay=0.1"), "set": {"other": "{{ output.key }}"}},
            "join": {"step": "set", "join": "all"},
            "after": call("/fast"),
        },
        "edges": [
            {"from": "plan", "to": ["quick", "slow", "other"]},
            {"from": "quick", "to": "quick2"},
            {"from": "quick2", "to": "join"},
            {"from": "slow", "to": "join"},
            {"from": "other", "to": "join"},
            {"from": "join", "to": "after"},
        ],
    }


async def test_sigkill_mid_fanout_reruns_only_the_unfinished_branch_step(
    procs: Procs, db: AsyncEngine, api: httpx.AsyncClient, call_server: CallServer
) -> None:
    first, second, third = procs.spawn("worker"), procs.spawn("worker"), procs.spawn("worker")
    for proc in (first, second, third):
        await proc.ready()
    await store(api, fanout_flow(call_server))
    run_id = await start(api, "fanout-crash")
    [slow_hit] = await call_server.wait_hits("/slow", 1)

    async def others_done() -> bool:
        visits = await step_visits(db, run_id)
        return all(visits.get(n) == 1 for n in ("plan", "quick", "quick2", "other"))

    await wait_until(others_done, 30, "the other branches to finish")
    holder = procs.by_owner(await lease_owner(db, run_id))
    holder.signal(signal.SIGKILL)
    await holder.wait_exit()

    hits = await call_server.wait_hits("/slow", 2)  # another worker took the run over
    assert procs.by_owner(await lease_owner(db, run_id)) is not holder
    call_server.release()
    await wait_status(db, run_id, "completed")

    assert hits[1].key == slow_hit.key == f"{run_id}:slow:1"
    fast_keys = sorted(hit.key or "" for hit in call_server.hits_of("/fast"))
    # each finished step ran once: plan, quick, quick2, other (before the kill), after
    assert fast_keys == sorted(
        f"{run_id}:{node}:1" for node in ("plan", "quick", "quick2", "other", "after")
    )
    assert await step_visits(db, run_id) == {
        "plan": 1,
        "quick": 1,
        "quick2": 1,
        "slow": 1,
        "other": 1,
        "join": 1,
        "after": 1,
    }
    assert await event_count(db, run_id, "run.completed") == 1
    run = (await api.get(f"/runs/{run_id}")).json()
    assert run["state"] == {
        "quick": f"{run_id}:quick:1",
        "slow": f"{run_id}:slow:1",
        "other": f"{run_id}:other:1",
    }


async def test_sigkill_mid_map_reruns_only_the_unfinished_item(
    procs: Procs, db: AsyncEngine, api: httpx.AsyncClient, call_server: CallServer
) -> None:
    first, second = procs.spawn("worker"), procs.spawn("worker")
    for proc in (first, second):
        await proc.ready()
    fast, slow = call_server.url("/fast?delay=0.1"), call_server.url("/slow")
    await store(
        api,
        {
            "name": "item",
            "nodes": {"c": {"step": "call", "with": {"url": "{{ inputs.url }}", "timeout_s": 60}}},
            "output": "{{ nodes.c.output.key }}",
        },
    )
    await store(
        api,
        {
            "name": "map-crash",
            "nodes": {
                "each": {
                    "step": "map",
                    "with": {
                        "workflow": "item",
                        "items": list(range(6)),
                        "inputs": {"url": f"{{{{ '{slow}' if item == 2 else '{fast}' }}}}"},
                        "max_concurrency": 3,
                    },
                    "set": {"keys": "{{ output }}"},
                }
            },
        },
    )
    run_id = await start(api, "map-crash")
    [slow_hit] = await call_server.wait_hits("/slow", 1)
    await call_server.wait_hits("/fast", 5)

    async def five_done() -> bool:
        return (await step_visits(db, run_id)).get("c") == 5

    await wait_until(five_done, 30, "the five other items to finish")
    holder = procs.by_owner(await lease_owner(db, run_id))
    holder.signal(signal.SIGKILL)
    await holder.wait_exit()

    hits = await call_server.wait_hits("/slow", 2)
    call_server.release()
    await wait_status(db, run_id, "completed")
    expected = [f"{run_id}:each[{k}]/c:1" for k in range(6)]
    assert hits[1].key == slow_hit.key == expected[2]
    assert sorted(hit.key or "" for hit in call_server.hits_of("/fast")) == sorted(
        expected[:2] + expected[3:]
    )
    run = (await api.get(f"/runs/{run_id}")).json()
    assert run["state"]["keys"] == expected
    assert await step_visits(db, run_id) == {"c": 6, "each": 1}
