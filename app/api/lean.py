"""Lean handlers for the two routes every run goes through: ``POST /runs`` and
``GET /runs/{run_id}/wait``.

FastAPI's handling of a request around the endpoint (the request object, dependency
solving, parameter and body validation, two exit stacks, its exception wrapper) costs
about 100 µs of CPU a request, as much as Postgres needs to insert a run. For these two
routes a lean handler takes the route's place as its ASGI app: it reads the plain case
itself (a JSON body that validates, a simple ``timeout_s``, one ``Idempotency-Key``) and
calls the same endpoint function with the same arguments FastAPI would pass. Any other
request goes to FastAPI's own handler for the route, untouched, so every refusal (422,
400) is FastAPI's, word for word. The routes keep their declarations: OpenAPI, the docs
and that fallback all come from them; errors the endpoint raises reach the app's
exception handlers as before, and ``HttpMetrics`` still sees the matched route.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Sequence
from typing import Any

from fastapi.routing import APIRoute
from pydantic import ValidationError
from starlette.datastructures import State
from starlette.routing import BaseRoute
from starlette.types import ASGIApp, Receive, Scope, Send

from app.api import runs
from app.api.guards import replay
from app.schemas.runs import RunCreate

# the endpoint's keyword arguments, or None: let FastAPI handle the request
Parse = Callable[[Scope, bytes, State], dict[str, Any] | None]

_SIMPLE_NUMBER = re.compile(rb"[0-9]{1,9}(?:\.[0-9]{1,9})?\Z")
_MAX_KEY_CHARS = 255  # runs.IdempotencyKey's max_length


def _json_body(scope: Scope) -> bool:
    """The request says its body is ``application/json`` (parameters allowed)."""
    types = [value for name, value in scope["headers"] if name == b"content-type"]
    return len(types) == 1 and types[0].split(b";")[0].strip().lower() == b"application/json"


def _one_header(scope: Scope, name: bytes) -> tuple[bool, str | None]:
    """(usable, value): the header's value if sent once; unusable when sent twice."""
    values = [value for key, value in scope["headers"] if key == name]
    if len(values) > 1:
        return False, None
    return True, values[0].decode("latin-1") if values else None


def parse_start(scope: Scope, body: bytes, state: State) -> dict[str, Any] | None:
    if not _json_body(scope):
        return None
    usable, key = _one_header(scope, b"idempotency-key")
    if not usable or (key is not None and len(key) > _MAX_KEY_CHARS):
        return None
    try:
        create = RunCreate.model_validate(json.loads(body))
    except (ValueError, ValidationError, RecursionError):
        return None
    return {
        "body": create,
        "commands": state.commands,
        "engine": state.engine,
        "idempotency_key": key,
    }


def parse_wait(scope: Scope, body: bytes, state: State) -> dict[str, Any] | None:
    query: bytes = scope["query_string"]
    timeout_s = 30.0  # the route's default
    if query:
        name, _, value = query.partition(b"=")
        if name != b"timeout_s" or not _SIMPLE_NUMBER.match(value):
            return None
        timeout_s = float(value)
    return {
        "run_id": scope["path_params"]["run_id"],
        "engine": state.engine,
        "bus": state.bus,
        "timeout_s": timeout_s,
    }


class LeanHandler:
    """A route's ASGI app: ``parse`` the request and call the endpoint, or hand it to
    the route's own FastAPI handler (``standard``)."""

    def __init__(self, route: APIRoute, parse: Parse) -> None:
        self.standard: ASGIApp = route.app
        self.endpoint = route.endpoint
        self.parse = parse

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        body = b""
        if scope["method"] == "POST":
            read = await _read_body(receive)
            if read is None:  # the client went away
                return
            body, receive = read, replay(read, receive)
        kwargs = self.parse(scope, body, scope["app"].state)
        if kwargs is None:
            await self.standard(scope, receive, send)
            return
        response = await self.endpoint(**kwargs)
        await response(scope, receive, send)


async def _read_body(receive: Receive) -> bytes | None:
    chunks: list[bytes] = []
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            return None
        chunks.append(message.get("body", b""))
        if not message.get("more_body", False):
            return b"".join(chunks)


LEAN: dict[tuple[str, str], tuple[Callable[..., Any], Parse]] = {
    ("POST", "/runs"): (runs.start_run, parse_start),
    ("GET", "/runs/{run_id}/wait"): (runs.wait_run, parse_wait),
}


def install(routes: Sequence[BaseRoute]) -> None:
    """Give each route of ``LEAN`` among ``routes`` its lean handler, once (the routes are
    the routers' own objects, shared by every app built in this process). The endpoints
    are checked, so a renamed or re-routed endpoint fails at start-up rather than being
    served by the wrong function."""
    found = 0
    for route in routes:
        if not isinstance(route, APIRoute):
            continue
        for method in route.methods or ():
            entry = LEAN.get((method, route.path))
            if entry is None:
                continue
            endpoint, parse = entry
            if route.endpoint is not endpoint:
                raise RuntimeError(f"{method} {route.path} is not served by {endpoint.__name__}")
            if not isinstance(route.app, LeanHandler):
                route.app = LeanHandler(route, parse)
            found += 1
    if found != len(LEAN):
        raise RuntimeError("a route with a lean handler is missing")
