"""Finding template strings: which strings of a value are templates, and where they sit."""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from typing import Any

from app.engine.templates.errors import Path


def has_template(value: Any) -> bool:
    """True if any string inside ``value`` (recursing into dicts and lists) contains
    ``{{`` or ``{%``. Dict keys are not looked at (they are never rendered)."""
    if isinstance(value, str):
        return "{{" in value or "{%" in value
    if isinstance(value, Mapping):
        return any(has_template(v) for v in value.values())
    if isinstance(value, list | tuple):
        return any(has_template(v) for v in value)
    return False


def iter_templates(value: Any, path: Sequence[str | int] = ()) -> Iterator[tuple[Path, str]]:
    """Yield ``(path, string)`` for every string inside ``value`` (dicts and lists
    recursed; dict keys are path segments, list indexes too). ``path`` is the prefix, e.g.
    ``["nodes", "pay", "with"]``; each yielded path is a fresh list. Strings without
    template markers are yielded too (:meth:`TemplateEngine.check` accepts them at once)."""
    if isinstance(value, str):
        yield list(path), value
    elif isinstance(value, Mapping):
        for key, item in value.items():
            yield from iter_templates(item, [*path, key])
    elif isinstance(value, list | tuple):
        for index, item in enumerate(value):
            yield from iter_templates(item, [*path, index])


def _is_template(source: str) -> bool:
    return "{{" in source or "{%" in source
