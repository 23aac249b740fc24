"""The ``http`` step end to end: through the runner, the node's retry policy and timeout."""

from __future__ import annotations

import json
from typing import Any

import httpx
from loopback_server import Hit, LoopbackServer, Reply

from tests.conftest import AppFactory, events_of, run_and_wait


def json_reply(data: Any, status: int = 200, headers: list[tuple[str, str]] | None = None) -> Reply:
    return Reply(
        status, [("Content-Type", "application/json"), *(headers or [])], json.dumps(data).encode()
    )


def failing_first(times: int, failure: Reply, success: Reply) -> Any:
    """A route that answers ``failure`` ``times`` times, then ``success``."""
    count = 0

    def reply(hit: Hit) -> Reply:
        nonlocal count
        count += 1
        return failure if count <= times else success

    return reply


def one_node(url: str, **node: Any) -> dict[str, Any]:
    with_ = {"url": url, **node.pop("with", {})}
    return {
        "name": "fetch",
        "nodes": {"fetch": {"step": "http", "with": with_, "set": {"got": "{{ output }}"}, **node}},
    }


async def start(client: httpx.AsyncClient, definition: dict[str, Any]) -> dict[str, Any]:
    return await run_and_wait(client, {"definition": definition, "inputs": {}})


async def of_type(client: httpx.AsyncClient, run_id: str, kind: str) -> list[dict[str, Any]]:
    return [e for e in await events_of(client, run_id) if e["type"] == kind]


TINY_RETRY = {"max_attempts": 3, "initial_delay_s": 0.01, "backoff": 2.0}


async def test_retries_with_backoff_until_success_with_one_idempotency_key(
    make_client: AppFactory, server: LoopbackServer
) -> None:
    client = await make_client()
    server.route("/flaky", failing_first(2, Reply(503, body=b"busy"), json_reply({"ok": True})))
    run = await start(client, one_node(server.url("/flaky"), retry=TINY_RETRY))

    assert run["status"] == "completed", run
    assert run["state"]["got"]["body"] == {"ok": True}
    hits = server.hits_for("/flaky")
    assert len(hits) == 3
    assert {hit.headers["idempotency-key"] for hit in hits} == {f"{run['id']}:fetch:1"}
    retrying = await of_type(client, run["id"], "node.retrying")
    assert [e["data"]["attempt"] for e in retrying] == [1, 2]
    assert [e["data"]["delay_s"] for e in retrying] == [0.01, 0.02]  # initial, then * backoff
    assert all(e["data"]["error"]["code"] == "http_error" for e in retrying)
    assert all(e["node"] == "fetch" for e in retrying)
    assert await of_type(client, run["id"], "node.failed") == []


async def test_retries_until_exhaustion_fail_the_run_with_the_http_error(
    make_client: AppFactory, server: LoopbackServer
) -> None:
    client = await make_client()
    server.route("/down", json_reply({"why": "down"}, 503))
    run = await start(client, one_node(server.url("/down"), retry=TINY_RETRY))

    assert run["status"] == "failed", run
    error = run["error"]
    assert error["code"] == "http_error" and error["node"] == "fetch"
    assert "503" in error["message"]
    assert error["details"] == {"status": 503, "body": {"why": "down"}}
    assert len(server.hits_for("/down")) == 3
    retrying = await of_type(client, run["id"], "node.retrying")
    assert [e["data"]["attempt"] for e in retrying] == [1, 2]
    [failed] = await of_type(client, run["id"], "node.failed")
    assert failed["data"]["error"]["code"] == "http_error"


async def test_a_client_error_is_retried_by_the_node_s_policy(
    make_client: AppFactory, server: LoopbackServer
) -> None:
    """DESIGN §2: an `http` step's non-2xx answer is a retryable failure, 4xx included."""
    client = await make_client()
    server.route("/gone", Reply(404, body=b"nope"))
    run = await start(client, one_node(server.url("/gone"), retry=TINY_RETRY))
    assert run["status"] == "failed", run
    assert run["error"]["details"] == {"status": 404, "body": "nope"}
    attempts = TINY_RETRY["max_attempts"]
    assert len(server.hits_for("/gone")) == attempts
    assert len(await of_type(client, run["id"], "node.retrying")) == attempts - 1


async def test_a_client_error_is_not_retried_with_retry_on_4xx_false(
    make_client: AppFactory, server: LoopbackServer
) -> None:
    client = await make_client()
    server.route("/missing", Reply(404, body=b"nope"))
    definition = one_node(
        server.url("/missing"), retry=TINY_RETRY, **{"with": {"retry_on_4xx": False}}
    )
    run = await start(client, definition)

    assert run["status"] == "failed", run
    assert run["error"]["code"] == "http_error"
    assert run["error"]["details"] == {"status": 404, "body": "nope"}
    assert len(server.hits_for("/missing")) == 1
    assert await of_type(client, run["id"], "node.retrying") == []


async def test_the_node_retry_policy_can_retry_client_errors(
    make_client: AppFactory, server: LoopbackServer
) -> None:
    """`retry.retry_on_4xx` on the node: a 4xx answer is retried like a 5xx (here a 409
    while the other side catches up), for any step that reports the status."""
    client = await make_client()
    server.route("/late", failing_first(2, Reply(409, body=b"not yet"), json_reply({"ok": 1})))
    retry = {**TINY_RETRY, "retry_on_4xx": True}
    run = await start(client, one_node(server.url("/late"), retry=retry))
    assert run["status"] == "completed", run
    assert len(server.hits_for("/late")) == 3
    retrying = await of_type(client, run["id"], "node.retrying")
    assert [e["data"]["attempt"] for e in retrying] == [1, 2]


async def test_without_a_retry_policy_a_node_is_tried_once(
    make_client: AppFactory, server: LoopbackServer
) -> None:
    client = await make_client()
    server.route("/down", Reply(503))
    run = await start(client, one_node(server.url("/down")))

    assert run["status"] == "failed", run
    assert len(server.hits_for("/down")) == 1


async def test_retry_after_is_honoured(make_client: AppFactory, server: LoopbackServer) -> None:
    client = await make_client()
    server.route(
        "/later",
        failing_first(1, Reply(429, [("Retry-After", "1")]), json_reply({"ok": 1})),
    )
    run = await start(client, one_node(server.url("/later"), retry=TINY_RETRY))

    assert run["status"] == "completed", run
    [retrying] = await of_type(client, run["id"], "node.retrying")
    assert retrying["data"]["delay_s"] >= 1.0
    assert len(server.hits_for("/later")) == 2


async def test_node_timeout_fails_the_node(make_client: AppFactory, server: LoopbackServer) -> None:
    client = await make_client()
    server.route("/slow", Reply(200, body=b"late", delay_s=5))
    run = await start(client, one_node(server.url("/slow"), timeout_s=0.2))

    assert run["status"] == "failed", run
    assert run["error"]["code"] == "timeout"
    assert "fetch" in run["error"]["message"]


async def test_with_timeout_fails_the_node_and_is_retried(
    make_client: AppFactory, server: LoopbackServer
) -> None:
    client = await make_client()
    server.route(
        "/slow", failing_first(1, Reply(200, body=b"late", delay_s=5), json_reply({"ok": 2}))
    )
    run = await start(
        client, one_node(server.url("/slow"), retry=TINY_RETRY, **{"with": {"timeout_s": 0.8}})
    )

    assert run["status"] == "completed", run
    assert run["state"]["got"]["body"] == {"ok": 2}
    [retrying] = await of_type(client, run["id"], "node.retrying")  # (0.8 s: a busy CI box)
    assert retrying["data"]["error"]["code"] == "timeout"
    assert "0.8 s" in retrying["data"]["error"]["message"]


async def test_with_timeout_when_exhausted(make_client: AppFactory, server: LoopbackServer) -> None:
    client = await make_client()
    server.route("/slow", Reply(200, body=b"late", delay_s=5))
    run = await start(client, one_node(server.url("/slow"), **{"with": {"timeout_s": 0.2}}))

    assert run["status"] == "failed", run
    assert run["error"]["code"] == "timeout"
    assert run["error"]["message"].startswith(f"GET {server.url('/slow')}")


async def test_an_oversize_body_fails_the_node(
    make_client: AppFactory, server: LoopbackServer
) -> None:
    client = await make_client(http_max_response_bytes=64)
    server.route("/big", Reply(200, body=b"x" * 1000))
    server.route("/small", Reply(200, body=b"x" * 64))
    run = await start(client, one_node(server.url("/big"), retry=TINY_RETRY))

    assert run["status"] == "failed", run
    assert run["error"]["code"] == "response_too_large"
    assert run["error"]["details"] == {"limit": 64}
    assert len(server.hits_for("/big")) == 1  # not retryable

    run = await start(client, one_node(server.url("/small")))
    assert run["status"] == "completed", run
    assert run["state"]["got"]["body"] == "x" * 64


async def test_each_visit_has_its_own_idempotency_key(
    make_client: AppFactory, server: LoopbackServer
) -> None:
    client = await make_client()
    server.route("/count", json_reply({"ok": True}))
    definition = {
        "name": "loop",
        "state": {"n": 0},
        "nodes": {
            "fetch": {"step": "http", "with": {"url": server.url("/count")}},
            "count": {"step": "set", "set": {"n": "{{ state.n + 1 }}"}},
            "done": {"step": "set"},
        },
        "edges": [
            {"from": "fetch", "to": "count"},
            {"from": "count", "to": "fetch", "when": "state.n < 2", "loop": True},
            {"from": "count", "to": "done"},
        ],
    }
    run = await start(client, definition)

    assert run["status"] == "completed", run
    keys = [hit.headers["idempotency-key"] for hit in server.hits_for("/count")]
    assert keys == [f"{run['id']}:fetch:1", f"{run['id']}:fetch:2"]


async def test_a_user_idempotency_key_is_kept(
    make_client: AppFactory, server: LoopbackServer
) -> None:
    client = await make_client()
    server.route("/k", json_reply({}))
    node = one_node(server.url("/k"), **{"with": {"headers": {"idempotency-key": "mine"}}})
    run = await start(client, node)

    assert run["status"] == "completed", run
    [hit] = server.hits_for("/k")
    assert hit.headers["idempotency-key"] == "mine"


async def test_output_and_request_shape(make_client: AppFactory, server: LoopbackServer) -> None:
    client = await make_client()
    server.route("/echo", lambda hit: json_reply({"body": json.loads(hit.body), "q": hit.target}))
    definition = one_node(
        server.url("/echo"),
        **{
            "with": {
                "method": "POST",
                "query": {"a": "{{ inputs.a }}"},
                "json": {"amount": "{{ inputs.a * 2 }}"},
            }
        },
    )
    run = await run_and_wait(client, {"definition": definition, "inputs": {"a": 21}})

    assert run["status"] == "completed", run
    got = run["state"]["got"]
    assert got["status"] == 200
    assert got["headers"]["content-type"] == "application/json"
    assert got["body"] == {"body": {"amount": 42}, "q": "/echo?a=21"}
    [hit] = server.hits_for("/echo")
    assert hit.method == "POST" and hit.headers["content-type"] == "application/json"


async def test_a_header_value_that_is_not_ascii_is_a_config_error(
    make_client: AppFactory, server: LoopbackServer
) -> None:
    client = await make_client()
    server.route("/h", json_reply({}))
    node = one_node(server.url("/h"), **{"with": {"headers": {"X-Name": "{{ inputs.name }}"}}})
    run = await run_and_wait(client, {"definition": node, "inputs": {"name": "José"}})

    assert run["status"] == "failed", run
    assert run["error"]["code"] == "invalid_step_config"
    assert "X-Name" in run["error"]["message"] and "not ASCII" in run["error"]["message"]
    assert server.hits == []
