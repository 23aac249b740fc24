"""What a resume, a fork and time travel run again (DESIGN §1, §3): a completed step is
never executed again by a resume, and a pause that was not answered is asked again."""

from __future__ import annotations

from typing import Any

import httpx

from tests.conftest import AppFactory, events_of, store, wait_run
from tests.engine.steps_for_tests import make_registry
from tests.engine.test_group_commit import checkpoints_of
from tests.engine.test_pauses import answer
from tests.engine.test_runner import start, wf

APPROVE_C = wf(
    "approve-c",
    {
        "b": {"step": "count", "set": {"b": 1}},
        "c": {"step": "count", "interrupt_after": "check c", "set": {"c": 1}},
        "d": {"step": "count", "set": {"d": 1}},
    },
    [{"from": "b", "to": "c"}, {"from": "c", "to": "d"}],
)


def _asked_again(run: dict[str, Any], first_id: str) -> None:
    assert run["status"] == "interrupted", run
    assert run["interrupt"]["kind"] == "interrupt_after"
    assert run["interrupt"]["payload"] == {"reason": "check c"}
    assert run["interrupt"]["node"] == "c" and run["interrupt"]["id"] != first_id
    assert run["current_node"] == "d" and "d" not in run["state"]


async def test_a_rejected_interrupt_after_is_asked_again_when_the_run_is_resumed(
    make_client: AppFactory,
) -> None:
    registry, steps = make_registry()
    client = await make_client(registry=registry)
    run = await start(client, APPROVE_C)
    first = run["interrupt"]["id"]
    assert (await answer(client, run, status="rejected")).status_code == 202
    failed = await wait_run(client, run["id"])
    assert failed["error"]["code"] == "interrupt_rejected"

    assert (await client.post(f"/runs/{run['id']}/resume")).status_code == 202
    again = await wait_run(client, run["id"])
    _asked_again(again, first)
    assert steps["count"].calls == {"b": 1, "c": 1}  # c is not run again, d not yet
    assert (await answer(client, again)).status_code == 202
    done = await wait_run(client, run["id"])
    assert done["status"] == "completed" and done["state"] == {"b": 1, "c": 1, "d": 1}
    assert steps["count"].calls == {"b": 1, "c": 1, "d": 1}


async def test_a_fork_or_time_travel_to_an_interrupt_after_asks_it_again(
    make_client: AppFactory,
) -> None:
    registry, steps = make_registry()
    client = await make_client(registry=registry)
    run = await start(client, APPROVE_C)
    first = run["interrupt"]["id"]
    paused_at = (await checkpoints_of(client, run["id"]))[-1]["id"]
    await answer(client, run)
    assert (await wait_run(client, run["id"]))["status"] == "completed"
    assert steps["count"].calls == {"b": 1, "c": 1, "d": 1}

    response = await client.post(f"/runs/{run['id']}/fork", json={"checkpoint_id": paused_at})
    assert response.status_code == 201, response.text
    _asked_again(await wait_run(client, response.json()["id"]), first)

    response = await client.post(f"/runs/{run['id']}/resume", json={"checkpoint_id": paused_at})
    assert response.status_code == 202, response.text
    _asked_again(await wait_run(client, run["id"]), first)
    assert steps["count"].calls == {"b": 1, "c": 1, "d": 1}


async def test_an_interrupt_after_inside_a_subgraph_is_asked_again_after_a_timeout(
    client: httpx.AsyncClient,
) -> None:
    await store(client, wf("inner-after", {"x": {"step": "set", "interrupt_after": "check", "set": {"x": 2}}}))  # fmt: skip
    parent = wf("outer-after", {"call": {"step": "subgraph", "with": {"workflow": "inner-after"}}})
    run = await start(client, parent)
    assert run["interrupt"]["node"] == "call/x"
    await answer(client, run, status="timed_out")
    assert (await wait_run(client, run["id"]))["error"]["code"] == "interrupt_timed_out"

    assert (await client.post(f"/runs/{run['id']}/resume")).status_code == 202
    again = await wait_run(client, run["id"])
    assert again["status"] == "interrupted", again
    assert (again["interrupt"]["kind"], again["interrupt"]["node"]) == ("interrupt_after", "call/x")
    await answer(client, again)
    assert (await wait_run(client, run["id"]))["status"] == "completed"


async def test_resuming_a_failure_inside_a_subgraph_retries_only_the_node_that_failed(
    make_client: AppFactory,
) -> None:
    registry, steps = make_registry()
    client = await make_client(registry=registry)
    await store(
        client,
        wf(
            "child",
            {
                "p": {"step": "count", "set": {"p": 1}},
                "f": {"step": "fails_once", "set": {"f": "{{ output }}"}},
            },
            [{"from": "p", "to": "f"}],
        ),
    )
    run = await start(
        client, wf("parent", {"s": {"step": "subgraph", "with": {"workflow": "child"}}})
    )
    run = await wait_run(client, run["id"])
    assert run["status"] == "failed", run
    assert run["error"]["code"] == "subgraph_failed" and run["error"]["node"] == "s"
    assert run["error"]["details"]["error"]["node"] == "s/f"

    assert (await client.post(f"/runs/{run['id']}/resume")).status_code == 202
    done = await wait_run(client, run["id"])
    assert done["status"] == "completed", done
    assert steps["count"].calls == {"s/p": 1}  # not run again
    assert steps["fails_once"].calls == {"s/f": 2}
    started = [e["node"] for e in await events_of(client, run["id"]) if e["type"] == "node.started"]
    assert started == ["s", "s/p", "s/f", "s/f"]


async def _edit_and_resume(client: httpx.AsyncClient, run_id: str, patch: dict[str, Any]) -> Any:
    edited = await client.post(f"/runs/{run_id}/state", json={"state_patch": patch})
    assert edited.status_code == 200, edited.text
    assert (await client.post(f"/runs/{run_id}/resume", json={})).status_code == 202
    return await wait_run(client, run_id)


async def test_a_run_that_failed_after_a_step_completed_goes_on_without_running_it_again(
    make_client: AppFactory,
) -> None:
    """No edge matched, an edge's `when` failed, or the workflow's output failed: the
    step had completed, so a resume (after a state edit) chooses again or ends again."""
    registry, steps = make_registry()
    client = await make_client(registry=registry)
    cases = [
        ("edges", {"a": {"step": "count"}, "b": {"step": "count"}},
         [{"from": "a", "to": "b", "when": "state.go"}], {}, "no_matching_edge", {"go": True}),
        ("when", {"a": {"step": "count"}, "b": {"step": "count"}},
         [{"from": "a", "to": "b", "when": "state.x.y > 1"}], {}, "expression_error",
         {"x": {"y": 2}}),
        ("output", {"a": {"step": "count"}}, [], {"output": "{{ state.x.y + 1 }}"},
         "expression_error", {"x": {"y": 2}}),
    ]  # fmt: skip
    for name, nodes, edges, extra, code, patch in cases:
        steps["count"].calls.clear()
        run = await start(client, wf(f"route-{name}", nodes, edges, **extra))
        assert run["status"] == "failed", run
        assert run["error"]["code"] == code, run["error"]
        assert run["error"]["node"] == "a"
        assert steps["count"].calls == {"a": 1}
        done = await _edit_and_resume(client, run["id"], patch)
        assert done["status"] == "completed", (name, done)
        assert steps["count"].calls["a"] == 1, name  # not run again
        completed = await events_of(client, run["id"], types="node.completed")
        assert [e["node"] for e in completed].count("a") == 1
    assert done["output"] == 3


async def test_a_goto_after_a_failed_edge_choice_runs_the_goto_node(
    make_client: AppFactory,
) -> None:
    """The node whose edge is to be chosen again is left by a goto: the goto node runs,
    even when it is that very node."""
    registry, steps = make_registry()
    client = await make_client(registry=registry)
    definition = wf("goto-after", {"a": {"step": "count"}, "b": {"step": "count"}},
                    [{"from": "a", "to": "b", "when": "state.go"}])  # fmt: skip
    run = await start(client, definition)
    assert run["error"]["code"] == "no_matching_edge"
    edited = await client.post(
        f"/runs/{run['id']}/state", json={"state_patch": {"go": True}, "goto": "a"}
    )
    assert edited.status_code == 200, edited.text
    assert (await client.post(f"/runs/{run['id']}/resume", json={})).status_code == 202
    done = await wait_run(client, run["id"])
    assert done["status"] == "completed", done
    assert steps["count"].calls == {"a": 2, "b": 1}
