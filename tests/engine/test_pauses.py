"""Pauses and time travel: answers, sessions, continuations, resume, fork, state edits."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import httpx
import yaml

from tests.conftest import AppFactory, events_of, run_and_wait, store, until_status, wait_run
from tests.engine.steps_for_tests import make_registry
from tests.engine.test_runner import start, types_of, wf

EXAMPLES = Path(__file__).resolve().parents[2] / "examples" / "workflows"

ASK = wf(
    "ask",
    {
        "ask": {
            "step": "interrupt",
            "with": {"question": "ok?", "schema": {"type": "object", "required": ["ok"]}},
            "set": {"answer": "{{ output }}", "who": "{{ context.response.responded_by }}"},
        },
        "done": {"step": "set", "set": {"finished": True}},
    },
    [{"from": "ask", "to": "done"}],
)


async def answer(client: httpx.AsyncClient, run: dict[str, Any], **body: Any) -> httpx.Response:
    return await client.post(
        f"/runs/{run['id']}/response", json={"interrupt_id": run["interrupt"]["id"], **body}
    )


async def test_approved_answer_reaches_the_step(client: httpx.AsyncClient) -> None:
    run = await start(client, ASK)
    assert run["status"] == "interrupted"
    assert run["interrupt"]["payload"]["question"] == "ok?"
    response = await answer(client, run, value={"ok": True}, responded_by="ana")
    assert response.status_code == 202
    done = await wait_run(client, run["id"])
    assert done["status"] == "completed"
    assert done["state"] == {"answer": {"ok": True}, "who": "ana", "finished": True}
    assert done["interrupt"] is None
    assert "run.resumed" in types_of(await events_of(client, run["id"]))


async def test_rejected_timed_out_and_cancelled_answers(client: httpx.AsyncClient) -> None:
    run = await start(client, ASK)
    await answer(client, run, status="rejected", responded_by="bob", comment="too much")
    failed = await wait_run(client, run["id"])
    assert failed["status"] == "failed"
    assert failed["error"]["code"] == "interrupt_rejected"
    assert "bob" in failed["error"]["message"] and "too much" in failed["error"]["message"]

    run = await start(client, ASK)
    await answer(client, run, status="timed_out")
    assert (await wait_run(client, run["id"]))["error"]["code"] == "interrupt_timed_out"

    run = await start(client, ASK)
    await answer(client, run, status="cancelled")
    cancelled = await wait_run(client, run["id"])
    assert cancelled["status"] == "cancelled"
    assert types_of(await events_of(client, run["id"]))[-1] == "run.cancelled"


async def test_bad_answers(client: httpx.AsyncClient) -> None:
    run = await start(client, ASK)
    invalid = await answer(client, run, value={"nope": 1})
    assert invalid.status_code == 422
    assert invalid.json()["code"] == "invalid_response"
    assert invalid.json()["errors"][0]["loc"][:2] == ["body", "value"]
    assert (await client.get(f"/runs/{run['id']}")).json()["status"] == "interrupted"

    stale = await client.post(f"/runs/{run['id']}/response", json={"interrupt_id": "never-existed"})
    assert stale.status_code == 409
    assert stale.json()["code"] == "interrupt_not_pending"

    done = await start(client, wf("plain", {"a": {"step": "set"}}))
    none = await client.post(f"/runs/{done['id']}/response", json={"interrupt_id": "x"})
    assert none.status_code == 409
    assert none.json()["code"] == "interrupt_not_pending"

    missing = await client.post("/runs/no-such-run/response", json={"interrupt_id": "x"})
    assert missing.status_code == 404


async def test_twenty_racing_answers_one_wins(client: httpx.AsyncClient) -> None:
    run = await start(client, ASK)
    responses = await asyncio.gather(*[answer(client, run, value={"ok": i}) for i in range(20)])
    codes = sorted(r.status_code for r in responses)
    assert codes == [202] + [409] * 19
    done = await wait_run(client, run["id"])
    assert done["status"] == "completed"
    completed = [
        e for e in await events_of(client, run["id"], types="node.completed") if e["node"] == "ask"
    ]
    assert len(completed) == 1


async def test_interrupt_before_and_after(make_client: AppFactory) -> None:
    registry, steps = make_registry()
    client = await make_client(registry=registry)
    definition = wf(
        "declared",
        {
            "a": {"step": "count", "interrupt_before": "check first"},
            "b": {"step": "count", "interrupt_after": "look at it", "set": {"b": True}},
            "c": {"step": "count"},
        },
        [{"from": "a", "to": "b"}, {"from": "b", "to": "c"}],
    )
    run = await start(client, definition)
    assert run["status"] == "interrupted"
    assert run["interrupt"]["kind"] == "interrupt_before"
    assert run["interrupt"]["payload"] == {"reason": "check first"}
    assert steps["count"].calls["a"] == 0
    await answer(client, run)
    run = await wait_run(client, run["id"])
    assert run["interrupt"]["kind"] == "interrupt_after"
    assert run["state"] == {"b": True}
    assert run["current_node"] == "c"
    assert steps["count"].calls == {"a": 1, "b": 1}
    await answer(client, run)
    run = await wait_run(client, run["id"])
    assert run["status"] == "completed"
    assert steps["count"].calls == {"a": 1, "b": 1, "c": 1}


async def test_an_interrupt_step_with_interrupt_before_asks_its_own_question_once_approved(
    client: httpx.AsyncClient,
) -> None:
    """The approval of an interrupt_before is no answer to the step: it runs as if it
    had never paused (no `context.response`), and an interrupt step then asks."""
    definition = wf("asks-twice", {"q": {"step": "interrupt", "interrupt_before": "pre",
                                         "with": {"x": 1}, "set": {"v": "{{ output }}"}}})  # fmt: skip
    run = await start(client, definition)
    assert run["interrupt"]["kind"] == "interrupt_before"
    assert (await answer(client, run, value="the approval")).status_code == 202
    asked = await until_status(client, run["id"], "interrupted", "completed", "failed")
    assert asked["status"] == "interrupted", asked
    assert asked["interrupt"]["kind"] == "interrupt"
    assert asked["interrupt"]["payload"] == {"x": 1}
    assert (await answer(client, asked, value="the answer")).status_code == 202
    done = await wait_run(client, run["id"])
    assert done["status"] == "completed", done
    assert done["state"] == {"v": "the answer"}


async def test_run_resumed_says_the_status_the_run_was_in(client: httpx.AsyncClient) -> None:
    """A run failed by a rejected interrupt_after: its checkpoint's status is interrupted,
    the run's failed; a resume says failed (and asks again)."""
    definition = wf("after", {"b": {"step": "set", "interrupt_after": "look", "set": {"b": 1}}})
    run = await start(client, definition)
    assert run["interrupt"]["kind"] == "interrupt_after"
    await answer(client, run, status="rejected")
    failed = await until_status(client, run["id"], "failed")
    assert failed["error"]["code"] == "interrupt_rejected"
    assert (await client.post(f"/runs/{run['id']}/resume", json={})).status_code == 202
    again = await until_status(client, run["id"], "interrupted")
    assert again["interrupt"]["kind"] == "interrupt_after"
    resumed = await events_of(client, run["id"], types="run.resumed")
    assert [e["data"] for e in resumed] == [{"from": "failed", "requested": True}]


async def test_multi_turn_session(client: httpx.AsyncClient) -> None:
    await client.post(
        "/workflows",
        content=(EXAMPLES / "chat-session.yaml").read_bytes(),
        headers={"Content-Type": "application/yaml"},
    )
    run = await run_and_wait(client, {"workflow": "chat-session", "inputs": {}})
    assert run["status"] == "awaiting_input"
    for text in ("hello", "again"):
        sent = await client.post(f"/runs/{run['id']}/messages", json={"message": text})
        assert sent.status_code == 202
        run = await wait_run(client, run["id"])
        assert run["status"] == "awaiting_input"
        assert run["state"]["reply"] == f"You said: {text}"
    await client.post(f"/runs/{run['id']}/messages", json={"message": "done"})
    run = await wait_run(client, run["id"])
    assert run["status"] == "completed"
    assert run["state"]["reply"] == "Bye after 3 turns"
    not_waiting = await client.post(f"/runs/{run['id']}/messages", json={"message": "late"})
    assert not_waiting.status_code == 409
    assert not_waiting.json()["code"] == "run_not_awaiting_input"


async def test_session_history_in_context(client: httpx.AsyncClient) -> None:
    definition = wf(
        "hist",
        {
            "listen": {
                "step": "input",
                "with": {"prompt": "say"},
                "set": {"history": "{{ context.messages }}"},
            },
        },
    )
    run = await start(client, definition)
    await client.post(f"/runs/{run['id']}/messages", json={"message": "hi"})
    done = await wait_run(client, run["id"])
    contents = [(m["role"], m["content"]) for m in done["state"]["history"]]
    assert contents == [("assistant", "say"), ("user", "hi")]


async def test_wait_step_resumes_by_itself_and_resume_ends_it_early(
    client: httpx.AsyncClient,
) -> None:
    definition = wf(
        "sleepy",
        {
            "w": {"step": "wait", "with": {"seconds": 0.3}},
            "after": {"step": "set", "set": {"ok": 1}},
        },
        [{"from": "w", "to": "after"}],
    )
    run = await start(client, definition)
    assert run["status"] == "suspended"
    assert run["resume_at"] is not None
    assert (await until_status(client, run["id"], "completed"))["state"] == {"ok": 1}

    long = wf(
        "long",
        {"w": {"step": "wait", "with": {"seconds": 3600}}, "after": {"step": "set"}},
        [{"from": "w", "to": "after"}],
    )
    run = await start(client, long)
    assert run["status"] == "suspended"
    resumed = await client.post(f"/runs/{run['id']}/resume")
    assert resumed.status_code == 202
    assert (await wait_run(client, run["id"]))["status"] == "completed"


async def test_continuation_without_time_waits_for_resume(make_client: AppFactory) -> None:
    registry, _ = make_registry()
    client = await make_client(registry=registry)
    run = await start(client, wf("cont", {"c": {"step": "result", "with": {"status": "continue"}}}))
    assert run["status"] == "suspended"
    assert run["resume_at"] is None
    again = await client.post(f"/runs/{run['id']}/resume")
    assert again.status_code == 202
    done = await wait_run(client, run["id"])
    assert done["status"] == "completed"
    assert done["output"] == {}
    busy = await client.post(f"/runs/{run['id']}/resume")
    assert busy.status_code == 409
    assert busy.json()["code"] == "run_not_resumable"


async def test_many_timers_due_at_once(client: httpx.AsyncClient) -> None:
    definition = wf("timer", {"w": {"step": "wait", "with": {"seconds": 0.2}}})
    await store(client, definition)
    runs = [
        (await client.post("/runs", json={"workflow": "timer", "inputs": {}})).json()
        for _ in range(20)
    ]
    results = await asyncio.gather(*[until_status(client, r["id"], "completed") for r in runs])
    assert len(results) == 20


async def test_timer_survives_a_restart(make_client: AppFactory) -> None:
    first = await make_client()
    await store(
        first,
        wf(
            "nap",
            {"w": {"step": "wait", "with": {"seconds": 0.5}}, "z": {"step": "set"}},
            [{"from": "w", "to": "z"}],
        ),
    )
    run = await run_and_wait(first, {"workflow": "nap", "inputs": {}})
    assert run["status"] == "suspended"
    await first.stop()  # type: ignore[attr-defined]
    second = await make_client()
    assert (await until_status(second, run["id"], "completed"))["status"] == "completed"


async def test_resume_failed_run_after_state_edit(client: httpx.AsyncClient) -> None:
    definition = wf(
        "fixme",
        {
            "a": {"step": "set", "set": {"a": 1}},
            "check": {"step": "set", "with": {"v": "{{ 1 // state.divisor }}"}},
            "end": {"step": "set", "set": {"done": True}},
        },
        [{"from": "a", "to": "check"}, {"from": "check", "to": "end"}],
        state={"divisor": 0},
    )
    run = await start(client, definition)
    assert run["status"] == "failed"
    edited = await client.post(f"/runs/{run['id']}/state", json={"state_patch": {"divisor": 1}})
    assert edited.status_code == 200
    assert edited.json()["status"] == "failed"
    assert edited.json()["state"]["divisor"] == 1
    resumed = await client.post(f"/runs/{run['id']}/resume")
    assert resumed.status_code == 202
    done = await wait_run(client, run["id"])
    assert done["status"] == "completed"
    completed = [e["node"] for e in await events_of(client, run["id"], types="node.completed")]
    assert completed == ["a", "check", "end"]
    assert "state.updated" in types_of(await events_of(client, run["id"], types="state.*"))


async def test_resume_from_an_earlier_checkpoint(make_client: AppFactory) -> None:
    registry, steps = make_registry()
    client = await make_client(registry=registry)
    definition = wf(
        "travel",
        {n: {"step": "count", "set": {n: True}} for n in ("a", "b", "c", "d")},
        [{"from": "a", "to": "b"}, {"from": "b", "to": "c"}, {"from": "c", "to": "d"}],
    )
    run = await start(client, definition)
    assert run["status"] == "completed"
    history = (await client.get(f"/runs/{run['id']}/checkpoints")).json()["items"]
    after_b = next(c for c in history if c["last_node"] == "b")
    resumed = await client.post(f"/runs/{run['id']}/resume", json={"checkpoint_id": after_b["id"]})
    assert resumed.status_code == 202
    done = await wait_run(client, run["id"])
    assert done["status"] == "completed"
    assert steps["count"].calls == {"a": 1, "b": 1, "c": 2, "d": 2}
    history2 = (await client.get(f"/runs/{run['id']}/checkpoints")).json()["items"]
    new = [c for c in history2 if c["id"] not in {h["id"] for h in history}]
    assert new[0]["parent_id"] == after_b["id"]
    resumed_events = await events_of(client, run["id"], types="run.resumed")
    # the status the run was in, not the checkpoint's ("running")
    assert [e["data"] for e in resumed_events] == [
        {"from": "completed", "checkpoint_id": after_b["id"]}
    ]
    old_branch = (await client.get(f"/runs/{run['id']}/checkpoints/{history[-1]['id']}")).json()
    assert old_branch["state"] == {"a": True, "b": True, "c": True, "d": True}
    unknown = await client.post(f"/runs/{run['id']}/resume", json={"checkpoint_id": "nope"})
    assert unknown.status_code == 404


async def test_fork_with_patches(client: httpx.AsyncClient) -> None:
    definition = wf(
        "forky",
        {
            "a": {"step": "set", "set": {"x": "{{ inputs.x }}"}},
            "b": {"step": "set", "set": {"y": "{{ state.x * 10 }}", "tag": "{{ inputs.tag }}"}},
        },
        [{"from": "a", "to": "b"}],
    )
    run = await start(client, definition, {"x": 1, "tag": "orig"})
    assert run["state"] == {"x": 1, "y": 10, "tag": "orig"}
    history = (await client.get(f"/runs/{run['id']}/checkpoints")).json()["items"]
    after_a = next(c for c in history if c["last_node"] == "a")
    forked = await client.post(
        f"/runs/{run['id']}/fork",
        json={
            "checkpoint_id": after_a["id"],
            "state_patch": {"x": 5, "extra": "e"},
            "inputs_patch": {"tag": "fork"},
        },
    )
    assert forked.status_code == 201, forked.text
    fork = forked.json()
    assert fork["parent_run_id"] == run["id"]
    assert fork["forked_from_checkpoint_id"] == after_a["id"]
    done = await wait_run(client, fork["id"])
    assert done["state"] == {"x": 5, "extra": "e", "y": 50, "tag": "fork"}
    source = (await client.get(f"/runs/{run['id']}")).json()
    assert source["state"] == {"x": 1, "y": 10, "tag": "orig"}
    assert "run.forked" in types_of(await events_of(client, run["id"]))
    assert "run.forked" in types_of(await events_of(client, fork["id"]))
    completed = [e["node"] for e in await events_of(client, fork["id"], types="node.completed")]
    assert completed == ["b"]


async def test_fork_with_only_an_inputs_patch_runs_to_completion(
    client: httpx.AsyncClient,
) -> None:
    definition = wf(
        "fork-inputs",
        {
            "a": {"step": "set", "set": {"seen": "{{ inputs.amount }}"}},
            "b": {"step": "set", "set": {"double": "{{ inputs.amount * 2 }}"}},
        },
        [{"from": "a", "to": "b"}],
        inputs={
            "type": "object",
            "required": ["amount"],
            "properties": {"amount": {"type": "number"}, "note": {"type": "string"}},
        },
    )
    run = await start(client, definition, {"amount": 1, "note": "n"})
    history = (await client.get(f"/runs/{run['id']}/checkpoints")).json()["items"]
    after_a = next(c for c in history if c["last_node"] == "a")
    forked = await client.post(
        f"/runs/{run['id']}/fork",
        json={"checkpoint_id": after_a["id"], "inputs_patch": {"amount": 5, "note": None}},
    )
    assert forked.status_code == 201, forked.text
    assert forked.json()["inputs"] == {"amount": 5}  # a merge patch: null removes
    done = await wait_run(client, forked.json()["id"])
    assert done["status"] == "completed", done
    assert done["state"] == {"seen": 1, "double": 10}  # the state at the checkpoint, kept
    assert done["inputs"] == {"amount": 5}


async def test_fork_inputs_patch_is_checked_against_the_input_schema(
    client: httpx.AsyncClient,
) -> None:
    definition = wf(
        "fork-bad-inputs",
        {"a": {"step": "set", "set": {"seen": "{{ inputs.amount }}"}}},
        inputs={
            "type": "object",
            "required": ["amount"],
            "properties": {"amount": {"type": "number"}},
        },
    )
    run = await start(client, definition, {"amount": 1})
    history = (await client.get(f"/runs/{run['id']}/checkpoints")).json()["items"]
    before = (await client.get("/runs")).json()["items"]
    for patch, loc in (
        ({"amount": "five"}, ["body", "inputs_patch", "amount"]),
        ({"amount": None}, ["body", "inputs_patch"]),
    ):
        refused = await client.post(
            f"/runs/{run['id']}/fork",
            json={"checkpoint_id": history[0]["id"], "inputs_patch": patch},
        )
        assert refused.status_code == 422, refused.text
        problem = refused.json()
        assert problem["code"] == "invalid_inputs"
        assert loc in [e["loc"] for e in problem["errors"]], problem
    assert (await client.get("/runs")).json()["items"] == before  # no run was made
    assert "run.forked" not in types_of(await events_of(client, run["id"]))


async def test_state_edit_with_goto(client: httpx.AsyncClient) -> None:
    definition = wf(
        "goto",
        {
            "ask": {"step": "interrupt", "with": {}},
            "normal": {"step": "set", "set": {"path": "normal"}},
            "special": {"step": "set", "set": {"path": "special:{{ state.flag }}"}},
        },
        [{"from": "ask", "to": "normal"}, {"from": "special", "to": "normal", "when": "false"}],
        entry="ask",
    )
    definition["nodes"]["special"]["agent"] = None
    definition["edges"].append({"from": "ask", "to": "special", "when": "false"})
    run = await start(client, definition)
    edited = await client.post(
        f"/runs/{run['id']}/state", json={"state_patch": {"flag": "on"}, "goto": "special"}
    )
    assert edited.status_code == 200, edited.text
    assert edited.json()["status"] == "interrupted"
    assert edited.json()["current_node"] == "special"
    await answer(client, run)
    done = await wait_run(client, run["id"])
    assert done["status"] == "failed"  # special's only edge never matches
    assert done["state"]["path"] == "special:on"
    bad = await client.post(f"/runs/{run['id']}/state", json={"state_patch": {}, "goto": "nowhere"})
    assert bad.status_code == 422


async def test_a_goto_past_the_node_s_max_iterations_fails_the_run(
    client: httpx.AsyncClient,
) -> None:
    """A goto is a visit (DESIGN §8): one beyond the node's max_iterations fails the run
    with max_node_iterations_exceeded, naming the node, before the node runs again."""
    definition = wf(
        "goto-limit",
        {
            "once": {"step": "set", "set": {"n": "{{ (state.n or 0) + 1 }}"}, "max_iterations": 1},
            "ask": {"step": "interrupt", "with": {}},
        },
        [{"from": "once", "to": "ask"}],
    )
    run = await start(client, definition)
    assert run["status"] == "interrupted"
    edited = await client.post(f"/runs/{run['id']}/state", json={"state_patch": {}, "goto": "once"})
    assert edited.status_code == 200, edited.text
    assert edited.json()["current_node"] == "once"
    await answer(client, run)
    done = await until_status(client, run["id"], "failed")
    assert done["error"]["code"] == "max_node_iterations_exceeded"
    assert done["error"]["node"] == "once"
    assert done["state"]["n"] == 1  # it did not run a second time
    started = [e for e in await events_of(client, run["id"]) if e["type"] == "node.started"]
    assert [(e["node"], e["data"]["visit"]) for e in started] == [("once", 1), ("ask", 1)]


def _pause_then_other(name: str, pause: dict[str, Any]) -> dict[str, Any]:
    """A node that pauses (``pause``), and a node no edge reaches but a goto."""
    return wf(
        name,
        {"pause": pause, "other": {"step": "set", "set": {"went": "other"}}},
        [{"from": "pause", "to": "other", "when": "false"}],
    )


async def _goto_other_and_resume(client: httpx.AsyncClient, run_id: str) -> dict[str, Any]:
    moved = await client.post(f"/runs/{run_id}/state", json={"state_patch": {}, "goto": "other"})
    assert moved.status_code == 200, moved.text
    assert (await client.post(f"/runs/{run_id}/resume", json={})).status_code == 202
    done = await wait_run(client, run_id)
    assert done["status"] == "completed", done
    assert done["state"] == {"went": "other"}
    return done


async def test_a_run_waiting_for_a_person_resumes_from_its_latest_checkpoint(
    client: httpx.AsyncClient,
) -> None:
    """POST /resume on an interrupted run asks again (a new interrupt id); after a goto,
    it goes on at the goto node, and an awaiting_input run moved by a goto too."""
    asking = {"step": "interrupt", "with": {"question": "ok?"}}
    run = await start(client, _pause_then_other("resume-asking", asking))
    first = run["interrupt"]["id"]
    resumed = await client.post(f"/runs/{run['id']}/resume", json={})
    assert resumed.status_code == 202, resumed.text
    again = await until_status(client, run["id"], "interrupted")
    assert again["interrupt"]["id"] != first
    assert again["interrupt"]["payload"] == {"question": "ok?"}
    stale = await client.post(f"/runs/{run['id']}/response", json={"interrupt_id": first})
    assert stale.status_code == 409, stale.text
    done = await _goto_other_and_resume(client, run["id"])
    assert done["interrupt"] is None

    listening = {"step": "input", "set": {"said": "{{ output }}"}}
    run = await start(client, _pause_then_other("resume-listening", listening))
    assert run["status"] == "awaiting_input"
    done = await _goto_other_and_resume(client, run["id"])
    assert done["awaiting_input"] is None


async def test_state_edit_refused_on_running_or_completed(client: httpx.AsyncClient) -> None:
    run = await start(client, wf("fin", {"a": {"step": "set"}}))
    refused = await client.post(f"/runs/{run['id']}/state", json={"state_patch": {"x": 1}})
    assert refused.status_code == 409
    assert refused.json()["code"] == "run_not_editable"


async def test_cancel_and_delete(client: httpx.AsyncClient) -> None:
    run = await start(client, ASK)
    cancelled = await client.post(f"/runs/{run['id']}/cancel")
    assert cancelled.status_code == 202
    assert cancelled.json()["status"] == "cancelled"
    again = await client.post(f"/runs/{run['id']}/cancel")
    assert again.status_code == 409
    deleted = await client.delete(f"/runs/{run['id']}")
    assert deleted.status_code == 204
    assert (await client.get(f"/runs/{run['id']}")).status_code == 404
    assert (
        await client.get(f"/runs/{run['id']}/events", headers={"Accept": "application/json"})
    ).status_code == 404


async def test_delete_of_queued_run_is_409(make_client: AppFactory) -> None:
    client = await make_client(workers=0)
    await store(client, wf("q", {"a": {"step": "set"}}))
    run = (await client.post("/runs", json={"workflow": "q", "inputs": {}})).json()
    refused = await client.delete(f"/runs/{run['id']}")
    assert refused.status_code == 409
    assert refused.json()["code"] == "run_active"


async def test_cancel_stops_a_running_run(make_client: AppFactory) -> None:
    registry, _ = make_registry()
    client = await make_client(registry=registry)
    definition = wf(
        "long",
        {"s": {"step": "sleep", "with": {"seconds": 5}}, "after": {"step": "set"}},
        [{"from": "s", "to": "after"}],
    )
    run = (await client.post("/runs", json={"definition": definition, "inputs": {}})).json()
    for _ in range(100):
        if (await client.get(f"/runs/{run['id']}")).json()["status"] == "running":
            break
        await asyncio.sleep(0.02)
    cancelled = await client.post(f"/runs/{run['id']}/cancel")
    assert cancelled.status_code == 202
    await asyncio.sleep(0.3)
    final = (await client.get(f"/runs/{run['id']}")).json()
    assert final["status"] == "cancelled"
    types = types_of(await events_of(client, run["id"]))
    assert types[-1] == "run.cancelled"
    assert "node.completed" not in types


async def test_shared_examples_load(client: httpx.AsyncClient) -> None:
    for path in sorted(EXAMPLES.glob("*.yaml")):
        response = await client.post(
            "/workflows", content=path.read_bytes(), headers={"Content-Type": "application/yaml"}
        )
        assert response.status_code == 201, (path.name, response.text)
        document = yaml.safe_load(path.read_text())
        document.setdefault("entry", next(iter(document["nodes"])))  # made explicit when stored
        assert response.json()["definition"] == document


async def test_interrupt_after_on_a_last_node_pauses_before_the_run_completes(
    make_client: AppFactory,
) -> None:
    registry, steps = make_registry()
    client = await make_client(registry=registry)
    definition = wf(
        "last", {"a": {"step": "count", "interrupt_after": "sign off", "set": {"a": 1}}}
    )
    run = await start(client, definition)
    assert run["status"] == "interrupted", run
    assert run["interrupt"]["kind"] == "interrupt_after"
    assert run["interrupt"]["payload"] == {"reason": "sign off"}
    assert run["state"] == {"a": 1} and run["current_node"] is None and run["output"] is None
    checkpoints = (await client.get(f"/runs/{run['id']}/checkpoints")).json()["items"]
    assert (checkpoints[-1]["status"], checkpoints[-1]["next_node"]) == ("interrupted", None)
    await answer(client, run)
    run = await wait_run(client, run["id"])
    assert run["status"] == "completed"
    assert run["output"] == {"a": 1}
    assert steps["count"].calls == {"a": 1}  # never run again
    checkpoints = (await client.get(f"/runs/{run['id']}/checkpoints")).json()["items"]
    assert (checkpoints[-1]["status"], checkpoints[-1]["next_node"]) == ("completed", None)

    rejected = await start(client, {**definition, "name": "last-2"})
    await answer(client, rejected, status="rejected")
    assert (await wait_run(client, rejected["id"]))["error"]["code"] == "interrupt_rejected"


async def test_interrupt_after_on_a_subgraphs_last_node_pauses_inside_it(
    client: httpx.AsyncClient,
) -> None:
    inner = wf("inner-last", {"x": {"step": "set", "interrupt_after": "check", "set": {"x": 2}}})
    await store(client, {**inner, "output": "{{ state.x * 10 }}"})
    parent = wf(
        "outer-last",
        {
            "call": {
                "step": "subgraph",
                "with": {"workflow": "inner-last"},
                "set": {"r": "{{ output }}"},
            },
            "after": {"step": "set", "set": {"done": True}},
        },
        [{"from": "call", "to": "after"}],
    )
    run = await start(client, parent)
    assert run["status"] == "interrupted", run
    assert run["interrupt"]["node"] == "call/x"
    assert run["interrupt"]["kind"] == "interrupt_after"
    await answer(client, run)
    run = await wait_run(client, run["id"])
    assert run["status"] == "completed", run
    assert run["state"] == {"r": 20, "done": True}


async def test_an_interrupt_schema_that_cannot_be_used_fails_the_node_not_the_answer(
    client: httpx.AsyncClient,
) -> None:
    """A templated schema is checked when the step pauses (invalid_step_config); one whose
    $ref only fails on some values makes such an answer a 422, never a 500."""
    bad = wf("bad-schema", {"q": {"step": "interrupt",
                                  "with": {"schema": "{{ {'type': 'nonsense'} }}"}}})  # fmt: skip
    run = await start(client, bad)
    assert run["status"] == "failed", run
    assert run["error"]["code"] == "invalid_step_config"
    assert "schema" in run["error"]["message"]

    deep = {"type": "object", "properties": {"a": {"$ref": "#/nowhere"}}}
    hidden = wf("hidden-ref", {"q": {"step": "interrupt", "with": {"schema": deep}}})
    run = await start(client, hidden)
    assert run["status"] == "interrupted", run
    refused = await answer(client, run, value={"a": 1})
    assert refused.status_code == 422, refused.text
    assert refused.json()["errors"][0]["type"] == "schema_unusable"
    assert (await client.get(f"/runs/{run['id']}")).json()["status"] == "interrupted"
    assert (await answer(client, run, value={"b": 1})).status_code == 202
    assert (await wait_run(client, run["id"]))["status"] == "completed"


async def test_a_wait_too_long_to_be_a_date_is_a_bad_configuration(
    client: httpx.AsyncClient,
) -> None:
    for config in ({"seconds": 1e18}, {"seconds": "{{ 10 ** 30 }}"},
                   {"until": "9999-12-31T23:59:59-23:59"}):  # fmt: skip
        run = await start(client, wf("long-wait", {"w": {"step": "wait", "with": config}}))
        assert run["status"] == "failed", (config, run)
        assert run["error"]["code"] == "invalid_step_config", (config, run["error"])


async def test_an_empty_checkpoint_id_is_refused_not_taken_for_the_latest(
    client: httpx.AsyncClient,
) -> None:
    run = await start(client, wf("empty-id", {"a": {"step": "set"}}))
    before = (await client.get("/runs")).json()["items"]
    for action in ("fork", "resume"):
        refused = await client.post(f"/runs/{run['id']}/{action}", json={"checkpoint_id": ""})
        assert refused.status_code == 422, (action, refused.text)
        assert refused.json()["errors"][0]["loc"] == ["body", "checkpoint_id"]
    assert (await client.get("/runs")).json()["items"] == before
