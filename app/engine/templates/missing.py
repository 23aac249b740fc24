"""A key an object does not have: ``state.refund_id`` on a path that never set it.

It stands for null, leniently: null as a value (the whole expression's, or inside a list
or object), nothing in text, false as a condition, equal to ``none`` and to another
missing key; ``is defined`` is false for it and ``| default(...)`` replaces it. Anything
else done with it (arithmetic, ordering, its own attributes, iteration, its length) is
an error naming it, as for an undefined name, which stays an error (a typo such as
``stat.n``).
"""

from __future__ import annotations

from typing import Any

from jinja2 import StrictUndefined


class MissingKey(StrictUndefined):
    # (StrictUndefined types these as raising: Never; here they answer)
    __slots__ = ()

    def __str__(self) -> str:  # type: ignore[override]
        return ""

    def __bool__(self) -> bool:  # type: ignore[override]
        return False

    def __eq__(self, other: object) -> bool:  # type: ignore[override]
        return other is None or isinstance(other, MissingKey)

    def __ne__(self, other: object) -> bool:  # type: ignore[override]
        return not self.__eq__(other)

    def __hash__(self) -> int:  # type: ignore[override]
        return hash(None)


def is_none(value: Any) -> bool:
    """The ``none`` test: null, or a missing key."""
    return value is None or isinstance(value, MissingKey)
