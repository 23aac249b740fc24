"""`step: agent` against a scripted fake of each provider on loopback: answers, streamed
deltas, tools (http and argument checking), usage and the limits."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import httpx
import pytest
from sqlalchemy import text
from sqlalchemy.ext.asyncio import create_async_engine

from tests.agents.fake_models import Answer, Error, FakeModel, Request
from tests.agents.helpers import agent_workflow, system_of, tool_results, user_texts
from tests.conftest import events_of, run_and_wait


async def test_an_answer_streams_as_deltas_and_completes(
    client: httpx.AsyncClient, fake: FakeModel
) -> None:
    text = "Refunds take five working days to reach your account."
    fake.push(Answer(text=text, pieces=6, input_tokens=31, output_tokens=12))
    run = await run_and_wait(
        client, {"definition": agent_workflow(fake), "inputs": {"question": "How long?"}}
    )
    assert run["status"] == "completed", run["error"]
    assert run["state"]["answer"] == text
    assert run["usage"] == {"input_tokens": 31, "output_tokens": 12, "model_calls": 1}
    [request] = fake.model_requests
    assert request.body["stream"] is True
    assert request.body["model"] == "fake-1"
    assert system_of(fake, request.body) == "You help."
    assert user_texts(fake, request.body) == ["How long?"]
    events = await events_of(client, run["id"])
    deltas = [e for e in events if e["type"] == "message.delta"]
    assert deltas and all(e["node"] == "ask" and e["data"]["node"] == "ask" for e in deltas)
    assert "".join(e["data"]["text"] for e in deltas) == text
    [completed] = [e for e in events if e["type"] == "node.completed"]
    output = completed["data"]["output"]
    assert output["text"] == text
    assert output["finish_reason"] == "stop"
    assert output["usage"] == {"input_tokens": 31, "output_tokens": 12, "model_calls": 1}
    assert output["messages"][-1] == {"role": "assistant", "content": text}
    assert output["tool_calls"] == []


async def test_stream_false_asks_for_a_whole_answer(
    client: httpx.AsyncClient, fake: FakeModel
) -> None:
    fake.push(Answer(text="whole"))
    definition = agent_workflow(fake, agent={"stream": False, "temperature": 0.3,
                                             "max_tokens": 77})  # fmt: skip
    run = await run_and_wait(client, {"definition": definition, "inputs": {"question": "q"}})
    assert run["status"] == "completed", run["error"]
    assert run["state"]["answer"] == "whole"
    [request] = fake.model_requests
    assert not request.body.get("stream")
    assert request.body["temperature"] == 0.3
    assert request.body["max_tokens"] == 77
    assert not [e for e in await events_of(client, run["id"]) if e["type"] == "message.delta"]


def _orders(fake: FakeModel) -> dict[str, Any]:
    def lookup(request: Request) -> tuple[int, Any]:
        return 200, {"order": request.path.rsplit("/", 1)[-1], "status": "shipped"}

    fake.routes["/orders/A-1"] = lookup
    return {
        "lookup_order": {
            "description": "Find an order by its id",
            "parameters": {"type": "object", "required": ["order_id"],
                           "properties": {"order_id": {"type": "string"}}},
            "http": {"method": "GET", "url": fake.url("/orders/{{ args.order_id }}"),
                     "headers": {"X-Asked-By": "{{ context.agent_id }}"}},
        }
    }  # fmt: skip


async def test_a_tool_call_runs_the_http_tool_and_sends_the_result_back(
    client: httpx.AsyncClient, fake: FakeModel
) -> None:
    fake.push(
        Answer(text="Let me look.", tool_calls=[("call_1", "lookup_order", {"order_id": "A-1"})]),
        Answer(text="Order A-1 has shipped."),
    )
    definition = agent_workflow(fake, agent={"tools": ["lookup_order"]}, tools=_orders(fake))
    run = await run_and_wait(client, {"definition": definition, "inputs": {"question": "A-1?"}})
    assert run["status"] == "completed", run["error"]
    assert run["state"]["answer"] == "Order A-1 has shipped."
    assert run["usage"]["model_calls"] == 2
    [tool_hit] = [r for r in fake.requests if r.path == "/orders/A-1"]
    assert tool_hit.headers["idempotency-key"] == f"{run['id']}:ask:1:call_1"
    assert tool_hit.headers["x-asked-by"] == "helper"
    first, second = fake.model_requests
    names = [t.get("name") or t["function"]["name"] for t in first.body["tools"]]
    assert names == ["lookup_order"]
    [result] = tool_results(fake, second.body)
    assert result["id"] == "call_1"
    assert json.loads(result["content"]) == {"order": "A-1", "status": "shipped"}
    events = await events_of(client, run["id"], types="tool.*")
    assert [(e["type"], e["data"]) for e in events] == [
        ("tool.called", {"node": "ask", "tool": "lookup_order", "args": {"order_id": "A-1"},
                         "id": "call_1"}),
        ("tool.completed", {"node": "ask", "id": "call_1",
                            "result": {"order": "A-1", "status": "shipped"}}),
    ]  # fmt: skip
    [completed] = await events_of(client, run["id"], types="node.completed")
    [logged] = completed["data"]["output"]["tool_calls"]
    assert logged == {"id": "call_1", "name": "lookup_order", "args": {"order_id": "A-1"},
                      "result": {"order": "A-1", "status": "shipped"}}  # fmt: skip


async def test_bad_arguments_go_back_to_the_model_as_an_error(
    client: httpx.AsyncClient, fake: FakeModel
) -> None:
    fake.push(
        Answer(tool_calls=[("call_1", "lookup_order", {"order": 7})]),
        Answer(tool_calls=[("call_2", "no_such_tool", {})]),
        Answer(text="Sorry."),
    )
    definition = agent_workflow(fake, agent={"tools": ["lookup_order"]}, tools=_orders(fake))
    run = await run_and_wait(client, {"definition": definition, "inputs": {"question": "?"}})
    assert run["status"] == "completed", run["error"]
    assert not [r for r in fake.requests if r.path.startswith("/orders")]
    results = tool_results(fake, fake.model_requests[2].body)
    assert [r["id"] for r in results] == ["call_1", "call_2"]
    assert "order_id" in results[0]["content"] and "error" in results[0]["content"]
    assert "no_such_tool" in results[1]["content"]
    if fake.provider == "anthropic":
        assert results[0]["is_error"] is True
    completed = (await events_of(client, run["id"], types="tool.completed"))[0]
    assert "order_id" in completed["data"]["error"]


async def test_a_tool_failing_for_good_fails_the_node(
    client: httpx.AsyncClient, fake: FakeModel
) -> None:
    tools = _orders(fake)
    fake.routes["/orders/A-1"] = lambda request: (404, {"error": "gone"})
    fake.push(Answer(tool_calls=[("call_1", "lookup_order", {"order_id": "A-1"})]))
    definition = agent_workflow(fake, agent={"tools": ["lookup_order"]}, tools=tools)
    run = await run_and_wait(client, {"definition": definition, "inputs": {"question": "?"}})
    assert run["status"] == "failed", run
    assert run["error"]["code"] == "tool_failed"
    assert "lookup_order" in run["error"]["message"]
    events = await events_of(client, run["id"], types="tool.*")
    assert [e["type"] for e in events] == ["tool.called", "tool.completed"]
    assert events[1]["data"]["error"] == run["error"]["message"]


async def test_max_turns_fails_a_loop_that_never_answers(
    client: httpx.AsyncClient, fake: FakeModel
) -> None:
    tools = _orders(fake)
    fake.push(*[Answer(tool_calls=[(f"c{i}", "lookup_order", {"order_id": "A-1"})])
                for i in range(3)])  # fmt: skip
    definition = agent_workflow(fake, agent={"tools": ["lookup_order"], "max_turns": 2},
                                tools=tools)  # fmt: skip
    run = await run_and_wait(client, {"definition": definition, "inputs": {"question": "?"}})
    assert run["status"] == "failed", run
    assert run["error"]["code"] == "max_turns_exceeded"
    assert len(fake.model_requests) == 2


async def test_token_budget_fails_the_run_once_passed(
    client: httpx.AsyncClient, fake: FakeModel
) -> None:
    tools = _orders(fake)
    fake.push(
        Answer(tool_calls=[("c1", "lookup_order", {"order_id": "A-1"})], input_tokens=40,
               output_tokens=10),
        Answer(tool_calls=[("c2", "lookup_order", {"order_id": "A-1"})], input_tokens=60,
               output_tokens=10),
        Answer(text="never asked"),
    )  # fmt: skip
    definition = agent_workflow(fake, agent={"tools": ["lookup_order"]}, tools=tools,
                                token_budget=100)  # fmt: skip
    run = await run_and_wait(client, {"definition": definition, "inputs": {"question": "?"}})
    assert run["status"] == "failed", run
    assert run["error"]["code"] == "token_budget_exceeded"
    assert len(fake.model_requests) == 2
    assert run["usage"] == {"input_tokens": 100, "output_tokens": 20, "model_calls": 2}


async def test_a_token_budget_used_exactly_is_not_passed(
    client: httpx.AsyncClient, fake: FakeModel
) -> None:
    tools = _orders(fake)
    fake.push(
        Answer(tool_calls=[("c1", "lookup_order", {"order_id": "A-1"})], input_tokens=10,
               output_tokens=5),
        Answer(text="done", input_tokens=1, output_tokens=1),
    )  # fmt: skip
    definition = agent_workflow(fake, agent={"tools": ["lookup_order"]}, tools=tools,
                                token_budget=15)  # fmt: skip
    run = await run_and_wait(client, {"definition": definition, "inputs": {"question": "?"}})
    assert run["status"] == "failed", run
    assert run["error"]["code"] == "token_budget_exceeded"
    assert run["error"]["details"]["used"] == 17
    assert len(fake.model_requests) == 2  # 15 of 15 was not past the budget: asked again


async def test_deltas_are_coalesced_but_not_held_back(
    client: httpx.AsyncClient, fake: FakeModel
) -> None:
    """Chunks arriving in a burst share events; a chunk followed by a pause is written
    before the next one arrives (the flush timer does not wait for more text)."""
    burst = "".join(f"word{i} " for i in range(300))
    fake.push(Answer(text=burst, pieces=300), Answer(text="one two three", pieces=3,
                                                     chunk_delay_s=0.4))  # fmt: skip
    first = await run_and_wait(client, {"definition": agent_workflow(fake),
                                        "inputs": {"question": "q"}})  # fmt: skip
    deltas = await events_of(client, first["id"], types="message.delta")
    assert "".join(e["data"]["text"] for e in deltas) == burst
    assert len(deltas) < 100  # 300 chunks, far fewer rows
    second = await run_and_wait(client, {"definition": agent_workflow(fake),
                                         "inputs": {"question": "q"}})  # fmt: skip
    deltas = await events_of(client, second["id"], types="message.delta")
    assert [e["data"]["text"] for e in deltas] == ["one t", "wo th", "ree"]


@pytest.fixture
def tool_plugins(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The test plugins made discoverable as an installation would (a .dist-info)."""
    dist = tmp_path / "agent_test_tools-0.1.0.dist-info"
    dist.mkdir()
    (dist / "METADATA").write_text(
        "Metadata-Version: 2.1\nName: agent-test-tools\nVersion: 0.1.0\n"
    )
    (dist / "entry_points.txt").write_text(
        "[stepwise.tools]\n"
        "word_count = tests.agents.tool_plugins:word_count\n"
        "broken = tests.agents.tool_plugins:broken\n"
    )
    monkeypatch.syspath_prepend(str(tmp_path))


async def test_plugin_tools_run_through_their_entry_point(
    client: httpx.AsyncClient, fake: FakeModel, tool_plugins: None
) -> None:
    tools = {
        "count": {"description": "Count words", "plugin": "word_count",
                  "parameters": {"type": "object", "required": ["text"],
                                 "properties": {"text": {"type": "string"}}}},
        "fragile": {"description": "Breaks", "plugin": "broken"},
    }  # fmt: skip
    fake.push(Answer(tool_calls=[("c1", "count", {"text": "one two three"})]), Answer(text="3"))
    definition = agent_workflow(fake, agent={"tools": ["count", "fragile"]}, tools=tools)
    run = await run_and_wait(client, {"definition": definition, "inputs": {"question": "?"}})
    assert run["status"] == "completed", run["error"]
    [result] = tool_results(fake, fake.model_requests[1].body)
    assert json.loads(result["content"]) == {"words": 3, "run": run["id"]}

    fake.push(Answer(tool_calls=[("c2", "fragile", {})]))
    run = await run_and_wait(client, {"definition": definition, "inputs": {"question": "?"}})
    assert run["status"] == "failed"
    assert run["error"]["code"] == "tool_failed"
    assert "the plugin broke" in run["error"]["message"]


async def test_a_tool_plugin_that_is_not_installed_is_refused_when_stored(
    client: httpx.AsyncClient, fake: FakeModel, tool_plugins: None
) -> None:
    tools = {"count": {"description": "Count", "plugin": "word_count"},
             "ghost": {"description": "Nowhere", "plugin": "no_such_tool"}}  # fmt: skip
    definition = agent_workflow(fake, agent={"tools": ["count", "ghost"]}, tools=tools)
    response = await client.post("/runs", json={"definition": definition, "inputs": {}})
    assert response.status_code == 422
    [error] = response.json()["errors"]
    assert error["loc"] == ["body", "definition", "tools", "ghost", "plugin"]
    assert error["type"] == "unknown_plugin"
    assert "no_such_tool" in error["msg"]
    assert (await client.get("/runs")).json()["items"] == []


async def test_model_requests_do_not_follow_redirects(
    client: httpx.AsyncClient, fake: FakeModel
) -> None:
    fake.push(Error(307, [("Location", "http://10.255.255.1/v1/chat/completions")]))
    run = await run_and_wait(
        client, {"definition": agent_workflow(fake), "inputs": {"question": "q"}}
    )
    assert run["status"] == "failed"
    assert run["error"]["code"] == "model_error"
    assert run["error"]["details"]["status"] == 307
    assert len(fake.requests) == 1


async def test_the_journal_goes_with_its_run(
    client: httpx.AsyncClient, fake: FakeModel, database_url: str
) -> None:
    fake.push(Answer(text="ok"))
    run = await run_and_wait(
        client, {"definition": agent_workflow(fake), "inputs": {"question": "q"}}
    )
    count = "SELECT count(*) FROM agent_turns WHERE run_id = :id"
    engine = create_async_engine(database_url)
    try:
        async with engine.connect() as conn:
            assert (await conn.execute(text(count), {"id": run["id"]})).scalar() == 2
        assert (await client.delete(f"/runs/{run['id']}")).status_code in (200, 204)
        async with engine.connect() as conn:
            assert (await conn.execute(text(count), {"id": run["id"]})).scalar() == 0
    finally:
        await engine.dispose()
