"""A body sent to an endpoint that reads JSON must say it is JSON (``application/json``
or ``application/*+json``): any other media type, or none, is a 415
``unsupported_media_type``, on the lean routes and FastAPI's alike. An empty body has
no media type to check. Workflows and prompts take YAML too and answer for themselves."""

from __future__ import annotations

from typing import Any

import httpx
import pytest

from tests.api.test_errors import assert_problem
from tests.api.test_lean import fastapi_only
from tests.conftest import store, until_status

FLOW = {"name": "media", "nodes": {"a": {"step": "input"}}}
NOT_JSON = [
    "text/plain",
    "text/plain; charset=utf-8",
    "application/yaml",
    "application/x-www-form-urlencoded",
    "multipart/form-data; boundary=x",
    "text/json",
    "application/jsonx",
    "application/octet-stream",
]
# every endpoint whose body FastAPI reads as JSON ({id}: a run awaiting input)
JSON_BODIES = [
    ("/runs", b'{"workflow": "media"}'),
    ("/runs/wait?timeout_s=0", b'{"workflow": "media"}'),
    ("/runs/stream", b'{"workflow": "media"}'),
    ("/runs/{id}/response", b'{"interrupt_id": "i"}'),
    ("/runs/{id}/messages", b'{"message": "hi"}'),
    ("/runs/{id}/resume", b"{}"),
    ("/runs/{id}/fork", b'{"checkpoint_id": "c"}'),
    ("/runs/{id}/state", b'{"state_patch": {"a": 1}}'),
    ("/runs/nope/messages", b'{"message": "hi"}'),
]


@pytest.fixture
async def run_id(client: httpx.AsyncClient) -> str:
    await store(client, FLOW)
    response = await client.post("/runs/wait", json={"workflow": "media"})
    run = response.json()
    assert run["status"] == "awaiting_input", run
    return str(run["id"])


async def _runs(client: httpx.AsyncClient) -> int:
    return len((await client.get("/runs", params={"workflow": "media"})).json()["items"])


async def test_a_body_that_is_not_json_is_a_415(client: httpx.AsyncClient, run_id: str) -> None:
    for template, body in JSON_BODIES:
        path = template.replace("{id}", run_id)
        for media in NOT_JSON:
            response = await client.post(path, content=body, headers={"Content-Type": media})
            problem = assert_problem(response, 415, "unsupported_media_type")
            assert media.split(";")[0] in problem["detail"], problem
        # no Content-Type at all: not JSON either
        response = await client.post(path, content=body)
        assert "content-type" not in response.request.headers
        problem = assert_problem(response, 415, "unsupported_media_type")
        assert "application/json" in problem["detail"]
    assert await _runs(client) == 1  # nothing was started
    after = (await client.get(f"/runs/{run_id}")).json()
    assert after["status"] == "awaiting_input" and after["state"] == {}


async def test_curl_d_is_a_415(client: httpx.AsyncClient) -> None:
    # what `curl -d '{"workflow":"x"}' $H/runs` sends
    response = await client.post(
        "/runs",
        content=b'{"workflow":"x"}',
        headers={"Content-Type": "application/x-www-form-urlencoded"},
    )
    assert_problem(response, 415, "unsupported_media_type")


async def test_json_types_are_accepted(client: httpx.AsyncClient, run_id: str) -> None:
    body = b'{"workflow": "media"}'
    for media in (
        "application/json",
        "Application/JSON",
        "application/json; charset=utf-8",
        "application/vnd.stepwise+json",
    ):
        response = await client.post("/runs", content=body, headers={"Content-Type": media})
        assert response.status_code == 202, (media, response.text)
    # the first Content-Type is the one read (as FastAPI does)
    twice = [("Content-Type", "application/json"), ("Content-Type", "text/plain")]
    assert (await client.post("/runs", content=body, headers=twice)).status_code == 202
    twice.reverse()
    assert_problem(
        await client.post("/runs", content=body, headers=twice), 415, "unsupported_media_type"
    )


async def test_an_empty_body_needs_no_media_type(client: httpx.AsyncClient, run_id: str) -> None:
    # an optional body (resume), and none at all (cancel): no content type, or any
    for headers in ({}, {"Content-Type": "text/plain"}):
        resumed = await client.post(f"/runs/{run_id}/resume", headers=headers)
        assert resumed.status_code == 202, resumed.text  # it asks for input again
        await until_status(client, run_id, "awaiting_input")
    # a required body missing is the schema's 422, whatever the type
    for headers in ({}, {"Content-Type": "text/plain"}):
        missing = await client.post("/runs", headers=headers)
        problem = assert_problem(missing, 422, "validation_error")
        assert problem["errors"][0]["loc"] == ["body"]
    cancelled = await client.post(f"/runs/{run_id}/cancel", headers={"Content-Type": "text/plain"})
    assert cancelled.status_code == 202, cancelled.text


async def test_endpoints_without_a_json_body_are_left_alone(
    client: httpx.AsyncClient, run_id: str
) -> None:
    # cancel takes no body: whatever is sent is ignored, as before
    cancelled = await client.post(
        f"/runs/{run_id}/cancel", content=b"why not", headers={"Content-Type": "text/plain"}
    )
    assert cancelled.status_code == 202, cancelled.text
    # no route: 404 (and 405), not 415
    assert_problem(
        await client.post("/nowhere", content=b"x", headers={"Content-Type": "text/plain"}),
        404,
        "not_found",
    )
    assert_problem(
        await client.put("/runs", content=b"x", headers={"Content-Type": "text/plain"}),
        405,
        "method_not_allowed",
    )


async def test_workflows_and_prompts_keep_their_own_media_handling(
    client: httpx.AsyncClient,
) -> None:
    definition = b"name: m2\nnodes: {a: {step: set}}\n"
    for media in ("application/yaml", "application/x-yaml", "text/yaml", "text/x-yaml"):
        stored = await client.post(
            "/workflows", content=definition, headers={"Content-Type": media}
        )
        assert stored.status_code in (200, 201), stored.text
        checked = await client.post(
            "/workflows/validate", content=definition, headers={"Content-Type": media}
        )
        assert checked.json() == {"valid": True, "errors": []}
    prompt = b"name: p\ntemplate: hi\n"
    stored = await client.post("/prompts", content=prompt, headers={"Content-Type": "text/yaml"})
    assert stored.status_code in (200, 201), stored.text
    # no Content-Type: read as JSON
    bare = await client.post(
        "/workflows", content=b'{"name": "m3", "nodes": {"a": {"step": "set"}}}'
    )
    assert bare.status_code == 201, bare.text
    for path in ("/workflows", "/workflows/validate", "/prompts"):
        for media in ("text/plain", "application/x-www-form-urlencoded"):
            response = await client.post(path, content=prompt, headers={"Content-Type": media})
            assert_problem(response, 415, "unsupported_media_type")


async def test_the_lean_routes_answer_alike(
    client: httpx.AsyncClient, run_id: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    cases: list[tuple[str, dict[str, Any]]] = [
        ("/runs", {"content": b'{"workflow": "media"}', "headers": {"content-type": "text/plain"}}),
        ("/runs", {"content": b'{"workflow": "media"}', "headers": {"content-type": ""}}),
        ("/runs", {"content": b'{"workflow": "media"}'}),
        ("/runs/wait", {"content": b'{"workflow": "media"}', "headers": {"content-type": "a/b"}}),
        (
            "/runs/{id}/response",
            {"content": b'{"interrupt_id": "i"}', "headers": {"content-type": "text/yaml"}},
        ),
        (
            "/runs/{id}/messages",
            {"content": b'{"message": "hi"}', "headers": {"content-type": "text/plain"}},
        ),
    ]

    async def answers() -> list[Any]:
        out = []
        for path, kwargs in cases:
            response = await client.post(path.replace("{id}", run_id), **kwargs)
            out.append(assert_problem(response, 415, "unsupported_media_type"))
        return out

    through_lean = await answers()
    fastapi_only(client, monkeypatch)
    assert await answers() == through_lean
    assert await _runs(client) == 1
