"""The lean handlers of the run endpoints (app/api/lean.py): they serve the plain
requests themselves, hand every other one to FastAPI's own handler for the route, and
answer as that handler does."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import httpx
import pytest
from fastapi import FastAPI
from fastapi.routing import APIRoute

from app.api import lean, runs
from app.main import create_app
from tests.api.test_errors import assert_problem
from tests.conftest import store

FLOW = {"name": "lean", "state": {"n": 0}, "nodes": {"a": {"step": "set", "set": {"n": 1}}}}
ASK = {
    "name": "lean-ask",
    "nodes": {
        "ask": {"step": "interrupt", "with": {"question": "go?"}},
        "talk": {"step": "input"},
    },
    "edges": [{"from": "ask", "to": "talk"}],
}
VOLATILE = {"id", "created_at", "updated_at", "resume_at"}
W = "/runs/{run_id}/wait"

Counter = Callable[[], int]


def _lean_routes(app: FastAPI) -> list[APIRoute]:
    routes = [r for r in app.router.routes if isinstance(r, APIRoute)]
    return [r for r in routes if isinstance(r.app, lean.LeanHandler)]


@pytest.fixture
def delegated(client: httpx.AsyncClient, monkeypatch: pytest.MonkeyPatch) -> Counter:
    """How many requests the lean handlers handed to FastAPI's own handlers."""
    count = 0

    def counting(standard: Any) -> Any:
        async def app(scope: Any, receive: Any, send: Any) -> None:
            nonlocal count
            count += 1
            await standard(scope, receive, send)

        return app

    routes = _lean_routes(client.app)  # type: ignore[attr-defined]
    assert len(routes) == len(lean.LEAN)
    for route in routes:
        handler = route.app
        assert isinstance(handler, lean.LeanHandler)
        monkeypatch.setattr(handler, "standard", counting(handler.standard))
    return lambda: count


def fastapi_only(client: httpx.AsyncClient, monkeypatch: pytest.MonkeyPatch) -> None:
    """From now on the routes are served by FastAPI's own handlers, as with no lean ones."""
    for route in _lean_routes(client.app):  # type: ignore[attr-defined]
        assert isinstance(route.app, lean.LeanHandler)
        monkeypatch.setattr(route, "app", route.app.standard)


async def test_plain_requests_are_served_by_the_lean_handlers(
    client: httpx.AsyncClient, delegated: Counter
) -> None:
    await store(client, FLOW)
    started = await client.post("/runs", json={"workflow": "lean", "inputs": {"x": 1}})
    assert started.status_code == 202, started.text
    run = started.json()
    assert started.headers["location"] == f"/runs/{run['id']}"
    assert "idempotent-replayed" not in started.headers
    assert run["status"] == "queued" and run["inputs"] == {"x": 1}
    waited = await client.get(f"/runs/{run['id']}/wait", params={"timeout_s": 10})
    assert waited.status_code == 200 and waited.json()["status"] == "completed"
    again = await client.get(f"/runs/{run['id']}/wait")  # the default timeout
    assert again.json()["state"] == {"n": 1}
    read = await client.get(f"/runs/{run['id']}")
    assert read.status_code == 200 and read.json() == again.json()
    # an Idempotency-Key replays the first run
    headers = {"Idempotency-Key": "lean-1"}
    first = await client.post("/runs", json={"workflow": "lean"}, headers=headers)
    replayed = await client.post("/runs", json={"workflow": "lean"}, headers=headers)
    assert replayed.json()["id"] == first.json()["id"]
    assert replayed.headers["idempotent-replayed"] == "true"
    done = await client.post("/runs/wait?timeout_s=10", json={"workflow": "lean"})
    assert done.status_code == 200 and done.json()["status"] == "completed"
    # errors the endpoint raises reach the app's handlers as problems
    assert_problem(await client.post("/runs", json={"workflow": "nowhere"}), 404)
    assert_problem(await client.get("/runs/nope/wait?timeout_s=1"), 404, "run_not_found")
    assert_problem(await client.get("/runs/nope"), 404, "run_not_found")
    assert delegated() == 0


async def test_answers_are_served_by_the_lean_handlers(
    client: httpx.AsyncClient, delegated: Counter
) -> None:
    await store(client, ASK)
    run = (await client.post("/runs/wait", json={"workflow": "lean-ask"})).json()
    assert run["status"] == "interrupted", run
    answer = {"interrupt_id": run["interrupt"]["id"], "value": "yes"}
    answered = await client.post(f"/runs/{run['id']}/response?wait_s=10", json=answer)
    assert answered.status_code == 200 and answered.json()["status"] == "awaiting_input"
    sent = await client.post(f"/runs/{run['id']}/messages", json={"message": "hi"})
    assert sent.status_code == 202, sent.text
    late = await client.post(f"/runs/{run['id']}/response", json=answer)
    assert_problem(late, 409)
    assert delegated() == 0


# requests the lean handlers leave to FastAPI, each with the status FastAPI gives it
JSON = {"content-type": "application/json"}
XJSON = "application/x+json"
ODD_STARTS: list[tuple[str, dict[str, Any], int]] = [
    ("/runs", {"content": b"{not json", "headers": JSON}, 422),
    ("/runs", {"content": b"", "headers": JSON}, 422),
    ("/runs", {"content": b"[1, 2]", "headers": JSON}, 422),
    ("/runs", {"json": {"workflow": "lean", "bogus": 1}}, 422),
    ("/runs", {"json": {"workflow": "lean", "version": 0}}, 422),
    ("/runs", {"json": {"inputs": {}}}, 422),
    ("/runs", {"json": {"workflow": "lean"}, "headers": {"Idempotency-Key": "k" * 256}}, 422),
    ("/runs", {"content": b'{"workflow": "lean"}', "headers": {"content-type": "text/plain"}}, 422),
    ("/runs", {"content": b'{"workflow": "lean"}', "headers": {"content-type": ""}}, 422),
    # served, by FastAPI: a +json type; a query parameter the route does not take
    ("/runs", {"content": b'{"workflow": "lean"}', "headers": {"content-type": XJSON}}, 202),
    ("/runs?x=1", {"json": {"workflow": "lean"}}, 202),
    ("/runs/wait?timeout_s=-1", {"json": {"workflow": "lean"}}, 422),
    ("/runs/wait?timeout_s=1e1", {"json": {"workflow": "lean"}}, 200),
    ("/runs/{id}/response?wait_s=x", {"json": {"interrupt_id": "i"}}, 422),
    ("/runs/{id}/response", {"json": {"interrupt_id": ""}}, 422),
    ("/runs/{id}/messages", {"json": {}}, 422),
    ("/runs/{id}/messages?wait_s=", {"json": {"message": "hi"}}, 422),
]
ODD_READS: list[tuple[str, int]] = [
    ("/runs/{id}/wait?timeout_s=-1", 422),
    ("/runs/{id}/wait?timeout_s=abc", 422),
    ("/runs/{id}/wait?timeout_s=", 422),
    ("/runs/{id}/wait?timeout_s=1&timeout_s=2", 200),
    ("/runs/{id}/wait?timeout_s=1e1", 200),
    ("/runs/{id}/wait?other=1", 200),
    ("/runs/{id}?other=1", 200),
]


def _stable(response: httpx.Response) -> tuple[int, str, Any]:
    body = response.json()
    if isinstance(body, dict):
        body = {k: v for k, v in body.items() if k not in VOLATILE}
    return response.status_code, response.headers["content-type"], body


async def test_other_requests_get_fastapis_own_answers(
    client: httpx.AsyncClient, delegated: Counter, monkeypatch: pytest.MonkeyPatch
) -> None:
    await store(client, FLOW)
    run = (await client.post("/runs/wait", json={"workflow": "lean"})).json()

    async def answers() -> list[tuple[int, str, Any]]:
        out = []
        for path, kwargs, status in ODD_STARTS:
            response = await client.post(path.replace("{id}", run["id"]), **kwargs)
            assert response.status_code == status, (path, kwargs, response.text)
            out.append(_stable(response))
        for path, status in ODD_READS:
            response = await client.get(path.replace("{id}", run["id"]))
            assert response.status_code == status, (path, response.text)
            out.append(_stable(response))
        return out

    through_lean = await answers()
    assert delegated() == len(ODD_STARTS) + len(ODD_READS)  # every one handed over
    fastapi_only(client, monkeypatch)
    assert await answers() == through_lean


def test_install_refuses_a_route_served_by_another_endpoint(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    route = next(r for r in runs.router.routes if isinstance(r, APIRoute) and r.path == W)
    monkeypatch.setattr(route, "endpoint", runs.get_run)
    with pytest.raises(RuntimeError, match="not served by wait_run"):
        lean.install(runs.router.routes)


def test_a_handler_refuses_an_endpoint_it_would_call_wrongly() -> None:
    route = next(r for r in runs.router.routes if isinstance(r, APIRoute) and r.path == W)
    with pytest.raises(RuntimeError, match="its lean handler would pass"):
        lean.LeanHandler(route, lean.Spec(runs.wait_run))  # timeout_s not given


def test_install_refuses_when_a_route_is_missing() -> None:
    routes = [r for r in runs.router.routes if getattr(r, "path", None) != W]
    with pytest.raises(RuntimeError, match="missing"):
        lean.install(routes)


def test_every_app_shares_one_lean_handler_a_route() -> None:
    """Building apps again (tests build hundreds) never wraps a handler in another."""
    first, second = create_app(), create_app()
    assert [r.app for r in _lean_routes(first)] == [r.app for r in _lean_routes(second)]
    assert not any(isinstance(r.app.standard, lean.LeanHandler) for r in _lean_routes(first))  # type: ignore[attr-defined]
