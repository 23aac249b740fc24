"""Answering a paused branch while its run executes in another process (Postgres): the
answer reaches the execution holding the run (``stepwise_control`` notification), which
resumes only that branch; and an answer accepted just before the holder is SIGKILLed is
taken by the process that recovers the run (DESIGN §10, §6)."""

from __future__ import annotations

import asyncio
import signal
from typing import Any

import httpx
import pytest
from sqlalchemy.ext.asyncio import AsyncEngine

from tests.process.conftest import CallServer, Procs, lease_owner, step_visits
from tests.process.test_processes import start, store, wait_status

pytestmark = [pytest.mark.slow]


def ask_and_work(server: CallServer) -> dict[str, Any]:
    """start → [ask → after, work] → join; `work` blocks until the server is released."""
    return {
        "name": "live-answer",
        "nodes": {
            "start": {"step": "set"},
            "ask": {
                "step": "interrupt",
                "with": {"question": "go?", "schema": {"type": "object", "required": ["ok"]}},
                "set": {"ask": "{{ output.ok }}"},
            },
            "after": {
                "step": "call",
                "with": {"url": server.url("/fast"), "timeout_s": 60},
                "set": {"after": "{{ output.key }}"},
            },
            "work": {
                "step": "call",
                "with": {"url": server.url("/slow"), "timeout_s": 60},
                "set": {"work": "{{ output.key }}"},
            },
            "join": {"step": "set", "join": "all"},
        },
        "edges": [
            {"from": "start", "to": ["ask", "work"]},
            {"from": "ask", "to": "after"},
            {"from": "after", "to": "join"},
            {"from": "work", "to": "join"},
        ],
    }


async def pending_interrupt(api: httpx.AsyncClient, run_id: str) -> dict[str, Any]:
    for _ in range(600):
        run: dict[str, Any] = (await api.get(f"/runs/{run_id}")).json()
        if run["interrupts"]:
            assert run["status"] == "running", run
            return run
        await asyncio.sleep(0.05)
    raise AssertionError("the branch's interrupt was never listed")


async def test_an_answer_reaches_the_run_in_another_process(
    procs: Procs, db: AsyncEngine, api: httpx.AsyncClient, call_server: CallServer
) -> None:
    await procs.start("worker")
    await store(api, ask_and_work(call_server))
    run_id = await start(api, "live-answer")
    await call_server.wait_hits("/slow", 1)
    run = await pending_interrupt(api, run_id)
    response = await api.post(
        f"/runs/{run_id}/response",
        json={"interrupt_id": run["interrupt"]["id"], "value": {"ok": "yes"}},
    )
    assert response.status_code == 202, response.text
    # the answered branch goes on in the worker while `work` is still blocked there
    [after] = await call_server.wait_hits("/fast", 1)
    assert after.key == f"{run_id}:after:1"
    assert (await api.get(f"/runs/{run_id}")).json()["status"] == "running"
    call_server.release()
    await wait_status(db, run_id, "completed")
    done = (await api.get(f"/runs/{run_id}")).json()
    assert done["state"] == {"ask": "yes", "after": after.key, "work": f"{run_id}:work:1"}
    assert len(call_server.hits_of("/slow")) == 1


async def test_an_answer_survives_the_holder_being_killed(
    procs: Procs, db: AsyncEngine, api: httpx.AsyncClient, call_server: CallServer
) -> None:
    first, second = procs.spawn("worker"), procs.spawn("worker")
    for proc in (first, second):
        await proc.ready()
    await store(api, ask_and_work(call_server))
    run_id = await start(api, "live-answer")
    await call_server.wait_hits("/slow", 1)
    run = await pending_interrupt(api, run_id)
    holder = procs.by_owner(await lease_owner(db, run_id))
    holder.signal(signal.SIGSTOP)  # it cannot take the answer before it dies
    response = await api.post(
        f"/runs/{run_id}/response",
        json={"interrupt_id": run["interrupt"]["id"], "value": {"ok": "kept"}},
    )
    assert response.status_code == 202, response.text
    holder.signal(signal.SIGKILL)
    await holder.wait_exit()

    await call_server.wait_hits("/slow", 2)  # the other worker took the run over
    assert procs.by_owner(await lease_owner(db, run_id)) is not holder
    [after] = await call_server.wait_hits("/fast", 1)  # and the answer with it
    call_server.release()
    await wait_status(db, run_id, "completed")
    done = (await api.get(f"/runs/{run_id}")).json()
    assert done["state"] == {"ask": "kept", "after": after.key, "work": f"{run_id}:work:1"}
    visits = await step_visits(db, run_id)
    assert visits == {"start": 1, "ask": 1, "after": 1, "work": 1, "join": 1}
