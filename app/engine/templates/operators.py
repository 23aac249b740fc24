"""The operators layer of the bounded environment: ``+``, ``*``, ``**`` and ``%`` (the
intercepted binary operators) are checked before the result is allocated."""

from __future__ import annotations

import math
from typing import Any

from jinja2.runtime import Context

from app.engine.templates.errors import _LimitError
from app.engine.templates.formatting import _FormattingSandbox

#: Largest integer an expression may produce (about 4200 decimal digits, so every
#: allowed integer can still be printed under Python's int/str conversion limit).
_MAX_INT_BITS = 14_000


class _GuardedOperators(_FormattingSandbox):
    """The sandbox with bounded string/list repetition and concatenation, integer sizes and
    ``%`` formatting."""

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
