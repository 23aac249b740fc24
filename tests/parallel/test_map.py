"""``step: map``: a stored workflow once per item, inside the run (DESIGN §10)."""

from __future__ import annotations

import asyncio
import gc
from typing import Any

import httpx

from app.steps.base import StepContext, StepResult
from app.steps.registry import StepRegistry, builtin_steps
from tests.conftest import AppFactory, events_of, store, until_status
from tests.engine.test_runner import start, wf

DOUBLE = wf(
    "double",
    {"calc": {"step": "set", "set": {"twice": "{{ inputs.n * 2 }}", "at": "{{ inputs.at }}"}}},
    inputs={"type": "object", "required": ["n"], "properties": {"n": {"type": "number"}}},
    output="{{ state.twice }}",
)


def mapping(items: Any, **with_: Any) -> dict[str, Any]:
    return wf(
        "mapper",
        {
            "each": {
                "step": "map",
                "with": {
                    "workflow": "double",
                    "items": items,
                    "inputs": {"n": "{{ item }}", "at": "{{ index }}"},
                    **with_,
                },
                "set": {"doubled": "{{ output }}"},
            },
            "after": {"step": "set", "set": {"count": "{{ state.doubled | length }}"}},
        },
        [{"from": "each", "to": "after"}],
        state={"numbers": "{{ inputs.numbers }}"},
    )


async def test_map_outputs_in_item_order(client: httpx.AsyncClient) -> None:
    await store(client, DOUBLE)
    numbers = list(range(25))
    run = await start(
        client, mapping("{{ state.numbers }}", max_concurrency=4), {"numbers": numbers}
    )
    assert run["status"] == "completed", run
    assert run["state"]["doubled"] == [n * 2 for n in numbers]
    assert run["state"]["count"] == 25
    events = await events_of(client, run["id"], types="node.completed")
    branches = {e["data"].get("branch") for e in events if e["node"] == "calc"}
    assert branches == {f"each[{k}]" for k in range(25)}


async def test_empty_map_and_too_many_items(client: httpx.AsyncClient) -> None:
    await store(client, DOUBLE)
    empty = await start(client, mapping("{{ state.numbers }}"), {"numbers": []})
    assert empty["state"]["doubled"] == []
    many = await start(client, mapping("{{ state.numbers }}"), {"numbers": list(range(10_001))})
    assert many["status"] == "failed"
    assert many["error"]["code"] == "too_many_items"
    assert "10000" in many["error"]["message"].replace(",", "")


async def test_item_failures_fail_or_are_collected(client: httpx.AsyncClient) -> None:
    await store(client, DOUBLE)
    items = [1, "x", 3]  # "x" fails the child's input schema
    failed = await start(client, mapping("{{ state.numbers }}"), {"numbers": items})
    assert failed["status"] == "failed", failed
    assert failed["error"]["code"] == "invalid_item_inputs"
    assert failed["error"]["node"] == "each"
    collected = await start(
        client, mapping("{{ state.numbers }}", on_item_failure="collect"), {"numbers": items}
    )
    assert collected["status"] == "completed", collected
    doubled = collected["state"]["doubled"]
    assert doubled[0] == 2
    assert doubled[2] == 6
    assert doubled[1]["error"]["code"] == "invalid_item_inputs"


async def test_a_failing_item_step_fails_the_map_node(client: httpx.AsyncClient) -> None:
    await store(
        client,
        wf(
            "picky",
            {
                "check": {"step": "set"},
                "boom": {"step": "fail", "with": {"code": "odd", "message": "odd {{ inputs.n }}"}},
                "ok": {"step": "set", "set": {"n": "{{ inputs.n }}"}},
            },
            [
                {"from": "check", "to": "boom", "when": "inputs.n % 2 == 1"},
                {"from": "check", "to": "ok"},
            ],
            output="{{ state.n }}",
        ),
    )
    definition = mapping("{{ state.numbers }}", workflow="picky", on_item_failure="collect")
    run = await start(client, definition, {"numbers": [2, 3, 4]})
    assert run["status"] == "completed", run
    assert run["state"]["doubled"][0] == 2
    assert run["state"]["doubled"][1]["error"]["code"] == "odd"
    strict = await start(
        client, mapping("{{ state.numbers }}", workflow="picky"), {"numbers": [2, 3]}
    )
    assert strict["status"] == "failed"
    assert strict["error"]["code"] == "odd"
    assert strict["error"]["details"]["item"] == "each[1]"


async def test_items_pause_and_are_answered_one_by_one(client: httpx.AsyncClient) -> None:
    await store(
        client,
        wf(
            "approve-one",
            {"ask": {"step": "interrupt", "with": {"n": "{{ inputs.n }}"}}},
            output="{{ nodes.ask.output }}",
        ),
    )
    definition = mapping("{{ state.numbers }}", workflow="approve-one")
    run = await start(client, definition, {"numbers": [1, 2, 3]})
    assert run["status"] == "interrupted", run
    pending = run["interrupts"]
    assert [i["payload"]["n"] for i in pending] == [1, 2, 3]
    assert run["current_node"] == "each"  # the map's node, not a node of its items' workflow
    # each names the item that asks (they all ask at one node)
    assert [(i["node"], i["branch"]) for i in pending] == [
        ("ask", "each[0]"), ("ask", "each[1]"), ("ask", "each[2]")
    ]  # fmt: skip
    paused = await events_of(client, run["id"], types="branch.paused")
    assert sorted(e["data"]["interrupt"]["branch"] for e in paused) == [
        "each[0]", "each[1]", "each[2]"
    ]  # fmt: skip
    for interrupt in reversed(pending):
        response = await client.post(
            f"/runs/{run['id']}/response",
            json={"interrupt_id": interrupt["id"], "value": interrupt["payload"]["n"] * 10},
        )
        assert response.status_code == 202, response.text
        run = await until_status(client, run["id"], "interrupted", "completed", "failed")
    assert run["status"] == "completed", run
    assert run["state"]["doubled"] == [10, 20, 30]


async def test_map_is_bounded_by_its_max_concurrency(make_client: AppFactory) -> None:
    from tests.parallel.test_fanout import gauge_registry

    registry, gauge = gauge_registry()
    client = await make_client(registry=registry)
    await store(client, wf("nap", {"nap": {"step": "gauge", "with": {"seconds": 0.05}}}))
    definition = mapping("{{ state.numbers }}", workflow="nap", max_concurrency=3)
    run = await start(client, definition, {"numbers": list(range(12))})
    assert run["status"] == "completed", run
    assert gauge.most == 3
    assert len(gauge.finished) == 12


class GateStep:
    """Fails (for good) while closed; counts the items it saw."""

    def __init__(self) -> None:
        self.open = False
        self.seen: list[int] = []

    async def execute(self, ctx: StepContext) -> StepResult:
        n = int(ctx.inputs["n"])
        self.seen.append(n)
        if n == 3 and not self.open:
            return StepResult.failed("closed", "the gate is closed")
        return StepResult.succeeded(n)


async def test_resuming_a_failed_map_reruns_only_the_failed_item(make_client: AppFactory) -> None:
    gate = GateStep()
    client = await make_client(registry=StepRegistry({**builtin_steps(), "gate": gate}))
    await store(client, wf("gated", {"g": {"step": "gate"}}, output="{{ nodes.g.output }}"))
    definition = mapping("{{ state.numbers }}", workflow="gated", max_concurrency=1)
    run = await start(client, definition, {"numbers": [1, 2, 3, 4]})
    assert run["status"] == "failed", run
    assert run["error"]["code"] == "closed"
    assert run["error"]["details"]["item"] == "each[2]"
    assert gate.seen == [1, 2, 3]
    gate.open = True
    response = await client.post(f"/runs/{run['id']}/resume", json={})
    assert response.status_code == 202, response.text
    done = await until_status(client, run["id"], "completed", "failed")
    assert done["status"] == "completed", done
    assert done["state"]["doubled"] == [1, 2, 3, 4]
    assert gate.seen == [1, 2, 3, 3, 4]


async def test_a_fork_inside_a_map_keeps_finished_items(client: httpx.AsyncClient) -> None:
    await store(
        client,
        wf(
            "approve-one",
            {"ask": {"step": "interrupt", "with": {"n": "{{ inputs.n }}"}}},
            output="{{ nodes.ask.output }}",
        ),
    )
    run = await start(
        client, mapping("{{ state.numbers }}", workflow="approve-one"), {"numbers": [1, 2]}
    )
    first, second = run["interrupts"]
    await client.post(
        f"/runs/{run['id']}/response", json={"interrupt_id": first["id"], "value": "a"}
    )
    run = await until_status(client, run["id"], "interrupted", "completed", "failed")
    assert [i["id"] for i in run["interrupts"]] == [second["id"]]
    head = (await client.get(f"/runs/{run['id']}/checkpoints")).json()["items"][-1]
    response = await client.post(f"/runs/{run['id']}/fork", json={"checkpoint_id": head["id"]})
    assert response.status_code == 201, response.text
    fork = await until_status(client, response.json()["id"], "interrupted", "completed", "failed")
    assert fork["status"] == "interrupted", fork
    [pending] = fork["interrupts"]
    assert pending["node"] == "ask"
    assert pending["payload"] == {"n": 2}
    await client.post(
        f"/runs/{fork['id']}/response", json={"interrupt_id": pending["id"], "value": "b"}
    )
    done = await until_status(client, fork["id"], "completed", "failed")
    assert done["state"]["doubled"] == ["a", "b"]
    source = (await client.get(f"/runs/{run['id']}")).json()
    assert source["status"] == "interrupted"


async def test_an_items_interrupt_after_on_its_last_node_ends_the_item_once_answered(
    client: httpx.AsyncClient,
) -> None:
    await store(
        client,
        wf(
            "check-each",
            {"calc": {"step": "set", "interrupt_after": "check", "set": {"v": "{{ inputs.n }}"}}},
            output="{{ state.v * 2 }}",
        ),
    )
    definition = mapping("{{ state.numbers }}", workflow="check-each")
    run = await start(client, definition, {"numbers": [1, 2]})
    assert run["status"] == "interrupted", run
    assert [i["kind"] for i in run["interrupts"]] == ["interrupt_after"] * 2
    for interrupt in run["interrupts"]:
        response = await client.post(
            f"/runs/{run['id']}/response", json={"interrupt_id": interrupt["id"]}
        )
        assert response.status_code == 202, response.text
        run = await until_status(client, run["id"], "interrupted", "completed", "failed")
    assert run["status"] == "completed", run
    assert run["state"]["doubled"] == [2, 4]


def map_node(items: Any, workflow: str, inputs: dict[str, Any]) -> dict[str, Any]:
    return {"step": "map", "with": {"workflow": workflow, "items": items, "inputs": inputs}}


async def test_maps_nest_as_deep_as_subgraphs_do_and_no_deeper(client: httpx.AsyncClient) -> None:
    """A workflow that maps itself is stopped at the nesting limit (8), like a subgraph
    of itself; a map of a map of a workflow runs."""
    leaf = wf("leaf", {"v": {"step": "set", "set": {"v": "{{ inputs.n }}"}}},
              output="{{ state.v }}")  # fmt: skip
    await store(client, leaf)
    inner = map_node("{{ inputs.ns }}", "leaf", {"n": "{{ item }}"})
    await store(client, wf("inner", {"m": inner}, output="{{ nodes.m.output }}"))
    outer = map_node([[1, 2], [3]], "inner", {"ns": "{{ item }}"})
    run = await start(client, wf("outer", {"m": {**outer, "set": {"out": "{{ output }}"}}}))
    assert run["status"] == "completed", run
    assert run["state"]["out"] == [[1, 2], [3]]

    await store(client, wf("selfmap", {"m": map_node([1], "selfmap", {})}))
    run = await start(client, wf("starter", {"go": map_node([1], "selfmap", {})}))
    assert run["status"] == "failed", run
    assert run["error"]["code"] == "subgraph_depth_exceeded", run["error"]
    assert "nest deeper than 8" in run["error"]["message"]


async def test_cancelling_a_map_midway_leaves_no_task_error_behind(
    client: httpx.AsyncClient,
) -> None:
    """The writes of items cut short by the cancel fail (the run is no longer this
    runner's): their errors are taken, not reported as never retrieved."""
    loop = asyncio.get_running_loop()
    reported: list[dict[str, Any]] = []
    previous = loop.get_exception_handler()
    loop.set_exception_handler(lambda _, context: reported.append(context))
    try:
        await store(client, wf("w-set", {"s": {"step": "set", "set": {"n": "{{ inputs.n }}"}}}))
        node = {"step": "map", "with": {"workflow": "w-set", "items": "{{ range(2000) | list }}",
                                        "inputs": {"n": "{{ index }}"}}}  # fmt: skip
        for pause in (0.3, 0.6, 0.9):
            created = await client.post("/runs", json={"definition": wf("bigmap", {"m": node}),
                                                       "inputs": {}})  # fmt: skip
            run_id = created.json()["id"]
            await asyncio.sleep(pause)
            assert (await client.post(f"/runs/{run_id}/cancel")).status_code == 202
            cancelled = await until_status(client, run_id, "cancelled")
            assert cancelled["current_node"] == "m"
        await asyncio.sleep(0.5)
        gc.collect()
        await asyncio.sleep(0.1)
    finally:
        loop.set_exception_handler(previous)
    assert [c.get("message") for c in reported] == []


async def test_a_map_inside_a_branch_is_the_current_node_too(client: httpx.AsyncClient) -> None:
    await store(
        client, wf("ask-one", {"ask": {"step": "interrupt", "with": {"n": "{{ inputs.n }}"}}})
    )
    nodes = {
        "fork": {"step": "set"},
        "each": map_node([1], "ask-one", {"n": "{{ item }}"}),
        "other": {"step": "set"},
        "j": {"step": "set", "join": "all"},
    }
    edges = [{"from": "fork", "to": ["each", "other"]}, {"from": "each", "to": "j"},
             {"from": "other", "to": "j"}]  # fmt: skip
    run = await start(client, wf("branch-map", nodes, edges))
    assert run["status"] == "interrupted", run
    assert run["current_node"] == "each"
