"""The ``http`` step against real loopback servers."""

from __future__ import annotations

import json
import socket
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from email.utils import format_datetime
from types import SimpleNamespace
from typing import Any

import httpx
import pytest
from loopback_server import LoopbackServer, Reply, make_ctx

from app.steps.base import StepResult, StepStatus
from app.steps.destinations import OutboundPolicy
from app.steps.http import HttpStep, parse_retry_after

STEP = HttpStep()


async def run(config: dict[str, Any], client: httpx.AsyncClient | None, **kw: Any) -> StepResult:
    return await STEP.execute(make_ctx(config, client, **kw))


def json_reply(data: Any, status: int = 200, content_type: str = "application/json") -> Reply:
    return Reply(status, [("Content-Type", content_type)], json.dumps(data).encode())


def failed_code(result: StepResult) -> str:
    assert result.status is StepStatus.FAILED, result
    assert result.error is not None
    return result.error.code


# --------------------------------------------------------------------------- success


async def test_json_response(server: LoopbackServer, http_client: httpx.AsyncClient) -> None:
    server.route("/data", json_reply({"items": [1, 2], "ok": True}))
    result = await run({"url": server.url("/data")}, http_client)
    assert result.status is StepStatus.SUCCEEDED
    assert result.output["status"] == 200
    assert result.output["body"] == {"items": [1, 2], "ok": True}
    assert result.output["headers"]["content-type"] == "application/json"
    assert server.hits[0].method == "GET"


@pytest.mark.parametrize(
    ("content_type", "raw", "body"),
    [
        ("application/problem+json", b'{"title": "x"}', {"title": "x"}),
        ("application/json; charset=utf-8", b"[1, 2]", [1, 2]),
        ("text/plain; charset=utf-8", b'{"not": "parsed"}', '{"not": "parsed"}'),
        ("text/html; charset=latin-1", "café".encode("latin-1"), "café"),
        ("application/json", b"{broken", "{broken"),
        ("application/json", b'{"n": NaN}', '{"n": NaN}'),
        ("application/octet-stream", b"\xff\xfe", "\ufffd\ufffd"),
    ],
)
async def test_body_is_json_only_when_the_response_is_json(
    server: LoopbackServer,
    http_client: httpx.AsyncClient,
    content_type: str,
    raw: bytes,
    body: Any,
) -> None:
    server.route("/x", Reply(200, [("Content-Type", content_type)], raw))
    result = await run({"url": server.url("/x")}, http_client)
    assert result.output["body"] == body


async def test_text_response_and_head(
    server: LoopbackServer, http_client: httpx.AsyncClient
) -> None:
    server.route("/t", Reply(200, [("Content-Type", "text/plain")], b"hello"))
    assert (await run({"url": server.url("/t")}, http_client)).output["body"] == "hello"
    head = await run({"url": server.url("/t"), "method": "HEAD"}, http_client)
    assert head.output["status"] == 200
    assert head.output["body"] == ""


async def test_request_is_built_from_the_config(
    server: LoopbackServer, http_client: httpx.AsyncClient
) -> None:
    server.route("/orders", Reply(201))
    config = {
        "method": "post",
        "url": server.url("/orders?source=wf"),
        "headers": {"X-Tenant": "acme", "X-Count": 3, "X-Flag": True},
        "query": {"page": 2, "tags": ["a", "b"], "draft": False},
        "json": {"amount": 120.5, "items": ["x"], "note": "é"},
    }
    result = await run(config, http_client)
    assert result.output["status"] == 201
    hit = server.hits[0]
    assert hit.method == "POST"
    assert hit.target == "/orders?source=wf&page=2&tags=a&tags=b&draft=false"
    assert hit.headers["x-tenant"] == "acme"
    assert hit.headers["x-count"] == "3"
    assert hit.headers["x-flag"] == "true"
    assert hit.headers["content-type"] == "application/json"
    assert json.loads(hit.body) == {"amount": 120.5, "items": ["x"], "note": "é"}


async def test_text_body_and_json_null(
    server: LoopbackServer, http_client: httpx.AsyncClient
) -> None:
    server.route("/in", Reply(204))
    await run(
        {"method": "PUT", "url": server.url("/in"), "body": "a,b\n1,2", "headers": {
            "Content-Type": "text/csv"}},
        http_client,
    )  # fmt: skip
    await run({"method": "POST", "url": server.url("/in"), "json": None}, http_client)
    csv, null = server.hits
    assert (csv.method, csv.body, csv.headers["content-type"]) == ("PUT", b"a,b\n1,2", "text/csv")
    assert (null.body, null.headers["content-type"]) == (b"null", "application/json")


async def test_idempotency_key_header(
    server: LoopbackServer, http_client: httpx.AsyncClient
) -> None:
    server.route("/k", Reply(200))
    await run({"url": server.url("/k")}, http_client, run_id="run-9", node="pay", visit=3)
    await run({"url": server.url("/k"), "headers": {"idempotency-key": "mine"}}, http_client)
    assert server.hits[0].headers["idempotency-key"] == "run-9:pay:3"
    assert server.hits[1].headers["idempotency-key"] == "mine"


async def test_without_a_shared_client(server: LoopbackServer) -> None:
    server.route("/x", json_reply({"ok": 1}))
    result = await run({"url": server.url("/x")}, None)
    assert result.output["body"] == {"ok": 1}


# --------------------------------------------------------------------------- failures


async def test_a_non_2xx_answer_is_retryable_by_default(
    server: LoopbackServer, http_client: httpx.AsyncClient
) -> None:
    """DESIGN §2: non-2xx and network errors fail (retryable)."""
    server.route("/x", json_reply({"error": "nope"}, status=404))
    result = await run({"url": server.url("/x")}, http_client)
    assert failed_code(result) == "http_error"
    assert result.error is not None and result.error.retryable is True


@pytest.mark.parametrize(
    ("status", "retry_on_4xx", "retryable"),
    [
        (500, False, True),
        (502, False, True),
        (503, False, True),
        (408, False, True),
        (429, False, True),
        (400, False, False),
        (404, False, False),
        (409, False, False),
        (404, True, True),
        (422, True, True),
    ],
)
async def test_non_2xx_fails(
    server: LoopbackServer,
    http_client: httpx.AsyncClient,
    status: int,
    retry_on_4xx: bool,
    retryable: bool,
) -> None:
    server.route("/x", json_reply({"error": "nope"}, status=status))
    result = await run({"url": server.url("/x"), "retry_on_4xx": retry_on_4xx}, http_client)
    assert failed_code(result) == "http_error"
    assert result.error is not None
    assert str(status) in result.error.message
    assert result.error.retryable is retryable
    assert result.error.details == {"status": status, "body": {"error": "nope"}}
    assert result.error.retry_after_s is None


async def test_retry_after_seconds(server: LoopbackServer, http_client: httpx.AsyncClient) -> None:
    server.route("/x", Reply(429, [("Retry-After", "7")], b"slow down"))
    result = await run({"url": server.url("/x")}, http_client)
    assert result.error is not None
    assert result.error.retryable
    assert result.error.retry_after_s == 7.0
    assert result.error.details == {"status": 429, "body": "slow down"}


async def test_retry_after_http_date(
    server: LoopbackServer, http_client: httpx.AsyncClient
) -> None:
    when = format_datetime(datetime.now(UTC) + timedelta(seconds=30), usegmt=True)
    server.route("/x", Reply(503, [("Retry-After", when)]))
    result = await run({"url": server.url("/x")}, http_client)
    assert result.error is not None
    assert result.error.retry_after_s is not None
    assert 27 <= result.error.retry_after_s <= 30


def test_parse_retry_after() -> None:
    now = datetime(2025, 1, 1, 12, 0, 0, tzinfo=UTC)
    assert parse_retry_after("120", now=now) == 120
    assert parse_retry_after("Wed, 01 Jan 2025 12:01:30 GMT", now=now) == 90
    assert parse_retry_after("Wed, 01 Jan 2025 11:00:00 GMT", now=now) == 0  # past
    assert parse_retry_after("soon", now=now) is None
    assert parse_retry_after("-5", now=now) is None
    assert parse_retry_after(None, now=now) is None


async def test_long_error_body_is_truncated_in_details(
    server: LoopbackServer, http_client: httpx.AsyncClient
) -> None:
    server.route("/x", Reply(500, [("Content-Type", "text/plain")], b"e" * 100_000))
    result = await run({"url": server.url("/x")}, http_client)
    assert result.error is not None
    assert result.error.details is not None
    assert len(result.error.details["body"]) == 64 * 1024
    assert result.error.details["body_truncated"] is True


async def test_timeout(server: LoopbackServer, http_client: httpx.AsyncClient) -> None:
    server.route("/slow", Reply(200, delay_s=2))
    result = await run({"url": server.url("/slow"), "timeout_s": 0.2}, http_client)
    assert failed_code(result) == "timeout"
    assert result.error is not None
    assert result.error.retryable
    assert "0.2 s" in result.error.message


async def test_timeout_is_also_read_as_design_names_it(
    server: LoopbackServer, http_client: httpx.AsyncClient
) -> None:
    """DESIGN §2 lists the key as ``timeout``: it is ``timeout_s``; both at once is refused."""
    server.route("/slow", Reply(200, delay_s=2))
    result = await run({"url": server.url("/slow"), "timeout": 0.2}, http_client)
    assert failed_code(result) == "timeout"
    assert result.error is not None and "0.2 s" in result.error.message
    both = await run({"url": server.url("/slow"), "timeout": 0.2, "timeout_s": 0.3}, http_client)
    assert failed_code(both) == "invalid_step_config"
    assert both.error is not None and "timeout" in both.error.message


async def test_network_error(http_client: httpx.AsyncClient) -> None:
    with socket.socket() as sock:  # a port that nothing listens on
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    result = await run({"url": f"http://127.0.0.1:{port}/"}, http_client)
    assert failed_code(result) == "network_error"
    assert result.error is not None
    assert result.error.retryable


@pytest.mark.parametrize("services", [SimpleNamespace(outbound_policy=OutboundPolicy()), None])
async def test_refused_address(
    server: LoopbackServer, http_client: httpx.AsyncClient, services: Any
) -> None:
    ctx = make_ctx({"url": server.url("/")}, http_client)
    ctx.services = services  # the default policy, given or by default
    result = await STEP.execute(ctx)
    assert failed_code(result) == "address_not_allowed"
    assert result.error is not None
    assert not result.error.retryable
    assert server.connections == 0


@pytest.mark.parametrize("url", ["ftp://127.0.0.1/x", "file:///etc/passwd"])
async def test_refused_scheme(url: str, http_client: httpx.AsyncClient) -> None:
    assert failed_code(await run({"url": url}, http_client)) == "address_not_allowed"


async def test_response_too_large(server: LoopbackServer, http_client: httpx.AsyncClient) -> None:
    server.route("/big", lambda hit: Reply(200, chunks=(b"z" * 4096 for _ in range(100))))
    policy = OutboundPolicy(allowed_hosts=frozenset({"127.0.0.1"}), max_response_bytes=10_000)
    result = await run({"url": server.url("/big")}, http_client, policy=policy)
    assert failed_code(result) == "response_too_large"
    assert result.error is not None
    assert not result.error.retryable


# --------------------------------------------------------------------------- redirects


async def test_redirect_not_followed_by_default(
    server: LoopbackServer, http_client: httpx.AsyncClient
) -> None:
    server.route("/old", Reply(301, [("Location", "/new")]))
    server.route("/new", json_reply({"here": True}))
    result = await run({"url": server.url("/old")}, http_client)
    assert failed_code(result) == "http_error"
    assert result.error is not None
    assert result.error.retryable  # a non-2xx answer (DESIGN §2)
    assert result.error.details is not None
    assert result.error.details["location"] == "/new"
    assert server.hits_for("/new") == []

    followed = await run({"url": server.url("/old"), "follow_redirects": True}, http_client)
    assert followed.output["body"] == {"here": True}


async def test_followed_redirect_to_a_refused_address(
    make_server: Callable[..., LoopbackServer], http_client: httpx.AsyncClient
) -> None:
    origin, target = make_server(), make_server()
    origin.route("/go", Reply(302, [("Location", target.url("/internal"))]))
    policy = OutboundPolicy(allowed_hosts=frozenset({"localhost"}))
    result = await run(
        {"url": origin.url("/go", "localhost"), "follow_redirects": True},
        http_client,
        policy=policy,
    )
    assert failed_code(result) == "address_not_allowed"
    assert len(origin.hits) == 1
    assert target.connections == 0


# --------------------------------------------------------------------------- config


@pytest.mark.parametrize(
    ("config", "fragment"),
    [
        ({}, "url: Field required"),
        ({"url": ""}, "url"),
        ({"url": 5}, "url"),
        ({"url": "{u}", "method": "FETCH"}, "method"),
        ({"url": "{u}", "method": 1}, "method"),
        ({"url": "{u}", "json": {}, "body": "x"}, "not both"),
        ({"url": "{u}", "body": {"a": 1}}, "body"),
        ({"url": "{u}", "headers": {"X-A": "1\r\nX-Injected: 1"}}, "line break"),
        ({"url": "{u}", "headers": {"Bad Name": "x"}}, "header name"),
        ({"url": "{u}", "headers": {"X-A": {"nested": 1}}}, "headers.X-A"),
        ({"url": "{u}", "headers": ["X-A"]}, "headers"),
        ({"url": "{u}", "query": {"q": {"nested": 1}}}, "query.q"),
        ({"url": "{u}", "timeout_s": 0}, "timeout_s"),
        ({"url": "{u}", "timeout_s": "5"}, "timeout_s"),
        ({"url": "{u}", "timeout_s": True}, "timeout_s"),
        ({"url": "{u}", "follow_redirects": "yes"}, "follow_redirects"),
        ({"url": "{u}", "retry_on_4xx": 1}, "retry_on_4xx"),
        ({"url": "{u}", "heders": {}}, "heders"),
        ({"url": "{u}", "json": float("nan")}, "json"),
        ({"url": "http://[::1/"}, "url"),
        ({"url": "https://☃.com/"}, "url"),
    ],
)
async def test_invalid_config(
    server: LoopbackServer, http_client: httpx.AsyncClient, config: dict[str, Any], fragment: str
) -> None:
    if config.get("url") == "{u}":
        config = {**config, "url": server.url("/")}
    result = await run(config, http_client)
    assert failed_code(result) == "invalid_step_config"
    assert result.error is not None
    assert fragment in result.error.message
    assert not result.error.retryable
    assert server.connections == 0


async def test_numeric_timeout_and_lowercase_method_are_fine(
    server: LoopbackServer, http_client: httpx.AsyncClient
) -> None:
    server.route("/x", Reply(200))
    result = await run({"url": server.url("/x"), "timeout_s": 5, "method": "delete"}, http_client)
    assert result.status is StepStatus.SUCCEEDED
    assert server.hits[0].method == "DELETE"
