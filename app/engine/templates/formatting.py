"""The formatting layer of the bounded environment: ``str.format``/``format_map`` run through
a :class:`string.Formatter` with sandboxed field lookup and bounded widths, values and
output; printf-style formatting is bounded before it runs."""

from __future__ import annotations

import functools
import re
import string
import types
from _string import formatter_field_name_split  # type: ignore[import-not-found]
from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import Any

from markupsafe import EscapeFormatter, Markup

from app.engine.templates.errors import _LimitError
from app.engine.templates.limits import _LimitedSandbox

_PRINTF_SPEC = re.compile(
    r"%(?:\((?P<key>[^)]*)\))?[-#0 +]*(?P<width>\*|\d+)?(?:\.(?P<prec>\*|\d+))?[hlL]?(?P<conv>.)?",
    re.DOTALL,
)
_DIGITS = re.compile(r"\d+")


class _BoundedFormatter(string.Formatter):
    """``str.format`` for sandboxed code: sandboxed field lookup, bounded widths, values
    and total output."""

    def __init__(self, env: _LimitedSandbox) -> None:
        super().__init__()
        self._env = env
        self._produced = 0

    def get_field(
        self, field_name: str, args: Sequence[Any], kwargs: Mapping[str, Any]
    ) -> tuple[Any, str]:
        first, rest = _formatter_field_name_split(field_name)
        obj = self.get_value(first, args, kwargs)
        for is_attr, key in rest:
            obj = self._env.getattr(obj, key) if is_attr else self._env.getitem(obj, key)
        self._env.measure(obj, "a value to format")
        return obj, first

    def format_field(self, value: Any, format_spec: str) -> Any:
        limit = self._env.max_output_bytes
        for digits in _DIGITS.findall(format_spec):
            if len(digits) > 9 or int(digits) > limit:
                raise _LimitError(
                    f"format width or precision {digits[:12]} exceeds max_output_bytes ({limit})"
                )
        rv = super().format_field(value, format_spec)
        self._produced += len(rv)
        if self._produced > limit:
            raise _LimitError(f"formatted string is longer than max_output_bytes ({limit})")
        return rv


class _BoundedEscapeFormatter(_BoundedFormatter, EscapeFormatter):
    def __init__(self, env: _LimitedSandbox, escape: Callable[[Any], Markup]) -> None:
        EscapeFormatter.__init__(self, escape)
        self._env = env
        self._produced = 0


def _formatter_field_name_split(field_name: str) -> tuple[Any, Iterator[tuple[bool, Any]]]:
    rv: tuple[Any, Iterator[tuple[bool, Any]]] = formatter_field_name_split(field_name)
    return rv


class _FormattingSandbox(_LimitedSandbox):
    """The sandbox with bounded ``str.format``/``format_map`` and ``%`` formatting."""

    def wrap_str_format(self, value: Any) -> Callable[..., str] | None:
        if not isinstance(value, types.MethodType | types.BuiltinMethodType) or (
            value.__name__ not in ("format", "format_map")
        ):
            return None
        owner: Any = getattr(value, "__self__", None)
        if not isinstance(owner, str):
            return None
        is_format_map = value.__name__ == "format_map"
        env = self

        def wrapper(*args: Any, **kwargs: Any) -> str:
            formatter: _BoundedFormatter
            if isinstance(owner, Markup):
                formatter = _BoundedEscapeFormatter(env, owner.escape)
            else:
                formatter = _BoundedFormatter(env)
            if is_format_map:
                if kwargs:
                    raise TypeError("format_map() takes no keyword arguments")
                if len(args) != 1:
                    raise TypeError(f"format_map() takes exactly one argument ({len(args)} given)")
                return type(owner)(formatter.vformat(owner, (), args[0]))
            return type(owner)(formatter.vformat(owner, args, kwargs))

        return functools.update_wrapper(wrapper, value)

    def check_printf(self, fmt: str | bytes, args: Any) -> None:
        """Bound printf-style formatting before it runs: widths, precisions and the
        printed size of every argument a conversion refers to."""
        limit = self.max_output_bytes
        text = fmt if isinstance(fmt, str) else fmt.decode("latin-1")
        bound = len(text)
        star = positional = False
        by_key: dict[str, int] = {}
        for match in _PRINTF_SPEC.finditer(text):
            if match["conv"] == "%":
                continue
            for digits in (match["width"], match["prec"]):
                if digits == "*":
                    star = True
                elif digits:
                    if len(digits) > 9 or int(digits) > limit:
                        raise _LimitError(
                            f"format width or precision {digits[:12]} exceeds "
                            f"max_output_bytes ({limit})"
                        )
                    bound += int(digits)
            key = match["key"]
            if key is not None and isinstance(args, Mapping):
                if key not in by_key:
                    by_key[key] = self.measure(args.get(key), "a value to format").total
                bound += by_key[key]
            else:
                positional = True
            if bound > limit:
                break
        if positional:
            bound += self.measure(args, "a value to format").total
        if star and isinstance(args, tuple):
            for arg in args:
                if isinstance(arg, int) and abs(arg) > limit:
                    raise _LimitError(f"format width {arg} exceeds max_output_bytes ({limit})")
        if bound > limit:
            raise _LimitError(f"% formatting would exceed max_output_bytes ({limit})")
