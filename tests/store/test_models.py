"""``detached``: a model instance built as a loaded row would be, for read-only copies."""

from __future__ import annotations

import httpx
from sqlalchemy import inspect

from app.store.models import Run, detached


def test_a_detached_run_reads_as_one_built_by_the_constructor() -> None:
    values = {"id": "r1", "workflow_name": "w", "status": "queued", "inputs": {"a": [1]}}
    fast, slow = detached(Run, values), Run(**values)
    for key in (*values, "error", "step_count", "lease_owner"):
        assert getattr(fast, key) == getattr(slow, key), key
    state = inspect(fast)
    assert state.transient  # in no session
    assert not any(state.attrs[key].history.has_changes() for key in values)  # nothing to flush


async def test_a_huge_integer_in_the_inputs_comes_back_exact(client: httpx.AsyncClient) -> None:
    """JSON columns keep integers beyond 64 bits exact, from the request to the resource."""
    await client.post("/workflows", json={"name": "big", "nodes": {"a": {"step": "set"}}})
    huge = 2**70 + 1
    body = f'{{"workflow": "big", "inputs": {{"n": {huge}}}}}'
    started = await client.post(
        "/runs/wait", content=body, headers={"Content-Type": "application/json"}
    )
    assert started.status_code == 200, started.text
    run = (await client.get(f"/runs/{started.json()['id']}")).json()
    assert run["inputs"] == {"n": huge} and run["status"] == "completed"
