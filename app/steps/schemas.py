"""JSON Schemas a workflow hands to the service (an interrupt's ``schema``, a workflow's
``inputs``, a tool's ``parameters``), checked before they are used: a value is then
never checked against a schema that cannot be used."""

from __future__ import annotations

import functools
import json
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from jsonschema.exceptions import best_match
from jsonschema.validators import validator_for

# values an answer may take, tried once so that what a schema does (a ``$ref`` it cannot
# resolve, a ``pattern`` that is no regular expression) fails here and not at the answer
_PROBES: tuple[Any, ...] = (None, True, 0, 0.5, "", [], {})


@dataclass(frozen=True, slots=True)
class SchemaProblem:
    message: str
    path: Sequence[str | int] = ()  # where in the schema


def find_schema_problem(schema: Any) -> SchemaProblem | None:
    """What makes ``schema`` unusable to check values with, or None. The check costs about
    half a millisecond (the meta-schema is large) and the same schemas come back (an
    interrupt step's at each pause): its outcome is kept per schema text."""
    if not isinstance(schema, dict):
        return SchemaProblem("a JSON Schema must be an object")
    try:
        text = json.dumps(schema, sort_keys=True)
    except (TypeError, ValueError):  # (schemas come from JSON: never, in practice)
        return SchemaProblem("a JSON Schema must be a JSON object")
    return _problem_of(text)


@functools.lru_cache(maxsize=512)
def _problem_of(text: str) -> SchemaProblem | None:
    schema = json.loads(text)
    try:
        cls = validator_for(schema)  # (a `$schema` that is no string raises)
        # the meta-schema with its formats asserted: a `pattern` must be a regex
        meta = cls(cls.META_SCHEMA, format_checker=cls.FORMAT_CHECKER)
        wrong = best_match(meta.iter_errors(schema))
        if wrong is not None:
            return SchemaProblem(f"invalid JSON Schema: {wrong.message}", tuple(wrong.path))
        validator = cls(schema)
        for probe in _PROBES:
            for _ in validator.iter_errors(probe):
                pass
    except Exception as exc:  # an unresolvable $ref, a bad regex, an unknown type
        return SchemaProblem(f"unusable JSON Schema ({type(exc).__name__}: {exc})")
    return None


def schema_problem(schema: Any) -> str | None:
    """``find_schema_problem``'s message."""
    problem = find_schema_problem(schema)
    return None if problem is None else problem.message
