"""Compact deltas between JSON documents, so a checkpoint stores what changed.

A checkpoint is either a full snapshot or a delta against the latest snapshot of its
run (cumulative, so reading any checkpoint takes at most two rows). The runner never
mutates a document in place: unchanged subtrees are the same objects, which makes the
diff of a large, mostly unchanged state cheap.

Delta ops (JSON lists): ``[0, value]`` set, ``[1]`` delete, ``[2, {key: op}]`` patch an
object, ``[3, {index: op}]`` patch a list of the same length, ``[4, items]`` append.
"""

from __future__ import annotations

from typing import Any

SET, DELETE, PATCH, PATCH_LIST, APPEND = 0, 1, 2, 3, 4


def diff(old: Any, new: Any) -> list[Any] | None:
    """The op turning ``old`` into ``new``, or None when they are equal."""
    if old is new:
        return None
    if isinstance(old, dict) and isinstance(new, dict):
        ops: dict[str, Any] = {}
        for key, value in new.items():
            if key not in old:
                ops[key] = [SET, value]
            else:
                op = diff(old[key], value)
                if op is not None:
                    ops[key] = op
        for key in old:
            if key not in new:
                ops[key] = [DELETE]
        return [PATCH, ops] if ops else None
    if isinstance(old, list) and isinstance(new, list):
        if len(new) == len(old):
            list_ops = {}
            for i, (a, b) in enumerate(zip(old, new, strict=True)):
                op = diff(a, b)
                if op is not None:
                    list_ops[str(i)] = op
            return [PATCH_LIST, list_ops] if list_ops else None
        if len(new) > len(old) and all(a is b or a == b for a, b in zip(old, new, strict=False)):
            return [APPEND, new[len(old) :]]
        return [SET, new]
    if type(old) is type(new) and old == new:
        return None
    return [SET, new]


def apply(base: Any, op: list[Any] | None) -> Any:
    """Apply an op made by :func:`diff`; ``base`` is left untouched."""
    if op is None:
        return base
    kind = op[0]
    if kind == SET:
        return op[1]
    if kind == PATCH:
        result = dict(base)
        for key, sub in op[1].items():
            if sub[0] == DELETE:
                result.pop(key, None)
            else:
                result[key] = apply(result.get(key), sub)
        return result
    if kind == PATCH_LIST:
        items = list(base)
        for index, sub in op[1].items():
            items[int(index)] = apply(items[int(index)], sub)
        return items
    if kind == APPEND:
        return [*base, *op[1]]
    raise ValueError(f"unknown delta op {kind!r}")
