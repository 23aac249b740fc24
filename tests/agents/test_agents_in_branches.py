"""Agents inside parallel branches and map items (DESIGN §9, §10): their model usage is
the run's, the run's token_budget counts every branch, and a handoff inside a branch
reaches the state after the join."""

from __future__ import annotations

from typing import Any

import httpx

from tests.agents.fake_models import Answer, FakeModel
from tests.conftest import events_of, run_and_wait, store, wait_run


def _models(fake: FakeModel) -> dict[str, Any]:
    return {"m": {"provider": fake.provider, "base_url": fake.base_url, "model": "fake-1"}}


def _fan_out(fake: FakeModel, agents: int, *, ask: bool = False, **top: Any) -> dict[str, Any]:
    """``p`` fans out to ``agents`` agent nodes (and an interrupt with ``ask``); all join."""
    names = [f"a{k}" for k in range(agents)] + (["q"] if ask else [])
    nodes: dict[str, Any] = {
        f"a{k}": {"step": "agent", "agent": f"helper{k}", "with": {"prompt": f"part {k}"}}
        for k in range(agents)
    }
    if ask:
        nodes["q"] = {"step": "interrupt", "with": {"question": "go?"}}
    return {
        "name": "fan-agents",
        "models": _models(fake),
        "agents": {
            f"helper{k}": {"model": "m", "system_prompt": "You help."} for k in range(agents)
        },
        "nodes": {"p": {"step": "set"}, **nodes, "j": {"step": "set", "join": "all"}},
        "edges": [{"from": "p", "to": names}, *({"from": n, "to": "j"} for n in names)],
        **top,
    }


async def test_usage_of_agents_in_branches_is_the_runs(
    client: httpx.AsyncClient, fake: FakeModel
) -> None:
    fake.push(
        Answer(text="one", input_tokens=40, output_tokens=2),
        Answer(text="two", input_tokens=30, output_tokens=3),
    )
    run = await run_and_wait(client, {"definition": _fan_out(fake, 2, ask=True), "inputs": {}})
    assert run["status"] == "interrupted", run
    # both branch agents answered before the other branch's pause
    assert len(fake.model_requests) == 2
    assert run["usage"] == {"input_tokens": 70, "output_tokens": 5, "model_calls": 2}
    interrupt = run["interrupt"]
    answered = await client.post(
        f"/runs/{run['id']}/response", json={"interrupt_id": interrupt["id"], "value": True}
    )
    assert answered.status_code == 202, answered.text
    done = await wait_run(client, run["id"])
    assert done["status"] == "completed", done
    assert done["usage"] == {"input_tokens": 70, "output_tokens": 5, "model_calls": 2}
    assert len(fake.model_requests) == 2  # nothing asked again


async def test_the_token_budget_counts_every_branch(
    client: httpx.AsyncClient, fake: FakeModel
) -> None:
    """Two branches of 40 tokens each under a budget of 50: the second call passes it."""
    fake.push(
        Answer(text="one", input_tokens=38, output_tokens=2),
        Answer(text="two", input_tokens=38, output_tokens=2),
    )
    definition = _fan_out(fake, 2, token_budget=50)
    run = await run_and_wait(client, {"definition": definition, "inputs": {}})
    assert run["status"] == "failed", run
    assert run["error"]["code"] == "token_budget_exceeded"
    assert run["usage"]["input_tokens"] + run["usage"]["output_tokens"] == 80


async def test_usage_of_agents_in_map_items_is_the_runs(
    client: httpx.AsyncClient, fake: FakeModel
) -> None:
    fake.push(*(Answer(text=f"item {k}", input_tokens=7, output_tokens=1) for k in range(3)))
    child = {
        "name": "ask-one",
        "models": _models(fake),
        "agents": {"helper": {"model": "m", "system_prompt": "You help."}},
        "nodes": {
            "ask": {"step": "agent", "agent": "helper", "with": {"prompt": "{{ inputs.q }}"}}
        },
    }
    await store(client, child)
    parent = {
        "name": "map-agents",
        "nodes": {
            "each": {
                "step": "map",
                "with": {
                    "workflow": "ask-one",
                    "items": ["x", "y", "z"],
                    "inputs": {"q": "{{ item }}"},
                },
            }
        },
    }
    run = await run_and_wait(client, {"definition": parent, "inputs": {}})
    assert run["status"] == "completed", run["error"]
    assert len(fake.model_requests) == 3
    assert run["usage"] == {"input_tokens": 21, "output_tokens": 3, "model_calls": 3}


def _handoff_in_branch() -> dict[str, Any]:
    return {
        "name": "branch-handoff",
        "nodes": {
            "p": {"step": "set"},
            "a": {"step": "handoff", "agent": "A", "with": {"to": "B", "payload": {"x": 1}}},
            "b": {"step": "set", "agent": "B", "set": {"seen": "{{ context.handoff.payload.x }}"}},
            "c": {"step": "set", "set": {"c": 1}},
            "j": {"step": "set", "join": "all"},
        },
        "edges": [
            {"from": "p", "to": ["a", "c"]},
            {"from": "a", "to": "j"},
            {"from": "b", "to": "j"},
            {"from": "c", "to": "j"},
        ],
    }


async def test_a_handoff_in_a_branch_reaches_the_state_after_the_join(
    client: httpx.AsyncClient,
) -> None:
    run = await run_and_wait(client, {"definition": _handoff_in_branch(), "inputs": {}})
    assert run["status"] == "completed", run
    handoff = {"from_agent": "A", "to_agent": "B", "payload": {"x": 1}}
    assert run["state"] == {"handoff": handoff, "seen": 1, "c": 1}
    joined = [
        e for e in await events_of(client, run["id"], types="state.updated") if e["node"] == "j"
    ]
    assert [sorted(e["data"]["keys"]) for e in joined] == [["c", "handoff", "seen"]]


async def test_a_handoff_node_completes_with_the_handoff_as_its_output(
    client: httpx.AsyncClient,
) -> None:
    definition = _handoff_in_branch()
    definition["nodes"] = {k: v for k, v in definition["nodes"].items() if k in ("a", "b")}
    definition["edges"] = []
    definition["entry"] = "a"
    run = await run_and_wait(client, {"definition": definition, "inputs": {}})
    assert run["status"] == "completed", run
    events = [(e["type"], e["node"]) for e in await events_of(client, run["id"])]
    node_events = [e for e in events if e[0].startswith(("node.", "run.handoff", "state."))]
    assert node_events == [
        ("node.started", "a"),
        ("node.completed", "a"),
        ("state.updated", "a"),
        ("run.handoff", "a"),
        ("node.started", "b"),
        ("state.updated", "b"),
        ("node.completed", "b"),
    ]
    completed = [e for e in await events_of(client, run["id"], types="node.completed")]
    assert completed[0]["data"]["output"] == {
        "from_agent": "A",
        "to_agent": "B",
        "payload": {"x": 1},
    }
