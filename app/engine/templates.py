"""Sandboxed, bounded Jinja templates for workflow definitions (DESIGN.md §2, §8).

A string that is exactly one ``{{ expr }}`` yields the expression's native value; any
other string containing ``{{`` or ``{%`` renders to text; strings without those markers
are returned untouched without involving Jinja. Edge conditions (``when``) are bare
expressions evaluated the same way.

Guarantees:

* Data is never re-evaluated: values from the scope (and results) are never parsed as
  templates nor ``literal_eval``-ed, so a state string ``"{{ x }}"`` or ``"[1,2]"`` stays
  that string.
* Sandboxed: :class:`jinja2.sandbox.ImmutableSandboxedEnvironment` (no ``_``-prefixed or
  internal attributes, no mutation of lists/dicts, no loader so no ``include``/``import``,
  no I/O). Access to an unsafe attribute raises at once rather than yielding an undefined.
* Strict: an undefined name, attribute or key is an error (``StrictUndefined``);
  ``is defined`` and ``| default(...)`` still work.
* Bounded in size and time: string/list repetition, ``**``, ``%``-formatting,
  ``str.format``, ``~`` and ``+`` concatenation, ``range``, the padding/joining string
  methods and filters are checked *before* the result is allocated; every string a filter
  or call produces, every text output and every native result is checked against
  ``max_output_bytes``; a wall-clock deadline of ``timeout_s`` is checked in the sandbox
  hooks (attribute/item access, calls, operators, filters) and every few iterations of
  every ``{% for %}`` loop. Size checks on intermediate values are approximate (they count
  characters, or estimate the printed size of containers); the text output is counted
  in UTF-8 bytes. A single builtin operation on a maximum-size input (say ``| sort``
  over a large list) is not interrupted midway, but stays linear or ``n log n``.
* Every failure surfaces as :class:`TemplateError` (message + the failing string).

Choices worth knowing:

* ``None`` renders as ``"None"`` in text (Jinja's default); as a whole-string expression
  it is the native ``None``.
* Trailing newlines of templates are kept (``keep_trailing_newline=True``), so a rendered
  string differs from its source only where expressions were substituted.
* ``obj.name`` on a plain ``dict`` prefers the *key* over a dict method, so
  ``output.body.items`` is the data, not ``dict.items``; the methods stay reachable when no
  such key exists (``state.items()``).
* Native results are made JSON-shaped: tuples, ranges, iterators/generators (e.g. the
  result of ``| map(...)``, ``| reverse``) and dict views become lists, ``namespace``
  objects become dicts, ``Markup`` becomes ``str``; a callable result (``{{ state.get }}``)
  is an error. Values taken from the scope are returned as-is, not copied: treat native
  results as read-only or copy them before mutating.
* ``evaluate`` also accepts an expression wrapped in ``{{ }}``.
* The ``lipsum`` global and the ``pprint`` filter are removed (unbounded / not useful);
  ``| sum`` over lists is linear.
"""

from __future__ import annotations

import functools
import math
import re
import string
import threading
import time
import types
from _string import formatter_field_name_split  # type: ignore[import-not-found]
from collections import abc
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from itertools import chain, islice
from typing import Any, NoReturn

from jinja2 import StrictUndefined, nodes
from jinja2 import TemplateError as JinjaTemplateError
from jinja2.compiler import CodeGenerator, Frame
from jinja2.environment import Template
from jinja2.exceptions import SecurityError, TemplateSyntaxError
from jinja2.filters import make_attrgetter
from jinja2.parser import Parser
from jinja2.runtime import Context, Undefined
from jinja2.sandbox import ImmutableSandboxedEnvironment
from jinja2.utils import Namespace, pass_environment
from markupsafe import EscapeFormatter, Markup

__all__ = ["TemplateEngine", "TemplateError", "has_template", "iter_templates"]

Path = list[str | int]

#: Largest integer an expression may produce (about 4200 decimal digits, so every
#: allowed integer can still be printed under Python's int/str conversion limit).
_MAX_INT_BITS = 14_000
#: Deepest nesting of a value that is printed or returned.
_MAX_DEPTH = 100
#: ``{% for %}`` loops check the deadline every this many iterations (power of two - 1).
_LOOP_CHECK_MASK = 63

_MARKERS = ("{{", "{%")


class TemplateError(Exception):
    """An expression failed to parse or evaluate.

    ``message`` says what went wrong, ``expression`` is the template string or bare
    expression that failed, ``path`` (filled in by :meth:`TemplateEngine.render`) is where
    that string sits inside the rendered value, e.g. ``["json", "amount"]``.
    """

    def __init__(self, message: str, expression: str, path: Sequence[str | int] = ()) -> None:
        super().__init__(message, expression)
        self.message = message
        self.expression = expression
        self.path: Path = list(path)

    def __str__(self) -> str:
        expr = self.expression
        if len(expr) > 200:
            expr = expr[:197] + "..."
        return f"{self.message} (in {expr!r})"


class _EvalError(Exception):
    """Internal: an evaluation failure with a ready-made message."""

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


class _LimitError(_EvalError):
    """Internal: a size or time limit was hit."""


class _NotEvaluating(Exception):
    """Internal: a guarded filter was called outside an evaluation.

    Raised when Jinja tries to constant-fold a filter at compile time; Jinja then leaves
    the filter to run time, where it is bounded like every other call.
    """


# --------------------------------------------------------------------------- helpers


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


def _utf8_len(text: str) -> int:
    # str.isascii() is O(1) in CPython, so the common case costs nothing.
    return len(text) if text.isascii() else len(text.encode("utf-8", "surrogatepass"))


def _param(
    args: Sequence[Any], kwargs: Mapping[str, Any], index: int, name: str, default: Any
) -> Any:
    if len(args) > index:
        return args[index]
    return kwargs.get(name, default)


def _whitespace_count(text: str) -> int:
    return text.count(" ") + text.count("\n") + text.count("\t")


_PRINTF_SPEC = re.compile(
    r"%(?:\((?P<key>[^)]*)\))?[-#0 +]*(?P<width>\*|\d+)?(?:\.(?P<prec>\*|\d+))?[hlL]?(?P<conv>.)?",
    re.DOTALL,
)
_DIGITS = re.compile(r"\d+")
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
_REMOVED_FILTERS = ("pprint",)


@pass_environment
def _sum_filter(
    environment: Any, iterable: Iterable[Any], attribute: str | int | None = None, start: Any = 0
) -> Any:
    """Jinja's ``sum`` filter, but linear when summing lists or tuples."""
    if attribute is not None:
        iterable = map(make_attrgetter(environment, attribute), iterable)
    items = list(iterable)
    if isinstance(start, list | tuple) and all(type(item) is type(start) for item in items):
        total = len(start) + sum(len(item) for item in items)
        limit: int = environment.max_range
        if total > limit:
            raise _LimitError(f"sum would produce {total} items (limit max_range={limit})")
        return type(start)(chain(start, *items))
    return sum(items, start)


# --------------------------------------------------------------------------- sizes


class _Walker:
    """Estimates the printed size of a value, failing as soon as it passes ``limit``.

    With ``convert=True`` it also turns the value into a JSON-shaped native result (see the
    module docstring), copying a container only when something inside it changed.
    ``indent_units`` accumulates, per container item, its nesting depth: the extra size an
    indented JSON dump adds per indent character.
    """

    __slots__ = ("convert", "env", "indent_units", "label", "limit", "total", "what")

    def __init__(
        self, env: _BoundedEnvironment, limit: int, what: str, label: str, convert: bool
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
            self.visit(key, depth + 1)
            new = self.visit(item, depth + 1)
            if self.convert:
                if out is None and new is not item:
                    out = dict(islice(value.items(), index))
                if out is not None:
                    out[key] = new
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
        if isinstance(value, Undefined):
            value._fail_with_undefined_error()
        if isinstance(value, str):  # Markup and other str subclasses
            self.add(len(value) + 2)
            return "".join((value,)) if self.convert else value
        if isinstance(value, bytes | bytearray):
            self.add(len(value) + 3)
            return value
        if isinstance(value, int | float | complex):
            self.add(24)
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
        self.add(64)
        return value


# --------------------------------------------------------------------------- compiler


class _BoundedCodeGenerator(CodeGenerator):
    """Routes ``~`` concatenation and ``{% for %}`` iterables through the environment."""

    def visit_For(self, node: nodes.For, frame: Frame) -> None:
        # {% for x in seq %} iterates environment.guard_loop(seq), which checks the deadline
        # every few items. (Jinja refuses custom node types, hence a Call node.)
        it = node.iter
        if not (
            isinstance(it, nodes.Call)
            and isinstance(it.node, nodes.EnvironmentAttribute)
            and it.node.name == "guard_loop"
        ):
            guard = nodes.EnvironmentAttribute("guard_loop", lineno=it.lineno)
            node.iter = nodes.Call(guard, [it], [], None, None, lineno=it.lineno)
            node.iter.set_environment(self.environment)
        super().visit_For(node, frame)

    def visit_Concat(self, node: nodes.Concat, frame: Frame) -> None:
        self.write("environment.bounded_concat((")
        for arg in node.nodes:
            self.visit(arg, frame)
            self.write(", ")
        self.write("))")


class _Deadline(threading.local):
    # Per thread: the monotonic deadline of the evaluation running on it; 0.0 when none.
    deadline: float = 0.0


class _BoundedFormatter(string.Formatter):
    """``str.format`` for sandboxed code: sandboxed field lookup, bounded widths, values
    and total output."""

    def __init__(self, env: _BoundedEnvironment) -> None:
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
    def __init__(self, env: _BoundedEnvironment, escape: Callable[[Any], Markup]) -> None:
        EscapeFormatter.__init__(self, escape)
        self._env = env
        self._produced = 0


def _formatter_field_name_split(field_name: str) -> tuple[Any, Iterator[tuple[bool, Any]]]:
    rv: tuple[Any, Iterator[tuple[bool, Any]]] = formatter_field_name_split(field_name)
    return rv


class _BoundedEnvironment(ImmutableSandboxedEnvironment):
    """The sandbox plus size and time bounds (see the module docstring)."""

    code_generator_class = _BoundedCodeGenerator
    intercepted_binops = frozenset({"+", "*", "**", "%"})

    def __init__(
        self, *, max_output_bytes: int, timeout_s: float, max_range: int, max_repeat_bytes: int
    ) -> None:
        super().__init__(
            autoescape=False,
            undefined=StrictUndefined,
            keep_trailing_newline=True,
            finalize=self._finalize,
            cache_size=0,
            auto_reload=False,
        )
        self.max_output_bytes = max_output_bytes
        self.timeout_s = timeout_s
        self.max_range = max_range
        self.max_repeat_bytes = max_repeat_bytes
        self.state = _Deadline()
        self.globals.pop("lipsum", None)
        self.globals["range"] = self._range
        filters: dict[str, Callable[..., Any]] = dict(self.filters)
        for name in _REMOVED_FILTERS:
            filters.pop(name, None)
        filters["sum"] = _sum_filter
        self.filters = {name: self._guard_filter(name, func) for name, func in filters.items()}

    # ---- time

    def tick(self) -> None:
        deadline = self.state.deadline
        if deadline and time.monotonic() > deadline:
            raise _LimitError(f"evaluation took longer than timeout_s ({self.timeout_s:g} s)")

    def guard_loop(self, iterable: Iterable[Any]) -> Iterator[Any]:
        self.tick()
        return self._guarded(iter(iterable))

    def _guarded(self, iterator: Iterator[Any]) -> Iterator[Any]:
        for count, item in enumerate(iterator, 1):
            if not count & _LOOP_CHECK_MASK:
                self.tick()
            yield item

    def materialize(self, iterator: Iterator[Any]) -> list[Any]:
        items: list[Any] = []
        for item in iterator:
            items.append(item)
            if not len(items) & 1023:
                self.tick()
                if len(items) > self.max_range:
                    raise _LimitError(f"result has more than max_range ({self.max_range}) items")
        return items

    # ---- size

    def measure(
        self, value: Any, what: str, limit: int | None = None, label: str | None = None
    ) -> _Walker:
        """Walk ``value`` estimating its printed size; fail past ``limit`` (default:
        max_output_bytes)."""
        if limit is None:
            limit = self.max_output_bytes
        if label is None:
            label = f"max_output_bytes ({self.max_output_bytes})"
        walker = _Walker(self, limit, what, label, convert=False)
        walker.visit(value, 0)
        return walker

    def to_native(self, value: Any) -> Any:
        """Size-check ``value`` and make it JSON-shaped (see the module docstring)."""
        label = f"max_output_bytes ({self.max_output_bytes})"
        walker = _Walker(self, self.max_output_bytes, "the result", label, convert=True)
        return walker.visit(value, 0)

    def _check_str(self, value: Any, what: str) -> None:
        if isinstance(value, str | bytes) and len(value) > self.max_output_bytes:
            raise _LimitError(
                f"{what} produced {len(value)} characters "
                f"(limit max_output_bytes={self.max_output_bytes})"
            )

    def _finalize(self, value: Any) -> Any:
        # Runs on every {{ }} of a text template, before str(value).
        if type(value) is not str:
            self.measure(value, "an output value")
        return value

    def concat(self, parts: Iterable[str]) -> str:
        # Joins the buffers of {% set %} blocks, macros, {% filter %} and {% call %}.
        chunks = parts if isinstance(parts, list) else list(parts)
        size = sum(map(len, chunks))
        if size > self.max_output_bytes:
            raise _LimitError(
                f"a block's output is longer than max_output_bytes ({self.max_output_bytes})"
            )
        return "".join(chunks)

    def bounded_concat(self, parts: tuple[Any, ...]) -> str:
        # The ~ operator.
        self.tick()
        limit = self.max_output_bytes
        chunks: list[str] = []
        size = 0
        for part in parts:
            if type(part) is not str:
                self.measure(part, "an operand of ~", limit - size)
                part = str(part)
            size += len(part)
            if size > limit:
                raise _LimitError(f"~ would produce more than max_output_bytes ({limit})")
            chunks.append(part)
        return "".join(chunks)

    # ---- globals

    def _range(self, *args: int) -> range:
        rng = range(*args)
        try:
            count: int | None = len(rng)
        except OverflowError:
            count = None
        if count is None or count > self.max_range:
            size = "more than sys.maxsize" if count is None else str(count)
            raise _LimitError(f"range of {size} items exceeds max_range ({self.max_range})")
        return rng

    # ---- attribute and item access

    def getattr(self, obj: Any, attribute: str) -> Any:
        self.tick()
        if type(obj) is dict:
            try:
                return obj[attribute]
            except KeyError:
                pass
        return super().getattr(obj, attribute)

    def getitem(self, obj: Any, argument: Any) -> Any:
        self.tick()
        return super().getitem(obj, argument)

    def unsafe_undefined(self, obj: Any, attribute: str) -> NoReturn:
        raise SecurityError(
            f"access to attribute {attribute!r} of {type(obj).__name__!r} object is unsafe"
        )

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

    # ---- operators

    def call_binop(self, context: Context, operator: str, left: Any, right: Any) -> Any:
        self.tick()
        if operator == "+":
            return self._add(left, right)
        if operator == "*":
            return self._mul(left, right)
        if operator == "**":
            return self._pow(left, right)
        if operator == "%":
            return self._mod(left, right)
        return self.binop_table[operator](left, right)

    def _check_int(self, value: Any) -> Any:
        if type(value) is int and value.bit_length() > _MAX_INT_BITS:
            raise _LimitError(f"integer result would exceed {_MAX_INT_BITS} bits")
        return value

    def _add(self, left: Any, right: Any) -> Any:
        if type(left) is int and type(right) is int:
            return self._check_int(left + right)
        if isinstance(left, str | bytes) and isinstance(right, str | bytes):
            size = len(left) + len(right)
            if size > self.max_output_bytes:
                raise _LimitError(
                    f"+ would produce {size} characters "
                    f"(limit max_output_bytes={self.max_output_bytes})"
                )
        elif isinstance(left, list | tuple) and isinstance(right, list | tuple):
            size = len(left) + len(right)
            if size > self.max_range:
                raise _LimitError(
                    f"+ would produce {size} items (limit max_range={self.max_range})"
                )
        return left + right

    def _mul(self, left: Any, right: Any) -> Any:
        seq: Any = None
        times = 0
        if isinstance(right, int) and isinstance(left, str | bytes | list | tuple):
            seq, times = left, right
        elif isinstance(left, int) and isinstance(right, str | bytes | list | tuple):
            seq, times = right, left
        if seq is not None:
            if times > 0 and len(seq) > 0:
                if isinstance(seq, str | bytes):
                    size = len(seq) * times
                    if size > self.max_repeat_bytes:
                        raise _LimitError(
                            f"repetition would produce {size} characters "
                            f"(limit max_repeat_bytes={self.max_repeat_bytes})"
                        )
                else:
                    count = len(seq) * times
                    if count > self.max_range:
                        raise _LimitError(
                            f"repetition would produce {count} items "
                            f"(limit max_range={self.max_range})"
                        )
                    self.measure(
                        seq,
                        f"a list repeated {times} times",
                        self.max_repeat_bytes // times,
                        f"max_repeat_bytes ({self.max_repeat_bytes})",
                    )
            return left * right
        if (
            isinstance(left, int)
            and isinstance(right, int)
            and left.bit_length() + right.bit_length() > _MAX_INT_BITS + 1
        ):
            raise _LimitError(f"integer result would exceed {_MAX_INT_BITS} bits")
        return left * right

    def _pow(self, left: Any, right: Any) -> Any:
        if (
            isinstance(left, int)
            and isinstance(right, int)
            and right > 0
            and abs(left) > 1
            and (right > _MAX_INT_BITS or math.log2(abs(left)) * right > _MAX_INT_BITS)
        ):
            raise _LimitError(f"integer result would exceed {_MAX_INT_BITS} bits")
        return left**right

    def _mod(self, left: Any, right: Any) -> Any:
        if isinstance(left, str | bytes):
            self.check_printf(left, right)
            rv = left % right
            self._check_str(rv, "% formatting")
            return rv
        return left % right

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


# --------------------------------------------------------------------------- engine


class _Compiled:
    """A compiled template string: either a whole-string expression (``native``) whose
    value is the result, or a text template."""

    __slots__ = ("native", "template")

    def __init__(self, native: bool, template: Template) -> None:
        self.native = native
        self.template = template


class TemplateEngine:
    """Compiles (with an LRU cache) and evaluates workflow templates in a bounded sandbox.

    One engine can be shared by all runs; it is safe to use from several threads.
    """

    def __init__(
        self,
        *,
        max_output_bytes: int = 1 << 20,
        timeout_s: float = 1.0,
        max_range: int = 100_000,
        max_repeat_bytes: int = 1 << 20,
        cache_size: int = 4096,
    ) -> None:
        for name, value in (
            ("max_output_bytes", max_output_bytes),
            ("timeout_s", timeout_s),
            ("max_range", max_range),
            ("max_repeat_bytes", max_repeat_bytes),
        ):
            if not value > 0:
                raise ValueError(f"{name} must be positive, got {value!r}")
        if cache_size < 0:
            raise ValueError(f"cache_size must not be negative, got {cache_size!r}")
        self.max_output_bytes = max_output_bytes
        self.timeout_s = timeout_s
        self.max_range = max_range
        self.max_repeat_bytes = max_repeat_bytes
        self._env = _BoundedEnvironment(
            max_output_bytes=max_output_bytes,
            timeout_s=timeout_s,
            max_range=max_range,
            max_repeat_bytes=max_repeat_bytes,
        )
        self._compile_template: Callable[[str], _Compiled] = functools.lru_cache(cache_size)(
            self._compile_template_uncached
        )
        self._compile_expression: Callable[[str], _Compiled] = functools.lru_cache(cache_size)(
            self._compile_expression_uncached
        )

    has_template = staticmethod(has_template)
    iter_templates = staticmethod(iter_templates)

    # ---- compile

    def check(self, source: str) -> None:
        """Raise :class:`TemplateError` if the template string does not compile. Strings
        without ``{{``/``{%`` are never compiled (they are not templates)."""
        if _is_template(source):
            try:
                self._compile_template(source)
            except Exception as exc:
                raise _to_template_error(exc, source) from exc

    def check_expression(self, expr: str) -> None:
        """Raise :class:`TemplateError` if the bare expression does not compile."""
        try:
            self._compile_expression(expr)
        except Exception as exc:
            raise _to_template_error(exc, expr) from exc

    def _compile_template_uncached(self, source: str) -> _Compiled:
        tree = self._env.parse(source)
        body = tree.body
        if len(body) == 1 and isinstance(body[0], nodes.Output) and len(body[0].nodes) == 1:
            expr = body[0].nodes[0]
            if not isinstance(expr, nodes.TemplateData):
                return self._compile_node(expr)
        return _Compiled(False, self._env.from_string(tree))

    def _compile_expression_uncached(self, expr: str) -> _Compiled:
        stripped = expr.strip()
        if stripped.startswith("{{") and stripped.endswith("}}"):
            compiled = self._compile_template(stripped)
            if compiled.native:
                return compiled
        parser = Parser(self._env, expr, state="variable")
        node = parser.parse_expression()
        if not parser.stream.eos:
            raise TemplateSyntaxError(
                f"unexpected {parser.stream.current.value!r} after the expression",
                parser.stream.current.lineno,
            )
        node.set_environment(self._env)
        return self._compile_node(node)

    def _compile_node(self, expr: nodes.Expr) -> _Compiled:
        tree = nodes.Template([nodes.Assign(nodes.Name("result", "store"), expr)], lineno=1)
        tree.set_environment(self._env)
        return _Compiled(True, self._env.from_string(tree))

    # ---- evaluate

    def render(self, value: Any, scope: Mapping[str, Any]) -> Any:
        """Render every string inside ``value`` (dicts and lists recursed into, keys left
        alone, other values returned as they are). A string that is exactly one
        ``{{ expr }}`` becomes the expression's native value; other template strings
        become text; strings without ``{{``/``{%`` are returned as they are."""
        if type(value) is str and not _is_template(value):
            return value
        return self._render(value, scope if type(scope) is dict else dict(scope))

    def _render(self, value: Any, scope: dict[str, Any]) -> Any:
        if isinstance(value, str):
            return self._render_str(value, scope) if _is_template(value) else value
        if isinstance(value, Mapping):
            out: dict[Any, Any] = {}
            for key, item in value.items():
                try:
                    out[key] = self._render(item, scope)
                except TemplateError as exc:
                    exc.path.insert(0, key)
                    raise
            return out
        if isinstance(value, list | tuple):
            items: list[Any] = []
            for index, item in enumerate(value):
                try:
                    items.append(self._render(item, scope))
                except TemplateError as exc:
                    exc.path.insert(0, index)
                    raise
            return items if isinstance(value, list) else tuple(items)
        return value

    def evaluate(self, expr: str, scope: Mapping[str, Any]) -> Any:
        """Evaluate a bare expression (an edge's ``when``) and return its native value."""
        try:
            compiled = self._compile_expression(expr)
        except Exception as exc:
            raise _to_template_error(exc, expr) from exc
        return self._run(compiled, scope if type(scope) is dict else dict(scope), expr)

    def _render_str(self, source: str, scope: dict[str, Any]) -> Any:
        try:
            compiled = self._compile_template(source)
        except Exception as exc:
            raise _to_template_error(exc, source) from exc
        return self._run(compiled, scope, source)

    def _run(self, compiled: _Compiled, scope: dict[str, Any], source: str) -> Any:
        env = self._env
        state = env.state
        outer = state.deadline
        state.deadline = time.monotonic() + self.timeout_s
        try:
            template = compiled.template
            context = template.new_context(scope)
            if compiled.native:
                for _ in template.root_render_func(context):
                    pass
                rv = context.vars["result"]
                kind = type(rv)
                if kind is int or kind is bool or rv is None or kind is float:
                    return env._check_int(rv)
                if kind is str and len(rv) <= self.max_output_bytes // 4:
                    return rv
                return env.to_native(rv)
            return self._render_text(template, context)
        except Exception as exc:
            raise _to_template_error(exc, source) from exc
        finally:
            state.deadline = outer

    def _render_text(self, template: Template, context: Context) -> str:
        env = self._env
        limit = self.max_output_bytes
        chunks: list[str] = []
        size = 0
        for chunk in template.root_render_func(context):
            size += _utf8_len(chunk)
            if size > limit:
                raise _LimitError(f"output is longer than max_output_bytes ({limit})")
            env.tick()
            chunks.append(chunk)
        return "".join(chunks)


def _to_template_error(exc: BaseException, source: str) -> TemplateError:
    if isinstance(exc, TemplateError):
        return exc
    if isinstance(exc, _EvalError):
        return TemplateError(exc.message, source)
    if isinstance(exc, TemplateSyntaxError):
        message = f"syntax error: {exc.message or 'invalid template'}"
        if "\n" in source and exc.lineno:
            message += f" (line {exc.lineno})"
        return TemplateError(message, source)
    if isinstance(exc, JinjaTemplateError):
        return TemplateError(exc.message or type(exc).__name__, source)
    if isinstance(exc, RecursionError):
        return TemplateError("maximum recursion depth exceeded", source)
    if isinstance(exc, MemoryError):
        return TemplateError("out of memory", source)
    detail = str(exc)
    message = f"{type(exc).__name__}: {detail}" if detail else type(exc).__name__
    return TemplateError(message, source)
