"""The bounded sandboxed environment templates are compiled and run in.

:class:`_BoundedEnvironment` combines the layers of :mod:`.calls`, :mod:`.operators`,
:mod:`.formatting` and :mod:`.limits` with the code generator of :mod:`.codegen`, and
sets up the globals, the filter table and attribute access.

* Sandboxed: :class:`jinja2.sandbox.ImmutableSandboxedEnvironment` (no ``_``-prefixed or
  internal attributes, no mutation of lists/dicts, no loader so no ``include``/``import``,
  no I/O). Access to an unsafe attribute raises at once rather than yielding an undefined.
* Strict: an undefined name is an error (``StrictUndefined``); a key a mapping does not
  have is missing (``.missing``): null, leniently. ``is defined`` and ``| default(...)``
  work on both.
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

Choices worth knowing:

* Trailing newlines of templates are kept (``keep_trailing_newline=True``), so a rendered
  string differs from its source only where expressions were substituted.
* ``obj.name`` on a plain ``dict`` prefers the *key* over a dict method, so
  ``output.body.items`` is the data, not ``dict.items``; the methods stay reachable when no
  such key exists (``state.items()``).
* The ``lipsum`` global and the ``pprint`` filter are removed (unbounded / not useful);
  ``| sum`` over lists is linear.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from itertools import chain
from typing import Any, NoReturn

from jinja2 import StrictUndefined, Undefined
from jinja2.exceptions import SecurityError, UndefinedError
from jinja2.filters import make_attrgetter
from jinja2.utils import pass_environment

from app.engine.templates.calls import _GuardedCalls
from app.engine.templates.codegen import _BoundedCodeGenerator
from app.engine.templates.errors import _LimitError
from app.engine.templates.limits import _Deadline
from app.engine.templates.missing import MissingKey, is_none
from app.engine.templates.operators import _GuardedOperators
from app.engine.templates.secrets import SecretValues

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


class _BoundedEnvironment(_GuardedCalls, _GuardedOperators):
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
        self.tests = {**self.tests, "none": is_none}
        self.filters = {name: self._guard_filter(name, func) for name, func in filters.items()}

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
        if type(obj) is SecretValues:
            return _secret(obj, attribute)
        if type(obj) is dict:
            try:
                return obj[attribute]
            except KeyError:
                pass
        return self._missing(obj, attribute, super().getattr(obj, attribute))

    def getitem(self, obj: Any, argument: Any) -> Any:
        self.tick()
        if type(obj) is SecretValues:
            return _secret(obj, argument)
        return self._missing(obj, argument, super().getitem(obj, argument))

    @staticmethod
    def _missing(obj: Any, key: Any, found: Any) -> Any:
        """A key an object (a mapping) does not have is missing, not undefined: null."""
        if isinstance(found, Undefined) and isinstance(obj, Mapping):
            return MissingKey(obj=obj, name=key)
        return found

    def unsafe_undefined(self, obj: Any, attribute: str) -> NoReturn:
        raise SecurityError(
            f"access to attribute {attribute!r} of {type(obj).__name__!r} object is unsafe"
        )


def _secret(secrets: SecretValues, name: Any) -> str:
    try:
        return secrets[name]
    except (KeyError, TypeError):
        raise UndefinedError(
            f"unknown secret {name!r}: set STEPWISE_SECRET_{name} (or add it to the secrets file)"
        ) from None
