"""Lean handlers for the run endpoints clients call most: start (``POST /runs``, ``POST
/runs/wait``), read and wait (``GET /runs/{run_id}``, ``GET /runs/{run_id}/wait``), and
answer (``POST /runs/{run_id}/response``, ``POST /runs/{run_id}/messages``).

FastAPI's handling of a request around the endpoint (the request object, dependency
solving, parameter and body validation, two exit stacks, its exception wrapper) costs
about 100 µs of CPU a request, as much as Postgres needs to insert a run. For these
routes a lean handler takes the route's place as its ASGI app: it reads the plain case
itself (a JSON body that validates, at most one simple numeric query parameter, at most
one ``Idempotency-Key``) and calls the same endpoint function with the arguments FastAPI
would pass. Any other request goes to FastAPI's own handler for the route, untouched, so
every refusal (422, 400) is FastAPI's, word for word. The routes keep their
declarations: OpenAPI, the docs and that fallback come from them; errors the endpoint
raises reach the app's exception handlers as before; ``HttpMetrics`` still sees the
matched route.
"""

from __future__ import annotations

import inspect
import json
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from fastapi.routing import APIRoute
from pydantic import BaseModel, ValidationError
from starlette.routing import BaseRoute
from starlette.types import ASGIApp, Receive, Scope, Send

from app.api import runs
from app.api.guards import replay
from app.schemas.runs import InterruptResponse, RunCreate, SessionMessage

_SIMPLE_NUMBER = re.compile(rb"[0-9]{1,9}(?:\.[0-9]{1,9})?\Z")
_MAX_KEY_CHARS = 255  # runs.IdempotencyKey's max_length
_STATE = ("engine", "commands", "bus")  # dependencies: what the lifespan put on app.state


@dataclass(frozen=True, slots=True)
class Spec:
    """What a route's endpoint takes besides its dependencies (``_STATE`` names)."""

    endpoint: Callable[..., Any]
    body: type[BaseModel] | None = None  # the JSON body's model (argument ``body``)
    query: str | None = None  # one numeric, non-negative query parameter
    idempotency_key: bool = False  # the ``Idempotency-Key`` header


LEAN: dict[tuple[str, str], Spec] = {
    ("POST", "/runs"): Spec(runs.start_run, RunCreate, idempotency_key=True),
    ("POST", "/runs/wait"): Spec(runs.start_and_wait, RunCreate, "timeout_s", True),
    ("GET", "/runs/{run_id}"): Spec(runs.get_run),
    ("GET", "/runs/{run_id}/wait"): Spec(runs.wait_run, query="timeout_s"),
    ("POST", "/runs/{run_id}/response"): Spec(runs.respond, InterruptResponse, "wait_s"),
    ("POST", "/runs/{run_id}/messages"): Spec(runs.send_message, SessionMessage, "wait_s"),
}


class LeanHandler:
    """A route's ASGI app: the plain request straight to the endpoint, any other to the
    route's own FastAPI handler (``standard``)."""

    def __init__(self, route: APIRoute, spec: Spec) -> None:
        self.standard: ASGIApp = route.app
        self.spec = spec
        parameters = inspect.signature(spec.endpoint).parameters
        self.state = [name for name in _STATE if name in parameters]
        self.default = parameters[spec.query].default if spec.query else None
        self.path = [name for name in route.param_convertors if name in parameters]
        given = {*self.state, *self.path}
        given |= {name for name, on in self._named().items() if on}
        if given != set(parameters):
            raise RuntimeError(
                f"{route.path}: {spec.endpoint.__name__} takes {sorted(parameters)}, "
                f"its lean handler would pass {sorted(given)}"
            )

    def _named(self) -> dict[str, bool]:
        spec = self.spec
        named = {"body": spec.body is not None, "idempotency_key": spec.idempotency_key}
        if spec.query is not None:
            named[spec.query] = True
        return named

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        body = b""
        if self.spec.body is not None:
            read = await _read_body(receive)
            if read is None:  # the client went away
                return
            body, receive = read, replay(read, receive)
        kwargs = self._arguments(scope, body)
        if kwargs is None:
            await self.standard(scope, receive, send)
            return
        response = await self.spec.endpoint(**kwargs)
        await response(scope, receive, send)

    def _arguments(self, scope: Scope, body: bytes) -> dict[str, Any] | None:
        """The endpoint's keyword arguments, or None: the request is not the plain case."""
        spec = self.spec
        state = scope["app"].state
        kwargs: dict[str, Any] = {name: getattr(state, name) for name in self.state}
        for name in self.path:
            kwargs[name] = scope["path_params"][name]
        query: bytes = scope["query_string"]
        if spec.query is not None:
            kwargs[spec.query] = self.default
            if query:
                key, _, value = query.partition(b"=")
                if key.decode("latin-1") != spec.query or not _SIMPLE_NUMBER.match(value):
                    return None
                kwargs[spec.query] = float(value)
        elif query:
            return None
        if spec.idempotency_key:
            keys = [value for name, value in scope["headers"] if name == b"idempotency-key"]
            if len(keys) > 1 or (keys and len(keys[0]) > _MAX_KEY_CHARS):
                return None
            kwargs["idempotency_key"] = keys[0].decode("latin-1") if keys else None
        if spec.body is not None:
            if not _json_body(scope):
                return None
            try:
                kwargs["body"] = spec.body.model_validate(json.loads(body))
            except (ValueError, ValidationError, RecursionError):
                return None
        return kwargs


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
    by another endpoint, or an endpoint whose parameters changed, fails at start-up."""
    found = 0
    for route in routes:
        if not isinstance(route, APIRoute):
            continue
        for method in route.methods or ():
            spec = LEAN.get((method, route.path))
            if spec is None:
                continue
            if route.endpoint is not spec.endpoint:
                name = spec.endpoint.__name__
                raise RuntimeError(f"{method} {route.path} is not served by {name}")
            if not isinstance(route.app, LeanHandler):
                route.app = LeanHandler(route, spec)
            found += 1
    if found != len(LEAN):
        raise RuntimeError("a route with a lean handler is missing")
