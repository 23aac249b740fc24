"""The base layer of the bounded environment: the limits, the per-thread deadline (checked
in the sandbox hooks and every few iterations of every ``{% for %}`` loop) and the size
checks on values, outputs and joined strings."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterable, Iterator
from typing import Any

from jinja2.sandbox import ImmutableSandboxedEnvironment

from app.engine.templates.errors import _LimitError
from app.engine.templates.walker import _Walker

#: ``{% for %}`` loops check the deadline every this many iterations (power of two - 1).
_LOOP_CHECK_MASK = 63


class _Deadline(threading.local):
    # Per thread: the monotonic deadline of the evaluation running on it; 0.0 when none.
    deadline: float = 0.0


class _LimitedSandbox(ImmutableSandboxedEnvironment):
    """The sandbox with its limits, its deadline and size checks. The limits and ``state``
    are set by :class:`.environment._BoundedEnvironment`."""

    max_output_bytes: int
    timeout_s: float
    max_range: int
    max_repeat_bytes: int
    state: _Deadline

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
        """Size-check ``value`` and make it JSON-shaped (see :mod:`.walker`)."""
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
