"""Checkpoints inside a fan-out: resume from one, fork from one with a state patch, edit."""

from __future__ import annotations

import asyncio
from typing import Any

import httpx

from tests.conftest import AppFactory, until_status, wait_run
from tests.engine.steps_for_tests import make_registry
from tests.engine.test_runner import start, wf

BRANCHES = ["a1", "a2", "b1", "b2"]


def counted() -> dict[str, Any]:
    """start → [a1 → a2, b1 → b2] → join → end; every node a counting (side-effect) step
    that records the `flag` it saw."""
    nodes: dict[str, Any] = {
        n: {
            "step": "count",
            "with": {"flag": "{{ state.flag }}"},
            "set": {f"saw_{n}": "{{ output.flag }}"},
        }
        for n in ["start", *BRANCHES, "end"]
    }
    nodes["join"] = {"step": "count", "join": "all"}
    edges = [
        {"from": "start", "to": ["a1", "b1"]},
        {"from": "a1", "to": "a2"},
        {"from": "b1", "to": "b2"},
        {"from": "a2", "to": "join"},
        {"from": "b2", "to": "join"},
        {"from": "join", "to": "end"},
    ]
    return wf("counted", nodes, edges, state={"flag": "original"}, max_concurrency=1)


async def mid_fanout(client: httpx.AsyncClient, run_id: str) -> tuple[str, set[str]]:
    """The first checkpoint after a branch step, and the branch nodes done in it."""
    items = (await client.get(f"/runs/{run_id}/checkpoints")).json()["items"]
    chosen = next(c for c in items if c["last_node"] in BRANCHES)
    detail = (await client.get(f"/runs/{run_id}/checkpoints/{chosen['id']}")).json()
    section = detail["frames"][0]["parallel"]
    assert [b["id"] for b in section["branches"]] == ["a1", "b1"]
    done = {n for b in section["branches"] for n in b["doc"]["frames"][0]["nodes"]} - {"start"}
    assert done and done != set(BRANCHES)
    return chosen["id"], done


async def test_resume_from_a_checkpoint_inside_a_fanout_reruns_only_unfinished_steps(
    make_client: AppFactory,
) -> None:
    registry, steps = make_registry()
    client = await make_client(registry=registry)
    run = await start(client, counted())
    assert run["status"] == "completed", run
    assert all(steps["count"].calls[n] == 1 for n in ["start", *BRANCHES, "join", "end"])
    checkpoint_id, done = await mid_fanout(client, run["id"])
    response = await client.post(f"/runs/{run['id']}/resume", json={"checkpoint_id": checkpoint_id})
    assert response.status_code == 202, response.text
    again = await wait_run(client, run["id"])
    assert again["status"] == "completed", again
    calls = steps["count"].calls
    assert calls["start"] == 1
    for node in BRANCHES:
        assert calls[node] == (1 if node in done else 2), (node, done, dict(calls))
    assert calls["join"] == calls["end"] == 2
    assert again["state"]["saw_end"] == "original"


async def test_fork_inside_a_fanout_patches_every_branch(make_client: AppFactory) -> None:
    registry, _ = make_registry()
    client = await make_client(registry=registry)
    run = await start(client, counted())
    checkpoint_id, done = await mid_fanout(client, run["id"])
    response = await client.post(
        f"/runs/{run['id']}/fork",
        json={"checkpoint_id": checkpoint_id, "state_patch": {"flag": "patched"}},
    )
    assert response.status_code == 201, response.text
    fork = await wait_run(client, response.json()["id"])
    assert fork["status"] == "completed", fork
    for node in BRANCHES:
        expected = "original" if node in done else "patched"
        assert fork["state"][f"saw_{node}"] == expected, node
    assert fork["state"]["flag"] == "patched"
    assert fork["state"]["saw_end"] == "patched"
    source = (await client.get(f"/runs/{run['id']}")).json()
    assert source["state"]["flag"] == "original"


async def test_a_stopping_process_gives_a_fanout_back_at_a_step_boundary(
    make_client: AppFactory,
) -> None:
    from tests.engine.test_group_commit import assert_chained, checkpoints_of

    loops = 1500
    nodes = {
        "start": {"step": "set"},
        "a": {"step": "set", "set": {"a": "{{ state.a + 1 }}"}},
        "b": {"step": "set", "set": {"b": "{{ state.b + 1 }}"}},
        "join": {"step": "set", "join": "all"},
    }
    edges = [
        {"from": "start", "to": ["a", "b"]},
        {"from": "a", "to": "a", "when": f"state.a < {loops}", "loop": True},
        {"from": "a", "to": "join"},
        {"from": "b", "to": "b", "when": f"state.b < {loops}", "loop": True},
        {"from": "b", "to": "join"},
    ]
    definition = wf("loops", nodes, edges, state={"a": 0, "b": 0}, max_node_iterations=5000)
    first = await make_client()
    run_id = (await first.post("/runs", json={"definition": definition})).json()["id"]
    for _ in range(400):
        if (await first.get(f"/runs/{run_id}")).json()["step_count"] > 10:
            break
        await asyncio.sleep(0.01)
    await first.stop()  # type: ignore[attr-defined]
    stopped = (await first.get(f"/runs/{run_id}")).json()
    assert stopped["status"] == "queued", stopped  # given back in the middle of the fan-out
    assert 0 < stopped["step_count"] < 2 * loops
    head = (await checkpoints_of(first, run_id))[-1]
    assert head["steps_completed"] == stopped["step_count"]

    second = await make_client()
    done = await until_status(second, run_id, "completed", "failed", within_s=120)
    assert done["status"] == "completed", done
    assert done["state"] == {"a": loops, "b": loops}
    assert done["step_count"] == 1 + 2 * loops + 1
    checkpoints = await checkpoints_of(second, run_id)
    assert_chained(checkpoints)
    steps = [c["steps_completed"] for c in checkpoints]
    assert steps == sorted(steps)
