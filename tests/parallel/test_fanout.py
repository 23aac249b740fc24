"""Fan-out, join and merge (DESIGN §10) over HTTP, on both backends."""

from __future__ import annotations

import asyncio
import time
from typing import Any

import httpx

from app.steps.base import StepContext, StepResult
from app.steps.registry import StepRegistry, builtin_steps
from tests.conftest import AppFactory, events_of
from tests.engine.steps_for_tests import make_registry
from tests.engine.test_runner import start, types_of, wf

PLAN = wf(
    "plan",
    {
        "plan": {"step": "set", "set": {"notes": ["plan"], "total": 1}},
        "research": {"step": "set", "set": {"notes": ["r"], "total": 2, "found": "{{ 'R' }}"}},
        "draft": {"step": "set", "set": {"notes": ["d"], "total": 3, "text": "D"}},
        "polish": {"step": "set", "set": {"text": "{{ state.text ~ '!' }}"}},
        "review": {"step": "set", "set": {"notes": "v", "total": 4, "meta": {"ok": True}}},
        "merge": {
            "step": "set",
            "join": "all",
            "set": {"parts": "{{ [state.found, state.text] }}"},
        },
    },
    [
        {"from": "plan", "to": ["research", "draft", "review"]},
        {"from": "research", "to": "merge"},
        {"from": "draft", "to": "polish"},
        {"from": "polish", "to": "merge"},
        {"from": "review", "to": "merge"},
    ],
    reducers={"notes": "append", "total": "add"},
)


async def test_branches_meet_at_the_join_and_merge(client: httpx.AsyncClient) -> None:
    run = await start(client, PLAN)
    assert run["status"] == "completed", run
    state = run["state"]
    assert state["notes"] == ["plan", "r", "d", "v"]  # folded in `to` order
    assert state["total"] == 1 + 2 + 3 + 4
    assert state["parts"] == ["R", "D!"]
    assert state["meta"] == {"ok": True}
    events = await events_of(client, run["id"])
    merge_started = [e for e in events if e["type"] == "node.started" and e["node"] == "merge"]
    assert len(merge_started) == 1  # the join runs once
    branch_of = {
        e["node"]: e["data"].get("branch") for e in events if e["type"] == "node.completed"
    }
    assert branch_of == {
        "plan": None,
        "research": "research",
        "draft": "draft",
        "polish": "draft",
        "review": "review",
        "merge": None,
    }
    # a branch step's checkpoint.saved names its branch (its node may be another's)
    saved = [e["data"].get("branch") for e in events if e["type"] == "checkpoint.saved"]
    assert sorted(b for b in saved if b) == ["draft", "draft", "research", "review"]
    for i, event in enumerate(events):
        if event["type"] == "checkpoint.saved" and event["data"].get("branch"):
            done = next(e for e in reversed(events[:i]) if e["type"] == "node.completed")
            assert done["data"]["branch"] == event["data"]["branch"]
    assert types_of(events)[-1] == "run.completed"


class GaugeStep:
    """Sleeps ``with.seconds``; records the most steps it saw running at once."""

    def __init__(self) -> None:
        self.running = 0
        self.most = 0
        self.finished: list[str] = []

    async def execute(self, ctx: StepContext) -> StepResult:
        self.running += 1
        self.most = max(self.most, self.running)
        try:
            await asyncio.sleep(float(ctx.config.get("seconds", 0.1)))
        finally:
            self.running -= 1
        self.finished.append(ctx.node)
        return StepResult.succeeded(ctx.node)


def gauge_registry() -> tuple[StepRegistry, GaugeStep]:
    gauge = GaugeStep()
    return StepRegistry({**builtin_steps(), "gauge": gauge}), gauge


def fan(n: int, step: dict[str, Any], **extra: Any) -> dict[str, Any]:
    """start → b0..b{n-1} (each ``step``) → join."""
    names = [f"b{k}" for k in range(n)]
    nodes = {"start": {"step": "set"}, **{b: step for b in names}}
    nodes["join"] = {"step": "set", "join": "all"}
    edges = [{"from": "start", "to": names}, *({"from": b, "to": "join"} for b in names)]
    return wf("fan", nodes, edges, **extra)


async def test_max_concurrency_bounds_the_steps_at_once(make_client: AppFactory) -> None:
    registry, gauge = gauge_registry()
    client = await make_client(registry=registry)
    run = await start(
        client, fan(6, {"step": "gauge", "with": {"seconds": 0.2}}, max_concurrency=2)
    )
    assert run["status"] == "completed", run
    assert gauge.most == 2
    assert sorted(gauge.finished) == [f"b{k}" for k in range(6)]


async def test_default_max_concurrency_is_eight(make_client: AppFactory) -> None:
    registry, gauge = gauge_registry()
    client = await make_client(registry=registry)
    run = await start(client, fan(12, {"step": "gauge", "with": {"seconds": 0.3}}))
    assert run["status"] == "completed", run
    assert gauge.most == 8


async def test_unreduced_key_written_by_two_branches_is_a_state_conflict(
    client: httpx.AsyncClient,
) -> None:
    definition = fan(3, {"step": "set", "set": {"winner": "{{ context.node }}"}})
    run = await start(client, definition)
    assert run["status"] == "failed"
    assert run["error"]["code"] == "state_conflict"
    assert "'winner'" in run["error"]["message"]
    assert run["error"]["details"] == {"key": "winner", "branches": ["b0", "b1", "b2"]}
    assert run["error"]["node"] == "join"


async def test_one_writer_without_reducer_and_every_reducer(client: httpx.AsyncClient) -> None:
    nodes = {
        "start": {"step": "set"},
        "a": {"step": "set", "set": {"only": 1, "m": {"x": 1, "y": 1}, "r": "a", "l": 1}},
        "b": {"step": "set", "set": {"m": {"y": 2}, "r": "b", "l": [2, 3]}},
        "join": {"step": "set", "join": "all"},
    }
    edges = [
        {"from": "start", "to": ["a", "b"]},
        {"from": "a", "to": "join"},
        {"from": "b", "to": "join"},
    ]
    definition = wf(
        "reduce",
        nodes,
        edges,
        state={"m": {"z": 0}, "l": [0], "r": "base"},
        reducers={"m": "merge", "r": "replace", "l": "append"},
    )
    run = await start(client, definition)
    assert run["status"] == "completed", run
    assert run["state"] == {
        "m": {"z": 0, "x": 1, "y": 2},
        "l": [0, 1, 2, 3],
        "r": "b",
        "only": 1,
    }


async def test_branch_sees_fanout_state_plus_its_own_writes(client: httpx.AsyncClient) -> None:
    nodes = {
        "start": {"step": "set", "set": {"seen": "start"}},
        "a1": {"step": "set", "set": {"a": 1}},
        "a2": {"step": "set", "set": {"a_saw": "{{ [state.seen, state.a, state.b] }}"}},
        "b1": {"step": "set", "set": {"b": 1}},
        "b2": {"step": "set", "set": {"b_saw": "{{ [state.seen, state.a, state.b] }}"}},
        "join": {"step": "set", "join": "all"},
    }
    edges = [
        {"from": "start", "to": ["a1", "b1"]},
        {"from": "a1", "to": "a2"},
        {"from": "b1", "to": "b2"},
        {"from": "a2", "to": "join"},
        {"from": "b2", "to": "join"},
    ]
    run = await start(client, wf("views", nodes, edges, state={"a": 0, "b": 0}))
    assert run["status"] == "completed", run
    assert run["state"]["a_saw"] == ["start", 1, 0]
    assert run["state"]["b_saw"] == ["start", 0, 1]


async def test_failing_branch_fails_the_run_and_cancels_its_siblings(
    make_client: AppFactory,
) -> None:
    registry, gauge = gauge_registry()
    client = await make_client(registry=registry)
    nodes = {
        "start": {"step": "set"},
        "slow": {"step": "gauge", "with": {"seconds": 30}},
        "boom": {"step": "fail", "with": {"code": "broken", "message": "no"}},
        "join": {"step": "set", "join": "all"},
    }
    edges = [
        {"from": "start", "to": ["slow", "boom"]},
        {"from": "slow", "to": "join"},
        {"from": "boom", "to": "join"},
    ]
    began = time.monotonic()
    run = await start(client, wf("failing", nodes, edges))
    assert time.monotonic() - began < 10  # the 30 s sibling was cancelled
    assert run["status"] == "failed"
    assert run["error"]["code"] == "broken"
    assert run["error"]["node"] == "boom"
    assert run["error"]["details"]["branch"] == "boom"
    assert gauge.finished == []
    events = await events_of(client, run["id"])
    assert types_of(events)[-1] == "run.failed"
    assert events[-1]["data"]["error"] == run["error"]
    assert "join" not in [e["node"] for e in events if e["type"] == "node.started"]


async def test_conditional_fanout_and_branches_that_all_end(client: httpx.AsyncClient) -> None:
    nodes = {
        "start": {"step": "set", "set": {"wide": "{{ inputs.wide }}"}},
        "x": {"step": "set", "set": {"x": True}},
        "y": {"step": "set", "set": {"y": True}},
        "z": {"step": "set", "set": {"z": True}},
    }
    edges = [
        {"from": "start", "to": ["x", "y"], "when": "state.wide"},
        {"from": "start", "to": "z"},
    ]
    definition = wf("cond", nodes, edges)
    wide = await start(client, definition, {"wide": True})
    assert wide["status"] == "completed", wide
    assert wide["state"] == {"wide": True, "x": True, "y": True}
    narrow = await start(client, definition, {"wide": False})
    assert narrow["state"] == {"wide": False, "z": True}


async def test_nested_fanout_composes_branch_ids(client: httpx.AsyncClient) -> None:
    nodes = {
        "start": {"step": "set"},
        "outer_a": {"step": "set"},
        "inner_1": {"step": "set", "set": {"items": ["1"]}},
        "inner_2": {"step": "set", "set": {"items": ["2"]}},
        "inner_join": {"step": "set", "join": "all"},
        "outer_b": {"step": "set", "set": {"items": ["b"]}},
        "join": {"step": "set", "join": "all", "set": {"done": "{{ state.items }}"}},
    }
    edges = [
        {"from": "start", "to": ["outer_a", "outer_b"]},
        {"from": "outer_a", "to": ["inner_1", "inner_2"]},
        {"from": "inner_1", "to": "inner_join"},
        {"from": "inner_2", "to": "inner_join"},
        {"from": "inner_join", "to": "join"},
        {"from": "outer_b", "to": "join"},
    ]
    run = await start(client, wf("nested", nodes, edges, reducers={"items": "append"}))
    assert run["status"] == "completed", run
    assert run["state"]["done"] == ["1", "2", "b"]
    events = await events_of(client, run["id"])
    branch_of = {
        e["node"]: e["data"].get("branch") for e in events if e["type"] == "node.completed"
    }
    assert branch_of["inner_1"] == "outer_a.inner_1"
    assert branch_of["inner_join"] == "outer_a"
    assert branch_of["outer_b"] == "outer_b"
    assert branch_of["join"] is None


async def test_every_branch_step_is_checkpointed(client: httpx.AsyncClient) -> None:
    run = await start(client, PLAN)
    items = (await client.get(f"/runs/{run['id']}/checkpoints")).json()["items"]
    # start + plan + 4 branch steps + the merge + the join node (completed)
    assert len(items) == 8
    assert run["step_count"] == 6


async def test_pure_branch_steps_keep_checkpoints_and_are_durable_before_side_effects(
    make_client: AppFactory,
) -> None:
    from tests.engine.steps_for_tests import make_registry
    from tests.engine.test_group_commit import assert_chained, checkpoints_of

    registry, steps = make_registry()
    client = await make_client(registry=registry)
    names = [f"{b}{k}" for b in "xy" for k in range(4)]
    nodes: dict[str, Any] = {"start": {"step": "set"}}
    nodes.update({n: {"step": "set", "set": {n: True}} for n in names})
    nodes["join"] = {"step": "set", "join": "all"}
    nodes["p"] = {"step": "probe"}
    edges = [
        {"from": "start", "to": ["x0", "y0"]},
        *({"from": f"{b}{k}", "to": f"{b}{k + 1}"} for b in "xy" for k in range(3)),
        {"from": "x3", "to": "join"},
        {"from": "y3", "to": "join"},
        {"from": "join", "to": "p"},
    ]
    run = await start(client, wf("pure-branches", nodes, edges))
    assert run["status"] == "completed", run
    assert all(run["state"][n] for n in names)
    checkpoints = await checkpoints_of(client, run["id"])
    assert_chained(checkpoints)
    # the run's start, start, 8 branch steps, the merge at the join, join, p
    assert len(checkpoints) == 13
    assert sorted(c["last_node"] for c in checkpoints[2:10]) == sorted(names)
    # when the probe (a step with side effects) started, every step before it was durable
    [seen] = steps["probe"].seen
    assert seen == [c["last_node"] for c in checkpoints[:-1]]


async def test_fanout_inside_a_subgraph(client: httpx.AsyncClient) -> None:
    inner_nodes = {
        "split": {"step": "set"},
        "left": {"step": "set", "set": {"parts": ["L{{ inputs.tag }}"]}},
        "right": {"step": "set", "set": {"parts": ["R"]}},
        "meet": {"step": "set", "join": "all"},
    }
    inner_edges = [
        {"from": "split", "to": ["left", "right"]},
        {"from": "left", "to": "meet"},
        {"from": "right", "to": "meet"},
    ]
    inner = wf("inner", inner_nodes, inner_edges, reducers={"parts": "append"})
    branch_nodes = {k: v for k, v in inner_nodes.items() if k != "meet"}
    ends = wf("ends", branch_nodes, inner_edges[:1], reducers={"parts": "append"})
    for definition in (inner, ends):
        response = await client.post("/workflows", json=definition)
        assert response.status_code == 201, response.text
    outer = wf(
        "outer",
        {
            "sub": {
                "step": "subgraph",
                "with": {"workflow": "inner", "inputs": {"tag": "1"}},
                "set": {"joined": "{{ output.parts }}"},
            },
            "sub2": {
                "step": "subgraph",
                "with": {"workflow": "ends", "inputs": {"tag": "2"}},
                "set": {"ended": "{{ output.parts }}"},
            },
        },
        [{"from": "sub", "to": "sub2"}],
    )
    run = await start(client, outer)
    assert run["status"] == "completed", run
    assert run["state"] == {"joined": ["L1", "R"], "ended": ["L2", "R"]}


async def test_a_branch_may_start_at_the_join(client: httpx.AsyncClient) -> None:
    nodes = {
        "start": {"step": "set"},
        "work": {"step": "set", "set": {"w": 1}},
        "join": {"step": "set", "join": "all", "set": {"seen": "{{ state.w }}"}},
    }
    edges = [{"from": "start", "to": ["work", "join"]}, {"from": "work", "to": "join"}]
    run = await start(client, wf("at-join", nodes, edges))
    assert run["status"] == "completed", run
    assert run["state"] == {"w": 1, "seen": 1}


async def test_branches_that_meet_outside_a_join_are_refused(client: httpx.AsyncClient) -> None:
    """Two branches reaching one node that is not `join: all` would each run it (and all
    after it): they meet there without joining, and validation says so."""
    definition = wf(
        "shared-tail",
        {"s": {"step": "set"}, "a": {"step": "set"}, "b": {"step": "set"},
         "j": {"step": "set"}, "k": {"step": "set"}},
        [{"from": "s", "to": ["a", "b"]}, {"from": "a", "to": "j"}, {"from": "b", "to": "j"},
         {"from": "j", "to": "k"}],
    )  # fmt: skip
    response = await client.post("/workflows/validate", json=definition)
    [error] = response.json()["errors"]
    assert error["loc"] == ["edges", 0, "to"]
    assert error["type"] == "unjoined_branches"
    assert "meet outside a join at 'j', 'k'" in error["msg"]
    # a branch that runs into another's first node meets it there too
    definition["edges"] = [{"from": "s", "to": ["a", "b"]}, {"from": "a", "to": "b"}]
    errors = (await client.post("/workflows/validate", json=definition)).json()["errors"]
    assert any("meet outside a join at 'b'" in e["msg"] for e in errors), errors
    definition["nodes"]["j"]["join"] = "all"
    definition["edges"] = [{"from": "s", "to": ["a", "b"]}, {"from": "a", "to": "j"},
                           {"from": "b", "to": "j"}, {"from": "j", "to": "k"}]  # fmt: skip
    assert (await client.post("/workflows/validate", json=definition)).json()["valid"] is True


async def test_a_checkpoint_after_a_branch_step_that_is_not_pure_names_its_branch(
    make_client: AppFactory,
) -> None:
    """Steps with effects are written one by one, not grouped: their checkpoint.saved
    carries the branch too."""
    registry, _ = make_registry()
    client = await make_client(registry=registry)
    nodes = {
        "plan": {"step": "set"},
        "a": {"step": "sleep", "with": {"seconds": 0.01}},
        "b": {"step": "sleep", "with": {"seconds": 0.2}},
        "merge": {"step": "set", "join": "all"},
    }
    edges = [{"from": "plan", "to": ["a", "b"]}, {"from": "a", "to": "merge"},
             {"from": "b", "to": "merge"}]  # fmt: skip
    run = await start(client, wf("effects", nodes, edges))
    assert run["status"] == "completed", run
    events = await events_of(client, run["id"])
    for i, event in enumerate(events):
        if event["type"] == "node.completed" and event["data"].get("branch"):
            saved = next(e for e in events[i:] if e["type"] == "checkpoint.saved")
            assert saved["data"].get("branch") == event["data"]["branch"], saved
    saved = [e["data"].get("branch") for e in events if e["type"] == "checkpoint.saved"]
    assert sorted(b for b in saved if b) == ["a", "b"]
