"""Errors are problem+json with a stable code; bad input never gives a 500."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest

from tests.conftest import AppFactory

PROBLEM = "application/problem+json"


def assert_problem(
    response: httpx.Response, status: int, code: str | None = None
) -> dict[str, Any]:
    assert response.status_code == status, response.text
    assert response.headers["content-type"] == PROBLEM
    body: dict[str, Any] = response.json()
    assert body["status"] == status
    assert {"type", "title", "status", "detail", "code"} <= set(body)
    assert body["type"].endswith("/" + body["code"])
    if code is not None:
        assert body["code"] == code, body
    return body


async def test_unknown_route_and_method(client: httpx.AsyncClient) -> None:
    body = assert_problem(await client.get("/nowhere"), 404, "not_found")
    assert "/nowhere" in body["detail"]
    response = await client.delete("/workflows")
    body = assert_problem(response, 405, "method_not_allowed")
    assert response.headers["allow"]


async def test_conflict(client: httpx.AsyncClient) -> None:
    definition = {"name": "one", "nodes": {"a": {"step": "set"}}}
    run = (await client.post("/runs/wait", json={"definition": definition, "inputs": {}})).json()
    assert run["status"] == "completed", run
    response = await client.post(f"/runs/{run['id']}/messages", json={"message": "hi"})
    body = assert_problem(response, 409)
    assert body["code"] != "conflict"  # a code that says which conflict


async def test_fastapi_validation_errors_are_problems(client: httpx.AsyncClient) -> None:
    for body in ({}, {"workflow": 5, "inputs": []}, {"workflow": "x", "inputs": {}, "bogus": 1}):
        problem = assert_problem(await client.post("/runs", json=body), 422, "validation_error")
        assert problem["errors"]
        for error in problem["errors"]:
            assert isinstance(error["loc"], list) and error["loc"][0] == "body"
            assert isinstance(error["msg"], str)
    unknown = assert_problem(
        await client.post("/runs", json={"workflow": "x", "inputs": {}, "bogus": 1}), 422
    )
    assert ["body", "bogus"] in [e["loc"] for e in unknown["errors"]]
    query = assert_problem(await client.get("/workflows", params={"limit": "many"}), 422)
    assert query["errors"][0]["loc"] == ["query", "limit"]


async def test_unsupported_media_type(client: httpx.AsyncClient) -> None:
    for path in ("/workflows", "/workflows/validate"):
        response = await client.post(
            path, content=b"name: x", headers={"Content-Type": "text/plain"}
        )
        assert_problem(response, 415, "unsupported_media_type")


async def test_body_over_the_limit_is_413(make_client: AppFactory) -> None:
    client = await make_client(max_body_bytes=1000)
    body = b'{"name": "' + b"x" * 2000 + b'"}'
    for path in ("/workflows", "/runs", "/nowhere"):
        response = await client.post(
            path, content=body, headers={"Content-Type": "application/json"}
        )
        assert_problem(response, 413, "payload_too_large")
    ok = await client.post("/workflows", json={"name": "small", "nodes": {"a": {"step": "set"}}})
    assert ok.status_code == 201


async def test_streamed_body_is_refused_without_reading_it_whole(make_client: AppFactory) -> None:
    client = await make_client(max_body_bytes=1000)
    sent: list[int] = []

    async def chunks() -> AsyncIterator[bytes]:
        for i in range(1000):
            sent.append(i)
            yield b"x" * 300

    response = await client.post(
        "/workflows", content=chunks(), headers={"Content-Type": "application/json"}
    )
    assert "content-length" not in response.request.headers
    assert_problem(response, 413, "payload_too_large")
    assert len(sent) < 10  # stopped after the chunk that passed the limit, not at the end


@pytest.mark.parametrize("path", ["/workflows", "/workflows/validate", "/runs"])
async def test_json_nested_too_deep_is_422(make_client: AppFactory, path: str) -> None:
    client = await make_client(max_json_depth=10)
    deep = '{"name": "x", "state": ' + '{"a": ' * 10 + "1" + "}" * 10 + "}"
    response = await client.post(path, content=deep, headers={"Content-Type": "application/json"})
    if path == "/workflows/validate":  # 200 for any document that does not parse
        assert response.status_code == 200, response.text
        assert response.json()["valid"] is False
        assert response.json()["errors"][0]["type"] == "too_deep"
    else:
        problem = assert_problem(response, 422, "json_too_deep")
        assert problem["errors"][0]["loc"] == ["body"]
    # brackets inside strings do not count
    shallow = '{"name": "x", "description": "' + "[{" * 50 + '", "nodes": {"a": {"step": "set"}}}'
    response = await client.post(
        "/workflows", content=shallow, headers={"Content-Type": "application/json"}
    )
    assert response.status_code == 201, response.text


async def test_unstorable_json_values_are_422_everywhere(client: httpx.AsyncClient) -> None:
    for text, loc in (
        ('{"workflow": "x", "inputs": {"n": 1e999}}', ["body", "inputs", "n"]),
        ('{"workflow": "x", "inputs": {"n": -Infinity}}', ["body"]),
        ('{"workflow": "x", "inputs": {"s": "a\\u0000b"}}', ["body", "inputs", "s"]),
        ('{"workflow": "x", "inputs": {"s": "\\ud800"}}', ["body", "inputs", "s"]),
        ('{"workflow": "x", "inputs": {"\\u0000": 1}}', ["body", "inputs", "\x00"]),
    ):
        for path in ("/runs", "/workflows"):
            response = await client.post(
                path, content=text, headers={"Content-Type": "application/json"}
            )
            problem = assert_problem(response, 422, "invalid_body")
            assert problem["errors"][0]["loc"] == loc, text
        checked = await client.post(
            "/workflows/validate", content=text, headers={"Content-Type": "application/json"}
        )
        assert checked.status_code == 200, (text, checked.text)
        assert checked.json()["valid"] is False
        assert checked.json()["errors"][0]["loc"] == loc[1:] or loc == ["body"], text
    # the same characters escaped are fine: a backslash followed by "u0000" is plain text
    fine = '{"name": "ok", "description": "\\\\u0000 1e999", "nodes": {"a": {"step": "set"}}}'
    response = await client.post(
        "/workflows", content=fine, headers={"Content-Type": "application/json"}
    )
    assert response.status_code == 201, response.text


async def test_a_body_that_does_not_parse_is_invalid_body_everywhere(
    client: httpx.AsyncClient,
) -> None:
    for path in ("/runs", "/runs/wait", "/runs/some-run/response", "/runs/some-run/fork"):
        response = await client.post(
            path, content=b'{"workflow": ', headers={"Content-Type": "application/json"}
        )
        problem = assert_problem(response, 422, "invalid_body")
        assert problem["errors"][0]["loc"] == ["body"], path
        assert problem["detail"].startswith("the body is not valid JSON"), path


async def test_duplicate_keys_are_422_in_every_json_body(client: httpx.AsyncClient) -> None:
    await client.post("/workflows", json={"name": "dup", "nodes": {"a": {"step": "input"}}})
    started = await client.post("/runs", json={"workflow": "dup", "inputs": {}})
    run_id = started.json()["id"]
    for path, text, loc in (
        ("/runs", '{"workflow": "dup", "workflow": "other", "inputs": {}}', ["workflow"]),
        ("/runs/wait", '{"workflow": "dup", "inputs": {"a": 1, "b": 2, "a": 3}}', ["inputs", "a"]),
        (f"/runs/{run_id}/messages", '{"message": "hi", "message": "bye"}', ["message"]),
        (
            f"/runs/{run_id}/state",
            '{"state_patch": {"x": [{"y": 1, "y": 2}]}}',
            ["state_patch", "x", 0, "y"],
        ),
    ):
        key = loc[-1]
        response = await client.post(
            path, content=text, headers={"Content-Type": "application/json"}
        )
        problem = assert_problem(response, 422, "invalid_body")
        assert problem["errors"] == [
            {"loc": ["body", *loc], "msg": problem["detail"], "type": "duplicate_key"}
        ], path
        assert repr(key) in problem["detail"], path
    # nothing was changed or started by any of them
    runs = (await client.get("/runs")).json()["items"]
    assert [r["id"] for r in runs] == [run_id]
    run = (await client.get(f"/runs/{run_id}")).json()
    assert run["status"] in ("queued", "running", "awaiting_input") and run["state"] == {}
    # the same key in two objects is no duplicate
    twice = '{"workflow": "dup", "inputs": {"a": {"k": 1}, "b": {"k": 2}}}'
    response = await client.post(
        "/runs", content=twice, headers={"Content-Type": "application/json"}
    )
    assert response.status_code == 202, response.text


BAD_BODIES = [
    (b"", "application/json"),
    (b"{", "application/json"),
    (b"null", "application/json"),
    (b"[]", "application/json"),
    (b"1", "application/json"),
    (b'"text"', "application/json"),
    (b"{}", "application/json"),
    (b'{"unknown": 1}', "application/json"),
    (b'{"workflow": 5, "inputs": []}', "application/json"),
    (b'{"workflow": "x", "inputs": {"n": ' + b"9" * 5000 + b"}}", "application/json"),
    (b'{"workflow": "x", "inputs": {"n": ' + b"9" * 100 + b"}}", "application/json"),
    (b'{"interrupt_id": "x", "value": 1}', "application/json"),
    (b'{"checkpoint_id": 99999999999999999999999}', "application/json"),
    (b"\xff\xfe\x00", "application/json"),
    (b"a: 1", "application/yaml"),
    (b"a: &x 1\nb: *x", "application/yaml"),
    (b"hello", "text/plain"),
]
POSTS = [
    "/workflows",
    "/workflows/validate",
    "/runs",
    "/runs/wait",
    "/runs/{id}/response",
    "/runs/{id}/messages",
    "/runs/{id}/resume",
    "/runs/{id}/fork",
    "/runs/{id}/cancel",
    "/runs/{id}/state",
    "/runs/nope/response",
    "/runs/nope/fork",
]


async def test_bad_input_never_gives_a_500(client: httpx.AsyncClient) -> None:
    await client.post("/workflows", json={"name": "x", "nodes": {"a": {"step": "input"}}})
    run = (await client.post("/runs/wait", json={"workflow": "x", "inputs": {}})).json()
    assert run["status"] == "awaiting_input", run
    for template in POSTS:
        path = template.format(id=run["id"])
        for body, media in BAD_BODIES:
            response = await client.post(
                path,
                content=body,
                headers={"Content-Type": media},
                params={"timeout_s": 0.1} if path.endswith("wait") else {},
            )
            assert response.status_code < 500, (path, body, response.text)
            if response.status_code >= 400:
                assert response.headers["content-type"] == PROBLEM, (path, body)
    for path in (
        "/workflows/%00",
        "/workflows/x/versions/1%00",
        "/runs?limit=abc",
        "/runs?status=bogus",
    ):
        response = await client.get(path, headers={"Accept": "application/json"})
        assert 400 <= response.status_code < 500, (path, response.text)
        assert response.headers["content-type"] == PROBLEM


async def test_out_of_range_integers_are_not_500s(make_client: AppFactory) -> None:
    client = await make_client()
    transport = httpx.ASGITransport(app=client.app, raise_app_exceptions=False)  # type: ignore[attr-defined]
    async with httpx.AsyncClient(transport=transport, base_url="http://stepwise.test") as raw:
        await raw.post("/workflows", json={"name": "x", "nodes": {"a": {"step": "set"}}})
        run = (await raw.post("/runs/wait", json={"workflow": "x", "inputs": {}})).json()
        statuses = [
            (
                await raw.post("/runs", json={"workflow": "x", "version": 10**20, "inputs": {}})
            ).status_code,
            (
                await raw.get(
                    f"/runs/{run['id']}/events",
                    params={"cursor": "OTk5OTk5OTk5OTk5OTk5OTk5OTk5"},
                    headers={"Accept": "application/json"},
                )
            ).status_code,
        ]
    assert all(400 <= status < 500 for status in statuses), statuses


async def test_unexpected_exception_is_a_500_that_leaks_nothing(
    make_client: AppFactory, caplog: pytest.LogCaptureFixture
) -> None:
    client = await make_client()
    app = client.app  # type: ignore[attr-defined]

    async def explode() -> None:
        raise RuntimeError("secret internals: password=hunter2")

    app.add_api_route("/explode", explode)
    transport = httpx.ASGITransport(app=app, raise_app_exceptions=False)
    async with httpx.AsyncClient(transport=transport, base_url="http://stepwise.test") as raw:
        with caplog.at_level(logging.ERROR, logger="app.api"):
            response = await raw.get("/explode", headers={"X-Request-ID": "req-42"})
    body = assert_problem(response, 500, "internal_error")
    assert "hunter2" not in response.text and "RuntimeError" not in response.text
    assert body["request_id"] == "req-42"
    assert response.headers["x-request-id"] == "req-42"
    logged = [r for r in caplog.records if r.name == "app.api" and "req-42" in r.getMessage()]
    assert logged and logged[0].exc_info is not None
    assert "hunter2" in str(logged[0].exc_info[1])


async def test_request_id_is_echoed_or_made(client: httpx.AsyncClient) -> None:
    given = await client.get("/healthz", headers={"X-Request-ID": "abc-123"})
    assert given.headers["x-request-id"] == "abc-123"
    made = await client.get("/healthz", headers={"X-Request-ID": "bad id\twith spaces"})
    assert made.headers["x-request-id"] != "bad id\twith spaces"
    assert len(made.headers["x-request-id"]) == 32
