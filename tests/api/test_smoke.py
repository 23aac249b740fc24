"""First end-to-end paths through the API and the runner."""

from __future__ import annotations

import httpx

from tests.conftest import events_of, run_and_wait, store

LINEAR = {
    "name": "linear",
    "state": {"n": 0},
    "nodes": {
        "a": {"step": "set", "set": {"n": "{{ state.n + 1 }}"}},
        "b": {"step": "set", "with": {"x": "{{ state.n * 10 }}"}, "set": {"x": "{{ output.x }}"}},
    },
    "edges": [{"from": "a", "to": "b"}],
}


async def test_linear_run_completes(client: httpx.AsyncClient) -> None:
    await store(client, LINEAR)
    run = await run_and_wait(client, {"workflow": "linear", "inputs": {}})
    assert run["status"] == "completed", run
    assert run["state"] == {"n": 1, "x": 10}
    assert run["output"] == {"n": 1, "x": 10}
    assert run["step_count"] == 2
    types = [e["type"] for e in await events_of(client, run["id"])]
    assert types[0] == "run.queued"
    assert types[-1] == "run.completed"
    assert [e["seq"] for e in await events_of(client, run["id"])] == list(range(1, len(types) + 1))


async def test_interrupt_round_trip(client: httpx.AsyncClient) -> None:
    definition = {
        "name": "approve",
        "nodes": {
            "ask": {
                "step": "interrupt",
                "with": {"question": "ok?"},
                "set": {"answer": "{{ output }}"},
            },
            "done": {"step": "set", "set": {"final": "{{ state.answer }}"}},
        },
        "edges": [{"from": "ask", "to": "done"}],
    }
    run = await run_and_wait(client, {"definition": definition, "inputs": {}})
    assert run["status"] == "interrupted", run
    interrupt = run["interrupt"]
    assert interrupt["kind"] == "interrupt" and interrupt["node"] == "ask"
    response = await client.post(
        f"/runs/{run['id']}/response", json={"interrupt_id": interrupt["id"], "value": 42}
    )
    assert response.status_code == 202, response.text
    done = (await client.get(f"/runs/{run['id']}/wait", params={"timeout_s": 10})).json()
    assert done["status"] == "completed", done
    assert done["state"] == {"answer": 42, "final": 42}
