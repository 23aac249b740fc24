"""A NUL character (no database text column holds one; Postgres refuses it even as a
query parameter) in a request's path, query string or headers is refused by the request
guards, before any route runs: 422 ``validation_error`` naming where. One in a JSON body
is refused as ``invalid_body``. Never a 500, on either backend."""

from __future__ import annotations

from typing import Any

import httpx
import pytest

from tests.api.test_errors import assert_problem
from tests.api.test_lean import fastapi_only
from tests.conftest import store

FLOW = {"name": "nul", "nodes": {"a": {"step": "input"}}}


@pytest.fixture
async def run_id(client: httpx.AsyncClient) -> str:
    await store(client, FLOW)
    response = await client.post("/runs/wait", json={"workflow": "nul"})
    run = response.json()
    assert run["status"] == "awaiting_input", run
    return str(run["id"])


# method, path ({id}: a real run), expected loc
URL_CASES: list[tuple[str, str, list[str]]] = [
    ("GET", "/runs/%00", ["path", "run_id"]),
    ("GET", "/runs/a%00b", ["path", "run_id"]),
    ("GET", "/runs/%00/events", ["path", "run_id"]),
    ("GET", "/runs/%00/wait?timeout_s=0", ["path", "run_id"]),
    ("GET", "/runs/%00/checkpoints", ["path", "run_id"]),
    ("POST", "/runs/%00/cancel", ["path", "run_id"]),
    ("POST", "/runs/%00/resume", ["path", "run_id"]),
    ("DELETE", "/runs/%00", ["path", "run_id"]),
    ("GET", "/runs/{id}/checkpoints/%00", ["path", "checkpoint_id"]),
    ("GET", "/workflows/%00", ["path", "name"]),
    ("GET", "/workflows/nul/versions/1%00", ["path", "version"]),
    ("GET", "/workflows/x%00y", ["path", "name"]),
    ("GET", "/workflows/x%00y/versions/1", ["path", "name"]),
    ("GET", "/prompts/x%00y/versions", ["path", "name"]),
    ("GET", "/prompts/%00", ["path", "name"]),
    ("GET", "/nowhere%00", ["path"]),
    ("GET", "/runs?workflow=%00", ["query", "workflow"]),
    ("GET", "/runs?workflow=a%00", ["query", "workflow"]),
    ("GET", "/runs?status=%00", ["query", "status"]),
    ("GET", "/runs?cursor=%00", ["query", "cursor"]),
    ("GET", "/runs?limit=1&%00=x", ["query", "%00"]),
    ("GET", "/runs/{id}/events?types=%00", ["query", "types"]),
    ("GET", "/runs/{id}/events?types=node.*,%00", ["query", "types"]),
    ("GET", "/runs/{id}?x=%00", ["query", "x"]),
    ("GET", "/runs/{id}/wait?timeout_s=%00", ["query", "timeout_s"]),
    ("GET", "/workflows?cursor=%00", ["query", "cursor"]),
]


def _assert_nul_refused(response: httpx.Response, loc: list[str]) -> None:
    problem = assert_problem(response, 422, "validation_error")
    assert problem["errors"] == [
        {"loc": loc, "msg": "NUL characters (%00) are not accepted", "type": "unstorable_value"}
    ], problem
    assert "NUL" in problem["detail"]


async def test_a_nul_in_the_path_or_query_is_a_422(client: httpx.AsyncClient, run_id: str) -> None:
    for method, path, loc in URL_CASES:
        for accept in ("application/json", "text/event-stream"):
            response = await client.request(
                method, path.replace("{id}", run_id), headers={"Accept": accept}
            )
            _assert_nul_refused(response, loc)
    # the run is untouched, and the same requests without the NUL are answered
    assert (await client.get(f"/runs/{run_id}")).json()["status"] == "awaiting_input"
    assert (await client.get("/runs?workflow=nul")).json()["items"]
    assert (await client.get("/runs/none")).status_code == 404
    assert (await client.get("/runs?workflow=%0A")).json()["items"] == []
    # an escaped percent sign is no NUL
    assert (await client.get("/runs?workflow=%2500")).json()["items"] == []


async def test_the_lean_routes_refuse_it_alike(
    client: httpx.AsyncClient, run_id: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    lean_cases: list[tuple[str, str, dict[str, Any], list[str]]] = [
        ("GET", "/runs/%00", {}, ["path", "run_id"]),
        ("GET", "/runs/%00/wait", {}, ["path", "run_id"]),
        ("GET", "/runs/{id}/wait?timeout_s=%00", {}, ["query", "timeout_s"]),
        ("POST", "/runs?x=%00", {"json": {"workflow": "nul"}}, ["query", "x"]),
        ("POST", "/runs/wait?timeout_s=%00", {"json": {"workflow": "nul"}}, ["query", "timeout_s"]),
        ("POST", "/runs/%00/response", {"json": {"interrupt_id": "i"}}, ["path", "run_id"]),
        ("POST", "/runs/%00/messages", {"json": {"message": "hi"}}, ["path", "run_id"]),
        (
            "POST",
            "/runs/{id}/messages?wait_s=%00",
            {"json": {"message": "hi"}},
            ["query", "wait_s"],
        ),
    ]

    async def answers() -> list[Any]:
        out = []
        for method, path, kwargs, loc in lean_cases:
            response = await client.request(method, path.replace("{id}", run_id), **kwargs)
            _assert_nul_refused(response, loc)
            out.append(response.json())
        return out

    through_lean = await answers()
    fastapi_only(client, monkeypatch)
    assert await answers() == through_lean
    assert (await client.get(f"/runs/{run_id}")).json()["status"] == "awaiting_input"


async def test_a_nul_in_a_header_is_a_422(client: httpx.AsyncClient, run_id: str) -> None:
    started = await client.post(
        "/runs", json={"workflow": "nul"}, headers={"Idempotency-Key": "a\x00b"}
    )
    _assert_nul_refused(started, ["header", "idempotency-key"])
    waited = await client.post(
        "/runs/wait?timeout_s=0", json={"workflow": "nul"}, headers={"Idempotency-Key": "\x00"}
    )
    _assert_nul_refused(waited, ["header", "idempotency-key"])
    events = await client.get(f"/runs/{run_id}/events", headers={"Last-Event-ID": "1\x00"})
    _assert_nul_refused(events, ["header", "last-event-id"])
    listed = (await client.get("/runs", params={"workflow": "nul"})).json()["items"]
    assert [run["id"] for run in listed] == [run_id]  # no run was started


async def test_a_nul_in_a_json_body_is_invalid_body(client: httpx.AsyncClient, run_id: str) -> None:
    json = {"Content-Type": "application/json"}
    inline = b'{"definition": {"name": "x\\u0000", "nodes": {"a": {"step": "set"}}}}'
    bodies = [
        (
            "/runs",
            b'{"workflow": "nul", "metadata": {"note": "a\\u0000"}}',
            ["body", "metadata", "note"],
        ),
        (
            "/runs",
            b'{"workflow": "nul", "metadata": {"k\\u0000": 1}}',
            ["body", "metadata", "k\x00"],
        ),
        ("/runs", b'{"workflow": "nul", "inputs": {"k\\u0000": 1}}', ["body", "inputs", "k\x00"]),
        ("/runs", b'{"workflow": "nul\\u0000"}', ["body", "workflow"]),
        ("/runs/wait", b'{"workflow": "nul", "inputs": {"a": "\\u0000"}}', ["body", "inputs", "a"]),
        ("/runs", inline, ["body", "definition", "name"]),
        (f"/runs/{run_id}/messages", b'{"message": "hi\\u0000"}', ["body", "message"]),
        (
            f"/runs/{run_id}/state",
            b'{"state_patch": {"a": "\\u0000"}}',
            ["body", "state_patch", "a"],
        ),
        (f"/runs/{run_id}/response", b'{"interrupt_id": "\\u0000"}', ["body", "interrupt_id"]),
        (f"/runs/{run_id}/fork", b'{"checkpoint_id": "\\u0000"}', ["body", "checkpoint_id"]),
        (f"/runs/{run_id}/resume", b'{"checkpoint_id": "\\u0000"}', ["body", "checkpoint_id"]),
        ("/workflows", b'{"name": "w\\u0000", "nodes": {"a": {"step": "set"}}}', ["body", "name"]),
        ("/prompts", b'{"name": "p", "template": "\\u0000"}', ["body", "template"]),
    ]
    for path, body, loc in bodies:
        response = await client.post(path, content=body, headers=json)
        problem = assert_problem(response, 422, "invalid_body")
        assert loc in [error["loc"] for error in problem["errors"]], (path, problem)
    # with two Content-Types, the first is the one FastAPI reads the body by: and checked
    twice = [("Content-Type", "application/json"), ("Content-Type", "text/plain")]
    response = await client.post("/runs", content=bodies[0][1], headers=twice)
    assert_problem(response, 422, "invalid_body")
    yaml = {"Content-Type": "application/yaml"}
    for path, body in (
        ("/workflows", b'name: "w\\0"\nnodes: {a: {step: set}}\n'),
        ("/prompts", b'name: p\ntemplate: "a\\0"\n'),
    ):
        assert_problem(await client.post(path, content=body, headers=yaml), 422, "invalid_body")
    assert (await client.get(f"/runs/{run_id}")).json()["status"] == "awaiting_input"
