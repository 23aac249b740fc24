"""The ``call`` step end to end: each StepResult a remote endpoint answers drives the run."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable
from typing import Any

import httpx
from loopback_server import Hit, LoopbackServer, Reply

from tests.conftest import AppFactory, events_of, run_and_wait, wait_run

Answer = Callable[[dict[str, Any]], Any]


def endpoint(server: LoopbackServer, answer: Answer, path: str = "/step") -> str:
    """Route ``path`` to ``answer(request_json)``; a dict answer is sent as JSON."""

    def reply(hit: Hit) -> Reply:
        data = answer(json.loads(hit.body))
        if isinstance(data, Reply):
            return data
        return Reply(200, [("Content-Type", "application/json")], json.dumps(data).encode())

    server.route(path, reply)
    return server.url(path)


def calling(url: str, **node: Any) -> dict[str, Any]:
    """A workflow: ``remote`` (the call) then ``after`` (records what it saw)."""
    return {
        "name": "remote",
        "nodes": {
            "remote": {
                "step": "call",
                "with": {"url": url, "greeting": "hi {{ inputs.who }}"},
                "set": {"remote": "{{ output }}"},
                **node,
            },
            "after": {"step": "set", "set": {"after": True}},
        },
        "edges": [{"from": "remote", "to": "after"}],
    }


async def start(client: httpx.AsyncClient, definition: dict[str, Any]) -> dict[str, Any]:
    return await run_and_wait(client, {"definition": definition, "inputs": {"who": "ada"}})


async def types_of(client: httpx.AsyncClient, run_id: str) -> list[str]:
    return [e["type"] for e in await events_of(client, run_id)]


async def test_succeeded_continues_with_the_output(
    make_client: AppFactory, server: LoopbackServer
) -> None:
    client = await make_client()
    url = endpoint(server, lambda req: {"status": "succeeded", "output": {"echo": req["with"]}})
    run = await start(client, calling(url))

    assert run["status"] == "completed", run
    assert run["state"]["remote"] == {"echo": {"url": url, "greeting": "hi ada"}}
    assert run["state"]["after"] is True
    [hit] = server.hits_for("/step")
    request = json.loads(hit.body)
    assert request["run_id"] == run["id"] and request["node"] == "remote"
    assert request["attempt"] == 1
    assert request["idempotency_key"] == f"{run['id']}:remote:1"
    assert hit.headers["idempotency-key"] == request["idempotency_key"]
    assert request["state"] == {}
    assert request["context"]["run_id"] == run["id"]


async def test_failed_fails_the_run_with_the_error(
    make_client: AppFactory, server: LoopbackServer
) -> None:
    client = await make_client()
    error = {"code": "card_declined", "message": "the card was declined", "retryable": False}
    url = endpoint(server, lambda req: {"status": "failed", "error": error})
    run = await start(client, calling(url, retry={"max_attempts": 3, "initial_delay_s": 0.01}))

    assert run["status"] == "failed", run
    assert run["error"]["code"] == "card_declined"
    assert run["error"]["message"] == "the card was declined"
    assert run["error"]["node"] == "remote"
    assert len(server.hits_for("/step")) == 1  # not retryable
    assert "after" not in run["state"]


async def test_a_retryable_failure_is_retried_with_the_same_key(
    make_client: AppFactory, server: LoopbackServer
) -> None:
    client = await make_client()

    def answer(req: dict[str, Any]) -> Any:
        if req["attempt"] < 3:
            error = {"code": "busy", "message": "try again", "retryable": True}
            return {"status": "failed", "error": error}
        return {"status": "succeeded", "output": req["attempt"]}

    url = endpoint(server, answer)
    run = await start(client, calling(url, retry={"max_attempts": 3, "initial_delay_s": 0.01}))

    assert run["status"] == "completed", run
    assert run["state"]["remote"] == 3
    hits = server.hits_for("/step")
    assert [json.loads(hit.body)["attempt"] for hit in hits] == [1, 2, 3]
    assert {hit.headers["idempotency-key"] for hit in hits} == {f"{run['id']}:remote:1"}
    retrying = [e for e in await events_of(client, run["id"]) if e["type"] == "node.retrying"]
    assert [e["data"]["attempt"] for e in retrying] == [1, 2]
    assert [e["data"]["error"]["code"] for e in retrying] == ["busy", "busy"]


async def test_an_http_error_of_the_endpoint_fails_like_the_http_step(
    make_client: AppFactory, server: LoopbackServer
) -> None:
    client = await make_client()
    url = endpoint(server, lambda req: Reply(500, body=b"crash"))
    run = await start(client, calling(url))

    assert run["status"] == "failed", run
    assert run["error"]["code"] == "http_error"
    assert run["error"]["details"] == {"status": 500, "body": "crash"}


async def test_needs_continuation_suspends_then_completes_by_itself(
    make_client: AppFactory, server: LoopbackServer
) -> None:
    client = await make_client()

    def answer(req: dict[str, Any]) -> Any:
        if "continuation" not in req["context"]:
            return {"status": "needs_continuation", "resume_after_s": 0.3, "output": "half"}
        return {"status": "succeeded", "output": "done"}

    url = endpoint(server, answer)
    run = await start(client, calling(url))

    assert run["status"] == "suspended", run
    assert run["resume_at"] is not None
    assert run["current_node"] == "remote"
    for _ in range(100):  # it resumes by itself, at resume_at
        run = await wait_run(client, run["id"])
        if run["status"] != "suspended":
            break
        await asyncio.sleep(0.1)
    assert run["status"] == "completed", run
    assert run["state"] == {"remote": "done", "after": True}
    hits = server.hits_for("/step")
    assert len(hits) == 2
    keys = {hit.headers["idempotency-key"] for hit in hits}
    assert keys == {f"{run['id']}:remote:1"}  # the same visit
    types = await types_of(client, run["id"])
    assert "run.suspended" in types and "run.resumed" in types


async def test_interrupted_waits_for_the_response(
    make_client: AppFactory, server: LoopbackServer
) -> None:
    client = await make_client()

    def answer(req: dict[str, Any]) -> Any:
        response = req["context"].get("response")
        if response is None:
            return {
                "status": "interrupted",
                "interrupt": {"payload": {"question": "ship it?"}, "schema": {"type": "boolean"}},
            }
        return {"status": "succeeded", "output": {"answer": response["value"]}}

    url = endpoint(server, answer)
    run = await start(client, calling(url))

    assert run["status"] == "interrupted", run
    interrupt = run["interrupt"]
    assert interrupt["kind"] == "interrupt" and interrupt["node"] == "remote"
    assert interrupt["payload"] == {"question": "ship it?"}
    bad = await client.post(
        f"/runs/{run['id']}/response", json={"interrupt_id": interrupt["id"], "value": "yes"}
    )
    assert bad.status_code == 422, bad.text  # the endpoint's schema holds
    response = await client.post(
        f"/runs/{run['id']}/response", json={"interrupt_id": interrupt["id"], "value": True}
    )
    assert response.status_code == 202, response.text
    run = await wait_run(client, run["id"])
    assert run["status"] == "completed", run
    assert run["state"] == {"remote": {"answer": True}, "after": True}


async def test_awaiting_input_waits_for_a_message(
    make_client: AppFactory, server: LoopbackServer
) -> None:
    client = await make_client()

    def answer(req: dict[str, Any]) -> Any:
        if "user_message" not in req["context"]:
            return {"status": "awaiting_input", "prompt": "your name?"}
        return {"status": "succeeded", "output": f"hello {req['context']['user_message']}"}

    url = endpoint(server, answer)
    run = await start(client, calling(url))

    assert run["status"] == "awaiting_input", run
    response = await client.post(f"/runs/{run['id']}/messages", json={"message": "grace"})
    assert response.status_code == 202, response.text
    run = await wait_run(client, run["id"])
    assert run["status"] == "completed", run
    assert run["state"]["remote"] == "hello grace"
    [_, second] = [json.loads(hit.body) for hit in server.hits_for("/step")]
    messages = second["context"]["messages"]
    assert [m["role"] for m in messages] == ["assistant", "user"]
    assert [m["content"] for m in messages] == ["your name?", "grace"]


async def test_handoff_routes_to_the_agents_node(
    make_client: AppFactory, server: LoopbackServer
) -> None:
    client = await make_client()
    url = endpoint(
        server,
        lambda req: {"status": "handoff", "handoff": {"to": "billing", "payload": {"id": 7}}},
    )
    definition = {
        "name": "desk",
        "agents": {"triage": {"handoff_targets": ["billing"]}, "billing": {}},
        "nodes": {
            "desk": {"step": "call", "agent": "triage", "with": {"url": url}},
            "bill": {
                "step": "set",
                "agent": "billing",
                "with": {"got": "{{ context.handoff.payload.id }}"},
                "set": {"billed": "{{ output.got }}"},
            },
        },
    }
    run = await start(client, definition)

    assert run["status"] == "completed", run
    handoff = {"from_agent": "triage", "to_agent": "billing", "payload": {"id": 7}}
    assert run["state"] == {"handoff": handoff, "billed": 7}
    assert "run.handoff" in await types_of(client, run["id"])


async def test_a_handoff_to_an_unknown_agent_fails(
    make_client: AppFactory, server: LoopbackServer
) -> None:
    client = await make_client()
    url = endpoint(
        server, lambda req: {"status": "handoff", "handoff": {"to": "nobody", "payload": None}}
    )
    run = await start(client, calling(url))

    assert run["status"] == "failed", run
    assert run["error"]["code"] == "unknown_agent"


BAD_ANSWERS: list[Any] = [
    {"status": "done"},
    {"status": "succeeded"},  # no output
    {"status": "failed", "error": {"code": "x"}},
    {"status": "interrupted"},
    {"status": "handoff", "handoff": {"payload": 1}},
    {"status": "succeeded", "output": 1, "extra": True},
    [1, 2],
]


async def test_malformed_answers_fail_with_bad_step_result(
    make_client: AppFactory, server: LoopbackServer
) -> None:
    client = await make_client()
    answers = [
        *(
            Reply(200, [("Content-Type", "application/json")], json.dumps(a).encode())
            for a in BAD_ANSWERS
        ),
        Reply(200, [("Content-Type", "application/json")], b"{not json"),
        Reply(200, body=b"plain text"),
    ]
    for i, reply in enumerate(answers):
        url = endpoint(server, lambda req, reply=reply: reply, path=f"/bad{i}")
        run = await start(client, calling(url, retry={"max_attempts": 3, "initial_delay_s": 0}))
        assert run["status"] == "failed", (i, run)
        assert run["error"]["code"] == "bad_step_result", (i, run)
        assert run["error"]["node"] == "remote"
        assert len(server.hits_for(f"/bad{i}")) == 1  # a broken endpoint is not retried
