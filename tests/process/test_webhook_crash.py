"""A webhook owed by a process killed mid-delivery is delivered by another process."""

from __future__ import annotations

import signal

import httpx
import pytest
from sqlalchemy.ext.asyncio import AsyncEngine

from tests.process.conftest import CallServer, Procs, scalar, wait_until

pytestmark = [pytest.mark.slow]


async def test_a_delivery_cut_off_by_sigkill_is_made_by_another_process(
    procs: Procs, db: AsyncEngine, call_server: CallServer
) -> None:
    first = await procs.start("serve", webhook_timeout_s="1")
    definition = {"name": "hooked", "nodes": {"end": {"step": "set", "set": {"x": 1}}}}
    body = {"definition": definition, "inputs": {}, "webhook": call_server.url("/slow")}
    async with httpx.AsyncClient(base_url=first.url, timeout=30) as client:
        run = (await client.post("/runs/wait", json=body)).json()
    assert run["status"] == "completed"
    await call_server.wait_hits("/slow", 1)  # the attempt hangs in the receiver
    first.signal(signal.SIGKILL)
    await first.wait_exit()
    call_server.release()  # the receiver answers from now on

    await procs.start("serve", webhook_timeout_s="1")
    hits = await call_server.wait_hits("/slow", 2)
    key = f"{run['id']}:completed:{run['updated_at']}"
    assert [hit.key for hit in hits] == [key, key]
    assert hits[0].body == hits[1].body == run

    async def delivered() -> bool:
        return bool(await scalar(db, "SELECT count(*) FROM webhook_deliveries") == 0)

    await wait_until(delivered, 30, "the delivery marked done")
