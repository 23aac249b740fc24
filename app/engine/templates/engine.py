"""The template engine: compiles (with an LRU cache) and evaluates workflow templates in
the bounded environment of :mod:`.environment`.

A string that is exactly one ``{{ expr }}`` yields the expression's native value; any
other string containing ``{{`` or ``{%`` renders to text; strings without those markers
are returned untouched without involving Jinja. Edge conditions (``when``) are bare
expressions evaluated the same way.

Guarantees:

* Data is never re-evaluated: values from the scope (and results) are never parsed as
  templates nor ``literal_eval``-ed, so a state string ``"{{ x }}"`` or ``"[1,2]"`` stays
  that string.
* Sandboxed, strict and bounded in size and time: see :mod:`.environment`.
* Every failure surfaces as :class:`TemplateError` (message + the failing string).

Choices worth knowing:

* ``None`` renders as ``"None"`` in text (Jinja's default); as a whole-string expression
  it is the native ``None``.
* Native results are made JSON-shaped: see :mod:`.walker`.
* ``evaluate`` also accepts an expression wrapped in ``{{ }}``.
"""

from __future__ import annotations

import functools
import time
from collections.abc import Callable, Mapping
from typing import Any

from jinja2 import TemplateError as JinjaTemplateError
from jinja2 import nodes
from jinja2.environment import Template
from jinja2.exceptions import TemplateSyntaxError
from jinja2.parser import Parser
from jinja2.runtime import Context

from app.engine.templates.environment import _BoundedEnvironment
from app.engine.templates.errors import TemplateError, _EvalError, _LimitError
from app.engine.templates.scan import _is_template, has_template, iter_templates
from app.engine.templates.secrets import secret_problems


def _utf8_len(text: str) -> int:
    # str.isascii() is O(1) in CPython, so the common case costs nothing.
    return len(text) if text.isascii() else len(text.encode("utf-8", "surrogatepass"))


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

    def secret_problems(self, source: str, *, allowed: bool) -> list[str]:
        """Why the template string may not use ``secrets`` as it does (:mod:`.secrets`);
        call it on a string :meth:`check` accepted."""
        if not _is_template(source):
            return []
        return secret_problems(self._env.parse(source), allowed=allowed)

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
        return _Compiled(False, self._template(tree))

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
        return _Compiled(True, self._template(tree))

    def _template(self, tree: nodes.Template) -> Template:
        template = self._env.from_string(tree)
        # Jinja keeps a template's globals as a ChainMap over the environment's, and
        # every render iterates it twice to build its context (~7 of a render's ~11 µs).
        # The environment's globals are set once, before any compile: a plain copy
        # renders the same.
        template.globals = dict(template.globals)
        return template

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
                if kind is int or kind is bool or rv is None:
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
