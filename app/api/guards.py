"""ASGI middleware that guards every request before routing: a request id, API keys, NUL
characters in the path, query or headers (422), the body size limit (413 without reading
past it), the media type of a JSON body (415) and the JSON nesting limit (422)."""

from __future__ import annotations

import hmac
import itertools
import json
import re
import uuid
from collections.abc import Sequence
from typing import Any
from urllib.parse import parse_qsl

from fastapi import params
from fastapi.routing import APIRoute
from starlette._utils import get_route_path
from starlette.routing import Match
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from app.api.bodies import duplicate_key, media_type, unstorable_json
from app.errors import error_item

OPEN_PATHS = frozenset({"/healthz", "/readyz", "/ui", "/ui/"})
# the web inspector's static files: they hold no data, and its API calls send the key
OPEN_PREFIXES = ("/ui/static/",)
# A string literal, or an unterminated one running to the end: every match attempt from a
# quote succeeds, so the scan stays linear whatever the body holds.
_STRING = re.compile(rb'"[^"\\]*(?:\\.[^"\\]*)*(?:"|\\?\Z)', re.DOTALL)
_REQUEST_ID = re.compile(rb"[A-Za-z0-9._:-]{1,100}\Z")
_NOT_BRACKET = re.compile(rb"[^\[\]{}]")
_DEPTH_STEP = {ord("["): 1, ord("{"): 1, ord("]"): -1, ord("}"): -1}


def json_depth(body: bytes, at_most: int | None = None) -> int:
    """Maximum nesting depth of a JSON text, without parsing it. With ``at_most``, a body
    with no more opening brackets than that returns at once (its depth cannot be more)."""
    if at_most is not None and body.count(b"[") + body.count(b"{") <= at_most:
        return 0
    brackets = _NOT_BRACKET.sub(b"", _STRING.sub(b"", body))
    if not brackets:
        return 0
    return max(itertools.accumulate(map(_DEPTH_STEP.__getitem__, brackets)))


def _open(path: str) -> bool:
    return path in OPEN_PATHS or path.startswith(OPEN_PREFIXES)


_NUL = "NUL characters (%00) are not accepted"


def nul_error(scope: Scope) -> dict[str, Any] | None:
    """The error item for a NUL character in the path, query string (both as decoded)
    or a header of a request, if it has one. No database text column holds one (Postgres
    refuses it in a query parameter), so no route is given a value with it."""
    if "\x00" in scope["path"]:
        return error_item(_nul_path_loc(scope), _NUL, "unstorable_value")
    query: bytes = scope["query_string"]
    if b"%00" in query or b"\x00" in query:
        # decoded as Starlette decodes a query string
        for key, value in parse_qsl(query.decode("latin-1"), keep_blank_values=True):
            if "\x00" in key or "\x00" in value:
                loc: list[str | int] = ["query", key.replace("\x00", "%00")]
                return error_item(loc, _NUL, "unstorable_value")
    for name, value in scope["headers"]:
        if b"\x00" in value or b"\x00" in name:
            loc = ["header", name.replace(b"\x00", b"%00").decode("latin-1")]
            return error_item(loc, _NUL, "unstorable_value")
    return None


def _matched(scope: Scope) -> tuple[Any, Match, Scope] | None:
    """The route the router would take for the request: the first that matches fully,
    else the first that matches its path alone (another method), with how it matched and
    the scope it adds; None when none does."""
    partial = None
    for route in getattr(getattr(scope.get("app"), "router", None), "routes", ()):
        match, child = route.matches(scope)
        if match is Match.FULL:
            return route, match, child
        if match is Match.PARTIAL and partial is None:
            partial = route, match, child
    return partial


def _nul_path_loc(scope: Scope) -> list[str | int]:
    """``["path", name]`` for the path parameter of the route the path matches that holds
    the NUL; ``["path"]`` when no route matches."""
    matched = _matched(scope)
    for name, value in (matched[2].get("path_params", {}) if matched else {}).items():
        if isinstance(value, str) and "\x00" in value:
            return ["path", name]
    return ["path"]


def json_media(content_type: str) -> bool:
    """``application/json`` or ``application/*+json`` (parameters allowed): the types
    FastAPI parses a body as JSON for."""
    media = media_type(content_type) if content_type else ""
    return media == "application/json" or (
        media.startswith("application/") and media.endswith("+json")
    )


def takes_json_body(scope: Scope) -> bool:
    """The route the request is for reads a JSON body through FastAPI (a model or
    ``Body()``); False for the routes that read the body themselves (workflows and
    prompts, which accept YAML too), for routes with no body, and when none matches."""
    matched = _matched(scope)
    if matched is None or matched[1] is not Match.FULL:
        return False
    route = matched[0]
    if not isinstance(route, APIRoute) or route.body_field is None:
        return False
    return not isinstance(route.body_field.field_info, params.Form)


async def _send_problem(
    send: Send,
    status: int,
    code: str,
    detail: str,
    headers: Sequence[tuple[bytes, bytes]] = (),
    errors: list[dict[str, Any]] | None = None,
) -> None:
    titles = {
        401: "Unauthorized",
        413: "Payload too large",
        415: "Unsupported media type",
        422: "Unprocessable content",
    }
    problem: dict[str, Any] = {
        "type": f"https://stepwise.dev/problems/{code}",
        "title": titles.get(status, "Error"),
        "status": status,
        "detail": detail,
        "code": code,
    }
    if errors is not None:
        problem["errors"] = errors
    body = json.dumps(problem).encode()
    await send(
        {
            "type": "http.response.start",
            "status": status,
            "headers": [
                (b"content-type", b"application/problem+json"),
                (b"content-length", str(len(body)).encode()),
                *headers,
            ],
        }
    )
    await send({"type": "http.response.body", "body": body})


class RequestGuards:
    def __init__(
        self, app: ASGIApp, *, api_keys: Sequence[str], max_body_bytes: int, max_json_depth: int
    ) -> None:
        self.app = app
        self.api_keys = [key.encode() for key in api_keys]
        self.max_body_bytes = max_body_bytes
        self.max_json_depth = max_json_depth

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        headers = dict(scope["headers"])
        sent_id = headers.get(b"x-request-id", b"")
        # a client's id is kept when it is plain (it ends up in logs and headers)
        request_id = sent_id.decode() if _REQUEST_ID.match(sent_id) else uuid.uuid4().hex
        scope.setdefault("state", {})["request_id"] = request_id
        id_header = (b"x-request-id", request_id.encode())

        async def send_with_id(message: Message) -> None:
            if message["type"] == "http.response.start":
                message["headers"] = [*message.get("headers", []), id_header]
            await send(message)

        if self.api_keys and not _open(scope["path"]) and not self._authorized(headers):
            await _send_problem(
                send_with_id,
                401,
                "unauthorized",
                "send `Authorization: Bearer <key>` with a valid API key",
                [(b"www-authenticate", b"Bearer")],
            )
            return
        nul = nul_error(scope)
        if nul is not None:
            where = ".".join(str(part) for part in nul["loc"])
            message = f"{where}: {nul['msg']}"
            await _send_problem(send_with_id, 422, "validation_error", message, errors=[nul])
            return
        if scope["method"] not in ("POST", "PUT", "PATCH"):
            await self.app(scope, receive, send_with_id)
            return
        body = await self._read_body(headers, receive, send_with_id)
        if body is None:
            return
        # the first Content-Type, as FastAPI and the endpoints read it
        sent_type = next((v for k, v in scope["headers"] if k == b"content-type"), b"")
        content_type = sent_type.decode("latin-1").lower()
        # (an empty body has no media type to refuse: an optional body may be left out)
        if body and not json_media(content_type) and takes_json_body(scope):
            media = content_type.split(";")[0].strip()
            message = "send the body as application/json" + (f", not {media!r}" if media else "")
            await _send_problem(send_with_id, 415, "unsupported_media_type", message)
            return
        # /workflows/validate answers 200 with what ``bodies.parse_document`` finds wrong
        # (the depth, the values), as for any document that does not parse
        path = get_route_path(scope)
        validating = path == "/workflows/validate"
        if body and not validating and ("json" in content_type or not content_type):
            limit = self.max_json_depth
            if json_depth(body, at_most=limit) > limit:
                message = f"the JSON body nests deeper than {limit} levels"
                errors = [{"loc": ["body"], "msg": message, "type": "too_deep"}]
                await _send_problem(send_with_id, 422, "json_too_deep", message, errors=errors)
                return
            # Values no database stores (NaN, 1e999, NUL, lone surrogates) are refused here,
            # once for every endpoint, rather than failing later inside a transaction.
            errors = unstorable_json(body)
            if errors:
                message = f"the JSON body holds a value that cannot be stored: {errors[0]['msg']}"
                await _send_problem(send_with_id, 422, "invalid_body", message, errors=errors)
                return
            # (definitions and prompts are refused so by ``bodies.parse_document``, which
            # names the line of a YAML one, and /workflows/validate answers 200 for them)
            documents = _DOCUMENT_PATH.match(path) is not None
            duplicate = None if documents else duplicate_key(body)
            if duplicate is not None:
                loc, key = duplicate
                message = f"the JSON body repeats the key {key!r} within one object"
                item = {"loc": ["body", *loc], "msg": message, "type": "duplicate_key"}
                await _send_problem(send_with_id, 422, "invalid_body", message, errors=[item])
                return
        await self.app(scope, replay(body, receive), send_with_id)

    def _authorized(self, headers: dict[bytes, bytes]) -> bool:
        scheme, _, token = headers.get(b"authorization", b"").partition(b" ")
        if scheme.lower() != b"bearer" or not token.strip():
            return False
        token = token.strip()
        # compare against every key, so timing says nothing about which one nearly matched
        return any([hmac.compare_digest(token, key) for key in self.api_keys])

    async def _read_body(
        self, headers: dict[bytes, bytes], receive: Receive, send: Send
    ) -> bytes | None:
        limit = self.max_body_bytes
        too_large = f"the request body is larger than {limit} bytes"
        declared = headers.get(b"content-length")
        if declared is not None and declared.isdigit() and int(declared) > limit:
            await _send_problem(send, 413, "payload_too_large", too_large)
            return None
        chunks: list[bytes] = []
        size = 0
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                return None
            chunk = message.get("body", b"")
            size += len(chunk)
            if size > limit:
                await _send_problem(send, 413, "payload_too_large", too_large)
                return None
            chunks.append(chunk)
            if not message.get("more_body", False):
                return b"".join(chunks)


_DOCUMENT_PATH = re.compile(r"/(workflows|prompts)(/|$)")


def replay(body: bytes, receive: Receive) -> Receive:
    """A ``receive`` that gives ``body`` (already read) first, then the client's own messages."""
    sent = False

    async def next_message() -> Message:
        nonlocal sent
        if not sent:
            sent = True
            return {"type": "http.request", "body": body, "more_body": False}
        return await receive()

    return next_message
