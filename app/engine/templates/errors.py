"""The template errors: :class:`TemplateError`, the only one callers see, and the internal
errors raised while evaluating."""

from __future__ import annotations

from collections.abc import Sequence

Path = list[str | int]


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
