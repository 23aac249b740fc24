"""Answering a paused branch while the others go on (DESIGN §10): the run stays running,
lists the branch's interrupt, and the answer resumes only that branch, at once."""

from __future__ import annotations

import asyncio
from typing import Any

import httpx

from tests.conftest import AppFactory, events_of, wait_run
from tests.engine.steps_for_tests import make_registry
from tests.engine.test_runner import wf
from tests.parallel.test_pauses import answer, ask

WORK_S = 2.5  # how long the sibling branch works; the contract's "running" window


def ask_then_work(**branches: dict[str, Any]) -> dict[str, Any]:
    """start → [ask → after, work] → join; ``branches`` replaces or adds nodes."""
    nodes = {
        "start": {"step": "set"},
        "ask": ask("ask"),
        "after": {"step": "set", "set": {"after": "{{ state.ask }}"}},
        "work": {"step": "sleep", "with": {"seconds": WORK_S}, "set": {"worked": True}},
        "join": {"step": "set", "join": "all"},
        **branches,
    }
    edges = [
        {"from": "start", "to": ["ask", "work"]},
        {"from": "ask", "to": "after"},
        {"from": "after", "to": "join"},
        {"from": "work", "to": "join"},
    ]
    return wf("live-answers", nodes, edges)


async def started(make_client: AppFactory, definition: dict[str, Any]) -> tuple[Any, str]:
    registry, _ = make_registry()
    client = await make_client(registry=registry)
    created = await client.post("/runs", json={"definition": definition, "inputs": {}})
    assert created.status_code == 202, created.text
    return client, created.json()["id"]


async def listed(client: httpx.AsyncClient, run_id: str) -> dict[str, Any]:
    """The run as soon as it lists a pending interrupt."""
    for _ in range(400):
        run: dict[str, Any] = (await client.get(f"/runs/{run_id}")).json()
        if run["interrupts"]:
            return run
        assert run["status"] in ("queued", "running"), run
        await asyncio.sleep(0.02)
    raise AssertionError(f"run {run_id} never listed an interrupt")


def seq_of(events: list[dict[str, Any]], type_: str, node: str) -> int:
    return next(e["seq"] for e in events if e["type"] == type_ and e["node"] == node)


async def test_an_answer_while_running_resumes_only_its_branch(make_client: AppFactory) -> None:
    client, run_id = await started(make_client, ask_then_work())
    run = await listed(client, run_id)
    assert run["status"] == "running", run
    assert [i["node"] for i in run["interrupts"]] == ["ask"]
    assert run["interrupt"] == run["interrupts"][0]
    interrupt_id = run["interrupt"]["id"]
    paused = await events_of(client, run_id, types="branch.paused")
    assert [(e["node"], e["data"]["branch"], e["data"]["status"]) for e in paused] == [
        ("ask", "ask", "interrupted")
    ]
    assert paused[0]["data"]["interrupt"]["id"] == interrupt_id

    bad = await answer(client, run_id, interrupt_id, value={"wrong": 1})
    assert bad.status_code == 422, bad.text
    assert bad.json()["errors"][0]["loc"][:2] == ["body", "value"]
    unchanged = (await client.get(f"/runs/{run_id}")).json()
    assert unchanged["interrupts"] == run["interrupts"]

    accepted = await answer(client, run_id, interrupt_id, value={"ok": "yes"})
    assert accepted.status_code == 202, accepted.text
    assert accepted.json()["interrupts"] == []
    again = await answer(client, run_id, interrupt_id, value={"ok": "twice"})
    assert again.status_code == 409
    assert again.json()["code"] == "interrupt_not_pending"

    done = await wait_run(client, run_id)
    assert done["status"] == "completed", done
    assert done["state"] == {"ask": "yes", "after": "yes", "worked": True}
    events = await events_of(client, run_id)
    # the answered branch went on while `work` was still working
    assert seq_of(events, "node.completed", "after") < seq_of(events, "node.completed", "work")
    resumed = [e for e in events if e["type"] == "branch.resumed"]
    assert [(e["data"]["branch"], e["data"]["interrupt_id"]) for e in resumed] == [
        ("ask", interrupt_id)
    ]
    assert not [e for e in events if e["type"] in ("run.interrupted", "run.resumed")]
    started_nodes = sorted(e["node"] for e in events if e["type"] == "node.started")
    assert started_nodes == sorted(["start", "ask", "ask", "after", "work", "join"])


async def test_a_pause_is_listed_at_once_when_a_sibling_started_working_first(
    make_client: AppFactory,
) -> None:
    """``work`` starts first (its start is written before it runs); ``ask`` pauses while
    it works. The pause is written at once, not kept back with the steps that share a
    commit: the run lists it, and takes its answer, while ``work`` still works."""
    definition = ask_then_work()
    definition["edges"][0] = {"from": "start", "to": ["work", "ask"]}
    client, run_id = await started(make_client, definition)
    run = await listed(client, run_id)
    assert run["status"] == "running", run
    accepted = await answer(client, run_id, run["interrupt"]["id"], value={"ok": "yes"})
    assert accepted.status_code == 202, accepted.text
    events = await events_of(client, run_id)  # answered while work still works:
    assert "node.completed" not in [e["type"] for e in events if e["node"] == "work"]
    done = await wait_run(client, run_id)
    assert done["state"] == {"ask": "yes", "after": "yes", "worked": True}, done


async def test_racing_answers_while_running_one_wins(make_client: AppFactory) -> None:
    client, run_id = await started(make_client, ask_then_work())
    run = await listed(client, run_id)
    interrupt_id = run["interrupt"]["id"]
    responses = await asyncio.gather(
        *(answer(client, run_id, interrupt_id, value={"ok": n}) for n in range(4))
    )
    codes = sorted(r.status_code for r in responses)
    assert codes == [202, 409, 409, 409], [r.text for r in responses]
    assert {r.json()["code"] for r in responses if r.status_code == 409} == {
        "interrupt_not_pending"
    }
    winner = next(r for r in responses if r.status_code == 202)
    done = await wait_run(client, run_id)
    assert done["status"] == "completed", done
    won = next(n for n in range(4) if responses[n] is winner)
    assert done["state"]["ask"] == won
    events = await events_of(client, run_id, types="node.started")
    assert [e["node"] for e in events].count("ask") == 2  # asked, answered once


async def test_a_message_to_a_branch_while_running(make_client: AppFactory) -> None:
    chat = {"step": "input", "set": {"ask": "{{ output }}"}}
    client, run_id = await started(make_client, ask_then_work(ask=chat))
    for _ in range(400):
        run = (await client.get(f"/runs/{run_id}")).json()
        paused = await events_of(client, run_id, types="branch.paused")
        if paused:
            break
        await asyncio.sleep(0.02)
    assert run["status"] in ("queued", "running") and paused, run
    assert paused[0]["data"]["status"] == "awaiting_input"
    wrong = await client.post(f"/runs/{run_id}/messages", json={"message": "hi", "branch": "work"})
    assert wrong.status_code == 409
    sent = await client.post(f"/runs/{run_id}/messages", json={"message": "hi", "branch": "ask"})
    assert sent.status_code == 202, sent.text
    twice = await client.post(f"/runs/{run_id}/messages", json={"message": "no", "branch": "ask"})
    assert twice.status_code == 409
    done = await wait_run(client, run_id)
    assert done["status"] == "completed", done
    assert done["state"] == {"ask": "hi", "after": "hi", "worked": True}
    events = await events_of(client, run_id)
    assert seq_of(events, "node.completed", "after") < seq_of(events, "node.completed", "work")


async def test_a_rejection_while_running_fails_the_run(make_client: AppFactory) -> None:
    client, run_id = await started(make_client, ask_then_work())
    run = await listed(client, run_id)
    rejected = await answer(
        client, run_id, run["interrupt"]["id"], status="rejected", responded_by="eve"
    )
    assert rejected.status_code == 202, rejected.text
    failed = await wait_run(client, run_id)
    assert failed["status"] == "failed", failed
    assert failed["error"]["code"] == "interrupt_rejected"
    assert failed["error"]["node"] == "ask"
    events = await events_of(client, run_id, types="node.completed")
    assert "work" not in [e["node"] for e in events]  # stopped, not finished


async def test_a_map_item_is_answered_while_other_items_run(make_client: AppFactory) -> None:
    registry, _ = make_registry()
    client = await make_client(registry=registry)
    item = wf(
        "ask-or-work",
        {
            "go": {"step": "set"},
            "ask": ask("ask"),
            "after": {"step": "set", "set": {"after": "{{ state.ask }}"}},
            "work": {"step": "sleep", "with": {"seconds": WORK_S}},
        },
        [
            {"from": "go", "to": "ask", "when": "inputs.n == 0"},
            {"from": "go", "to": "work"},
            {"from": "ask", "to": "after"},
        ],
        output="{{ inputs.n }}",
    )
    assert (await client.post("/workflows", json=item)).status_code == 201
    mapper = wf(
        "mapper",
        {
            "each": {
                "step": "map",
                "with": {"workflow": "ask-or-work", "items": [0, 1], "inputs": {"n": "{{ item }}"}},
                "set": {"out": "{{ output }}"},
            }
        },
    )
    created = await client.post("/runs", json={"definition": mapper, "inputs": {}})
    run_id = created.json()["id"]
    run = await listed(client, run_id)
    assert run["status"] == "running", run
    assert run["interrupt"]["node"] == "ask"
    accepted = await answer(client, run_id, run["interrupt"]["id"], value={"ok": "y"})
    assert accepted.status_code == 202, accepted.text
    done = await wait_run(client, run_id)
    assert done["status"] == "completed", done
    assert done["state"] == {"out": [0, 1]}
    events = await events_of(client, run_id)
    completed = {
        (e["data"]["branch"], e["node"].rsplit("/", 1)[-1]): e["seq"]
        for e in events
        if e["type"] == "node.completed" and "branch" in e["data"]
    }
    # the answered item went on while the other one was still working
    assert completed["each[0]", "after"] < completed["each[1]", "work"]


async def test_resume_ends_a_branch_wait_while_running(make_client: AppFactory) -> None:
    held = {"step": "wait", "with": {"seconds": 600}, "set": {"ask": "woken"}}
    client, run_id = await started(make_client, ask_then_work(ask=held))
    for _ in range(400):
        paused = await events_of(client, run_id, types="branch.paused")
        if paused:
            break
        await asyncio.sleep(0.02)
    assert [(e["data"]["branch"], e["data"]["status"]) for e in paused] == [("ask", "suspended")]
    run = (await client.get(f"/runs/{run_id}")).json()
    assert run["status"] == "running", run
    resumed = await client.post(f"/runs/{run_id}/resume")
    assert resumed.status_code == 202, resumed.text
    done = await wait_run(client, run_id)
    assert done["status"] == "completed", done
    assert done["state"] == {"ask": "woken", "after": "woken", "worked": True}
    events = await events_of(client, run_id)
    assert seq_of(events, "node.completed", "after") < seq_of(events, "node.completed", "work")
    woken = [e["data"] for e in events if e["type"] == "branch.resumed"]
    assert woken == [{"branch": "ask", "requested": True}]
    late = await client.post(f"/runs/{run_id}/resume")
    assert late.status_code == 409


async def test_resume_of_a_running_run_without_waiting_branches_is_409(
    make_client: AppFactory,
) -> None:
    client, run_id = await started(make_client, ask_then_work())
    await listed(client, run_id)
    response = await client.post(f"/runs/{run_id}/resume")
    assert response.status_code == 409
    assert response.json()["code"] == "run_not_resumable"


async def test_a_branch_timer_comes_due_while_the_run_waits_for_a_person(
    make_client: AppFactory,
) -> None:
    """start → [ask, nap (wait 0.5 s) → woke] → join: once both branches wait, the run is
    `interrupted`; the nap's timer still ends on time and `woke` runs while the run keeps
    waiting for the answer."""
    definition = ask_then_work(
        work={"step": "wait", "with": {"seconds": 0.5}},
        woke={"step": "set", "set": {"woke": True}},
    )
    definition["edges"] = [
        {"from": "start", "to": ["ask", "work"]},
        {"from": "ask", "to": "after"},
        {"from": "after", "to": "join"},
        {"from": "work", "to": "woke"},
        {"from": "woke", "to": "join"},
    ]
    client, run_id = await started(make_client, definition)
    for _ in range(300):
        completed = [e["node"] for e in await events_of(client, run_id, types="node.completed")]
        if "woke" in completed:
            break
        await asyncio.sleep(0.05)
    else:
        raise AssertionError(f"the timer of branch `work` never ended: {completed}")
    run = (await client.get(f"/runs/{run_id}")).json()
    assert run["status"] in ("interrupted", "running"), run
    assert "after" not in completed  # the person has not answered yet
    for _ in range(100):
        run = (await client.get(f"/runs/{run_id}")).json()
        if run["status"] == "interrupted":
            break
        await asyncio.sleep(0.05)
    assert run["status"] == "interrupted", run
    assert run["resume_at"] is None and run["interrupts"][0]["node"] == "ask"
    answered = await answer(client, run_id, run["interrupts"][0]["id"], value={"ok": "yes"})
    assert answered.status_code == 202, answered.text
    done = await wait_run(client, run_id)
    assert done["status"] == "completed", done
    assert done["state"]["woke"] is True and done["state"]["after"] == "yes"


async def test_an_interrupt_after_before_the_join_answered_while_a_sibling_works(
    make_client: AppFactory,
) -> None:
    """The answered branch has arrived at the join: it waits there for ``work``."""
    definition = ask_then_work(
        ask={"step": "set", "interrupt_after": "check", "set": {"ask": "done"}},
    )
    del definition["nodes"]["after"]
    definition["edges"] = [e for e in definition["edges"] if e["from"] != "after"]
    next(e for e in definition["edges"] if e["from"] == "ask")["to"] = "join"
    client, run_id = await started(make_client, definition)
    run = await listed(client, run_id)
    assert run["status"] == "running", run
    assert [(i["node"], i["kind"]) for i in run["interrupts"]] == [("ask", "interrupt_after")]
    accepted = await answer(client, run_id, run["interrupt"]["id"])
    assert accepted.status_code == 202, accepted.text
    done = await wait_run(client, run_id)
    assert done["status"] == "completed", done
    assert done["state"] == {"ask": "done", "worked": True}
