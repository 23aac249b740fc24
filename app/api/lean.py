"""Lean handlers for the run endpoints clients call most: start (``POST /runs``, ``POST
/runs/wait``), read and wait (``GET /runs/{run_id}``, ``GET /runs/{run_id}/wait``), and
answer (``POST /runs/{run_id}/response``, ``POST /runs/{run_id}/messages``).

FastAPI's handling of a request around the endpoint (the request object, dependency
solving, two exit stacks, its exception wrapper) costs about 100 µs of CPU a request, as
much as Postgres needs to insert a run. For these routes a lean handler takes the
route's place as its ASGI app and does the same work directly, from the route's own
declarations: each path, query and header parameter and the JSON body is validated by
the route's own FastAPI field (so every constraint declared there applies), and the
dependencies, which only hand over what the lifespan put on ``app.state``, are looked up
there. A request that is not the plain case (a body that is not ``application/json``,
a query string with escapes or repeats, a repeated header, anything that fails
validation) goes to FastAPI's own handler for the route, untouched, so every refusal
(422, 400) is FastAPI's, word for word. A route declared in a way the lean handler does
not reproduce (another dependency, a cookie, a ``Request`` parameter, an endpoint that
does not return a ``Response``) fails at start-up. OpenAPI and the docs come from the
routes as before; errors the endpoints raise reach the app's exception handlers;
``HttpMetrics`` still sees the matched route.

``LeanDispatch``, the innermost middleware, hands a plain request for these routes to
its lean handler directly: past the exception middleware's wrapper, the exit stack and
the router's scan of every route (about 35 µs a request together). The endpoint's
errors go through an exception middleware of their own holding the app's handlers;
everything else, a lean request that is not the plain case included, takes the
standard way down.
"""

from __future__ import annotations

import json
import re
import typing
from collections.abc import Callable, Sequence
from typing import Any

from fastapi import FastAPI, Response
from fastapi.dependencies.models import Dependant
from fastapi.routing import APIRoute
from starlette._utils import get_route_path
from starlette.middleware.exceptions import ExceptionMiddleware
from starlette.routing import BaseRoute, Match, Route
from starlette.types import ASGIApp, Receive, Scope, Send

from app.api import deps, runs
from app.api.guards import replay

# (method, path) -> the endpoint expected to serve it
LEAN: dict[tuple[str, str], Callable[..., Any]] = {
    ("POST", "/runs"): runs.start_run,
    ("POST", "/runs/wait"): runs.start_and_wait,
    ("GET", "/runs/{run_id}"): runs.get_run,
    ("GET", "/runs/{run_id}/wait"): runs.wait_run,
    ("POST", "/runs/{run_id}/response"): runs.respond,
    ("POST", "/runs/{run_id}/messages"): runs.send_message,
}
# the dependencies a lean handler reproduces: what each hands over from app.state
STATE: dict[Callable[..., Any], str] = {
    deps.engine: "engine",
    deps.commands: "commands",
    deps.bus: "bus",
}
_SPECIAL = (
    "request_param_name",
    "websocket_param_name",
    "http_connection_param_name",
    "response_param_name",
    "background_tasks_param_name",
    "security_scopes_param_name",
)


class LeanHandler:
    """A route's ASGI app: the plain request straight to the endpoint, any other to the
    route's own FastAPI handler (``standard``)."""

    def __init__(self, route: APIRoute) -> None:
        dependant = route.dependant
        _check(route, dependant)
        self.standard: ASGIApp = route.app
        self.endpoint = route.endpoint
        self.state = {
            sub.name: STATE[sub.call]
            for sub in dependant.dependencies
            if sub.name is not None and sub.call is not None
        }
        self.path = dependant.path_params
        self.query = dependant.query_params[0] if dependant.query_params else None
        self.query_name = self.query.alias.encode("latin-1") if self.query else b""
        self.header = dependant.header_params[0] if dependant.header_params else None
        self.header_name = self.header.alias.lower().encode("latin-1") if self.header else b""
        self.body = dependant.body_params[0] if dependant.body_params else None

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        read = await self.read(scope, receive)
        if read is None:  # the client went away
            return
        kwargs, receive = read
        if kwargs is None:
            await self.standard(scope, receive, send)
            return
        await self.serve(kwargs, scope, receive, send)

    async def read(
        self, scope: Scope, receive: Receive
    ) -> tuple[dict[str, Any] | None, Receive] | None:
        """The endpoint's arguments (None: not the plain case) and a ``receive`` that
        gives the body again; None when the client went away."""
        body = b""
        if self.body is not None:
            read = await _read_body(receive)
            if read is None:
                return None
            body, receive = read, replay(read, receive)
        return self._arguments(scope, body), receive

    async def serve(
        self, kwargs: dict[str, Any], scope: Scope, receive: Receive, send: Send
    ) -> None:
        response = await self.endpoint(**kwargs)
        await response(scope, receive, send)

    def _arguments(self, scope: Scope, body: bytes) -> dict[str, Any] | None:
        """The endpoint's keyword arguments, or None: the request is not the plain case."""
        state = scope["app"].state
        kwargs: dict[str, Any] = {name: getattr(state, attr) for name, attr in self.state.items()}
        for field in self.path:
            value, errors = field.validate(scope["path_params"][field.alias])
            if errors:
                return None
            kwargs[field.name] = value
        raw_query: bytes = scope["query_string"]
        if self.query is None:
            if raw_query:
                return None
        else:
            raw = None
            if raw_query:
                key, _, raw = raw_query.partition(b"=")
                if key != self.query_name or b"%" in raw or b"+" in raw or b"&" in raw:
                    return None
            # latin-1 as Starlette reads a query string: any byte decodes
            if not _take(kwargs, self.query, None if raw is None else raw.decode("latin-1")):
                return None
        if self.header is not None:
            sent = [value for name, value in scope["headers"] if name == self.header_name]
            if len(sent) > 1:
                return None
            if not _take(kwargs, self.header, sent[0].decode("latin-1") if sent else None):
                return None
        if self.body is not None:
            if not _json_body(scope):
                return None
            try:
                document = json.loads(body)
            except (ValueError, RecursionError):
                return None
            value, errors = self.body.validate(document)
            if errors:
                return None
            kwargs[self.body.name] = value
        return kwargs


class LeanDispatch:
    """The innermost middleware: a plain request for a route with a lean handler is
    served here, as the router would have matched it (the route's own ``matches``, in
    the router's order; that no earlier route can match its paths is checked when the
    middleware is built, at start-up)."""

    def __init__(self, app: ASGIApp, fastapi_app: FastAPI) -> None:
        self.app = app
        self.router = fastapi_app.router
        routes = fastapi_app.router.routes
        self.routes = [
            (route, route.path.split("{")[0], route.methods or set())
            for route in routes
            if isinstance(route, APIRoute) and isinstance(route.app, LeanHandler)
        ]
        for lean, _, _ in self.routes:
            for earlier in routes[: routes.index(lean)]:
                if _may_overlap(earlier, lean):
                    raise RuntimeError(f"{earlier} may match paths of the lean {lean}")
        # the exception middleware FastAPI builds, over the endpoint alone
        handlers = {
            key: handler
            for key, handler in fastapi_app.exception_handlers.items()
            if key not in (500, Exception)  # (those are the outermost middleware's)
        }
        self.guarded = ExceptionMiddleware(_serve, handlers=handlers, debug=fastapi_app.debug)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        # (with FastAPI's telemetry on, the router names the route to it: not here)
        if scope["type"] == "http" and "fastapi.telemetry" not in scope:
            path, method = get_route_path(scope), scope["method"]
            for route, prefix, methods in self.routes:
                if method not in methods or not path.startswith(prefix):
                    continue
                handler = route.app  # (tests give some routes FastAPI's own back)
                match, child = route.matches(scope)
                if match is not Match.FULL or not isinstance(handler, LeanHandler):
                    continue
                scope.update(child)  # (as the router would: the route, its parameters)
                scope.setdefault("router", self.router)
                read = await handler.read(scope, receive)
                if read is None:  # the client went away
                    return
                kwargs, receive = read
                if kwargs is None:
                    break  # not the plain case: the standard way
                scope[_SERVING] = (handler, kwargs)
                await self.guarded(scope, receive, send)
                return
        await self.app(scope, receive, send)


_SERVING = "stepwise.lean"


_ONE_SEGMENT = frozenset({"str", "int", "float", "uuid"})  # the converters that stop at "/"
_PARAM = re.compile(r"{[^}:]*(?::([^}]*))?}")


def _may_overlap(route: BaseRoute, lean: APIRoute) -> bool:
    """Whether ``route`` could match a request ``lean`` matches (when unsure: True)."""
    if type(route) not in (Route, APIRoute):  # (another kind may match otherwise)
        return True
    assert isinstance(route, Route)
    if route.methods and not route.methods & (lean.methods or set()):  # (none: every one)
        return False
    path = route.path
    if any((m.group(1) or "str") not in _ONE_SEGMENT for m in _PARAM.finditer(path)):
        return True
    ours, theirs = lean.path.split("/"), path.split("/")
    if len(ours) != len(theirs):
        return False
    return all(a == b or "{" in a or "{" in b for a, b in zip(ours, theirs, strict=True))


async def _serve(scope: Scope, receive: Receive, send: Send) -> None:
    handler, kwargs = scope.pop(_SERVING)
    await handler.serve(kwargs, scope, receive, send)


def _take(kwargs: dict[str, Any], field: Any, raw: str | None) -> bool:
    """Validate ``raw`` (None: not sent) with the route's field into ``kwargs``; False
    when FastAPI would refuse it (a missing required one included)."""
    if raw is None:
        if field.field_info.is_required():
            return False
        kwargs[field.name] = field.field_info.get_default(call_default_factory=True)
        return True
    value, errors = field.validate(raw)
    if errors:
        return False
    kwargs[field.name] = value
    return True


def _check(route: APIRoute, dependant: Dependant) -> None:
    """Refuse a route whose declaration the lean handler would not reproduce."""
    where = f"{route.path}: {route.endpoint.__name__}"
    if any(getattr(dependant, name) for name in _SPECIAL) or dependant.cookie_params:
        raise RuntimeError(f"{where} takes a parameter a lean handler does not supply")
    if len(dependant.query_params) > 1 or len(dependant.header_params) > 1:
        raise RuntimeError(f"{where}: a lean handler takes one query and one header parameter")
    if len(dependant.body_params) > 1 or route._embed_body_fields:
        raise RuntimeError(f"{where}: a lean handler takes one JSON body, not embedded")
    for sub in dependant.dependencies:
        plain = not (sub.dependencies or sub.path_params or sub.query_params)
        if sub.call not in STATE or sub.name is None or not plain:
            raise RuntimeError(f"{where} depends on {sub.call!r}, which a lean handler skips")
    if typing.get_type_hints(route.endpoint).get("return") is not Response:
        raise RuntimeError(f"{where} must return a Response (it is called directly)")


def _json_body(scope: Scope) -> bool:
    """The request says its body is ``application/json`` (parameters allowed)."""
    types = [value for name, value in scope["headers"] if name == b"content-type"]
    return len(types) == 1 and types[0].split(b";")[0].strip().lower() == b"application/json"


async def _read_body(receive: Receive) -> bytes | None:
    chunks: list[bytes] = []
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            return None
        chunks.append(message.get("body", b""))
        if not message.get("more_body", False):
            return b"".join(chunks)


def install(routes: Sequence[BaseRoute]) -> None:
    """Give each route of ``LEAN`` among ``routes`` its lean handler, once (the routes are
    the routers' own objects, shared by every app built in this process). A route served
    by another endpoint, or declared in a way a lean handler does not reproduce, fails at
    start-up."""
    found = 0
    for route in routes:
        if not isinstance(route, APIRoute):
            continue
        for method in route.methods or ():
            endpoint = LEAN.get((method, route.path))
            if endpoint is None:
                continue
            if route.endpoint is not endpoint:
                name = endpoint.__name__
                raise RuntimeError(f"{method} {route.path} is not served by {name}")
            if not isinstance(route.app, LeanHandler):
                route.app = LeanHandler(route)
            found += 1
    if found != len(LEAN):
        raise RuntimeError("a route with a lean handler is missing")
