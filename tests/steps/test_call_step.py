"""The ``call`` step against a real loopback endpoint."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
import pytest
from loopback_server import LoopbackServer, Reply, make_ctx

from app.steps.base import StepResult, StepStatus
from app.steps.call import CallStep
from app.steps.destinations import OutboundPolicy

STEP = CallStep()


def answer(data: Any, status: int = 200) -> Reply:
    return Reply(status, [("Content-Type", "application/json")], json.dumps(data).encode())


async def call(
    server: LoopbackServer, http_client: httpx.AsyncClient, reply: Reply, **kw: Any
) -> StepResult:
    server.route("/step", reply)
    config = kw.pop("config", {})
    return await STEP.execute(
        make_ctx({"url": server.url("/step"), **config}, http_client, step="call", **kw)
    )


async def test_request_body_and_headers(
    server: LoopbackServer, http_client: httpx.AsyncClient
) -> None:
    config = {"headers": {"Authorization": "Bearer t"}, "model": "m-1", "params": {"k": [1]}}
    result = await call(
        server,
        http_client,
        answer({"status": "succeeded", "output": {"n": 1}}),
        config=config,
        run_id="run-1",
        node="score",
        attempt=2,
        visit=4,
        state={"total": 3},
        context={"agent_id": "a"},
    )
    assert result == StepResult.succeeded({"n": 1})
    hit = server.hits[0]
    assert hit.method == "POST"
    assert hit.headers["idempotency-key"] == "run-1:score:4"
    assert hit.headers["authorization"] == "Bearer t"
    assert hit.headers["content-type"] == "application/json"
    assert json.loads(hit.body) == {
        "run_id": "run-1",
        "node": "score",
        "attempt": 2,
        "idempotency_key": "run-1:score:4",
        "with": {"url": server.url("/step"), **config},
        "state": {"total": 3},
        "context": {"agent_id": "a"},
    }


# --------------------------------------------------------------------------- every status


@pytest.mark.parametrize(
    ("body", "expected"),
    [
        ({"status": "succeeded", "output": [1, "two"]}, StepResult.succeeded([1, "two"])),
        ({"status": "succeeded", "output": None}, StepResult.succeeded(None)),
        (
            {"status": "failed", "error": {"code": "quota", "message": "over", "retryable": True}},
            StepResult.failed("quota", "over", retryable=True),
        ),
        (
            {
                "status": "failed",
                "error": {
                    "code": "bad_step_result",  # the endpoint's own code, passed through
                    "message": "m",
                    "retryable": False,
                    "retry_after_s": 2.5,
                    "details": {"why": 1},
                },
            },
            StepResult.failed("bad_step_result", "m", retry_after_s=2.5, details={"why": 1}),
        ),
        ({"status": "needs_continuation"}, StepResult.needs_continuation()),
        (
            {"status": "needs_continuation", "output": {"progress": 0.5}},
            StepResult.needs_continuation(output={"progress": 0.5}),
        ),
        (
            {"status": "interrupted", "interrupt": {"payload": {"q": "ok?"}}},
            StepResult.interrupted({"q": "ok?"}),
        ),
        (
            {
                "status": "interrupted",
                "interrupt": {"payload": "ok?", "schema": {"type": "object"}},
            },
            StepResult.interrupted("ok?", {"type": "object"}),
        ),
        ({"status": "awaiting_input"}, StepResult.awaiting_input()),
        ({"status": "awaiting_input", "prompt": "Name?"}, StepResult.awaiting_input("Name?")),
        (
            {"status": "handoff", "handoff": {"to": "billing", "payload": {"id": 7}}},
            StepResult.handoff_to("billing", {"id": 7}),
        ),
    ],
)
async def test_every_status(
    server: LoopbackServer, http_client: httpx.AsyncClient, body: Any, expected: StepResult
) -> None:
    assert await call(server, http_client, answer(body)) == expected


async def test_resume_after(server: LoopbackServer, http_client: httpx.AsyncClient) -> None:
    before = datetime.now(UTC)
    result = await call(
        server, http_client, answer({"status": "needs_continuation", "resume_after_s": 60})
    )
    assert result.status is StepStatus.NEEDS_CONTINUATION
    assert result.resume_at is not None
    assert result.resume_at.tzinfo is not None
    assert before + timedelta(seconds=60) <= result.resume_at
    assert result.resume_at <= datetime.now(UTC) + timedelta(seconds=60)


# --------------------------------------------------------------------------- malformed


@pytest.mark.parametrize(
    ("raw", "fragment"),
    [
        (b"", "not JSON"),
        (b"<html>oops</html>", "not JSON"),
        (b'{"status": "succeeded", "output": NaN}', "not JSON"),
        (b"[1, 2]", "not a valid step result"),
        (b'"succeeded"', "not a valid step result"),
        (b'{"output": 1}', "status"),
        (b'{"status": "done", "output": 1}', "'done'"),
        (b'{"status": "SUCCEEDED", "output": 1}', "'SUCCEEDED'"),
        (b'{"status": "succeeded"}', "output: Field required"),
        (b'{"status": "succeeded", "output": 1, "extra": 2}', "extra"),
        (b'{"status": "failed"}', "error: Field required"),
        (b'{"status": "failed", "error": "boom"}', "error"),
        (b'{"status": "failed", "error": {"code": "x", "message": "m"}}', "error.retryable"),
        (
            b'{"status": "failed", "error": {"code": "x", "message": "m", "retryable": "yes"}}',
            "error.retryable",
        ),
        (b'{"status": "failed", "error": {"code": "", "message": "m", "retryable": true}}', "code"),
        (b'{"status": "needs_continuation", "resume_after_s": -1}', "resume_after_s"),
        (b'{"status": "needs_continuation", "resume_after_s": "5"}', "resume_after_s"),
        (b'{"status": "needs_continuation", "resume_after_s": true}', "resume_after_s"),
        (b'{"status": "needs_continuation", "resume_after_s": 1e300}', "too large"),
        (b'{"status": "interrupted"}', "interrupt: Field required"),
        (b'{"status": "interrupted", "interrupt": {"schema": {}}}', "interrupt.payload"),
        (b'{"status": "interrupted", "interrupt": {"payload": 1, "schema": []}}', "schema"),
        (
            b'{"status": "interrupted", "interrupt": {"payload": 1, "schema": {"type": "no"}}}',
            "the interrupt's schema: invalid JSON Schema",
        ),
        (
            b'{"status": "interrupted", "interrupt": {"payload": 1, "schema": {"$ref": "#/x"}}}',
            "the interrupt's schema: unusable JSON Schema",
        ),
        (
            b'{"status": "interrupted", "interrupt": {"payload": 1, "schema": {"pattern": "("}}}',
            "is not a 'regex'",
        ),
        (
            b'{"status": "interrupted", "interrupt": {"payload": 1, "schema": {"$schema": 5}}}',
            "the interrupt's schema: unusable JSON Schema",
        ),
        (b'{"status": "awaiting_input", "prompt": 5}', "prompt"),
        (b'{"status": "handoff"}', "handoff: Field required"),
        (b'{"status": "handoff", "handoff": {"payload": 1}}', "handoff.to"),
        (b'{"status": "handoff", "handoff": {"to": 3, "payload": 1}}', "handoff.to"),
    ],
)
async def test_malformed_answer(
    server: LoopbackServer, http_client: httpx.AsyncClient, raw: bytes, fragment: str
) -> None:
    result = await call(
        server, http_client, Reply(200, [("Content-Type", "application/json")], raw)
    )
    assert result.status is StepStatus.FAILED
    assert result.error is not None
    assert result.error.code == "bad_step_result"
    assert fragment in result.error.message
    assert not result.error.retryable
    assert result.error.details is not None
    assert result.error.details["status"] == 200
    assert result.error.details["answer"] == raw.decode()


# --------------------------------------------------------------------------- transport


@pytest.mark.parametrize(("status", "retryable"), [(503, True), (429, True), (400, False)])
async def test_non_2xx_answer_is_an_http_error(
    server: LoopbackServer, http_client: httpx.AsyncClient, status: int, retryable: bool
) -> None:
    # even a well-formed step result does not count when the HTTP status is not 2xx
    result = await call(server, http_client, answer({"status": "succeeded", "output": 1}, status))
    assert result.error is not None
    assert result.error.code == "http_error"
    assert str(status) in result.error.message
    assert result.error.retryable is retryable
    assert result.error.details == {"status": status, "body": {"status": "succeeded", "output": 1}}


async def test_timeout(server: LoopbackServer, http_client: httpx.AsyncClient) -> None:
    reply = Reply(200, body=b'{"status": "succeeded", "output": 1}', delay_s=2)
    result = await call(server, http_client, reply, config={"timeout_s": 0.2})
    assert result.error is not None
    assert (result.error.code, result.error.retryable) == ("timeout", True)


async def test_redirect_is_not_followed(
    server: LoopbackServer, http_client: httpx.AsyncClient
) -> None:
    server.route("/elsewhere", answer({"status": "succeeded", "output": 1}))
    result = await call(server, http_client, Reply(307, [("Location", "/elsewhere")]))
    assert result.error is not None
    assert result.error.code == "http_error"
    assert server.hits_for("/elsewhere") == []


async def test_refused_address(server: LoopbackServer, http_client: httpx.AsyncClient) -> None:
    result = await call(
        server, http_client, answer({"status": "succeeded", "output": 1}), policy=OutboundPolicy()
    )
    assert result.error is not None
    assert (result.error.code, result.error.retryable) == ("address_not_allowed", False)
    assert server.connections == 0


@pytest.mark.parametrize(
    "config", [{"url": None}, {"timeout_s": -1}, {"headers": {"A": "1\n"}}, {"headers": "x"}]
)
async def test_invalid_config(
    server: LoopbackServer, http_client: httpx.AsyncClient, config: dict[str, Any]
) -> None:
    result = await call(server, http_client, answer({}), config=config)
    assert result.error is not None
    assert result.error.code == "invalid_step_config"
    assert server.connections == 0
