"""JSON Schema checks: that a schema is one, and where a value does not match it."""

from __future__ import annotations

from typing import Any

from jsonschema.validators import validator_for

from app.errors import error_item
from app.steps.schemas import find_schema_problem

Loc = list[str | int]


def schema_errors(schema: Any, loc: Loc) -> list[dict[str, Any]]:
    problem = find_schema_problem(schema)
    if problem is None:
        return []
    return [error_item([*loc, *problem.path], problem.message, "invalid_schema")]


def instance_errors(schema: dict[str, Any], value: Any, loc: Loc) -> list[dict[str, Any]]:
    """Where ``value`` does not match the (already checked) JSON Schema ``schema``; a
    schema that fails on this value (a ``$ref`` the check did not reach) is said so."""
    validator = validator_for(schema)(schema)
    try:
        found = sorted(validator.iter_errors(value), key=lambda e: list(e.absolute_path))
    except Exception as exc:
        msg = f"the schema cannot check this value ({type(exc).__name__}: {exc})"
        return [error_item(loc, msg, "schema_unusable")]
    return [error_item([*loc, *err.absolute_path], err.message, "schema") for err in found]
