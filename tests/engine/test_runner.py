"""The runner cycle over HTTP: statuses, edges, bounds, handoffs, retries, subgraphs."""

from __future__ import annotations

import asyncio
from typing import Any

import httpx
from sqlalchemy import func, select

from app.store.models import Checkpoint
from tests.conftest import AppFactory, events_of, run_and_wait, store, wait_run
from tests.engine.steps_for_tests import make_registry


def wf(
    name: str, nodes: dict[str, Any], edges: list[dict[str, Any]] | None = None, **extra: Any
) -> dict[str, Any]:
    return {"name": name, "nodes": nodes, "edges": edges or [], **extra}


async def start(
    client: httpx.AsyncClient, definition: dict[str, Any], inputs: dict[str, Any] | None = None
) -> dict[str, Any]:
    return await run_and_wait(client, {"definition": definition, "inputs": inputs or {}})


def types_of(events: list[dict[str, Any]]) -> list[str]:
    return [e["type"] for e in events]


# -- statuses ---------------------------------------------------------------------------------


async def test_fail_step_fails_the_run_with_its_code(client: httpx.AsyncClient) -> None:
    run = await start(
        client, wf("f", {"x": {"step": "fail", "with": {"code": "nope", "message": "no way"}}})
    )
    assert run["status"] == "failed"
    assert run["error"]["code"] == "nope"
    assert run["error"]["message"] == "no way"
    assert run["error"]["node"] == "x"
    types = types_of(await events_of(client, run["id"]))
    assert "node.failed" in types
    assert types[-1] == "run.failed"


async def test_run_resource_has_every_field(client: httpx.AsyncClient) -> None:
    run = await start(client, wf("fields", {"a": {"step": "set", "set": {"v": 1}}}))
    for field in (
        "id",
        "workflow",
        "status",
        "inputs",
        "state",
        "output",
        "error",
        "current_node",
        "interrupt",
        "resume_at",
        "parent_run_id",
        "forked_from_checkpoint_id",
        "step_count",
        "created_at",
        "updated_at",
    ):
        assert field in run, field
    assert (
        run["workflow"] == {"name": "inline", "version": None}
        or run["workflow"]["name"] == "fields"
    )


async def test_initial_and_final_checkpoints(client: httpx.AsyncClient) -> None:
    run = await start(
        client, wf("ck", {"a": {"step": "set"}, "b": {"step": "set"}}, [{"from": "a", "to": "b"}])
    )
    items = (await client.get(f"/runs/{run['id']}/checkpoints")).json()["items"]
    assert [c["seq"] for c in items] == [1, 2, 3]
    first, last = items[0], items[-1]
    assert (
        first["next_node"] == "a" and first["steps_completed"] == 0 and first["parent_id"] is None
    )
    assert last["status"] == "completed" and last["next_node"] is None
    assert [c["parent_id"] for c in items[1:]] == [c["id"] for c in items[:-1]]
    # an unknown checkpoint of the run, and any checkpoint of an unknown run
    missing = await client.get(f"/runs/{run['id']}/checkpoints/nope")
    assert (missing.status_code, missing.json()["code"]) == (404, "checkpoint_not_found")
    for path in (f"/runs/nope/checkpoints/{first['id']}", "/runs/nope/checkpoints/nope"):
        missing = await client.get(path)
        assert (missing.status_code, missing.json()["code"]) == (404, "run_not_found")


# -- edges --------------------------------------------------------------------------------------


async def test_conditional_edges_in_order_then_default(client: httpx.AsyncClient) -> None:
    definition = wf(
        "route",
        {
            "start": {"step": "set", "set": {"v": "{{ inputs.v }}"}},
            "big": {"step": "set", "set": {"went": "big"}},
            "huge": {"step": "set", "set": {"went": "huge"}},
            "small": {"step": "set", "set": {"went": "small"}},
        },
        [
            {"from": "start", "to": "small"},
            {"from": "start", "to": "huge", "when": "state.v > 100"},
            {"from": "start", "to": "big", "when": "state.v > 10"},
        ],
    )
    assert (await start(client, definition, {"v": 500}))["state"]["went"] == "huge"
    assert (await start(client, definition, {"v": 50}))["state"]["went"] == "big"
    run = await start(client, definition, {"v": 1})
    assert run["state"]["went"] == "small"
    branches = [e["data"] for e in await events_of(client, run["id"], types="branch.evaluated")]
    assert branches == [
        {"from": "start", "to": "huge", "condition": "state.v > 100", "result": False},
        {"from": "start", "to": "big", "condition": "state.v > 10", "result": False},
        {"from": "start", "to": "small", "condition": None, "result": True},
    ]


async def test_no_matching_edge_fails(client: httpx.AsyncClient) -> None:
    definition = wf(
        "nomatch",
        {"a": {"step": "set"}, "b": {"step": "set"}},
        [{"from": "a", "to": "b", "when": "false"}],
    )
    run = await start(client, definition)
    assert run["status"] == "failed"
    assert run["error"]["code"] == "no_matching_edge"
    assert run["error"]["node"] == "a"


async def test_expression_error_names_node_and_expression(client: httpx.AsyncClient) -> None:
    run = await start(
        client, wf("experr", {"a": {"step": "set", "set": {"x": "{{ state.missing.deeper }}"}}})
    )
    assert run["status"] == "failed"
    assert run["error"]["code"] == "expression_error"
    assert "'a'" in run["error"]["message"]
    assert "state.missing.deeper" in run["error"]["message"]


async def test_template_bombs_fail_the_node_fast(client: httpx.AsyncClient) -> None:
    for bomb in ("{{ 'a' * 10**10 }}", "{{ range(10**12) | list }}", "{{ [1] * 10**9 }}"):
        run = await start(client, wf("bomb", {"a": {"step": "set", "with": {"x": bomb}}}))
        assert run["status"] == "failed", bomb
        assert run["error"]["code"] == "expression_error", run["error"]


async def test_data_is_never_evaluated_as_a_template(client: httpx.AsyncClient) -> None:
    definition = wf(
        "data",
        {"a": {"step": "set", "set": {"copy": "{{ inputs.text }}", "list": "{{ inputs.list }}"}}},
    )
    run = await start(client, definition, {"text": "{{ 7 * 6 }}", "list": "[1, 2]"})
    assert run["state"] == {"copy": "{{ 7 * 6 }}", "list": "[1, 2]"}


# -- bounds ----------------------------------------------------------------------------------------


async def test_max_node_iterations(client: httpx.AsyncClient) -> None:
    definition = wf(
        "loop",
        {"a": {"step": "set", "set": {"n": "{{ state.n + 1 }}"}, "max_iterations": 3}},
        [{"from": "a", "to": "a", "loop": True}],
        state={"n": 0},
    )
    run = await start(client, definition)
    assert run["status"] == "failed"
    assert run["error"]["code"] == "max_node_iterations_exceeded"
    assert "'a'" in run["error"]["message"]
    assert run["state"]["n"] == 3


async def test_max_node_iterations_names_the_node_entered_too_often(
    client: httpx.AsyncClient,
) -> None:
    definition = wf(
        "cycle",
        {
            "a": {"step": "set", "set": {"n": "{{ state.n + 1 }}"}},
            "b": {"step": "set", "max_iterations": 2},
        },
        [{"from": "a", "to": "b"}, {"from": "b", "to": "a", "loop": True}],
        state={"n": 0},
    )
    run = await start(client, definition)
    assert run["status"] == "failed", run
    error = run["error"]
    assert (error["code"], error["node"], error["details"]["node"]) == (
        "max_node_iterations_exceeded",
        "b",
        "b",
    )
    assert error["message"] == "node 'b' was entered more than 2 times"
    assert run["state"]["n"] == 3  # a ran a third time; b was not entered a third time
    failed = [e for e in await events_of(client, run["id"]) if e["type"].endswith(".failed")]
    assert [(e["type"], e["node"]) for e in failed] == [("node.failed", "b"), ("run.failed", "b")]


async def test_workflow_max_node_iterations_default(client: httpx.AsyncClient) -> None:
    definition = wf(
        "loop2",
        {"a": {"step": "set", "set": {"n": "{{ state.n + 1 }}"}}},
        [{"from": "a", "to": "a", "loop": True}],
        state={"n": 0},
        max_node_iterations=5,
    )
    run = await start(client, definition)
    assert run["error"]["code"] == "max_node_iterations_exceeded"
    assert run["state"]["n"] == 5


async def test_max_steps(client: httpx.AsyncClient) -> None:
    definition = wf(
        "steps",
        {"a": {"step": "set"}, "b": {"step": "set"}},
        [{"from": "a", "to": "b"}, {"from": "b", "to": "a", "loop": True}],
        max_steps=7,
        max_node_iterations=100,
    )
    run = await start(client, definition)
    assert run["status"] == "failed"
    assert run["error"]["code"] == "max_steps_exceeded"
    assert run["step_count"] == 7


# -- handoff ------------------------------------------------------------------------------------------

AGENTS = {
    "triage": {"handoff_targets": ["billing", "tech"]},
    "billing": {"handoff_approval": True},
    "tech": {},
}


def handoff_wf(to: str, **extra: Any) -> dict[str, Any]:
    return wf(
        "handoff",
        {
            "triage": {
                "agent": "triage",
                "step": "handoff",
                "with": {"to": to, "payload": {"msg": "help"}},
            },
            "billing": {
                "agent": "billing",
                "step": "set",
                "set": {"seen": "{{ context.handoff }}"},
            },
            "tech": {
                "agent": "tech",
                "step": "set",
                "set": {"seen": "{{ context.handoff }}", "agent": "{{ context.agent_id }}"},
            },
        },
        agents=AGENTS,
        **extra,
    )


async def test_handoff_routes_to_the_agents_node(client: httpx.AsyncClient) -> None:
    run = await start(client, handoff_wf("tech"))
    assert run["status"] == "completed", run
    expected = {"from_agent": "triage", "to_agent": "tech", "payload": {"msg": "help"}}
    assert run["state"]["handoff"] == expected
    assert run["state"]["seen"] == expected
    assert run["state"]["agent"] == "tech"
    assert "run.handoff" in types_of(await events_of(client, run["id"]))
    assert run["step_count"] == 2  # the handoff is one step execution, tech the other


async def test_agents_need_no_declaration(client: httpx.AsyncClient) -> None:
    """`agent: X` on a node binds X; `agents:` only adds options."""
    definition = handoff_wf("tech")
    del definition["agents"]
    run = await start(client, definition)
    assert run["status"] == "completed", run
    assert run["state"]["agent"] == "tech"
    assert run["state"]["handoff"]["to_agent"] == "tech"
    # options still come from a declaration, of the target alone
    definition["agents"] = {"tech": {"handoff_approval": True}}
    run = await start(client, definition)
    assert run["status"] == "interrupted"
    assert run["interrupt"]["kind"] == "handoff_approval"


async def test_a_handoff_to_an_agent_no_node_is_bound_to_fails_the_node(
    client: httpx.AsyncClient,
) -> None:
    definition = handoff_wf("ghost")
    del definition["agents"]
    run = await start(client, definition)
    assert run["status"] == "failed"
    assert run["error"]["code"] == "unknown_agent"
    assert run["error"]["node"] == "triage"
    assert "ghost" in run["error"]["message"]
    # declared but bound to no node: the same
    definition["agents"] = {"ghost": {}}
    run = await start(client, definition)
    assert run["error"]["code"] == "unknown_agent"


async def test_a_ping_pong_of_handoffs_is_bounded(client: httpx.AsyncClient) -> None:
    ping = {"step": "handoff", "agent": "ping", "with": {"to": "pong"}}
    pong = {"step": "handoff", "agent": "pong", "with": {"to": "ping"}}
    run = await start(client, wf("ping-pong", {"ping": ping, "pong": pong}, max_handoff_depth=4))
    assert run["status"] == "failed"
    assert run["error"]["code"] == "max_handoff_depth_exceeded"
    handoffs = await events_of(client, run["id"], types="run.handoff")
    assert len(handoffs) == 4


async def test_handoff_to_unknown_or_not_allowed_agent_fails(client: httpx.AsyncClient) -> None:
    run = await start(client, handoff_wf("sales"))
    assert run["error"]["code"] == "unknown_agent"
    assert run["step_count"] == 0  # as for any step that fails
    definition = handoff_wf("tech")
    definition["agents"] = {**AGENTS, "triage": {"handoff_targets": ["billing"]}}
    run = await start(client, definition)
    assert run["error"]["code"] == "handoff_not_allowed"


async def test_handoff_approval_pauses_then_routes(client: httpx.AsyncClient) -> None:
    run = await start(client, handoff_wf("billing"))
    assert run["status"] == "interrupted"
    interrupt = run["interrupt"]
    assert interrupt["kind"] == "handoff_approval"
    assert interrupt["node"] == "triage"
    # every time the API writes is RFC 3339 in UTC with a Z, as the run's own
    assert interrupt["created_at"].endswith("Z") and run["updated_at"].endswith("Z")
    assert interrupt["payload"] == {
        "from_agent": "triage",
        "to_agent": "billing",
        "payload": {"msg": "help"},
    }
    checkpoints = (await client.get(f"/runs/{run['id']}/checkpoints")).json()["items"]
    assert checkpoints[-1]["status"] == "interrupted"
    detail = (await client.get(f"/runs/{run['id']}/checkpoints/{checkpoints[-1]['id']}")).json()
    assert detail["interrupt"]["id"] == interrupt["id"]
    answer = await client.post(
        f"/runs/{run['id']}/response", json={"interrupt_id": interrupt["id"]}
    )
    assert answer.status_code == 202
    done = await wait_run(client, run["id"])
    assert done["status"] == "completed"
    assert done["state"]["seen"]["to_agent"] == "billing"


async def test_max_handoff_depth(client: httpx.AsyncClient) -> None:
    definition = wf(
        "pingpong",
        {
            "a": {"agent": "a", "step": "handoff", "with": {"to": "b"}},
            "b": {"agent": "b", "step": "handoff", "with": {"to": "a"}},
        },
        agents={"a": {}, "b": {}},
        max_handoff_depth=3,
    )
    run = await start(client, definition)
    assert run["status"] == "failed"
    assert run["error"]["code"] == "max_handoff_depth_exceeded"


# -- retry and timeout ----------------------------------------------------------------------------------


async def test_retry_until_success(make_client: AppFactory) -> None:
    registry, steps = make_registry()
    client = await make_client(registry=registry)
    node = {
        "step": "flaky",
        "with": {"succeed_on": 3},
        "retry": {"max_attempts": 3, "initial_delay_s": 0.01, "backoff": 2},
    }
    run = await start(client, wf("retry", {"a": node}))
    assert run["status"] == "completed", run
    assert run["output"] == {}
    assert steps["flaky"].attempts == [1, 2, 3]
    retrying = [e["data"] for e in await events_of(client, run["id"], types="node.retrying")]
    assert [r["attempt"] for r in retrying] == [1, 2]
    assert retrying[1]["delay_s"] >= retrying[0]["delay_s"]


async def test_retry_exhaustion_fails(make_client: AppFactory) -> None:
    registry, steps = make_registry()
    client = await make_client(registry=registry)
    node = {
        "step": "flaky",
        "with": {"succeed_on": 10},
        "retry": {"max_attempts": 2, "initial_delay_s": 0.01},
    }
    run = await start(client, wf("retry2", {"a": node}))
    assert run["status"] == "failed"
    assert run["error"]["code"] == "flaky"
    assert steps["flaky"].attempts == [1, 2]


async def test_without_retry_a_node_is_tried_once(make_client: AppFactory) -> None:
    registry, steps = make_registry()
    client = await make_client(registry=registry)
    run = await start(client, wf("once", {"a": {"step": "flaky", "with": {"succeed_on": 2}}}))
    assert run["status"] == "failed"
    assert steps["flaky"].attempts == [1]


async def test_timeout_and_exceptions_fail_the_node(make_client: AppFactory) -> None:
    registry, _ = make_registry()
    client = await make_client(registry=registry)
    run = await start(
        client, wf("slow", {"a": {"step": "sleep", "with": {"seconds": 5}, "timeout_s": 0.05}})
    )
    assert run["error"]["code"] == "timeout"
    run = await start(client, wf("boom", {"a": {"step": "raise"}}))
    assert run["error"]["code"] == "step_error"
    assert "exploded" in run["error"]["message"]


# -- subgraphs ------------------------------------------------------------------------------------------

CHILD = {
    "name": "child",
    "inputs": {"type": "object", "required": ["x"]},
    "state": {"x": "{{ inputs.x }}"},
    "nodes": {
        "double": {
            "step": "set",
            "set": {"y": "{{ state.x * 2 }}", "sub": "{{ context.subgraph_id }}"},
        }
    },
    "output": "{{ state.y }}",
}


async def test_subgraph_output_becomes_the_nodes_output(client: httpx.AsyncClient) -> None:
    await store(client, CHILD)
    parent = wf(
        "parent",
        {
            "call": {
                "step": "subgraph",
                "with": {"workflow": "child", "inputs": {"x": 21}},
                "set": {"result": "{{ output }}"},
            }
        },
    )
    run = await start(client, parent)
    assert run["status"] == "completed", run
    assert run["state"] == {"result": 42}


async def test_pause_inside_subgraph_pauses_the_parent(client: httpx.AsyncClient) -> None:
    await store(
        client,
        {
            "name": "asker",
            "nodes": {
                "ask": {"step": "interrupt", "with": {"q": "?"}, "set": {"a": "{{ output }}"}}
            },
            "output": "{{ state.a }}",
        },
    )
    parent = wf(
        "p2",
        {
            "call": {
                "step": "subgraph",
                "with": {"workflow": "asker"},
                "set": {"got": "{{ output }}"},
            },
            "after": {"step": "set"},
        },
        [{"from": "call", "to": "after"}],
    )
    run = await start(client, parent)
    assert run["status"] == "interrupted", run
    assert run["interrupt"]["node"] == "call/ask"
    answer = await client.post(
        f"/runs/{run['id']}/response", json={"interrupt_id": run["interrupt"]["id"], "value": "yes"}
    )
    assert answer.status_code == 202
    done = await wait_run(client, run["id"])
    assert done["status"] == "completed"
    assert done["state"] == {"got": "yes"}


async def test_failure_inside_subgraph(client: httpx.AsyncClient) -> None:
    await store(
        client, {"name": "broken", "nodes": {"x": {"step": "fail", "with": {"code": "inner"}}}}
    )
    run = await start(
        client, wf("p3", {"call": {"step": "subgraph", "with": {"workflow": "broken"}}})
    )
    assert run["status"] == "failed"
    assert run["error"]["code"] == "subgraph_failed"
    assert run["error"]["node"] == "call"
    assert run["error"]["details"]["error"]["code"] == "inner"


async def test_subgraph_depth_is_limited(make_client: AppFactory) -> None:
    client = await make_client(max_subgraph_depth=3)
    await store(
        client,
        {"name": "recur", "nodes": {"again": {"step": "subgraph", "with": {"workflow": "recur"}}}},
    )
    run = await run_and_wait(client, {"workflow": "recur", "inputs": {}})
    assert run["status"] == "failed"
    assert "subgraph_depth_exceeded" in str(run["error"])


# -- idempotency ----------------------------------------------------------------------------------------


async def test_idempotency_key_race_makes_one_run(client: httpx.AsyncClient) -> None:
    await store(client, wf("idem", {"a": {"step": "set"}}))
    body = {"workflow": "idem", "inputs": {"k": 1}}
    responses = await asyncio.gather(
        *[client.post("/runs", json=body, headers={"Idempotency-Key": "key-1"}) for _ in range(20)]
    )
    assert {r.status_code for r in responses} == {202}
    assert len({r.json()["id"] for r in responses}) == 1
    other = await client.post(
        "/runs", json={**body, "inputs": {"k": 2}}, headers={"Idempotency-Key": "key-1"}
    )
    assert other.status_code == 409
    assert other.json()["code"] == "idempotency_key_reused"
    listed = (await client.get("/runs", params={"workflow": "idem"})).json()["items"]
    assert len(listed) == 1


async def test_inputs_are_checked_and_unknown_workflow_is_404(client: httpx.AsyncClient) -> None:
    await store(client, {**CHILD, "name": "typed"})
    bad = await client.post("/runs", json={"workflow": "typed", "inputs": {}})
    assert bad.status_code == 422
    assert bad.json()["code"] == "invalid_inputs"
    assert bad.json()["errors"][0]["loc"][:2] == ["body", "inputs"]
    missing = await client.post("/runs", json={"workflow": "nope", "inputs": {}})
    assert missing.status_code == 404
    assert missing.headers["content-type"].startswith("application/problem+json")


# -- checkpoint size -----------------------------------------------------------------------------------


async def test_checkpoint_of_a_small_change_to_a_large_state_is_small(
    client: httpx.AsyncClient,
) -> None:
    definition = wf(
        "big",
        {
            "a": {"step": "set", "set": {"n": "{{ state.n + 1 }}"}, "max_iterations": 30},
            "end": {"step": "set"},
        },
        [
            {"from": "a", "to": "a", "when": "state.n < 20", "loop": True},
            {"from": "a", "to": "end"},
        ],
        state={"blob": "x" * 100_000, "n": 0},
    )
    run = await start(client, definition)
    assert run["status"] == "completed", run["error"]
    engine = client.app.state.engine  # type: ignore[attr-defined]
    async with engine.sessions() as session:
        sizes = (
            await session.execute(
                select(
                    Checkpoint.seq,
                    func.length(func.cast(Checkpoint.data, __import__("sqlalchemy").Text)),
                )
                .where(Checkpoint.run_id == run["id"])
                .order_by(Checkpoint.seq)
            )
        ).all()
    assert sizes[0][1] > 100_000  # the first checkpoint is a full snapshot
    step_sizes = [size for _, size in sizes[1:]]
    assert max(step_sizes) < 1024, step_sizes
    # and every checkpoint still reads back whole
    items = (await client.get(f"/runs/{run['id']}/checkpoints")).json()["items"]
    detail = (await client.get(f"/runs/{run['id']}/checkpoints/{items[-2]['id']}")).json()
    assert len(detail["state"]["blob"]) == 100_000


# -- restart -----------------------------------------------------------------------------------------


async def test_restart_resumes_queued_and_running_runs(make_client: AppFactory) -> None:
    registry, _ = make_registry()
    api_only = await make_client(registry=registry, workers=0)
    await store(api_only, wf("later", {"a": {"step": "set", "set": {"done": True}}}))
    queued = (await api_only.post("/runs", json={"workflow": "later", "inputs": {}})).json()
    await asyncio.sleep(0.3)
    assert (await api_only.get(f"/runs/{queued['id']}")).json()["status"] == "queued"

    first = await make_client(registry=registry, shutdown_grace_s=0.0)
    await store(
        first,
        wf(
            "slowly",
            {
                "a": {"step": "set"},
                "b": {"step": "sleep", "with": {"seconds": 0.5}},
                "c": {"step": "set", "set": {"done": True}},
            },
            [{"from": "a", "to": "b"}, {"from": "b", "to": "c"}],
        ),
    )
    running = (await first.post("/runs", json={"workflow": "slowly", "inputs": {}})).json()
    assert (await wait_run(first, queued["id"]))["status"] == "completed"
    for _ in range(100):
        if (await first.get(f"/runs/{running['id']}")).json()["step_count"] >= 1:
            break
        await asyncio.sleep(0.02)
    await first.stop()  # type: ignore[attr-defined]
    after = await make_client(registry=registry)
    done = await wait_run(after, running["id"])
    assert done["status"] == "completed"
    assert done["state"] == {"done": True}
    started = [e["node"] for e in await events_of(after, running["id"], types="node.completed")]
    assert started.count("a") == 1


async def test_a_failing_output_template_is_named_as_the_workflows_output(
    client: httpx.AsyncClient,
) -> None:
    run = await start(client, wf("bad-output", {"a": {"step": "set"}}, output="{{ state.n + 1 }}"))
    assert run["status"] == "failed", run
    error = run["error"]
    assert error["code"] == "expression_error"
    assert error["message"].startswith("the workflow's output: "), error
    assert error["node"] == "a"


async def test_a_template_result_that_is_no_json_value_fails_the_node_clearly(
    client: httpx.AsyncClient,
) -> None:
    run = await start(client, wf("not-json", {"a": {"step": "set", "with": {"v": "{{ self }}"}}}))
    assert run["status"] == "failed", run
    assert run["error"]["code"] == "expression_error"
    assert run["error"]["node"] == "a"
    assert "not a JSON value" in run["error"]["message"]
