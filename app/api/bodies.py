"""Parsing documents sent as JSON or YAML into plain JSON values.

Refused, with a 422 naming the place: malformed text, duplicate mapping keys, YAML
aliases (a small document could expand into a huge one), YAML values JSON has no word
for (timestamps are kept as strings; binary, sets and non-string keys are refused), and
values no database can store: NaN, infinities (``1e999``), NUL characters and lone
surrogates in strings.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Iterator
from typing import Any

import yaml

from app.errors import Invalid, StepwiseError, error_item

YAML_TYPES = ("application/yaml", "application/x-yaml", "text/yaml", "text/x-yaml")

Loc = list[str | int]

# Cheap pre-check on raw JSON bytes: only bodies that could hold an unstorable value are
# parsed and walked by ``unstorable_json``.
_SUSPECT = re.compile(rb"NaN|Infinity|\\u0000|\\u[dD][89a-fA-F]|[eE][+-]?\d{3}|\d{300}")


class UnsupportedMediaType(StepwiseError):
    status = 415
    code = "unsupported_media_type"
    title = "Unsupported media type"


class _Refused(ValueError):
    pass


class _Repeats(dict[str, Any]):
    """An object that repeated a key: parsers see objects innermost first, with no path,
    so the object is marked, and the document walked for its path once parsed."""

    def __init__(self, pairs: list[tuple[str, Any]], key: str, line: int | None) -> None:
        super().__init__(pairs)
        self.key = key
        self.line = line


def _mark_duplicates(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    result = dict(pairs)
    if len(result) < len(pairs):
        seen: set[str] = set()
        for key, _ in pairs:
            if key in seen:
                return _Repeats(pairs, key, None)
            seen.add(key)
    return result


def _load_json(body: bytes, **options: Any) -> tuple[Any, bool]:
    """Parsed JSON, its objects that repeat a key marked, and whether there is one (so
    that a body with none, the common case, is not walked)."""
    repeats = False

    def hook(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
        nonlocal repeats
        result = _mark_duplicates(pairs)
        repeats = repeats or isinstance(result, _Repeats)
        return result

    return json.loads(body, object_pairs_hook=hook, **options), repeats


def first_duplicate(value: Any, loc: Loc | None = None) -> tuple[Loc, str, int | None] | None:
    """Where a parsed document first repeats a key: the key's path, the key, its line."""
    loc = loc or []
    if isinstance(value, dict):
        if isinstance(value, _Repeats):
            return [*loc, value.key], value.key, value.line
        for key, item in value.items():
            found = first_duplicate(item, [*loc, key])
            if found is not None:
                return found
    elif isinstance(value, list):
        for index, item in enumerate(value):
            found = first_duplicate(item, [*loc, index])
            if found is not None:
                return found
    return None


def _no_constants(name: str) -> Any:
    raise _Refused(f"{name} is not a JSON number")


class _StrictLoader(yaml.SafeLoader):
    """Safe YAML that builds JSON values only."""

    def compose_node(self, parent: Any, index: Any) -> Any:
        if self.check_event(yaml.AliasEvent):
            mark = self.peek_event().start_mark  # type: ignore[no-untyped-call]
            raise _Refused(f"YAML aliases (*name) are not accepted (line {mark.line + 1})")
        return super().compose_node(parent, index)


def _construct_mapping(loader: yaml.SafeLoader, node: yaml.MappingNode) -> dict[str, Any]:
    result: dict[str, Any] = {}
    for key_node, value_node in node.value:
        line = key_node.start_mark.line + 1
        if key_node.tag == "tag:yaml.org,2002:merge":
            raise _Refused(f"YAML merge keys (<<) are not accepted (line {line})")
        key = loader.construct_object(key_node, deep=True)
        if not isinstance(key, str):
            raise _Refused(f"mapping key {key!r} is not a string; quote it (line {line})")
        if key in result:
            pairs = [*result.items(), (key, None)]
            return _Repeats(pairs, key, line)
        result[key] = loader.construct_object(value_node, deep=True)
    return result


def _timestamp_as_text(loader: yaml.SafeLoader, node: yaml.ScalarNode) -> str:
    return str(node.value)


def _refuse_tag(loader: yaml.SafeLoader, node: yaml.Node) -> Any:
    line = node.start_mark.line + 1
    raise _Refused(f"YAML type {node.tag} has no JSON equivalent (line {line})")


_StrictLoader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, _construct_mapping)
# Timestamps stay the strings they were written as; JSON has no date type.
_StrictLoader.add_constructor("tag:yaml.org,2002:timestamp", _timestamp_as_text)
for _tag in ("binary", "set", "omap", "pairs"):
    _StrictLoader.add_constructor(f"tag:yaml.org,2002:{_tag}", _refuse_tag)


def depth(value: Any) -> int:
    """Nesting depth of a parsed JSON value (iterative: no recursion limit)."""
    deepest, todo = 0, [(value, 1)]
    while todo:
        item, level = todo.pop()
        if isinstance(item, dict | list):
            deepest = max(deepest, level)
            todo.extend(
                (child, level + 1) for child in (item.values() if isinstance(item, dict) else item)
            )
    return deepest


def _string_problem(text: str) -> str | None:
    if "\x00" in text:
        return "NUL characters (\\u0000) are not accepted in strings"
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return "a lone UTF-16 surrogate is not valid text"
    return None


def _walk(value: Any, loc: Loc) -> Iterator[tuple[Loc, str]]:
    todo: list[tuple[Any, Loc]] = [(value, loc)]
    while todo:
        item, path = todo.pop()
        if isinstance(item, str):
            problem = _string_problem(item)
            if problem:
                yield path, problem
        elif isinstance(item, float):
            if not math.isfinite(item):
                yield path, f"the number {item} is out of range"
        elif isinstance(item, dict):
            for key, child in item.items():
                problem = _string_problem(key)
                if problem:
                    yield [*path, key], f"key: {problem}"
                todo.append((child, [*path, key]))
        elif isinstance(item, list):
            todo.extend((child, [*path, i]) for i, child in enumerate(item))


def unstorable(value: Any, loc: Loc | None = None) -> list[dict[str, Any]]:
    """Errors for the values inside a parsed document that cannot be stored."""
    return [error_item(path, msg, "unstorable_value") for path, msg in _walk(value, loc or [])]


def unstorable_json(body: bytes) -> list[dict[str, Any]]:
    """``unstorable`` for a raw JSON body; a fast no for nearly every body. A body that
    does not parse is left to whoever reads it."""
    if not _SUSPECT.search(body):
        return []
    try:
        value = json.loads(body, parse_constant=_no_constants)
    except _Refused as exc:
        return [error_item(["body"], str(exc), "unstorable_value")]
    except (ValueError, RecursionError):
        return []
    return unstorable(value, ["body"])


def duplicate_key(body: bytes) -> tuple[Loc, str] | None:
    """The first key a raw JSON body repeats within one object, with its path, if any:
    JSON parsers keep the last value silently, so the sender's intent is unknown. A body
    that does not parse is left to whoever reads it."""
    if b"," not in body:  # (one member per object at most)
        return None
    try:
        document, repeats = _load_json(body)
        found = first_duplicate(document) if repeats else None
    except (ValueError, RecursionError):
        return None
    return None if found is None else (found[0], found[1])


def parse_document(body: bytes, content_type: str | None, max_depth: int = 64) -> Any:
    document = _parse(body, content_type)
    if depth(document) > max_depth:
        raise Invalid(
            f"the document nests deeper than {max_depth} levels",
            code="json_too_deep",
            errors=[error_item([], f"nested deeper than {max_depth} levels", "too_deep")],
        )
    repeated = first_duplicate(document)
    if repeated is not None:
        loc, key, line = repeated
        where = "" if line is None else f" (line {line})"
        message = f"duplicate key {key!r}{where}"
        raise Invalid(
            f"the body is not a valid document: {message}",
            code="invalid_body",
            errors=[error_item(loc, message, "duplicate_key")],
        )
    errors = unstorable(document)
    if errors:
        raise Invalid(
            f"the document holds a value that cannot be stored: {errors[0]['msg']}",
            code="invalid_body",
            errors=errors,
        )
    return document


def media_type(content_type: str | None) -> str:
    return (content_type or "application/json").split(";")[0].strip().lower()


def _parse(body: bytes, content_type: str | None) -> Any:
    media = media_type(content_type)
    is_yaml = media in YAML_TYPES
    if not is_yaml and media != "application/json" and not media.endswith("+json"):
        raise UnsupportedMediaType(f"send application/json or application/yaml, not {media!r}")
    try:
        if is_yaml:
            return yaml.load(body.decode("utf-8"), Loader=_StrictLoader)
        return json.loads(body, object_pairs_hook=_mark_duplicates, parse_constant=_no_constants)
    except (ValueError, yaml.YAMLError, RecursionError) as exc:
        kind = "YAML" if is_yaml else "JSON"
        message = "nested too deeply" if isinstance(exc, RecursionError) else str(exc)
        raise Invalid(
            f"the body is not valid {kind}: {message}",
            code="invalid_body",
            errors=[error_item([], message, "parse_error")],
        ) from None
