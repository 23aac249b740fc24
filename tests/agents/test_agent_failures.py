"""Model errors against the fake providers: 429 with Retry-After, 500, malformed chunks, a
stream cut in the middle; the outbound guard; secrets in `api_key`; and the durable loop
replaying recorded turns when a retry runs the step again."""

from __future__ import annotations

import httpx

from tests.agents.fake_models import Answer, Error, FakeModel
from tests.agents.helpers import agent_workflow, tool_results
from tests.conftest import AppFactory, events_of, run_and_wait, wait_run

RETRY = {"max_attempts": 3, "initial_delay_s": 0.05, "backoff": 1.0}


async def test_429_is_retried_after_retry_after(client: httpx.AsyncClient, fake: FakeModel) -> None:
    fake.push(Error(429, [("Retry-After", "1")]), Answer(text="ok"))
    definition = agent_workflow(fake, node={"retry": RETRY})
    run = await run_and_wait(client, {"definition": definition, "inputs": {"question": "q"}})
    assert run["status"] == "completed", run["error"]
    assert len(fake.model_requests) == 2
    [retrying] = await events_of(client, run["id"], types="node.retrying")
    assert retrying["data"]["error"]["code"] == "model_error"
    assert retrying["data"]["delay_s"] >= 1.0


async def test_500_fails_the_node_as_a_retryable_model_error(
    client: httpx.AsyncClient, fake: FakeModel
) -> None:
    fake.push(Error(500))
    run = await run_and_wait(
        client, {"definition": agent_workflow(fake), "inputs": {"question": "q"}}
    )
    assert run["status"] == "failed"
    assert run["error"]["code"] == "model_error"
    assert run["error"]["details"]["status"] == 500
    assert len(fake.model_requests) == 1  # the library's own retries are off


async def test_a_400_is_not_retried(client: httpx.AsyncClient, fake: FakeModel) -> None:
    fake.push(Error(400), Answer(text="never"))
    definition = agent_workflow(fake, node={"retry": RETRY})
    run = await run_and_wait(client, {"definition": definition, "inputs": {"question": "q"}})
    assert run["status"] == "failed"
    assert run["error"]["code"] == "model_error"
    assert len(fake.model_requests) == 1


async def test_a_malformed_chunk_fails_retryably(
    client: httpx.AsyncClient, fake: FakeModel
) -> None:
    fake.push(Answer(text="broken answer", malformed=True), Answer(text="fine"))
    definition = agent_workflow(fake, node={"retry": RETRY})
    run = await run_and_wait(client, {"definition": definition, "inputs": {"question": "q"}})
    assert run["status"] == "completed", run["error"]
    assert run["state"]["answer"] == "fine"
    [retrying] = await events_of(client, run["id"], types="node.retrying")
    assert retrying["data"]["error"]["code"] == "model_bad_response"


async def test_a_stream_cut_in_the_middle_is_a_retryable_network_error(
    client: httpx.AsyncClient, fake: FakeModel
) -> None:
    fake.push(
        Answer(text="a long answer cut short", pieces=8, chunk_delay_s=0.06, cut=True),
        Answer(text="the whole answer"),
    )
    definition = agent_workflow(fake, node={"retry": RETRY})
    run = await run_and_wait(client, {"definition": definition, "inputs": {"question": "q"}})
    assert run["status"] == "completed", run["error"]
    assert run["state"]["answer"] == "the whole answer"
    [retrying] = await events_of(client, run["id"], types="node.retrying")
    assert retrying["data"]["error"]["code"] == "network_error"
    # the cut attempt's text stays in the log, told apart by its attempt
    deltas = await events_of(client, run["id"], types="message.delta")
    by_attempt: dict[int, str] = {}
    for event in deltas:
        attempt = event["data"]["attempt"]
        by_attempt[attempt] = by_attempt.get(attempt, "") + event["data"]["text"]
    assert by_attempt[2] == "the whole answer"
    assert by_attempt[1] and "a long answer cut short".startswith(by_attempt[1])


def _unreadable_answers(provider: str) -> list[object]:
    if provider == "openai":
        choice = {"index": 0, "message": {"role": "assistant", "content": "x"},
                  "finish_reason": "stop"}  # fmt: skip
        usage = {"prompt_tokens": 1, "completion_tokens": "a", "total_tokens": 1}
        return [[1, 2], {"id": "c", "object": "chat.completion", "created": 1, "model": "f",
                         "choices": [choice], "usage": usage}]  # fmt: skip
    usage = {"input_tokens": 1, "output_tokens": 1}
    return [[1, 2], {"id": "m", "type": "message", "role": "assistant", "model": "f",
                     "content": "hi", "stop_reason": "end_turn", "usage": usage}]  # fmt: skip


async def test_an_answer_that_cannot_be_read_is_a_retryable_bad_response(
    client: httpx.AsyncClient, fake: FakeModel
) -> None:
    definition = agent_workflow(fake, agent={"stream": False}, node={"retry": RETRY})
    for body in _unreadable_answers(fake.provider):
        fake.push(Error(200, body=body), Answer(text="fine"))
        run = await run_and_wait(client, {"definition": definition, "inputs": {"question": "q"}})
        assert run["status"] == "completed", (body, run["error"])
        [retrying] = await events_of(client, run["id"], types="node.retrying")
        assert retrying["data"]["error"]["code"] == "model_bad_response", body


async def test_the_outbound_guard_holds_for_model_requests(
    make_client: AppFactory, fake: FakeModel
) -> None:
    client = await make_client(allow_private_networks=False)
    fake.push(Answer(text="never"))
    run = await run_and_wait(
        client, {"definition": agent_workflow(fake), "inputs": {"question": "q"}}
    )
    assert run["status"] == "failed"
    assert run["error"]["code"] == "address_not_allowed"
    assert fake.connections == 0


async def test_the_api_key_secret_is_sent_and_never_stored(
    make_client: AppFactory, fake: FakeModel, monkeypatch: object
) -> None:
    secret = "sk-test-7f3a9c1e5b"
    import os

    os.environ["STEPWISE_SECRET_MODEL_KEY"] = secret
    try:
        client = await make_client()
        fake.push(Error(401), Answer(text="fine"))
        definition = agent_workflow(fake)
        definition["models"]["m"]["api_key"] = "{{ secrets.MODEL_KEY }}"
        # a secret put in the prompt is redacted before it reaches the model
        definition["nodes"]["ask"]["with"]["prompt"] = "my key is {{ secrets.MODEL_KEY }}"
        failed = await run_and_wait(client, {"definition": definition, "inputs": {"question": "q"}})
        ok = await run_and_wait(client, {"definition": definition, "inputs": {"question": "q"}})
    finally:
        del os.environ["STEPWISE_SECRET_MODEL_KEY"]
    assert failed["status"] == "failed" and ok["status"] == "completed"
    for request in fake.model_requests:
        sent = request.headers.get("authorization") or request.headers.get("x-api-key")
        assert sent is not None and secret in sent
        assert secret not in str(request.body) and "my key is ***" in str(request.body)
    for run in (failed, ok):
        assert secret not in (await client.get(f"/runs/{run['id']}")).text
        assert secret not in str(await events_of(client, run["id"]))
        checkpoints = (await client.get(f"/runs/{run['id']}/checkpoints")).json()["items"]
        for checkpoint in checkpoints:
            detail = await client.get(f"/runs/{run['id']}/checkpoints/{checkpoint['id']}")
            assert secret not in detail.text


async def test_a_retry_replays_recorded_turns_without_asking_again(
    client: httpx.AsyncClient, fake: FakeModel
) -> None:
    """The second model call fails; the retry replays the recorded first answer and tool
    result: the model is not asked the first question again, the tool not called again."""
    fake.routes["/stock"] = lambda request: (200, {"left": 3})
    tools = {
        "stock": {"description": "Stock left", "parameters": {"type": "object"},
                  "http": {"method": "POST", "url": fake.url("/stock"), "json": {}}},
    }  # fmt: skip
    fake.push(
        Answer(tool_calls=[("call_1", "stock", {})]),
        Error(503),
        Answer(text="Three left."),
    )
    definition = agent_workflow(fake, agent={"tools": ["stock"]}, tools=tools,
                                node={"retry": RETRY})  # fmt: skip
    run = await run_and_wait(client, {"definition": definition, "inputs": {"question": "q"}})
    assert run["status"] == "completed", run["error"]
    assert run["state"]["answer"] == "Three left."
    assert len(fake.model_requests) == 3
    assert len([r for r in fake.requests if r.path == "/stock"]) == 1
    # the retried request carries the recorded tool result
    assert [r["id"] for r in tool_results(fake, fake.model_requests[2].body)] == ["call_1"]
    assert run["usage"]["model_calls"] == 2
    events = await events_of(client, run["id"], types="tool.*")
    assert [e["type"] for e in events] == ["tool.called", "tool.completed"]


async def test_tool_header_secrets_reach_the_tool_but_never_the_model(
    make_client: AppFactory, fake: FakeModel
) -> None:
    secret = "tool-token-5d1e8a2b"
    import os

    os.environ["STEPWISE_SECRET_ORDERS_TOKEN"] = secret
    try:
        client = await make_client()
    finally:
        del os.environ["STEPWISE_SECRET_ORDERS_TOKEN"]
    fake.routes["/echo"] = lambda request: (200, {"you_sent": request.headers["authorization"]})
    tools = {
        "echo": {"description": "Echo", "parameters": {"type": "object"},
                 "http": {"method": "GET", "url": fake.url("/echo"),
                          "headers": {"Authorization": "Bearer {{ secrets.ORDERS_TOKEN }}"}}},
    }  # fmt: skip
    fake.push(Answer(tool_calls=[("c1", "echo", {})]), Answer(text="done"))
    definition = agent_workflow(fake, agent={"tools": ["echo"]}, tools=tools)
    run = await run_and_wait(client, {"definition": definition, "inputs": {"question": "q"}})
    assert run["status"] == "completed", run["error"]
    [echo] = [r for r in fake.requests if r.path == "/echo"]
    assert echo.headers["authorization"] == f"Bearer {secret}"
    second = str(fake.model_requests[1].body)
    assert secret not in second and "***" in second
    assert secret not in str(await events_of(client, run["id"]))


async def test_resuming_a_failed_agent_continues_from_the_last_recorded_turn(
    client: httpx.AsyncClient, fake: FakeModel
) -> None:
    fake.routes["/stock"] = lambda request: (200, {"left": 3})
    tools = {
        "stock": {"description": "Stock left", "parameters": {"type": "object"},
                  "http": {"method": "POST", "url": fake.url("/stock"), "json": {}}},
    }  # fmt: skip
    fake.push(Answer(tool_calls=[("call_1", "stock", {})]), Error(500))
    definition = agent_workflow(fake, agent={"tools": ["stock"]}, tools=tools)
    run = await run_and_wait(client, {"definition": definition, "inputs": {"question": "q"}})
    assert run["status"] == "failed" and run["error"]["code"] == "model_error"
    assert run["usage"]["model_calls"] == 1
    fake.push(Answer(text="Three left."))
    resumed = await client.post(f"/runs/{run['id']}/resume", json={})
    assert resumed.status_code == 202, resumed.text
    done = await wait_run(client, run["id"])
    assert done["status"] == "completed", done["error"]
    assert done["state"]["answer"] == "Three left."
    assert len(fake.model_requests) == 3  # the answered first call was not made again
    assert len([r for r in fake.requests if r.path == "/stock"]) == 1
    assert done["usage"]["model_calls"] == 2


async def test_a_system_prompt_that_fails_to_render_is_an_expression_error(
    client: httpx.AsyncClient, fake: FakeModel
) -> None:
    definition = agent_workflow(fake, agent={"system_prompt": "You help {{ 1 / 0 }}."})
    run = await run_and_wait(client, {"definition": definition, "inputs": {"question": "q"}})
    assert run["status"] == "failed"
    error = run["error"]
    assert error["code"] == "expression_error"
    assert error["node"] == "ask"
    assert "'ask'" in error["message"] and "{{ 1 / 0 }}" in error["message"]
    assert error["details"]["expression"] == "You help {{ 1 / 0 }}."
    assert fake.model_requests == []


async def test_a_whole_answer_with_tool_calls_that_have_no_id_gets_ids(
    client: httpx.AsyncClient,
) -> None:
    """Some OpenAI-compatible servers leave tool call ids out: the calls get ids of their
    own (Anthropic's tool_use blocks always carry theirs)."""
    fake = FakeModel("openai").start()
    try:
        call = {"type": "function", "function": {"name": "lookup", "arguments": "{}"}}
        message = {"role": "assistant", "content": None, "tool_calls": [call]}
        body = {"id": "c", "object": "chat.completion", "created": 1, "model": "f",
                "choices": [{"index": 0, "message": message,
                             "finish_reason": "tool_calls"}]}  # fmt: skip
        fake.push(Error(200, body=body), Answer(text="done"))
        fake.routes["/lookup"] = lambda request: (200, {"found": 1})
        tools = {"lookup": {"description": "Look", "http": {"url": fake.url("/lookup")}}}
        definition = agent_workflow(fake, agent={"stream": False, "tools": ["lookup"]},
                                    tools=tools)  # fmt: skip
        run = await run_and_wait(client, {"definition": definition, "inputs": {"question": "q"}})
        assert run["status"] == "completed", run["error"]
        [result] = tool_results(fake, fake.model_requests[1].body)
        assert result["id"] == "call_0"
    finally:
        fake.stop()
