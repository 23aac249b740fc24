"""The lean handlers of the run endpoints (app/api/lean.py): they serve the plain
requests themselves, hand every other one to FastAPI's own handler for the route, and
answer as that handler does."""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import Annotated, Any

import httpx
import pytest
from fastapi import Depends, FastAPI, HTTPException, Request, Response
from fastapi.routing import APIRoute
from sqlalchemy.exc import OperationalError
from starlette.convertors import Convertor, register_url_convertor
from starlette.routing import Mount, Route

from app.api import lean, runs
from app.errors import Conflict
from app.main import create_app
from app.schemas.runs import RunOut
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
UUID = re.compile(r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}")

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


@pytest.fixture
def routed(client: httpx.AsyncClient, monkeypatch: pytest.MonkeyPatch) -> Counter:
    """How many requests went down to the router (past LeanDispatch)."""
    count = 0
    router = client.app.router  # type: ignore[attr-defined]
    inner = router.middleware_stack

    async def counting(scope: Any, receive: Any, send: Any) -> None:
        nonlocal count
        count += 1
        await inner(scope, receive, send)

    monkeypatch.setattr(router, "middleware_stack", counting)
    return lambda: count


def fastapi_only(client: httpx.AsyncClient, monkeypatch: pytest.MonkeyPatch) -> None:
    """From now on the routes are served by FastAPI's own handlers, as with no lean ones."""
    for route in _lean_routes(client.app):  # type: ignore[attr-defined]
        assert isinstance(route.app, lean.LeanHandler)
        monkeypatch.setattr(route, "app", route.app.standard)


def _without_volatile(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _without_volatile(v) for k, v in value.items() if k not in VOLATILE}
    if isinstance(value, list):
        return [_without_volatile(v) for v in value]
    if isinstance(value, str):  # a message may name a run
        return UUID.sub("<id>", value)
    return value


def _stable(response: httpx.Response) -> tuple[int, str, Any, tuple[str, ...]]:
    """What must not depend on who served the request (ids and times aside)."""
    body = _without_volatile(response.json() if response.content else None)
    headers = tuple(sorted(h for h in response.headers if h in ("location", "idempotent-replayed")))
    length = response.headers.get("content-length", "")
    return response.status_code, response.headers.get("content-type", ""), body, (*headers, length)


async def plain_requests(client: httpx.AsyncClient, key: str) -> list[Any]:
    """The plain requests of the six routes, each checked; their answers, made stable."""
    out: list[Any] = []

    def keep(response: httpx.Response, status: int) -> httpx.Response:
        assert response.status_code == status, response.text
        out.append(_stable(response))
        return response

    started = keep(await client.post("/runs", json={"workflow": "lean", "inputs": {"x": 1}}), 202)
    run = started.json()
    assert started.headers["location"] == f"/runs/{run['id']}"
    assert run["status"] == "queued" and run["inputs"] == {"x": 1}
    path = f"/runs/{run['id']}"
    waited = keep(await client.get(f"{path}/wait", params={"timeout_s": 10}), 200)
    assert waited.json()["status"] == "completed"
    keep(await client.get(f"{path}/wait?timeout_s=007"), 200)
    assert keep(await client.get(f"{path}/wait"), 200).json()["state"] == {"n": 1}
    assert keep(await client.get(path), 200).json() == waited.json()
    # an Idempotency-Key replays the first run
    headers = {"Idempotency-Key": key}
    first = keep(await client.post("/runs", json={"workflow": "lean"}, headers=headers), 202)
    # (a replay answers the run as it is now: once it completed, in both passes alike)
    await client.get(f"/runs/{first.json()['id']}/wait", params={"timeout_s": 10})
    replayed = keep(await client.post("/runs", json={"workflow": "lean"}, headers=headers), 202)
    assert replayed.json()["id"] == first.json()["id"]
    assert replayed.headers["idempotent-replayed"] == "true"
    utf8 = {"content-type": "application/json; charset=utf-8"}
    body = b'{"workflow": "lean"}'
    done = keep(await client.post("/runs/wait?timeout_s=10", content=body, headers=utf8), 200)
    assert done.json()["status"] == "completed"
    # errors the endpoint raises reach the app's handlers as problems
    assert_problem(keep(await client.post("/runs", json={"workflow": "nowhere"}), 404), 404)
    missing = keep(await client.get("/runs/nope/wait?timeout_s=1"), 404)
    assert_problem(missing, 404, "run_not_found")
    assert_problem(keep(await client.get("/runs/nope"), 404), 404, "run_not_found")
    # an interrupt answered, then a message
    asked = keep(await client.post("/runs/wait", json={"workflow": "lean-ask"}), 200).json()
    assert asked["status"] == "interrupted", asked
    answer = {"interrupt_id": asked["interrupt"]["id"], "value": "yes"}
    at = f"/runs/{asked['id']}"
    answered = keep(await client.post(f"{at}/response?wait_s=10", json=answer), 200)
    assert answered.json()["status"] == "awaiting_input"
    keep(await client.post(f"{at}/messages", json={"message": "hi"}), 202)
    # (the 409 names the run's status: once it settled, in both passes alike)
    await client.get(f"{at}/wait", params={"timeout_s": 10})
    assert_problem(keep(await client.post(f"{at}/response", json=answer), 409), 409)
    return out


async def test_plain_requests_are_served_lean_and_answered_as_fastapi_would(
    client: httpx.AsyncClient,
    delegated: Counter,
    routed: Counter,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    await store(client, FLOW)
    await store(client, ASK)
    stored = routed()
    through_lean = await plain_requests(client, "lean-1")
    assert delegated() == 0
    assert routed() == stored  # LeanDispatch served them: none went down to the router
    fastapi_only(client, monkeypatch)
    assert await plain_requests(client, "lean-2") == through_lean


# requests the lean handlers leave to FastAPI (but VALID_AS_SENT), each with its status
JSON = {"content-type": "application/json"}
XJSON = "application/x+json"
IDEM = "Idempotency-Key"
ODD_STARTS: list[tuple[str, dict[str, Any], int]] = [
    ("/runs", {"content": b"{not json", "headers": JSON}, 422),
    ("/runs", {"content": b"", "headers": JSON}, 422),
    ("/runs", {"content": b"[1, 2]", "headers": JSON}, 422),
    ("/runs", {"json": {"workflow": "lean", "bogus": 1}}, 422),
    ("/runs", {"json": {"workflow": "lean", "version": 0}}, 422),
    ("/runs", {"json": {"inputs": {}}}, 422),
    ("/runs", {"json": {"workflow": "lean"}, "headers": {"Idempotency-Key": "k" * 256}}, 422),
    ("/runs", {"json": {"workflow": "lean"}, "headers": {"Idempotency-Key": ""}}, 422),
    # (a body that is not JSON gets a 415 from the guards, before any handler: see
    # tests/api/test_media_types.py)
    # served, by FastAPI: a +json type; a query parameter the route does not take
    ("/runs", {"content": b'{"workflow": "lean"}', "headers": {"content-type": XJSON}}, 202),
    ("/runs?x=1", {"json": {"workflow": "lean"}}, 202),
    ("/runs", {"json": {"workflow": "lean"}, "headers": [(IDEM, "k" * 256), (IDEM, "a")]}, 422),
    ("/runs/wait?timeout_s=-1", {"json": {"workflow": "lean"}}, 422),
    ("/runs/wait?timeout_s=1e1", {"json": {"workflow": "lean"}}, 200),
    ("/runs/{id}/response?wait_s=x", {"json": {"interrupt_id": "i"}}, 422),
    ("/runs/{id}/response", {"json": {"interrupt_id": ""}}, 422),
    ("/runs/{id}/messages", {"json": {}}, 422),
    ("/runs/{id}/messages?wait_s=", {"json": {"message": "hi"}}, 422),
]
# valid for FastAPI's float as sent (no escapes, one value): the lean handler takes them
VALID_AS_SENT = ["/runs/wait?timeout_s=1e1", "/runs/{id}/wait?timeout_s=1e1"]
ODD_READS: list[tuple[str, int]] = [
    ("/runs/{id}/wait?timeout_s=-1", 422),
    ("/runs/{id}/wait?timeout_s=abc", 422),
    ("/runs/{id}/wait?timeout_s=", 422),
    ("/runs/{id}/wait?timeout_s=1&timeout_s=2", 200),
    ("/runs/{id}/wait?timeout_s=1e1", 200),
    ("/runs/{id}/wait?other=1", 200),
    ("/runs/{id}/wait?timeout%5Fs=1", 200),
    ("/runs/{id}?other=1", 200),
]


async def test_other_requests_get_fastapis_own_answers(
    client: httpx.AsyncClient,
    delegated: Counter,
    routed: Counter,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    await store(client, FLOW)
    run = (await client.post("/runs/wait", json={"workflow": "lean"})).json()
    stored = routed()

    async def answers() -> list[Any]:
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
    # every one handed over, but those the route's own fields accept as they are
    assert delegated() == len(ODD_STARTS) + len(ODD_READS) - len(VALID_AS_SENT)
    # ...after going down the standard way, past the router
    assert routed() - stored == delegated()
    fastapi_only(client, monkeypatch)
    assert await answers() == through_lean


def test_install_refuses_a_route_served_by_another_endpoint(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    route = next(r for r in runs.router.routes if isinstance(r, APIRoute) and r.path == W)
    monkeypatch.setattr(route, "endpoint", runs.get_run)
    with pytest.raises(RuntimeError, match="not served by wait_run"):
        lean.install(runs.router.routes)


async def _with_request(run_id: str, request: Request) -> Response:
    return Response()


async def _with_other_dependency(
    run_id: str, settings: Annotated[Any, Depends(lambda: None)]
) -> Response:
    return Response()


async def _returning_a_model(run_id: str) -> RunOut:
    raise AssertionError


@pytest.mark.parametrize(
    ("endpoint", "message"),
    [
        (_with_request, "a parameter a lean handler does not supply"),
        (_with_other_dependency, "which a lean handler skips"),
        (_returning_a_model, "must return a Response"),
    ],
)
def test_a_route_a_lean_handler_would_not_reproduce_is_refused(
    endpoint: Callable[..., Any], message: str
) -> None:
    route = APIRoute("/runs/{run_id}", endpoint, methods=["GET"], response_model=None)
    with pytest.raises(RuntimeError, match=message):
        lean.LeanHandler(route)


def test_install_refuses_when_a_route_is_missing() -> None:
    routes = [r for r in runs.router.routes if getattr(r, "path", None) != W]
    with pytest.raises(RuntimeError, match="missing"):
        lean.install(routes)


def test_every_app_shares_one_lean_handler_a_route() -> None:
    """Building apps again (tests build hundreds) never wraps a handler in another."""
    before = [id(r.app) for r in _lean_routes(create_app())]
    after = [id(r.app) for r in _lean_routes(create_app())]
    assert before == after and len(before) == len(lean.LEAN)
    for route in _lean_routes(create_app()):
        assert isinstance(route.app, lean.LeanHandler)
        assert not isinstance(route.app.standard, lean.LeanHandler)


async def test_a_query_value_that_is_not_utf_8_is_refused_not_a_500(
    client: httpx.AsyncClient,
) -> None:
    """A raw byte in the query string (an HTTP parser may pass one on) reaches FastAPI's
    validation like any other bad value."""
    await store(client, FLOW)
    run = (await client.post("/runs/wait", json={"workflow": "lean"})).json()
    app: FastAPI = client.app  # type: ignore[attr-defined]
    sent: list[dict[str, Any]] = []

    async def receive() -> dict[str, Any]:
        return {"type": "http.request", "body": b"", "more_body": False}

    async def send(message: dict[str, Any]) -> None:
        sent.append(message)

    scope = {
        "type": "http",
        "asgi": {"version": "3.0"},
        "http_version": "1.1",
        "method": "GET",
        "scheme": "http",
        "path": f"/runs/{run['id']}/wait",
        "raw_path": f"/runs/{run['id']}/wait".encode(),
        "query_string": b"timeout_s=\xff",
        "root_path": "",
        "headers": [(b"host", b"stepwise.test")],
        "client": ("127.0.0.1", 1),
        "server": ("stepwise.test", 80),
    }
    await app(scope, receive, send)
    assert sent[0]["status"] == 422


class _Anything(Convertor[str]):
    regex = ".*"

    def convert(self, value: str) -> str:
        return value

    def to_string(self, value: str) -> str:
        return value


register_url_convertor("lean_test_anything", _Anything())


@pytest.mark.parametrize(
    "shadow",
    [
        APIRoute("/runs/{anything}/wait", _with_request, methods=["GET"]),
        Route("/runs/{run_id}", _with_request, methods=[]),  # (no methods: every one)
        Route("/r{rest:lean_test_anything}", _with_request, methods=["GET"]),
        Route("/{rest:path}", _with_request, methods=["POST"]),
        Mount("/runs", app=Response()),
    ],
    ids=["param", "every-method", "converter", "path", "mount"],
)
def test_a_route_that_could_shadow_a_lean_one_is_refused_at_start_up(shadow: Any) -> None:
    """LeanDispatch matches the lean routes alone: a route before one of them that could
    match its paths would have been the router's choice."""
    lean.install(runs.router.routes)
    app = FastAPI()
    app.router.routes.append(shadow)
    app.router.routes.extend(runs.router.routes)
    with pytest.raises(RuntimeError, match="may match paths of the lean"):
        lean.LeanDispatch(app.router, fastapi_app=app)


def test_routes_that_cannot_shadow_a_lean_one_are_accepted() -> None:
    lean.install(runs.router.routes)
    quiet = FastAPI()  # other methods, or other paths: no overlap
    quiet.add_api_route("/runs/{anything}/wait", _with_request, methods=["DELETE"])
    quiet.add_api_route("/runs/{anything}/other", _with_request, methods=["GET"])
    quiet.add_api_route("/runs/{anything}", _with_request, methods=["PUT"])
    quiet.router.routes.extend(runs.router.routes)
    assert len(lean.LeanDispatch(quiet.router, fastapi_app=quiet).routes) == len(lean.LEAN)


def _headers(response: httpx.Response) -> dict[str, str]:
    return {k: v for k, v in response.headers.items() if k not in ("x-request-id", "date")}


@pytest.mark.parametrize(
    "error",
    [
        Conflict("taken", code="lean_test_conflict"),
        HTTPException(418, "a teapot", headers={"X-Teapot": "yes"}),
        OperationalError("SELECT 1", None, ConnectionResetError("gone")),
        ConnectionRefusedError("refused"),
    ],
    ids=["problem", "http-exception", "database-lost", "database-refused"],
)
async def test_errors_an_endpoint_served_lean_raises_get_the_apps_answers(
    client: httpx.AsyncClient,
    routed: Counter,
    monkeypatch: pytest.MonkeyPatch,
    error: Exception,
) -> None:
    """Through LeanDispatch's own exception middleware: status, body and headers as the
    app's handlers give them on the standard way."""
    await store(client, FLOW)

    async def failing(*_: Any, **__: Any) -> Any:
        raise error

    monkeypatch.setattr(client.app.state.commands, "start", failing)  # type: ignore[attr-defined]
    stored = routed()
    assert stored > 0
    lean_answer = await client.post("/runs", json={"workflow": "lean"})
    assert routed() == stored  # served past the router
    fastapi_only(client, monkeypatch)
    standard = await client.post("/runs", json={"workflow": "lean"})
    assert routed() == stored + 1
    assert lean_answer.status_code == standard.status_code >= 400
    assert lean_answer.content == standard.content
    assert _headers(lean_answer) == _headers(standard)


def _requests_counted(text: str, route: str) -> float:
    line = f'stepwise_http_requests_total{{method="POST",route="{route}",status="202"}} '
    return sum(float(x[len(line) :]) for x in text.splitlines() if x.startswith(line))


async def test_a_request_served_lean_is_counted_under_its_route(
    client: httpx.AsyncClient, routed: Counter
) -> None:
    await store(client, FLOW)
    before = _requests_counted((await client.get("/metrics")).text, "/runs")
    stored = routed()
    assert (await client.post("/runs", json={"workflow": "lean"})).status_code == 202
    assert routed() == stored
    after = _requests_counted((await client.get("/metrics")).text, "/runs")
    assert after == before + 1


async def test_under_a_root_path_plain_requests_are_still_served_lean(
    database_url: str,
) -> None:
    from tests.conftest import settings_for

    app = create_app(settings_for(database_url))
    transport = httpx.ASGITransport(app=app, root_path="/api")
    client = httpx.AsyncClient(transport=transport, base_url="http://t/api")
    async with app.router.lifespan_context(app), client:
        await store(client, FLOW)
        calls = 0
        inner = app.router.middleware_stack

        async def counting(scope: Any, receive: Any, send: Any) -> None:
            nonlocal calls
            calls += 1
            await inner(scope, receive, send)

        app.router.middleware_stack = counting
        started = await client.post("/runs", json={"workflow": "lean"})
        assert started.status_code == 202, started.text
        assert calls == 0
