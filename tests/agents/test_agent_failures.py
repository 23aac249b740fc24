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


async def test_a_stream_cut_in_the_middle_fails_retryably(
    client: httpx.AsyncClient, fake: FakeModel
) -> None:
    fake.push(Answer(text="a long answer cut short", pieces=8, cut=True))
    run = await run_and_wait(
        client, {"definition": agent_workflow(fake), "inputs": {"question": "q"}}
    )
    assert run["status"] == "failed"
    assert run["error"]["code"] in ("network_error", "model_bad_response")


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
