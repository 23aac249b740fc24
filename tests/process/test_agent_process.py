"""The durable agent loop across a real crash: a worker process is killed (SIGKILL)
between two model calls; the worker that takes the run over replays the recorded model
answer and tool result, so the fake model is not asked the first question again and the
tool is not called again."""

from __future__ import annotations

import signal
import threading
from collections.abc import Iterator

import httpx
import pytest
from sqlalchemy.ext.asyncio import AsyncEngine

from tests.agents.fake_models import Answer, FakeModel
from tests.process.conftest import Procs, lease_owner, scalar, wait_until

pytestmark = [pytest.mark.slow]


@pytest.fixture
def fake() -> Iterator[FakeModel]:
    server = FakeModel("openai").start()
    yield server
    server.stop()


async def test_a_killed_worker_does_not_make_recorded_model_calls_again(
    procs: Procs, db: AsyncEngine, api: httpx.AsyncClient, fake: FakeModel
) -> None:
    lookups: list[str] = []

    def lookup(request: object) -> tuple[int, object]:
        lookups.append(request.headers["idempotency-key"])  # type: ignore[attr-defined]
        return 200, {"status": "shipped"}

    fake.routes["/lookup"] = lookup
    held = threading.Event()
    fake.push(
        Answer(tool_calls=[("call_1", "lookup", {})]),
        Answer(text="never sent", hold=held),  # the worker is killed while waiting here
        Answer(text="Your order has shipped."),
    )
    definition = {
        "name": "durable-agent",
        "models": {"m": {"provider": "openai", "base_url": fake.base_url, "model": "fake-1"}},
        "tools": {
            "lookup": {
                "description": "Look the order up",
                "parameters": {"type": "object"},
                "http": {"method": "POST", "url": fake.url("/lookup"), "json": {}},
            },
        },
        "agents": {"helper": {"model": "m", "system_prompt": "You help.", "tools": ["lookup"]}},
        "nodes": {
            "ask": {
                "step": "agent",
                "agent": "helper",
                "with": {"prompt": "Where is it?"},
                "set": {"answer": "{{ output.text }}"},
            },
        },
    }
    first = await procs.start("worker")
    response = await api.post("/runs", json={"definition": definition, "inputs": {}})
    assert response.status_code == 202, response.text
    run_id = response.json()["id"]
    try:
        await wait_until(lambda: _count(fake, 2), 60, "the second model call")
        assert procs.by_owner(await lease_owner(db, run_id)) is first
        first.signal(signal.SIGKILL)
        await first.wait_exit()
        await procs.start("worker")
        await wait_until(lambda: _completed(db, run_id), 60, "the run to complete")
    finally:
        held.set()
    run = (await api.get(f"/runs/{run_id}")).json()
    assert run["state"]["answer"] == "Your order has shipped."
    # three requests: the answered first call was replayed from the journal, not re-asked;
    # the one after the crash is the second call again, carrying the recorded tool result
    assert len(fake.model_requests) == 3
    assert fake.model_requests[2].body["messages"] == fake.model_requests[1].body["messages"]
    assert fake.model_requests[2].body["messages"][-1]["tool_call_id"] == "call_1"
    assert lookups == [f"{run_id}:ask:1:call_1"]  # the tool ran once
    # two calls were answered (the first before the crash, counted once on replay)
    assert run["usage"] == {"input_tokens": 20, "output_tokens": 10, "model_calls": 2}
    turns = await scalar(db, "SELECT count(*) FROM agent_turns WHERE run_id = :id", id=run_id)
    assert turns == 4  # start, model answer, tool result, final answer


async def _count(fake: FakeModel, n: int) -> bool:
    return len(fake.model_requests) >= n


async def _completed(db: AsyncEngine, run_id: str) -> bool:
    status = await scalar(db, "SELECT status FROM runs WHERE id = :id", id=run_id)
    assert status in ("queued", "running", "completed"), status
    return bool(status == "completed")
