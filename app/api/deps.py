"""Request-scoped access to what the lifespan built.

The dependencies are ``async def`` on purpose: FastAPI runs a plain ``def`` dependency
in its thread pool, a thread hop per request for a dictionary lookup."""

from __future__ import annotations

import base64
import json
import re
from datetime import UTC, datetime
from typing import Any

from fastapi import Request

from app.engine.commands import RunCommands
from app.engine.services import Engine
from app.errors import Invalid, error_item
from app.events.bus import EventBus
from app.schemas.definition import NAME_PATTERN


async def engine(request: Request) -> Engine:
    found: Engine = request.app.state.engine
    return found


async def commands(request: Request) -> RunCommands:
    found: RunCommands = request.app.state.commands
    return found


async def bus(request: Request) -> EventBus:
    found: EventBus = request.app.state.bus
    return found


def encode_cursor(value: Any) -> str:
    return (
        base64.urlsafe_b64encode(json.dumps(value, separators=(",", ":")).encode())
        .decode()
        .rstrip("=")
    )


def bad_cursor() -> Invalid:
    return Invalid(
        "the cursor is not one this API gave out",
        code="invalid_cursor",
        errors=[error_item(["query", "cursor"], "malformed cursor")],
    )


def decode_cursor(cursor: str | None) -> Any:
    """The value inside a cursor; callers check its type and range before using it."""
    if cursor is None:
        return None
    try:
        value = json.loads(base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4)))
    except (ValueError, UnicodeDecodeError, RecursionError):
        raise bad_cursor() from None
    # only the form ``encode_cursor`` writes (base64 decoding passes over stray
    # characters, so ``Mg==x`` read as ``Mg``): padding may come back, nothing else
    if encode_cursor(value) != cursor.rstrip("="):
        raise bad_cursor()
    return value


_NAME = re.compile(NAME_PATTERN)


def decode_name_cursor(cursor: str | None) -> str | None:
    """A cursor that carries a workflow or prompt name."""
    value = decode_cursor(cursor)
    if value is None or (isinstance(value, str) and _NAME.match(value)):
        return value
    raise bad_cursor()


def decode_version_cursor(cursor: str | None) -> int | None:
    """A cursor that carries a version number."""
    value = decode_cursor(cursor)
    if value is None or (type(value) is int and 1 <= value <= MAX_SEQ):
        return value
    raise bad_cursor()


MAX_SEQ = 2**31 - 1
_RUN_ID = re.compile(r"^[0-9A-Za-z-]{1,64}$")


def decode_run_cursor(cursor: str | None) -> tuple[datetime, str] | None:
    """A cursor of the runs list: the ``created_at`` (with its zone) and id of the last
    run of the page before."""
    value = decode_cursor(cursor)
    if value is None:
        return None
    if isinstance(value, list) and len(value) == 2 and all(isinstance(v, str) for v in value):
        created, run_id = value
        try:
            at = datetime.fromisoformat(created)
            if at.tzinfo is not None:
                at = at.astimezone(UTC)  # as the column stores it (a year 9999 may overflow)
        except (ValueError, OverflowError):
            raise bad_cursor() from None
        if at.tzinfo is not None and _RUN_ID.match(run_id):
            return at, run_id
    raise bad_cursor()


def decode_seq_cursor(cursor: str | None, default: int = 0) -> int:
    """A cursor that carries a sequence number (events, checkpoints)."""
    decoded = decode_cursor(cursor)
    if decoded is None:
        return default
    if type(decoded) is not int or not 0 <= decoded <= MAX_SEQ:
        raise bad_cursor()
    return decoded
