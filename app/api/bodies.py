"""Parsing definition documents sent as JSON or YAML, refusing duplicate keys."""

from __future__ import annotations

import json
from typing import Any

import yaml

from app.errors import Invalid, StepwiseError, error_item

YAML_TYPES = ("application/yaml", "application/x-yaml", "text/yaml", "text/x-yaml")


class UnsupportedMediaType(StepwiseError):
    status = 415
    code = "unsupported_media_type"
    title = "Unsupported media type"


class _DuplicateKey(ValueError):
    pass


def _no_duplicates(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    result: dict[str, Any] = {}
    for key, value in pairs:
        if key in result:
            raise _DuplicateKey(f"duplicate key {key!r}")
        result[key] = value
    return result


class _StrictLoader(yaml.SafeLoader):
    def compose_node(self, parent: Any, index: Any) -> Any:
        # aliases can expand a small document into a huge one ("billion laughs")
        if self.check_event(yaml.AliasEvent):
            raise _DuplicateKey("YAML aliases (*name) are not accepted")
        return super().compose_node(parent, index)


def _construct_mapping(
    loader: yaml.SafeLoader, node: yaml.MappingNode, deep: bool = False
) -> dict[Any, Any]:
    loader.flatten_mapping(node)
    result: dict[Any, Any] = {}
    for key_node, value_node in node.value:
        key = loader.construct_object(key_node, deep=deep)
        if key in result:
            line = key_node.start_mark.line + 1
            raise _DuplicateKey(f"duplicate key {key!r} (line {line})")
        result[key] = loader.construct_object(value_node, deep=deep)
    return result


_StrictLoader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, _construct_mapping)


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


def parse_document(body: bytes, content_type: str | None, max_depth: int = 64) -> Any:
    document = _parse(body, content_type)
    if depth(document) > max_depth:
        raise Invalid(
            f"the document nests deeper than {max_depth} levels",
            code="json_too_deep",
            errors=[error_item(["body"], "too deeply nested", "too_deep")],
        )
    return document


def _parse(body: bytes, content_type: str | None) -> Any:
    media = (content_type or "application/json").split(";")[0].strip().lower()
    try:
        if media in YAML_TYPES:
            return yaml.load(body.decode("utf-8"), Loader=_StrictLoader)
        if media == "application/json" or media.endswith("+json"):
            return json.loads(body, object_pairs_hook=_no_duplicates)
    except (_DuplicateKey, ValueError, yaml.YAMLError, UnicodeDecodeError, RecursionError) as exc:
        kind = "YAML" if media in YAML_TYPES else "JSON"
        raise Invalid(
            f"the body is not valid {kind}: {exc}",
            code="invalid_body",
            errors=[error_item(["body"], str(exc), "parse_error")],
        ) from None
    raise UnsupportedMediaType(f"send application/json or application/yaml, not {media!r}")
