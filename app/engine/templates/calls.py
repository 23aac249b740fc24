"""The calls layer of the bounded environment: method calls and filters whose output can
grow faster than their input (padding, joining, replacing, wrapping, ...) are checked
before they run, and every string a call or filter produces after."""

from __future__ import annotations

import functools
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any

from jinja2.exceptions import SecurityError
from jinja2.filters import make_attrgetter
from jinja2.runtime import Context

from app.engine.templates.errors import _LimitError, _NotEvaluating
from app.engine.templates.formatting import _FormattingSandbox

_GUARDED_METHODS = frozenset(
    {"center", "ljust", "rjust", "zfill", "expandtabs", "replace", "join", "translate", "to_bytes"}
)
# Filters that turn their input into a string: the input's printed size is bounded first.
_STRINGIFYING_FILTERS = frozenset(
    {
        "capitalize", "center", "e", "escape", "forceescape", "format", "indent", "join",
        "lower", "replace", "safe", "string", "striptags", "title", "tojson", "trim",
        "truncate", "upper", "urlencode", "urlize", "wordcount", "wordwrap", "xmlattr",
    }
)  # fmt: skip
# Filters whose output can grow faster than their input: checked by _precheck_filter.
_PRECHECKED_FILTERS = frozenset(
    {"batch", "center", "format", "indent", "join", "replace", "slice", "tojson", "urlize",
     "wordwrap"}
)  # fmt: skip


def _param(
    args: Sequence[Any], kwargs: Mapping[str, Any], index: int, name: str, default: Any
) -> Any:
    if len(args) > index:
        return args[index]
    return kwargs.get(name, default)


def _whitespace_count(text: str) -> int:
    return text.count(" ") + text.count("\n") + text.count("\t")


class _GuardedCalls(_FormattingSandbox):
    """The sandbox with bounded calls of ``str``/``bytes``/``int`` methods and filters."""

    # ---- calls

    def call(self, context: Context, obj: Any, /, *args: Any, **kwargs: Any) -> Any:
        self.tick()
        if not self.is_safe_callable(obj):
            raise SecurityError(f"{type(obj).__name__!r} object is not safely callable")
        name = getattr(obj, "__name__", None)
        if name in _GUARDED_METHODS:
            owner = getattr(obj, "__self__", None)
            if isinstance(owner, str | bytes | int):
                args = self._precheck_method(owner, name, args, kwargs)
        rv = context.call(obj, *args, **kwargs)
        self._check_str(rv, f"calling {name or type(obj).__name__!r}")
        return rv

    def _precheck_method(
        self, owner: Any, name: str, args: tuple[Any, ...], kwargs: dict[str, Any]
    ) -> tuple[Any, ...]:
        limit = self.max_output_bytes
        bound = 0
        if isinstance(owner, int):
            if name == "to_bytes":
                length = _param(args, kwargs, 0, "length", 1)
                if isinstance(length, int) and length > limit:
                    raise _LimitError(
                        f"to_bytes length {length} exceeds max_output_bytes ({limit})"
                    )
            return args
        if name in ("center", "ljust", "rjust", "zfill"):
            width = _param(args, kwargs, 0, "width", 0)
            if isinstance(width, int) and width > self.max_repeat_bytes:
                raise _LimitError(
                    f"{name}() width {width} exceeds max_repeat_bytes ({self.max_repeat_bytes})"
                )
            return args
        if name == "expandtabs":
            tabsize = _param(args, kwargs, 0, "tabsize", 8)
            if isinstance(tabsize, int):
                tab = "\t" if isinstance(owner, str) else b"\t"
                bound = len(owner) + owner.count(tab) * max(tabsize, 0)
        elif name == "replace" and len(args) >= 2:
            old, new = args[0], args[1]
            count = _param(args, kwargs, 2, "count", -1)
            if type(old) is type(new) and isinstance(old, str | bytes) and isinstance(count, int):
                occurrences = owner.count(old)
                if count >= 0:
                    occurrences = min(occurrences, count)
                bound = len(owner) + occurrences * max(len(new) - len(old), 0)
        elif name == "join" and args:
            items = args[0] if isinstance(args[0], list | tuple) else list(args[0])
            bound = sum(len(i) for i in items if isinstance(i, str | bytes))
            bound += len(owner) * max(len(items) - 1, 0)
            args = (items, *args[1:])
        elif name == "translate" and isinstance(owner, str) and args:
            table = args[0]
            values: Iterable[Any] = ()
            if isinstance(table, Mapping):
                values = table.values()
            elif isinstance(table, list | tuple):
                values = table
            longest = max((len(v) for v in values if isinstance(v, str)), default=1)
            bound = len(owner) * max(longest, 1)
        if bound > limit:
            raise _LimitError(
                f"{name}() would produce {bound} characters (limit max_output_bytes={limit})"
            )
        return args

    # ---- filters

    def _guard_filter(self, name: str, func: Callable[..., Any]) -> Callable[..., Any]:
        offset = 0 if getattr(func, "jinja_pass_arg", None) is None else 1
        stringifies = name in _STRINGIFYING_FILTERS
        prechecked = name in _PRECHECKED_FILTERS
        env = self
        what = f"the input of filter {name!r}"

        @functools.wraps(func)
        def guarded(*args: Any, **kwargs: Any) -> Any:
            if not env.state.deadline:
                raise _NotEvaluating(name)
            env.tick()
            if stringifies and len(args) > offset:
                env.measure(args[offset], what)
            if prechecked:
                args = env._precheck_filter(name, offset, args, kwargs)
            rv = func(*args, **kwargs)
            env._check_str(rv, f"filter {name!r}")
            return rv

        return guarded

    def _precheck_filter(
        self, name: str, offset: int, args: tuple[Any, ...], kwargs: dict[str, Any]
    ) -> tuple[Any, ...]:
        limit = self.max_output_bytes
        params = args[offset:]
        value = params[0] if params else None
        bound = 0
        if name == "center":
            width = _param(params, kwargs, 1, "width", 80)
            if isinstance(width, int) and width > self.max_repeat_bytes:
                raise _LimitError(
                    f"center width {width} exceeds max_repeat_bytes ({self.max_repeat_bytes})"
                )
        elif name == "indent":
            width = _param(params, kwargs, 1, "width", 4)
            if isinstance(width, int) and width > self.max_repeat_bytes:
                raise _LimitError(
                    f"indent width {width} exceeds max_repeat_bytes ({self.max_repeat_bytes})"
                )
            text = str(value)
            step = len(width) if isinstance(width, str) else width if isinstance(width, int) else 0
            bound = len(text) + (text.count("\n") + 1) * step
        elif name == "format":
            fmt = value if isinstance(value, str) else str(value)
            rest = params[1:]
            self.check_printf(fmt, kwargs or rest)
        elif name == "join":
            items, sep = params[0] if params else (), _param(params, kwargs, 1, "d", "")
            attribute = _param(params, kwargs, 2, "attribute", None)
            if attribute is not None:
                items = map(make_attrgetter(self, attribute), items)
            items = items if isinstance(items, list | tuple) else list(items)
            sep_size = len(sep) if isinstance(sep, str) else self.measure(sep, what="d").total
            bound = self.measure(items, f"the input of filter {name!r}").total
            bound += sep_size * max(len(items) - 1, 0)
            args = (*args[:offset], items, sep)
            kwargs.clear()
        elif name == "replace":
            if len(params) >= 3:
                text, old, new = str(value), str(params[1]), str(params[2])
                count = _param(params, kwargs, 3, "count", None)
                occurrences = text.count(old)
                if isinstance(count, int) and count >= 0:
                    occurrences = min(occurrences, count)
                bound = len(text) + occurrences * max(len(new) - len(old), 0)
        elif name == "wordwrap":
            text = str(value)
            width = _param(params, kwargs, 1, "width", 79)
            wrapstring = _param(params, kwargs, 3, "wrapstring", None)
            if isinstance(width, int) and isinstance(wrapstring, str):
                lines = len(text) // max(width, 1) + _whitespace_count(text) + 1
                bound = len(text) + lines * len(wrapstring)
        elif name == "urlize":
            text = str(value)
            extra = sum(
                len(str(_param(params, kwargs, index, key, None) or ""))
                for index, key in ((3, "target"), (4, "rel"))
            )
            bound = 3 * len(text) + (_whitespace_count(text) + 1) * (extra + 64)
        elif name == "tojson":
            indent = _param(params, kwargs, 1, "indent", None)
            if indent is not None:
                step = len(indent) if isinstance(indent, str) else int(indent)
                if step > 0:
                    walker = self.measure(value, f"the input of filter {name!r}")
                    bound = walker.total + walker.indent_units * step
        elif name in ("batch", "slice"):
            key, index = ("linecount", 1) if name == "batch" else ("slices", 1)
            count = _param(params, kwargs, index, key, 1)
            fill = _param(params, kwargs, 2, "fill_with", None)
            if (
                isinstance(count, int)
                and count > self.max_range
                and (name == "slice" or fill is not None)
            ):
                raise _LimitError(f"{name}({count}) exceeds max_range ({self.max_range})")
        if bound > limit:
            raise _LimitError(
                f"filter {name!r} would produce about {bound} characters "
                f"(limit max_output_bytes={limit})"
            )
        return args
