"""JSON Schema checks: that a schema is one, and where a value does not match it."""

from __future__ import annotations

from typing import Any

from jsonschema import SchemaError
from jsonschema.validators import validator_for

from app.errors import error_item

Loc = list[str | int]


def schema_errors(schema: Any, loc: Loc) -> list[dict[str, Any]]:
    if not isinstance(schema, dict):
        return [error_item(loc, "a JSON Schema must be an object", "invalid_schema")]
    try:
        validator_for(schema).check_schema(schema)
    except SchemaError as exc:
        path = [*loc, *exc.path]
        return [error_item(path, f"invalid JSON Schema: {exc.message}", "invalid_schema")]
    return []


def instance_errors(schema: dict[str, Any], value: Any, loc: Loc) -> list[dict[str, Any]]:
    """Where ``value`` does not match the (already checked) JSON Schema ``schema``."""
    validator = validator_for(schema)(schema)
    return [
        error_item([*loc, *err.absolute_path], err.message, "schema")
        for err in sorted(validator.iter_errors(value), key=lambda e: list(e.absolute_path))
    ]
