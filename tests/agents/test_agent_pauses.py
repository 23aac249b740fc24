"""Agents that pause: ask_human (an agent_question interrupt), handoffs with approval,
session agents over POST /messages; and the definition checks of agent workflows."""

from __future__ import annotations

from typing import Any

import httpx

from tests.agents.fake_models import Answer, FakeModel
from tests.agents.helpers import agent_workflow, tool_results, user_texts
from tests.conftest import events_of, run_and_wait, until_status, wait_run


async def test_ask_human_pauses_and_the_answer_becomes_the_tool_result(
    client: httpx.AsyncClient, fake: FakeModel
) -> None:
    fake.push(
        Answer(
            text="I need to ask.",
            tool_calls=[("call_q", "ask_human", {"question": "Which order?"})],
        ),
        Answer(text="Order A-1 it is."),
    )
    definition = agent_workflow(fake, agent={"ask_human": True})
    run = await run_and_wait(client, {"definition": definition, "inputs": {"question": "refund"}})
    assert run["status"] == "interrupted", run
    interrupt = run["interrupt"]
    assert interrupt["kind"] == "agent_question"
    assert interrupt["node"] == "ask"
    assert interrupt["payload"]["question"] == "Which order?"
    assert len(fake.model_requests) == 1
    answer = await client.post(
        f"/runs/{run['id']}/response", json={"interrupt_id": interrupt["id"], "value": "A-1"}
    )
    assert answer.status_code == 202, answer.text
    done = await wait_run(client, run["id"])
    assert done["status"] == "completed", done
    assert done["state"]["answer"] == "Order A-1 it is."
    # the first model call was answered before the pause: it is not made again
    assert len(fake.model_requests) == 2
    [result] = tool_results(fake, fake.model_requests[1].body)
    assert result["id"] == "call_q" and result["content"] == "A-1"
    assert done["usage"]["model_calls"] == 2
    tools = [e["type"] for e in await events_of(client, run["id"], types="tool.*")]
    assert tools == ["tool.called", "tool.completed"]


def _triage_and_billing(fake: FakeModel, **billing: Any) -> dict[str, Any]:
    definition = agent_workflow(fake)
    definition["agents"] = {
        "triage": {"model": "m", "system_prompt": "You route.", "handoff_targets": ["billing"]},
        "billing": {"model": "m", "system_prompt": "You do billing.", **billing},
    }
    definition["nodes"] = {
        "triage": {"step": "agent", "agent": "triage", "with": {"prompt": "{{ inputs.question }}"}},
        "billing": {"step": "agent", "agent": "billing", "set": {"answer": "{{ output.text }}"}},
    }
    return definition


async def test_transfer_to_agent_hands_the_conversation_over_after_approval(
    client: httpx.AsyncClient, fake: FakeModel
) -> None:
    fake.push(
        Answer(tool_calls=[("call_t", "transfer_to_agent",
                            {"agent": "billing", "reason": "a refund"})]),
        Answer(text="Your refund is on its way."),
    )  # fmt: skip
    definition = _triage_and_billing(fake, handoff_approval=True)
    run = await run_and_wait(
        client, {"definition": definition, "inputs": {"question": "I want my money back"}}
    )
    assert run["status"] == "interrupted", run
    interrupt = run["interrupt"]
    assert interrupt["kind"] == "handoff_approval"
    payload = interrupt["payload"]
    assert (payload["from_agent"], payload["to_agent"]) == ("triage", "billing")
    assert payload["payload"] == {"reason": "a refund"}
    assert payload["messages"] == [{"role": "user", "content": "I want my money back"}]
    names = [t.get("name") or t["function"]["name"] for t in fake.model_requests[0].body["tools"]]
    assert names == ["transfer_to_agent"]
    answer = await client.post(
        f"/runs/{run['id']}/response", json={"interrupt_id": interrupt["id"]}
    )
    assert answer.status_code == 202
    done = await wait_run(client, run["id"])
    assert done["status"] == "completed", done
    assert done["state"]["answer"] == "Your refund is on its way."
    assert done["state"]["handoff"]["messages"] == payload["messages"]
    billing_request = fake.model_requests[1].body
    texts = user_texts(fake, billing_request)
    assert texts[0] == "I want my money back"
    assert "triage" in texts[-1] and "a refund" in texts[-1]
    assert len(fake.model_requests) == 2
    assert [
        e["data"]["to_agent"] for e in await events_of(client, run["id"], types="run.handoff")
    ] == ["billing"]


async def test_a_transfer_to_an_agent_not_in_the_targets_fails_the_node(
    client: httpx.AsyncClient, fake: FakeModel
) -> None:
    """DESIGN §2: a handoff to an agent that is not allowed, or that no node is bound to,
    fails the node (the targets are offered to the model as an enum, not enforced as one)."""
    definition = _triage_and_billing(fake)
    definition["agents"]["sales"] = {"model": "m"}
    definition["nodes"]["sales"] = {"step": "agent", "agent": "sales"}
    for target, code in (("sales", "handoff_not_allowed"), ("nobody", "unknown_agent")):
        fake.push(
            Answer(tool_calls=[("c1", "transfer_to_agent", {"agent": target, "reason": "x"})])
        )
        run = await run_and_wait(client, {"definition": definition, "inputs": {"question": "?"}})
        assert run["status"] == "failed", run
        assert run["error"]["code"] == code
        assert run["error"]["node"] == "triage"
        assert target in run["error"]["message"]
    assert len(fake.model_requests) == 2  # no second turn: the node failed at the transfer
    tools = fake.model_requests[0].body["tools"]
    [spec] = [t.get("input_schema") or t["function"]["parameters"] for t in tools]
    assert spec["properties"]["agent"]["enum"] == ["billing"]


async def test_a_transfer_without_its_reason_goes_back_to_the_model_as_an_error(
    client: httpx.AsyncClient, fake: FakeModel
) -> None:
    fake.push(
        Answer(tool_calls=[("c1", "transfer_to_agent", {"agent": "billing"})]),
        Answer(text="I will handle it myself."),
    )
    run = await run_and_wait(
        client, {"definition": _triage_and_billing(fake), "inputs": {"question": "?"}}
    )
    assert run["status"] == "completed", run
    [result] = tool_results(fake, fake.model_requests[1].body)
    assert "reason" in result["content"]


async def test_a_handoff_step_into_an_agent_with_no_prompt_gives_the_model_its_payload(
    client: httpx.AsyncClient, fake: FakeModel
) -> None:
    fake.push(Answer(text="Looking at ticket 42."))
    definition = _triage_and_billing(fake)
    definition["nodes"]["start"] = {"step": "handoff",
                                    "with": {"to": "billing", "payload": {"ticket": 42}}}  # fmt: skip
    definition["entry"] = "start"
    run = await run_and_wait(client, {"definition": definition, "inputs": {"question": "?"}})
    assert run["status"] == "completed", run
    [opening] = user_texts(fake, fake.model_requests[0].body)
    assert "None" not in opening
    assert '{"ticket": 42}' in opening


def _session(fake: FakeModel, **with_: Any) -> dict[str, Any]:
    return agent_workflow(
        fake, node={"with": {"prompt": "{{ inputs.question }}", "session": True, **with_}}
    )


async def _say(client: httpx.AsyncClient, run_id: str, message: str) -> dict[str, Any]:
    response = await client.post(f"/runs/{run_id}/messages", json={"message": message})
    assert response.status_code == 202, response.text
    return await until_status(client, run_id, "awaiting_input", "completed", "failed")


async def test_a_session_agent_converses_until_an_exit_command(
    client: httpx.AsyncClient, fake: FakeModel
) -> None:
    fake.push(Answer(text="Hello! What else?"), Answer(text="Anything more?"))
    run = await run_and_wait(client, {"definition": _session(fake), "inputs": {"question": "hi"}})
    assert run["status"] == "awaiting_input", run
    assert run["awaiting_input"]["prompt"] == "Hello! What else?"
    run = await _say(client, run["id"], "my invoice")
    assert run["status"] == "awaiting_input"
    assert run["awaiting_input"]["prompt"] == "Anything more?"
    assert user_texts(fake, fake.model_requests[1].body) == ["hi", "my invoice"]
    run = await _say(client, run["id"], "/done")
    assert run["status"] == "completed", run
    assert run["state"]["answer"] == "Anything more?"
    assert len(fake.model_requests) == 2
    assert run["usage"]["model_calls"] == 2


async def test_a_session_ends_after_max_turns_or_end_session(
    client: httpx.AsyncClient, fake: FakeModel
) -> None:
    fake.push(Answer(text="one"), Answer(text="two"))
    run = await run_and_wait(
        client, {"definition": _session(fake, max_turns=2), "inputs": {"question": "hi"}}
    )
    run = await _say(client, run["id"], "again")
    assert run["status"] == "completed", run
    assert run["state"]["answer"] == "two"

    fake.push(
        Answer(text="Hi."), Answer(text="Goodbye!", tool_calls=[("c_end", "end_session", {})])
    )
    run = await run_and_wait(client, {"definition": _session(fake), "inputs": {"question": "hi"}})
    names = [t.get("name") or t["function"]["name"] for t in fake.model_requests[-1].body["tools"]]
    assert "end_session" in names
    run = await _say(client, run["id"], "that is all")
    assert run["status"] == "completed", run
    assert run["state"]["answer"] == "Goodbye!"
    assert len(fake.model_requests) == 4


async def test_agent_definitions_are_checked(client: httpx.AsyncClient) -> None:
    definition = {
        "name": "bad-agents",
        "models": {"m": {"provider": "openai", "model": "x"}},
        "tools": {
            "t": {"description": "d", "parameters": {"type": "nope"}, "http": {"url": "http://x"}}
        },
        "agents": {
            "a": {"model": "missing", "tools": ["t", "ghost"]},
            "b": {"model": "m", "system_prompt_ref": "Bad Ref!"},
            "c": {"description": "no model"},
        },
        "nodes": {
            "one": {"step": "agent", "agent": "a", "with": {"prompt_ref": "x@y", "promt": "hi"}},
            "two": {"step": "agent"},
            "three": {"step": "agent", "agent": "c"},
        },
        "edges": [{"from": "one", "to": "two"}, {"from": "two", "to": "three"}],
    }
    response = await client.post("/workflows", json=definition)
    assert response.status_code == 422, response.text
    locs = [e["loc"] for e in response.json()["errors"]]
    assert ["agents", "b", "system_prompt_ref"] in locs  # structure first
    del definition["agents"]["b"]
    response = await client.post("/workflows", json=definition)
    assert response.status_code == 422, response.text
    locs = [e["loc"] for e in response.json()["errors"]]
    assert ["tools", "t", "parameters", "type"] in locs or ["tools", "t", "parameters"] in locs
    assert ["agents", "a", "model"] in locs
    assert ["agents", "a", "tools", 1] in locs
    assert ["nodes", "one", "with", "prompt_ref"] in locs
    assert ["nodes", "one", "with", "promt"] in locs
    assert ["nodes", "two", "agent"] in locs
    assert ["nodes", "three", "agent"] in locs
    assert ["agents", "a", "tools", 0] not in locs


async def test_a_session_without_a_prompt_resumes_an_answered_question_from_its_journal(
    client: httpx.AsyncClient, fake: FakeModel
) -> None:
    # the resume with the answer carries no user message: no opening could be built for a
    # new visit, so it is the recorded one that goes on (and no model call is made again)
    fake.push(
        Answer(tool_calls=[("call_q", "ask_human", {"question": "Which order?"})]),
        Answer(text="Order A-1 is on its way."),
    )
    definition = agent_workflow(fake, agent={"ask_human": True}, node={"with": {"session": True}})
    run = await run_and_wait(client, {"definition": definition, "inputs": {}})
    assert run["status"] == "awaiting_input", run
    response = await client.post(f"/runs/{run['id']}/messages", json={"message": "my refund"})
    assert response.status_code == 202, response.text
    run = await until_status(client, run["id"], "interrupted")
    interrupt = run["interrupt"]
    assert interrupt["kind"] == "agent_question"
    answer = await client.post(
        f"/runs/{run['id']}/response", json={"interrupt_id": interrupt["id"], "value": "A-1"}
    )
    assert answer.status_code == 202, answer.text
    run = await until_status(client, run["id"], "awaiting_input", "failed")
    assert run["status"] == "awaiting_input", run
    assert run["awaiting_input"]["prompt"] == "Order A-1 is on its way."
    assert len(fake.model_requests) == 2
    assert user_texts(fake, fake.model_requests[1].body) == ["my refund"]
    [result] = tool_results(fake, fake.model_requests[1].body)
    assert result["content"] == "A-1"


async def test_a_session_without_a_prompt_opens_with_the_first_message_once(
    client: httpx.AsyncClient, fake: FakeModel
) -> None:
    """The first message is the opening's user turn, sent once; a message that is another
    JSON value than text is sent as JSON text."""
    fake.push(Answer(text="first"), Answer(text="second"))
    definition = agent_workflow(fake, node={"with": {"session": True}})
    run = await run_and_wait(client, {"definition": definition, "inputs": {}})
    assert run["status"] == "awaiting_input", run
    assert fake.model_requests == []
    run = await _say(client, run["id"], "hello")
    assert run["status"] == "awaiting_input", run
    assert run["awaiting_input"]["prompt"] == "first"
    assert len(fake.model_requests) == 1
    assert user_texts(fake, fake.model_requests[0].body) == ["hello"]

    sent = await client.post(f"/runs/{run['id']}/messages", json={"message": {"order": 7}})
    assert sent.status_code == 202, sent.text
    run = await until_status(client, run["id"], "awaiting_input", "completed", "failed")
    assert run["awaiting_input"]["prompt"] == "second", run
    assert len(fake.model_requests) == 2
    assert user_texts(fake, fake.model_requests[1].body) == ["hello", '{"order":7}']


async def test_agent_settings_written_as_they_are_are_checked_when_stored(
    client: httpx.AsyncClient,
) -> None:
    definition = {
        "name": "agent-literals",
        "models": {"m": {"provider": "openai", "model": "x", "base_url": "not a url"}},
        "tools": {
            "t": {"description": "d", "parameters": {"type": "object"},
                  "http": {"url": "http://x", "timeout_sec": 3}},
        },
        "agents": {"a": {"model": "m", "tools": ["t"]}},
        "nodes": {
            "one": {"step": "agent", "agent": "a", "with": {
                "session": "yes", "exit_commands": "/done",
                "messages": [{"role": "boss", "content": "hi"}]}},
        },
    }  # fmt: skip
    response = await client.post("/workflows", json=definition)
    assert response.status_code == 422, response.text
    locs = [e["loc"] for e in response.json()["errors"]]
    assert ["models", "m", "base_url"] in locs
    del definition["models"]["m"]["base_url"]
    response = await client.post("/workflows", json=definition)
    assert response.status_code == 422, response.text
    errors = {tuple(e["loc"]): e["type"] for e in response.json()["errors"]}
    assert errors[("tools", "t", "http", "timeout_sec")] == "unknown_key"
    assert errors[("nodes", "one", "with", "session")] == "invalid_step_config"
    assert errors[("nodes", "one", "with", "exit_commands")] == "invalid_step_config"
    assert errors[("nodes", "one", "with", "messages", 0, "role")] == "invalid_step_config"
    # a template is checked once rendered
    definition["tools"]["t"]["http"] = {"url": "http://x"}
    definition["nodes"]["one"]["with"] = {"session": "{{ inputs.chat }}", "prompt": "hi"}
    assert (await client.post("/workflows/validate", json=definition)).json()["valid"] is True


async def test_an_inline_model_s_errors_name_their_place_in_the_document(
    client: httpx.AsyncClient,
) -> None:
    model = {"provider": "openai", "model": "x", "bogus": 1}
    nodes = {"one": {"step": "agent", "agent": "a", "with": {"prompt": "hi"}}}
    for agents, loc in (
        ({"a": {"model": model}}, ["agents", "a", "model", "bogus"]),
        ([{"id": "a", "model": model}], ["agents", 0, "model", "bogus"]),
        ({"a": {"model": 5}}, ["agents", "a", "model"]),
    ):
        definition = {"name": "inline-model", "agents": agents, "nodes": nodes}
        checked = (await client.post("/workflows/validate", json=definition)).json()
        assert checked["valid"] is False
        assert [e["loc"] for e in checked["errors"]] == [loc]
