"""The lean handlers of ``POST /runs`` and ``GET /runs/{id}/wait`` (app/api/lean.py):
they serve the plain requests themselves, hand every other one to FastAPI's own handler
for the route, and answer as that handler does."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
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
VOLATILE = {"id", "created_at", "updated_at"}


def _handler(app: FastAPI, method: str, path: str) -> lean.LeanHandler:
    for route in app.router.routes:
        if isinstance(route, APIRoute) and route.path == path and method in (route.methods or ()):
            assert isinstance(route.app, lean.LeanHandler)
            return route.app
    raise AssertionError(f"no route {method} {path}")


W = "/runs/{run_id}/wait"


class Delegations:
    """Counts the requests the lean handlers hand to FastAPI's own handlers."""

    def __init__(self, client: httpx.AsyncClient) -> None:
        self.count = 0
        app: FastAPI = client.app  # type: ignore[attr-defined]
        self.handlers = [_handler(app, "POST", "/runs"), _handler(app, "GET", W)]
        for handler in self.handlers:
            handler.standard = self._counting(handler.standard)

    def _counting(self, standard: Any) -> Any:
        async def app(scope: Any, receive: Any, send: Any) -> None:
            self.count += 1
            await standard(scope, receive, send)

        return app


@contextlib.contextmanager
def fastapi_only(client: httpx.AsyncClient) -> Iterator[None]:
    """The two routes served by FastAPI's own handlers, as if there were no lean ones."""
    app: FastAPI = client.app  # type: ignore[attr-defined]
    routes = [r for r in app.router.routes if isinstance(r, APIRoute)]
    swapped = [(r, r.app) for r in routes if isinstance(r.app, lean.LeanHandler)]
    assert len(swapped) == 2
    for route, handler in swapped:
        route.app = handler.standard
    try:
        yield
    finally:
        for route, handler in swapped:
            route.app = handler


def _stable(response: httpx.Response) -> tuple[int, str, Any]:
    body = response.json()
    if isinstance(body, dict):
        body = {k: v for k, v in body.items() if k not in VOLATILE}
    return response.status_code, response.headers["content-type"], body


async def test_plain_requests_are_served_by_the_lean_handlers(client: httpx.AsyncClient) -> None:
    count = Delegations(client)
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
    # an Idempotency-Key replays the first run
    headers = {"Idempotency-Key": "lean-1"}
    first = await client.post("/runs", json={"workflow": "lean"}, headers=headers)
    replayed = await client.post("/runs", json={"workflow": "lean"}, headers=headers)
    assert replayed.json()["id"] == first.json()["id"]
    assert replayed.headers["idempotent-replayed"] == "true"
    # errors the endpoint raises reach the app's handlers as problems
    assert_problem(await client.post("/runs", json={"workflow": "nowhere"}), 404)
    assert_problem(await client.get("/runs/nope/wait?timeout_s=1"), 404, "run_not_found")
    assert count.count == 0


# requests the lean handlers leave to FastAPI, each with the status FastAPI gives it
ODD_STARTS: list[tuple[dict[str, Any], int]] = [
    ({"content": b"{not json", "headers": {"content-type": "application/json"}}, 422),
    ({"content": b"", "headers": {"content-type": "application/json"}}, 422),
    ({"content": b"[1, 2]", "headers": {"content-type": "application/json"}}, 422),
    ({"json": {"workflow": "lean", "bogus": 1}}, 422),
    ({"json": {"workflow": "lean", "version": 0}}, 422),
    ({"json": {"inputs": {}}}, 422),
    ({"json": {"workflow": "lean"}, "headers": {"Idempotency-Key": "k" * 256}}, 422),
    ({"content": b'{"workflow": "lean"}', "headers": {"content-type": "text/plain"}}, 422),
    ({"content": b'{"workflow": "lean"}', "headers": {"content-type": ""}}, 422),
    # served, by FastAPI: a +json type, and JSON with a charset
    ({"content": b'{"workflow": "lean"}', "headers": {"content-type": "application/x+json"}}, 202),
]
ODD_WAITS: list[tuple[str, int]] = [
    ("timeout_s=-1", 422),
    ("timeout_s=abc", 422),
    ("timeout_s=", 422),
    ("timeout_s=1&timeout_s=2", 200),
    ("timeout_s=1e1", 200),
    ("other=1", 200),
]


async def test_other_requests_get_fastapis_own_answers(client: httpx.AsyncClient) -> None:
    count = Delegations(client)
    await store(client, FLOW)
    run = (await client.post("/runs", json={"workflow": "lean"})).json()

    async def answers() -> list[tuple[int, str, Any]]:
        out = []
        for kwargs, status in ODD_STARTS:
            response = await client.post("/runs", **kwargs)
            assert response.status_code == status, (kwargs, response.text)
            out.append(_stable(response))
        for query, status in ODD_WAITS:
            response = await client.get(f"/runs/{run['id']}/wait?{query}")
            assert response.status_code == status, (query, response.text)
            out.append(_stable(response))
        return out

    through_lean = await answers()
    assert count.count == len(ODD_STARTS) + len(ODD_WAITS)  # every one handed over
    with fastapi_only(client):
        assert await answers() == through_lean


def test_install_refuses_a_route_served_by_another_endpoint(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    route = next(r for r in runs.router.routes if isinstance(r, APIRoute) and r.path == W)
    monkeypatch.setattr(route, "endpoint", runs.get_run)
    with pytest.raises(RuntimeError, match="not served by wait_run"):
        lean.install(runs.router.routes)


def test_install_refuses_when_a_route_is_missing() -> None:
    routes = [r for r in runs.router.routes if getattr(r, "path", None) != W]
    with pytest.raises(RuntimeError, match="missing"):
        lean.install(routes)


def test_every_app_shares_one_lean_handler_a_route() -> None:
    """Building apps again (tests build hundreds) never wraps a handler in another."""
    handlers = {id(_handler(create_app(), "POST", "/runs")) for _ in range(3)}
    handler = _handler(create_app(), "GET", W)
    assert len(handlers) == 1
    assert not isinstance(handler.standard, lean.LeanHandler)
