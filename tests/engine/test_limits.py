"""A run's size limits, measured as the JSON that is stored (compact UTF-8): the state
(``STEPWISE_MAX_STATE_BYTES``) and a node's output in its ``node.completed`` event."""

from __future__ import annotations

import httpx

from tests.conftest import AppFactory, events_of, run_and_wait
from tests.engine.steps_for_tests import make_registry
from tests.engine.test_runner import wf

GROW = wf(
    "grow",
    {"big": {"step": "set", "set": {"text": "{{ inputs.text }}"}}},
)


async def test_a_state_past_the_limit_fails_the_run_and_one_at_it_does_not(
    make_client: AppFactory,
) -> None:
    client = await make_client(max_state_bytes=100)
    # {"text":"…"} is 11 bytes of JSON around the text; "é" is two bytes in UTF-8
    at_limit = "é" * 44 + "x"  # 11 + 89 = 100 bytes
    run = await run_and_wait(client, {"definition": GROW, "inputs": {"text": at_limit}})
    assert run["status"] == "completed", run
    assert run["state"] == {"text": at_limit}

    past = at_limit + "x"
    run = await run_and_wait(client, {"definition": GROW, "inputs": {"text": past}})
    assert run["status"] == "failed"
    assert run["error"]["code"] == "state_too_large"
    assert run["error"]["node"] == "big"


async def test_a_state_past_the_limit_is_refused_at_the_api_whatever_writes_it(
    make_client: AppFactory,
) -> None:
    """The initial state (the definition's `state` rendered with the inputs) and a state
    patch (a state edit, a fork) are held to the limit a step's write is: 422, and
    nothing changed."""
    client = await make_client(max_state_bytes=100)
    seeded = wf("seeded", {"ask": {"step": "interrupt", "with": {}}}, state={"t": "{{ inputs.t }}"})
    started = await client.post("/runs", json={"definition": seeded, "inputs": {"t": "x" * 100}})
    assert started.status_code == 422, started.text
    problem = started.json()
    assert problem["code"] == "state_too_large"
    assert problem["errors"][0]["loc"] == ["body", "inputs"]

    run = await run_and_wait(client, {"definition": seeded, "inputs": {"t": "small"}})
    assert run["status"] == "interrupted", run
    patch = {"state_patch": {"big": "y" * 100}}
    edited = await client.post(f"/runs/{run['id']}/state", json=patch)
    assert edited.status_code == 422, edited.text
    assert edited.json()["code"] == "state_too_large"
    assert edited.json()["errors"][0]["loc"] == ["body", "state_patch"]
    checkpoint = (await client.get(f"/runs/{run['id']}/checkpoints")).json()["items"][0]["id"]
    forked = await client.post(
        f"/runs/{run['id']}/fork", json={"checkpoint_id": checkpoint, **patch}
    )
    assert forked.status_code == 422, forked.text
    assert forked.json()["code"] == "state_too_large"
    after = (await client.get(f"/runs/{run['id']}")).json()
    assert after["state"] == {"t": "small"}
    assert after["updated_at"] == run["updated_at"]
    listed = (await client.get("/runs")).json()["items"]
    assert [r["id"] for r in listed] == [run["id"]]  # no fork was created


async def _completed_output(client: httpx.AsyncClient, output: object) -> dict[str, object]:
    echo = wf("echo", {"say": {"step": "result", "with": {"status": "ok", "output": output}}})
    run = await run_and_wait(client, {"definition": echo, "inputs": {}})
    assert run["status"] == "completed", run
    (done,) = [e for e in await events_of(client, run["id"]) if e["type"] == "node.completed"]
    return dict(done["data"])


async def test_an_output_past_16_kib_is_left_out_of_its_event(make_client: AppFactory) -> None:
    registry, _ = make_registry()
    client = await make_client(registry=registry)
    # as JSON, the string and its two quotes: 16 KiB exactly, then one byte more
    at_limit = "ü" * 100 + "y" * (16 * 1024 - 2 - 200)
    assert await _completed_output(client, at_limit) == {"output": at_limit}
    past = at_limit + "y"
    assert await _completed_output(client, past) == {
        "output_bytes": 16 * 1024 + 1,
        "output_truncated": True,
    }
