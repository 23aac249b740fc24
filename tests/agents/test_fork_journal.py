"""A fork made at a checkpoint where an agent is paused mid-loop (DESIGN §3, §9, §10):
the fork carries the agent's journal as of that checkpoint, so it pauses on the same
question (or awaits the same session turn) without calling the model again, and an
answer continues the loop where it was. Turns the source recorded after the checkpoint
do not reach the fork, and copied turns are counted once in the fork's usage."""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import Any

import httpx
from sqlalchemy import update

from app.store.database import transaction
from app.store.models import AgentTurn
from tests.agents.fake_models import Answer, FakeModel
from tests.agents.helpers import agent_workflow, tool_results, user_texts
from tests.conftest import events_of, run_and_wait, store, until_status, wait_run
from tests.engine.test_group_commit import checkpoints_of

ASK = Answer(
    text="I need to ask.", tool_calls=[("call_q", "ask_human", {"question": "Which order?"})]
)


async def _head(client: httpx.AsyncClient, run_id: str) -> str:
    return str((await checkpoints_of(client, run_id))[-1]["id"])


async def _fork(client: httpx.AsyncClient, run_id: str, checkpoint_id: str) -> dict[str, Any]:
    response = await client.post(f"/runs/{run_id}/fork", json={"checkpoint_id": checkpoint_id})
    assert response.status_code == 201, response.text
    return await until_status(
        client, response.json()["id"], "interrupted", "awaiting_input", "completed", "failed"
    )


async def _answer(client: httpx.AsyncClient, run: dict[str, Any], value: Any) -> dict[str, Any]:
    [interrupt] = [i for i in run["interrupts"] if i["kind"] == "agent_question"]
    response = await client.post(
        f"/runs/{run['id']}/response", json={"interrupt_id": interrupt["id"], "value": value}
    )
    assert response.status_code == 202, response.text
    return await wait_run(client, run["id"])


def _assistant_texts(fake: FakeModel, body: dict[str, Any]) -> list[str]:
    """The text of each assistant turn a model request sends back."""
    texts = []
    for m in body["messages"]:
        if m["role"] != "assistant":
            continue
        if isinstance(m.get("content"), list):
            texts += [b["text"] for b in m["content"] if b.get("type") == "text"]
        elif m.get("content"):
            texts.append(m["content"])
    return texts


async def test_a_fork_at_an_agent_question_asks_it_again_without_a_model_call(
    client: httpx.AsyncClient, fake: FakeModel
) -> None:
    # the third answer is for a fork that (wrongly) runs the loop again from scratch
    fake.push(ASK, Answer(text="Order A-1 it is."), Answer(text="Order B-2 it is."))
    definition = agent_workflow(fake, agent={"ask_human": True})
    run = await run_and_wait(client, {"definition": definition, "inputs": {"question": "refund"}})
    assert run["status"] == "interrupted", run
    assert run["interrupt"]["kind"] == "agent_question"
    assert len(fake.model_requests) == 1

    fork = await _fork(client, run["id"], await _head(client, run["id"]))
    assert fork["status"] == "interrupted", fork
    interrupt = fork["interrupt"]
    assert interrupt["kind"] == "agent_question"
    assert interrupt["payload"]["question"] == "Which order?"
    assert interrupt["id"] != run["interrupt"]["id"]
    assert len(fake.model_requests) == 1  # the answered call is not made again
    assert fork["usage"]["model_calls"] == 1

    done = await _answer(client, fork, "A-1")
    assert done["status"] == "completed", done
    assert done["state"]["answer"] == "Order A-1 it is."
    assert len(fake.model_requests) == 2
    [result] = tool_results(fake, fake.model_requests[1].body)
    assert result["id"] == "call_q" and result["content"] == "A-1"
    assert user_texts(fake, fake.model_requests[1].body) == ["refund"]
    # the copied call is counted once: the checkpoint's, plus the fork's own
    assert done["usage"]["model_calls"] == 2
    assert done["usage"]["input_tokens"] == 20

    source = (await client.get(f"/runs/{run['id']}")).json()
    assert source["status"] == "interrupted"  # the source is untouched
    assert source["usage"]["model_calls"] == 1


async def test_a_fork_at_an_answered_question_leaves_the_sources_later_turns_behind(
    client: httpx.AsyncClient, fake: FakeModel
) -> None:
    fake.push(ASK, Answer(text="Order A-1 it is."), Answer(text="Order B-2 it is."))
    definition = agent_workflow(fake, agent={"ask_human": True})
    run = await run_and_wait(client, {"definition": definition, "inputs": {"question": "refund"}})
    paused_at = await _head(client, run["id"])
    done = await _answer(client, run, "A-1")
    assert done["status"] == "completed", done
    assert len(fake.model_requests) == 2

    # the source went on after that checkpoint: the fork is where the checkpoint was
    fork = await _fork(client, run["id"], paused_at)
    assert fork["status"] == "interrupted", fork
    assert fork["interrupt"]["kind"] == "agent_question"
    assert len(fake.model_requests) == 2
    forked = await _answer(client, fork, "B-2")
    assert forked["status"] == "completed", forked
    assert forked["state"]["answer"] == "Order B-2 it is."
    assert len(fake.model_requests) == 3
    [result] = tool_results(fake, fake.model_requests[2].body)
    assert result["content"] == "B-2"
    assert forked["usage"]["model_calls"] == 2

    # a fork of the fork, at its first checkpoint, is paused on the question too
    again = await _fork(client, fork["id"], (await checkpoints_of(client, fork["id"]))[0]["id"])
    assert again["status"] == "interrupted", again
    assert again["interrupt"]["kind"] == "agent_question"
    assert len(fake.model_requests) == 3
    assert again["usage"]["model_calls"] == 1


async def test_a_fork_takes_the_turns_before_its_checkpoint_whatever_their_clocks_said(
    client: httpx.AsyncClient, fake: FakeModel
) -> None:
    """The turns after the pause were recorded by a worker whose clock ran an hour behind
    (stamped before the checkpoint's time): the fork still leaves them behind, since
    which turns came before a checkpoint is told by the run's checkpoint numbers."""
    fake.push(ASK, Answer(text="Order A-1 it is."), Answer(text="Order B-2 it is."))
    definition = agent_workflow(fake, agent={"ask_human": True})
    run = await run_and_wait(client, {"definition": definition, "inputs": {"question": "refund"}})
    paused = (await checkpoints_of(client, run["id"]))[-1]
    done = await _answer(client, run, "A-1")
    assert done["status"] == "completed", done
    paused_time = datetime.fromisoformat(paused["created_at"])
    sessions = client.app.state.engine.sessions  # type: ignore[attr-defined]
    async with transaction(sessions) as session:
        skewed = await session.execute(
            update(AgentTurn)
            .where(AgentTurn.run_id == run["id"], AgentTurn.created_at > paused_time)
            .values(created_at=paused_time - timedelta(hours=1))
        )
    assert skewed.rowcount >= 2  # type: ignore[attr-defined]  # the answer, the model's

    fork = await _fork(client, run["id"], paused["id"])
    assert fork["status"] == "interrupted", fork  # not completed from the source's answer
    assert fork["interrupt"]["kind"] == "agent_question"
    forked = await _answer(client, fork, "B-2")
    assert forked["state"]["answer"] == "Order B-2 it is.", forked
    [result] = tool_results(fake, fake.model_requests[2].body)
    assert result["content"] == "B-2"


async def test_turns_recorded_before_their_checkpoint_numbers_were_kept_go_by_time(
    client: httpx.AsyncClient, fake: FakeModel
) -> None:
    """A journal written before agent_turns.checkpoint_seq existed (NULL) is taken by
    time: the turns at or before the checkpoint's."""
    fake.push(ASK, Answer(text="Order A-1 it is."), Answer(text="Order B-2 it is."))
    definition = agent_workflow(fake, agent={"ask_human": True})
    run = await run_and_wait(client, {"definition": definition, "inputs": {"question": "refund"}})
    paused_at = await _head(client, run["id"])
    assert (await _answer(client, run, "A-1"))["status"] == "completed"
    sessions = client.app.state.engine.sessions  # type: ignore[attr-defined]
    async with transaction(sessions) as session:
        await session.execute(
            update(AgentTurn).where(AgentTurn.run_id == run["id"]).values(checkpoint_seq=None)
        )

    fork = await _fork(client, run["id"], paused_at)
    assert fork["status"] == "interrupted", fork
    assert len(fake.model_requests) == 2  # the question came from the copied journal
    forked = await _answer(client, fork, "B-2")
    assert forked["state"]["answer"] == "Order B-2 it is.", forked


async def test_a_fork_of_an_awaiting_session_keeps_its_history(
    client: httpx.AsyncClient, fake: FakeModel
) -> None:
    fake.push(Answer(text="first answer"), Answer(text="second"), Answer(text="third"))
    definition = agent_workflow(
        fake, node={"with": {"prompt": "{{ inputs.question }}", "session": True}}
    )
    run = await run_and_wait(client, {"definition": definition, "inputs": {"question": "hi"}})
    assert run["status"] == "awaiting_input", run
    assert len(fake.model_requests) == 1

    fork = await _fork(client, run["id"], await _head(client, run["id"]))
    assert fork["status"] == "awaiting_input", fork
    assert fork["awaiting_input"]["prompt"] == "first answer"
    assert len(fake.model_requests) == 1
    assert fork["usage"]["model_calls"] == 1
    # the session's messages are the checkpoint's: its prompt once
    head = await _head(client, fork["id"])
    detail = (await client.get(f"/runs/{fork['id']}/checkpoints/{head}")).json()
    said = [(m["role"], m["content"]) for m in detail["frames"][0]["messages"]]
    assert said == [("assistant", "first answer")]

    response = await client.post(f"/runs/{fork['id']}/messages", json={"message": "more"})
    assert response.status_code == 202, response.text
    fork = await until_status(client, fork["id"], "awaiting_input", "completed", "failed")
    assert fork["status"] == "awaiting_input", fork
    assert fork["awaiting_input"]["prompt"] == "second"
    assert len(fake.model_requests) == 2
    body = fake.model_requests[1].body
    assert user_texts(fake, body) == ["hi", "more"]
    assert _assistant_texts(fake, body) == ["first answer"]
    response = await client.post(f"/runs/{fork['id']}/messages", json={"message": "/done"})
    assert response.status_code == 202, response.text
    done = await wait_run(client, fork["id"])
    assert done["status"] == "completed", done
    assert done["state"]["answer"] == "second"
    assert done["usage"]["model_calls"] == 2


async def test_resume_at_a_paused_agents_checkpoint_keeps_the_pause(
    client: httpx.AsyncClient, fake: FakeModel
) -> None:
    fake.push(ASK, Answer(text="Order A-1 it is."))
    definition = agent_workflow(fake, agent={"ask_human": True})
    run = await run_and_wait(client, {"definition": definition, "inputs": {"question": "refund"}})
    response = await client.post(
        f"/runs/{run['id']}/resume", json={"checkpoint_id": await _head(client, run["id"])}
    )
    assert response.status_code == 202, response.text
    run = await until_status(client, run["id"], "interrupted", "completed", "failed")
    assert run["status"] == "interrupted", run
    assert run["interrupt"]["kind"] == "agent_question"
    assert len(fake.model_requests) == 1
    done = await _answer(client, run, "A-1")
    assert done["status"] == "completed", done
    assert len(fake.model_requests) == 2
    assert done["usage"]["model_calls"] == 2


async def test_resume_at_an_awaiting_sessions_checkpoint_keeps_its_history(
    client: httpx.AsyncClient, fake: FakeModel
) -> None:
    """The session's node runs again from its journal and pauses anew: its prompt is in
    the session's messages once, and no model call is made."""
    fake.push(Answer(text="first answer"), Answer(text="second"))
    definition = agent_workflow(
        fake, node={"with": {"prompt": "{{ inputs.question }}", "session": True}}
    )
    run = await run_and_wait(client, {"definition": definition, "inputs": {"question": "hi"}})
    assert run["status"] == "awaiting_input", run
    response = await client.post(
        f"/runs/{run['id']}/resume", json={"checkpoint_id": await _head(client, run["id"])}
    )
    assert response.status_code == 202, response.text
    run = await until_status(client, run["id"], "awaiting_input", "completed", "failed")
    assert run["status"] == "awaiting_input", run
    assert run["awaiting_input"]["prompt"] == "first answer"
    assert len(fake.model_requests) == 1
    head = await _head(client, run["id"])
    detail = (await client.get(f"/runs/{run['id']}/checkpoints/{head}")).json()
    said = [(m["role"], m["content"]) for m in detail["frames"][0]["messages"]]
    assert said == [("assistant", "first answer")]
    response = await client.post(f"/runs/{run['id']}/messages", json={"message": "more"})
    assert response.status_code == 202, response.text
    run = await until_status(client, run["id"], "awaiting_input", "completed", "failed")
    assert run["awaiting_input"]["prompt"] == "second"
    assert _assistant_texts(fake, fake.model_requests[1].body) == ["first answer"]


async def test_time_travel_to_an_answered_question_asks_it_again(
    client: httpx.AsyncClient, fake: FakeModel
) -> None:
    """The same run, resumed from the checkpoint where its agent asked: the answer given
    after it and the model's reply to it belong to the timeline left, so the question
    is asked again (from the journal, no model call) and a new answer reaches the model."""
    fake.push(ASK, Answer(text="Order A-1 it is."), Answer(text="Order B-2 it is."))
    definition = agent_workflow(fake, agent={"ask_human": True})
    run = await run_and_wait(client, {"definition": definition, "inputs": {"question": "refund"}})
    paused_at = await _head(client, run["id"])
    assert (await _answer(client, run, "A-1"))["state"]["answer"] == "Order A-1 it is."

    response = await client.post(f"/runs/{run['id']}/resume", json={"checkpoint_id": paused_at})
    assert response.status_code == 202, response.text
    run = await until_status(client, run["id"], "interrupted", "completed", "failed")
    assert run["status"] == "interrupted", run
    assert run["interrupt"]["payload"]["question"] == "Which order?"
    assert len(fake.model_requests) == 2
    done = await _answer(client, run, "B-2")
    assert done["state"]["answer"] == "Order B-2 it is.", done
    [result] = tool_results(fake, fake.model_requests[2].body)
    assert result["content"] == "B-2"


async def test_time_travel_before_an_agent_with_an_edited_state_calls_the_model_anew(
    client: httpx.AsyncClient, fake: FakeModel
) -> None:
    fake.push(Answer(text="About cats"), Answer(text="About dogs"))
    definition = agent_workflow(
        fake,
        node={"interrupt_before": "go?", "with": {"prompt": "tell me about {{ state.topic }}"}},
        state={"topic": "cats"},
    )
    run = await run_and_wait(client, {"definition": definition, "inputs": {}})
    before = await _head(client, run["id"])
    response = await client.post(
        f"/runs/{run['id']}/response", json={"interrupt_id": run["interrupt"]["id"]}
    )
    assert response.status_code == 202, response.text
    assert (await wait_run(client, run["id"]))["state"]["answer"] == "About cats"

    response = await client.post(f"/runs/{run['id']}/resume", json={"checkpoint_id": before})
    assert response.status_code == 202, response.text
    run = await until_status(client, run["id"], "interrupted", "completed", "failed")
    assert run["status"] == "interrupted", run
    edit = await client.post(f"/runs/{run['id']}/state", json={"state_patch": {"topic": "dogs"}})
    assert edit.status_code == 200, edit.text
    response = await client.post(
        f"/runs/{run['id']}/response", json={"interrupt_id": run["interrupt"]["id"]}
    )
    assert response.status_code == 202, response.text
    done = await wait_run(client, run["id"])
    assert done["state"] == {"topic": "dogs", "answer": "About dogs"}, done
    assert user_texts(fake, fake.model_requests[1].body) == ["tell me about dogs"]
    # both timelines' calls count: time travel does not give back what was spent
    assert done["usage"]["model_calls"] == 2


def _fan_out(fake: FakeModel) -> dict[str, Any]:
    """``p`` fans out to an asking agent ``a`` and a plain interrupt ``q``; both join."""
    definition = agent_workflow(fake, agent={"ask_human": True})
    definition["nodes"] = {
        "p": {"step": "set"},
        "a": {**definition["nodes"]["ask"], "with": {"prompt": "refund"}},
        "q": {"step": "interrupt", "with": {"question": "go?"}},
        "j": {"step": "set", "join": "all"},
    }
    definition["edges"] = [
        {"from": "p", "to": ["a", "q"]},
        {"from": "a", "to": "j"},
        {"from": "q", "to": "j"},
    ]
    return definition


async def test_a_fork_inside_a_fanout_answers_the_agent_where_it_was(
    client: httpx.AsyncClient, fake: FakeModel
) -> None:
    fake.push(ASK, Answer(text="Order A-1 it is."), Answer(text="Order B-2 it is."))
    run = await run_and_wait(client, {"definition": _fan_out(fake), "inputs": {}})
    assert run["status"] == "interrupted", run
    assert sorted(i["kind"] for i in run["interrupts"]) == ["agent_question", "interrupt"]
    assert len(fake.model_requests) == 1

    fork = await _fork(client, run["id"], await _head(client, run["id"]))
    assert fork["status"] == "interrupted", fork
    assert sorted(i["kind"] for i in fork["interrupts"]) == ["agent_question", "interrupt"]
    assert len(fake.model_requests) == 1
    [plain] = [i for i in fork["interrupts"] if i["kind"] == "interrupt"]
    response = await client.post(
        f"/runs/{fork['id']}/response", json={"interrupt_id": plain["id"], "value": True}
    )
    assert response.status_code == 202, response.text
    fork = await until_status(client, fork["id"], "interrupted", "completed", "failed")
    done = await _answer(client, fork, "A-1")
    assert done["status"] == "completed", done
    assert done["state"]["answer"] == "Order A-1 it is."
    assert len(fake.model_requests) == 2
    [result] = tool_results(fake, fake.model_requests[1].body)
    assert result["content"] == "A-1"
    assert done["usage"]["model_calls"] == 2


async def test_a_fork_with_an_agent_paused_in_a_map_item_answers_it_where_it_was(
    client: httpx.AsyncClient, fake: FakeModel
) -> None:
    fake.push(ASK, Answer(text="Order A-1 it is."), Answer(text="Order B-2 it is."))
    child = agent_workflow(fake, agent={"ask_human": True})
    child["name"] = "ask-item"
    child["nodes"]["ask"]["with"] = {"prompt": "{{ inputs.q }}"}
    await store(client, child)
    parent = {
        "name": "map-asks",
        "nodes": {
            "each": {
                "step": "map",
                "with": {"workflow": "ask-item", "items": ["x"], "inputs": {"q": "{{ item }}"}},
            }
        },
    }
    run = await run_and_wait(client, {"definition": parent, "inputs": {}})
    assert run["status"] == "interrupted", run
    assert len(fake.model_requests) == 1

    fork = await _fork(client, run["id"], await _head(client, run["id"]))
    assert fork["status"] == "interrupted", fork
    assert fork["interrupt"]["kind"] == "agent_question"
    assert len(fake.model_requests) == 1
    done = await _answer(client, fork, "A-1")
    assert done["status"] == "completed", done
    assert len(fake.model_requests) == 2
    [result] = tool_results(fake, fake.model_requests[1].body)
    assert result["content"] == "A-1"
    assert user_texts(fake, fake.model_requests[1].body) == ["x"]
    assert done["usage"]["model_calls"] == 2
    [mapped] = [
        e["data"]["output"]
        for e in await events_of(client, fork["id"], types="node.completed")
        if e["node"] == "each"
    ]
    assert mapped == [{"answer": "Order A-1 it is."}]


async def test_a_forks_usage_starts_from_its_checkpoints(
    client: httpx.AsyncClient, fake: FakeModel
) -> None:
    """An agent node that ended before the checkpoint, then one paused at it: the fork's
    usage is the checkpoint's (both calls), and each call is counted once."""
    fake.push(
        Answer(text="noted", input_tokens=100, output_tokens=1),
        ASK,
        Answer(text="Order A-1 it is."),
        Answer(text="Order B-2 it is."),
    )
    definition = agent_workflow(fake, agent={"ask_human": True})
    definition["agents"]["noter"] = {"model": "m", "system_prompt": "You note."}
    definition["nodes"]["note"] = {"step": "agent", "agent": "noter", "with": {"prompt": "note"}}
    definition["edges"] = [{"from": "note", "to": "ask"}]
    definition["entry"] = "note"
    run = await run_and_wait(client, {"definition": definition, "inputs": {"question": "refund"}})
    assert run["status"] == "interrupted", run
    expected = {"input_tokens": 110, "output_tokens": 6, "model_calls": 2}
    assert run["usage"] == expected

    fork = await _fork(client, run["id"], await _head(client, run["id"]))
    assert fork["status"] == "interrupted", fork
    assert len(fake.model_requests) == 2
    assert fork["usage"] == expected
    done = await _answer(client, fork, "A-1")
    assert done["status"] == "completed", done
    assert len(fake.model_requests) == 3
    assert done["usage"] == {"input_tokens": 120, "output_tokens": 11, "model_calls": 3}
