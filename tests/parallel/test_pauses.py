"""Pauses inside parallel branches: every pending one listed, each answered by its id,
resuming only its branch; the run's status per DESIGN §10."""

from __future__ import annotations

import asyncio
from typing import Any

import httpx

from tests.conftest import AppFactory, events_of, until_status, wait_run
from tests.engine.steps_for_tests import make_registry
from tests.engine.test_runner import start, wf


def parallel(branches: dict[str, dict[str, Any]], **extra: Any) -> dict[str, Any]:
    nodes = {"start": {"step": "set"}, **branches, "join": {"step": "set", "join": "all"}}
    edges = [
        {"from": "start", "to": list(branches)},
        *({"from": b, "to": "join"} for b in branches),
    ]
    return wf("paused", nodes, edges, **extra)


def ask(name: str) -> dict[str, Any]:
    return {
        "step": "interrupt",
        "with": {"question": name, "schema": {"type": "object", "required": ["ok"]}},
        "set": {name: "{{ output.ok }}"},
    }


# a branch awaiting input beside one waiting for an answer
CHAT_AND_APPROVE = parallel(
    {"chat": {"step": "input", "set": {"said": "{{ output }}"}}, "approve": ask("approve")}
)


async def answer(client: httpx.AsyncClient, run_id: str, interrupt_id: str, **body: Any) -> Any:
    return await client.post(
        f"/runs/{run_id}/response", json={"interrupt_id": interrupt_id, **body}
    )


async def test_each_interrupt_is_answered_by_id_and_resumes_its_branch(
    client: httpx.AsyncClient,
) -> None:
    definition = parallel(
        {"first": ask("first"), "second": ask("second"), "quick": {"step": "set", "set": {"q": 1}}}
    )
    run = await start(client, definition)
    assert run["status"] == "interrupted", run
    pending = run["interrupts"]
    assert [i["node"] for i in pending] == ["first", "second"]
    assert run["interrupt"] == pending[0]
    assert run["state"] == {}  # the state at the fan-out until the branches join
    bad = await answer(client, run["id"], pending[1]["id"], value={"wrong": 1})
    assert bad.status_code == 422  # the second branch's schema
    response = await answer(client, run["id"], pending[1]["id"], value={"ok": "two"})
    assert response.status_code == 202, response.text
    again = await until_status(client, run["id"], "interrupted", "completed", "failed")
    assert again["status"] == "interrupted", again
    assert [i["id"] for i in again["interrupts"]] == [pending[0]["id"]]
    stale = await answer(client, run["id"], pending[1]["id"], value={"ok": "again"})
    assert stale.status_code == 409
    assert stale.json()["code"] == "interrupt_not_pending"
    response = await answer(client, run["id"], pending[0]["id"], value={"ok": "one"})
    assert response.status_code == 202, response.text
    done = await wait_run(client, run["id"])
    assert done["status"] == "completed", done
    assert done["state"] == {"first": "one", "second": "two", "q": 1}
    assert done["interrupts"] == []
    events = await events_of(client, run["id"])
    started = [e for e in events if e["type"] == "node.started"]
    # each interrupt step ran twice (asked, answered); the others once
    assert sorted(e["node"] for e in started) == sorted(
        ["start", "first", "first", "second", "second", "quick", "join"]
    )
    paused = [e for e in events if e["type"] == "run.interrupted"]
    assert len(paused) == 2
    assert [i["node"] for i in paused[0]["data"]["interrupts"]] == ["first", "second"]


async def test_interrupt_wins_over_awaiting_input_then_a_message_goes_to_its_branch(
    client: httpx.AsyncClient,
) -> None:
    run = await start(client, CHAT_AND_APPROVE)
    assert run["status"] == "interrupted", run
    assert [i["node"] for i in run["interrupts"]] == ["approve"]
    early = await client.post(f"/runs/{run['id']}/messages", json={"message": "hi"})
    assert early.status_code == 409
    await answer(client, run["id"], run["interrupt"]["id"], value={"ok": True})
    waiting = await until_status(client, run["id"], "awaiting_input", "completed", "failed")
    assert waiting["status"] == "awaiting_input", waiting
    assert waiting["awaiting_input"]["branch"] == "chat"
    wrong = await client.post(
        f"/runs/{run['id']}/messages", json={"message": "hi", "branch": "approve"}
    )
    assert wrong.status_code == 409
    sent = await client.post(
        f"/runs/{run['id']}/messages", json={"message": "hello", "branch": "chat"}
    )
    assert sent.status_code == 202, sent.text
    done = await wait_run(client, run["id"])
    assert done["status"] == "completed", done
    assert done["state"] == {"said": "hello", "approve": True}


async def test_run_stays_running_while_a_branch_can_go_on(make_client: AppFactory) -> None:
    registry, _ = make_registry()
    client = await make_client(registry=registry)
    definition = parallel(
        {"approve": ask("approve"), "slow": {"step": "sleep", "with": {"seconds": 1.5}}}
    )
    created = await client.post("/runs", json={"definition": definition, "inputs": {}})
    run_id = created.json()["id"]
    seen_running_with_pause = False
    for _ in range(100):
        run = (await client.get(f"/runs/{run_id}")).json()
        if run["status"] == "interrupted":
            break
        assert run["status"] in ("queued", "running"), run
        events = await events_of(client, run_id, types="node.started")
        if [e for e in events if e["node"] == "approve"] and run["status"] == "running":
            seen_running_with_pause = True
        await asyncio.sleep(0.05)
    assert seen_running_with_pause
    run = await until_status(client, run_id, "interrupted")
    assert run["current_node"] == "approve"
    await answer(client, run_id, run["interrupt"]["id"], value={"ok": 1})
    done = await wait_run(client, run_id)
    assert done["status"] == "completed", done


async def test_wait_in_a_branch_suspends_the_run_and_resumes_by_itself(
    client: httpx.AsyncClient,
) -> None:
    definition = parallel(
        {
            "pause": {"step": "wait", "with": {"seconds": 0.6}},
            "work": {"step": "set", "set": {"w": 1}},
        }
    )
    run = await start(client, definition)
    assert run["status"] == "suspended", run
    assert run["resume_at"] is not None
    done = await until_status(client, run["id"], "completed", "failed")
    assert done["status"] == "completed", done
    assert done["state"] == {"w": 1}


async def test_rejecting_a_branch_interrupt_fails_the_run(client: httpx.AsyncClient) -> None:
    run = await start(client, parallel({"a": ask("a"), "b": ask("b")}))
    response = await answer(
        client, run["id"], run["interrupts"][1]["id"], status="rejected", responded_by="eve"
    )
    assert response.status_code == 202
    failed = await wait_run(client, run["id"])
    assert failed["status"] == "failed"
    assert failed["error"]["code"] == "interrupt_rejected"
    assert failed["error"]["node"] == "b"


async def test_interrupt_after_on_a_branchs_last_node_pauses_that_branch(
    client: httpx.AsyncClient,
) -> None:
    nodes = {
        "start": {"step": "set"},
        "a": {"step": "set", "interrupt_after": "check a", "set": {"a": 1}},
        "b": {"step": "set", "set": {"b": 2}},
    }
    definition = wf("ends-paused", nodes, [{"from": "start", "to": ["a", "b"]}])
    run = await start(client, definition)
    assert run["status"] == "interrupted", run
    assert [(i["node"], i["kind"]) for i in run["interrupts"]] == [("a", "interrupt_after")]
    response = await answer(client, run["id"], run["interrupts"][0]["id"])
    assert response.status_code == 202, response.text
    done = await wait_run(client, run["id"])
    assert done["status"] == "completed", done
    assert done["state"] == {"a": 1, "b": 2}


async def test_interrupt_after_on_the_last_node_before_a_join_goes_on_to_the_join(
    client: httpx.AsyncClient,
) -> None:
    nodes = {
        "start": {"step": "set"},
        "a": {"step": "set", "set": {"l": "a"}},
        "b": {"step": "set", "interrupt_after": "check b", "set": {"l": "b"}},
        "join": {"step": "set", "join": "all", "set": {"joined": True}},
    }
    edges = [{"from": "start", "to": ["a", "b"]}, {"from": "a", "to": "join"},
             {"from": "b", "to": "join"}]  # fmt: skip
    definition = wf("joins-after", nodes, edges, state={"l": []}, reducers={"l": "append"})
    run = await start(client, definition)
    assert run["status"] == "interrupted", run
    assert [(i["node"], i["kind"]) for i in run["interrupts"]] == [("b", "interrupt_after")]
    response = await answer(client, run["id"], run["interrupts"][0]["id"])
    assert response.status_code == 202, response.text
    done = await wait_run(client, run["id"])
    assert done["status"] == "completed", done
    assert done["state"] == {"l": ["a", "b"], "joined": True}


async def test_a_goto_out_of_paused_branches_leaves_one_interrupt_that_goes_on(
    client: httpx.AsyncClient,
) -> None:
    definition = parallel({"first": ask("first"), "second": ask("second")})
    definition["nodes"]["after"] = {"step": "set", "set": {"after": True}}
    definition["edges"].append({"from": "join", "to": "after"})
    run = await start(client, definition)
    pending = run["interrupts"]
    assert [i["node"] for i in pending] == ["first", "second"]
    moved = await client.post(
        f"/runs/{run['id']}/state", json={"state_patch": {"moved": 1}, "goto": "after"}
    )
    assert moved.status_code == 200, moved.text
    assert moved.json()["status"] == "interrupted"
    assert [i["id"] for i in moved.json()["interrupts"]] == [pending[0]["id"]]
    stale = await answer(client, run["id"], pending[1]["id"], value={"ok": "two"})
    assert stale.status_code == 409
    response = await answer(client, run["id"], pending[0]["id"], value={"ok": "one"})
    assert response.status_code == 202, response.text
    done = await wait_run(client, run["id"])
    assert done["status"] == "completed", done
    assert done["state"] == {"moved": 1, "after": True}


async def test_a_branch_awaiting_input_takes_its_message_while_another_waits_for_an_answer(
    client: httpx.AsyncClient,
) -> None:
    run = await start(client, CHAT_AND_APPROVE)
    assert run["status"] == "interrupted", run  # an interrupt wins over awaiting input
    sent = await client.post(
        f"/runs/{run['id']}/messages", json={"message": "hello", "branch": "chat"}
    )
    assert sent.status_code == 202, sent.text
    again = await until_status(client, run["id"], "interrupted", "completed", "failed")
    assert again["status"] == "interrupted", again
    assert [i["id"] for i in again["interrupts"]] == [run["interrupt"]["id"]]
    assert again["awaiting_input"] is None
    twice = await client.post(
        f"/runs/{run['id']}/messages", json={"message": "again", "branch": "chat"}
    )
    assert twice.status_code == 409
    await answer(client, run["id"], run["interrupt"]["id"], value={"ok": True})
    done = await wait_run(client, run["id"])
    assert done["status"] == "completed", done
    assert done["state"] == {"said": "hello", "approve": True}
