"""Group commit: consecutive pure steps share one transaction, yet every step keeps its
own checkpoint and events, committed before any step with side effects starts."""

from __future__ import annotations

import asyncio
import itertools
from typing import Any

import httpx

from app.engine.recording import MAX_GROUP
from tests.conftest import AppFactory, events_of, run_and_wait, wait_run
from tests.engine.steps_for_tests import make_registry

INCREMENT = {"n": "{{ state.n + 1 }}"}


def chain(name: str, steps: list[tuple[str, str]]) -> dict[str, Any]:
    """A linear workflow: ``(node, step)`` pairs, each ``set`` node incrementing n."""
    nodes = {
        node: ({"step": "set", "set": INCREMENT} if step == "set" else {"step": step})
        for node, step in steps
    }
    edges = [{"from": a, "to": b} for (a, _), (b, _) in itertools.pairwise(steps)]
    return {"name": name, "state": {"n": 0}, "nodes": nodes, "edges": edges}


async def checkpoints_of(client: httpx.AsyncClient, run_id: str) -> list[dict[str, Any]]:
    items: list[dict[str, Any]] = []
    params: dict[str, Any] = {"limit": 500}
    while True:
        response = await client.get(f"/runs/{run_id}/checkpoints", params=params)
        assert response.status_code == 200, response.text
        page = response.json()
        items.extend(page["items"])
        if page["next_cursor"] is None:
            return items
        params["cursor"] = page["next_cursor"]


def assert_chained(checkpoints: list[dict[str, Any]]) -> None:
    assert [c["seq"] for c in checkpoints] == list(range(1, len(checkpoints) + 1))
    assert checkpoints[0]["parent_id"] is None
    for parent, child in itertools.pairwise(checkpoints):
        assert child["parent_id"] == parent["id"]


async def test_every_pure_step_keeps_its_checkpoint_and_events(
    client: httpx.AsyncClient,
) -> None:
    count = MAX_GROUP * 2 + 3  # more than one group
    names = [f"s{i}" for i in range(count)]
    run = await run_and_wait(
        client, {"definition": chain("many-sets", [(n, "set") for n in names])}
    )
    assert run["status"] == "completed"
    assert run["output"] == {"n": count}
    checkpoints = await checkpoints_of(client, run["id"])
    assert len(checkpoints) == count + 1  # the run's start, then one per step
    assert_chained(checkpoints)
    assert [c["last_node"] for c in checkpoints] == [None, *names]
    assert [c["steps_completed"] for c in checkpoints] == list(range(count + 1))
    for index in (1, MAX_GROUP, MAX_GROUP + 1, count):  # inside and across groups
        one = await client.get(f"/runs/{run['id']}/checkpoints/{checkpoints[index]['id']}")
        assert one.json()["state"] == {"n": index}

    events = await events_of(client, run["id"])
    assert [e["seq"] for e in events] == list(range(1, len(events) + 1))
    stamps = [e["ts"] for e in events]
    assert stamps == sorted(stamps)
    per_step = [
        [e["type"] for e in events if e["node"] == name and e["type"] != "checkpoint.saved"]
        for name in names
    ]
    assert all(
        types[:3] == ["node.started", "state.updated", "node.completed"] for types in per_step
    )
    saved = {e["data"]["checkpoint_id"]: e for e in events if e["type"] == "checkpoint.saved"}
    assert list(saved) == [c["id"] for c in checkpoints]
    # each step's checkpoint.saved lies between its node.completed and the next node.started
    completed = [e["seq"] for e in events if e["type"] == "node.completed"]
    started = [*[e["seq"] for e in events if e["type"] == "node.started"][1:], len(events) + 1]
    for index, (done, following) in enumerate(zip(completed, started, strict=True)):
        assert done < saved[checkpoints[index + 1]["id"]]["seq"] < following


async def test_pure_steps_are_committed_before_a_step_with_side_effects(
    make_client: AppFactory,
) -> None:
    registry, steps = make_registry()
    client = await make_client(registry=registry)
    definition = chain("probe", [("a", "set"), ("b", "set"), ("c", "set"), ("p", "probe")])
    run = await run_and_wait(client, {"definition": definition})
    assert run["status"] == "completed"
    # when the probe started, the three set steps before it were already durable
    assert steps["probe"].seen == [[None, "a", "b", "c"]]
    of_probe = [e["type"] for e in await events_of(client, run["id"]) if e["node"] == "p"]
    assert of_probe[:2] == ["checkpoint.saved", "node.started"]  # c's checkpoint names p next


async def test_a_stopping_process_commits_its_staged_steps(make_client: AppFactory) -> None:
    """Shut down in the middle of a long pure loop: nothing is lost or run twice, and
    another process finishes the run from the last step the first one committed."""
    loop = {
        "name": "long-loop",
        "state": {"n": 0},
        "max_node_iterations": 5000,
        "nodes": {"tick": {"step": "set", "set": INCREMENT}, "done": {"step": "set"}},
        "edges": [
            {"from": "tick", "to": "tick", "when": "state.n < 5000", "loop": True},
            {"from": "tick", "to": "done"},
        ],
    }
    first = await make_client()
    run_id = (await first.post("/runs", json={"definition": loop})).json()["id"]
    for _ in range(400):
        if (await first.get(f"/runs/{run_id}")).json()["step_count"] > 0:
            break
        await asyncio.sleep(0.01)
    await first.stop()  # type: ignore[attr-defined]
    stopped = (await first.get(f"/runs/{run_id}")).json()
    assert stopped["status"] == "queued"  # given back at a step boundary, mid-loop
    head = (await checkpoints_of(first, run_id))[-1]
    assert head["steps_completed"] == stopped["step_count"]  # the row and its head agree

    second = await make_client()
    done = await wait_run(second, run_id)
    assert done["status"] == "completed"
    assert done["output"] == {"n": 5000}
    assert done["step_count"] == 5001
    checkpoints = await checkpoints_of(second, run_id)
    assert_chained(checkpoints)
    assert [c["steps_completed"] for c in checkpoints] == list(range(5002))
