"""Walking a value: estimating its printed size, and making a native result JSON-shaped.

Native results are made JSON-shaped: tuples, ranges, iterators/generators (e.g. the
result of ``| map(...)``, ``| reverse``) and dict views become lists, ``namespace``
objects become dicts, ``Markup`` becomes ``str``, object keys that are numbers, booleans
or null become their JSON text; a callable result (``{{ state.get }}``), any other object
key (a tuple) and any other object (``{{ self }}``, a ``cycler``) are errors. Values taken
from the scope are returned as-is, not copied: treat native results as read-only or copy
them before mutating.
"""

from __future__ import annotations

import json
import math
from collections import abc
from collections.abc import Iterable, Iterator, Mapping
from itertools import islice
from typing import Any, Protocol

from jinja2.runtime import Undefined
from jinja2.utils import Namespace

from app.engine.templates.errors import _EvalError, _LimitError
from app.engine.templates.missing import MissingKey

#: Deepest nesting of a value that is printed or returned.
_MAX_DEPTH = 100


class _Materializer(Protocol):
    """What the walker needs of the environment: reading an iterator into a bounded list."""

    def materialize(self, iterator: Iterator[Any]) -> list[Any]: ...


class _Walker:
    """Estimates the printed size of a value, failing as soon as it passes ``limit``.

    With ``convert=True`` it also turns the value into a JSON-shaped native result (see the
    module docstring), copying a container only when something inside it changed.
    ``indent_units`` accumulates, per container item, its nesting depth: the extra size an
    indented JSON dump adds per indent character.
    """

    __slots__ = ("convert", "env", "indent_units", "label", "limit", "total", "what")

    def __init__(
        self, env: _Materializer, limit: int, what: str, label: str, convert: bool
    ) -> None:
        self.env = env
        self.limit = limit
        self.what = what
        self.label = label
        self.convert = convert
        self.total = 0
        self.indent_units = 0

    def add(self, size: int) -> None:
        self.total += size
        if self.total > self.limit:
            raise _LimitError(f"{self.what} is larger than {self.label}")

    def visit(self, value: Any, depth: int) -> Any:
        kind = type(value)
        if kind is str:
            self.add(len(value) + 2)
            return value
        if kind is int:
            self.add(value.bit_length() * 3 // 10 + 2)
            return value
        if value is None or kind is bool or kind is float:
            self.add(8)
            if self.convert and kind is float and not math.isfinite(value):
                raise _EvalError(f"the result holds {value}, a number JSON has no word for")
            return value
        if depth >= _MAX_DEPTH:
            raise _LimitError(f"{self.what} is nested deeper than {_MAX_DEPTH} levels")
        if kind is dict:
            return self.visit_mapping(value, depth)
        if kind is list:
            return self.visit_sequence(value, depth, list)
        return self.visit_other(value, depth)

    def visit_mapping(self, value: Mapping[Any, Any], depth: int) -> Any:
        self.add(2 + 2 * len(value))
        self.indent_units += (len(value) + 1) * (depth + 1)
        out: dict[Any, Any] | None = None
        for index, (key, item) in enumerate(value.items()):
            name = key if isinstance(key, str) or not self.convert else _json_key(key)
            self.visit(name, depth + 1)
            new = self.visit(item, depth + 1)
            if self.convert:
                if out is None and (new is not item or name is not key):
                    out = dict(islice(value.items(), index))
                if out is not None:
                    out[name] = new
        return value if out is None else out

    def visit_sequence(self, value: Iterable[Any], depth: int, kind: type) -> Any:
        items = value if isinstance(value, list | tuple) else list(value)
        self.add(2 + 2 * len(items))
        self.indent_units += (len(items) + 1) * (depth + 1)
        out: list[Any] | None = None
        must_copy = self.convert and kind is not list
        for index, item in enumerate(items):
            new = self.visit(item, depth + 1)
            if self.convert:
                if out is None and (must_copy or new is not item):
                    out = list(items[:index])
                if out is not None:
                    out.append(new)
        if out is not None:
            return out
        return items if self.convert else value

    def visit_other(self, value: Any, depth: int) -> Any:
        if isinstance(value, MissingKey):  # null
            self.add(4)
            return None if self.convert else value
        if isinstance(value, Undefined):
            value._fail_with_undefined_error()
        if isinstance(value, str):  # Markup and other str subclasses
            self.add(len(value) + 2)
            return "".join((value,)) if self.convert else value
        if isinstance(value, bytes | bytearray):
            self.add(len(value) + 3)
            if self.convert:
                raise _not_json(value)
            return value
        if isinstance(value, int | float | complex):
            self.add(24)
            if self.convert and isinstance(value, complex):
                raise _not_json(value)
            if self.convert and isinstance(value, float) and not math.isfinite(value):
                raise _EvalError(f"the result holds {value}, a number JSON has no word for")
            return value
        if isinstance(value, Mapping):
            return self.visit_mapping(value, depth)
        if isinstance(value, Namespace):
            self.add(13)
            attrs: dict[str, Any] = getattr(value, "_Namespace__attrs", {})
            result = self.visit_mapping(attrs, depth)
            return (dict(result) if result is attrs else result) if self.convert else value
        if isinstance(value, list | tuple | set | frozenset | abc.KeysView | abc.ValuesView):
            return self.visit_sequence(value, depth, type(value))
        if isinstance(value, abc.ItemsView):
            if not self.convert:
                return self.visit_sequence(value, depth, list)
            return self.visit_sequence([list(pair) for pair in value], depth, list)
        if isinstance(value, range):
            if not self.convert:
                self.add(24)
                return value
            return self.visit_sequence(value, depth, list)
        if isinstance(value, abc.Iterator):
            if not self.convert:  # never consume an iterator just to measure it
                self.add(32)
                return value
            return self.visit_sequence(self.env.materialize(value), depth, list)
        if self.convert and callable(value):
            name = getattr(value, "__name__", type(value).__name__)
            raise _EvalError(
                f"expression evaluated to a callable ({name!r}), not a value; "
                "did you forget the parentheses?"
            )
        if self.convert:  # a template object, a cycler, a joiner…
            raise _not_json(value)
        self.add(64)
        return value


def _json_key(key: Any) -> str:
    """An object key as JSON writes it: numbers, booleans and null become their text; any
    other key (a tuple, say) is an error."""
    if key is None or isinstance(key, bool | int | float):
        return json.dumps(key)
    raise _EvalError(
        f"the result has an object key {key!r} ({type(key).__name__}); JSON object keys are strings"
    )


def _not_json(value: Any) -> _EvalError:
    return _EvalError(f"the result holds a {type(value).__name__!r}, which is not a JSON value")
