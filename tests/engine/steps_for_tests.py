"""Step types used by the engine tests (registered as plugins would be)."""

from __future__ import annotations

import asyncio
from collections import Counter
from typing import Any

from app.steps.base import StepContext, StepResult
from app.steps.registry import StepRegistry, builtin_steps
from app.store import checkpoints as checkpoint_store
from app.store.database import transaction


class CountingStep:
    """Succeeds with its config; counts executions per node."""

    def __init__(self) -> None:
        self.calls: Counter[str] = Counter()

    async def execute(self, ctx: StepContext) -> StepResult:
        self.calls[ctx.node] += 1
        return StepResult.succeeded(ctx.config)


class FlakyStep:
    """Fails (retryable) until attempt `with.succeed_on`; records the attempts it saw."""

    def __init__(self) -> None:
        self.attempts: list[int] = []

    async def execute(self, ctx: StepContext) -> StepResult:
        self.attempts.append(ctx.attempt)
        if ctx.attempt < int(ctx.config.get("succeed_on", 1)):
            return StepResult.failed("flaky", f"attempt {ctx.attempt} failed", retryable=True)
        return StepResult.succeeded({"attempt": ctx.attempt})


class FailsOnceStep:
    """Fails (not retryable) the first time it runs at a node, then succeeds."""

    def __init__(self) -> None:
        self.calls: Counter[str] = Counter()

    async def execute(self, ctx: StepContext) -> StepResult:
        self.calls[ctx.node] += 1
        if self.calls[ctx.node] == 1:
            return StepResult.failed("first_time", "it fails the first time")
        return StepResult.succeeded("second time")


class SleepStep:
    async def execute(self, ctx: StepContext) -> StepResult:
        await asyncio.sleep(float(ctx.config.get("seconds", 1)))
        return StepResult.succeeded("slept")


class RaisingStep:
    async def execute(self, ctx: StepContext) -> StepResult:
        raise RuntimeError("step exploded")


class ResultStep:
    """Returns the StepResult described by `with` (status and fields)."""

    async def execute(self, ctx: StepContext) -> StepResult:
        c: dict[str, Any] = ctx.config
        status = c["status"]
        if status == "handoff":
            return StepResult.handoff_to(c["to"], c.get("payload"))
        if status == "continue":
            if ctx.context.get("continuation"):
                return StepResult.succeeded("continued")
            return StepResult.needs_continuation(None)
        return StepResult.succeeded(c.get("output"))


class ProbeStep:
    """A step with side effects: records which checkpoints of its run were committed
    (in the database, seen from a transaction of its own) when it started."""

    def __init__(self) -> None:
        self.seen: list[list[str | None]] = []

    async def execute(self, ctx: StepContext) -> StepResult:
        async with transaction(ctx.services.sessions) as session:
            rows = await checkpoint_store.list_for_run(session, ctx.run_id, after=0, limit=500)
        self.seen.append([row.last_node for row in rows])
        return StepResult.succeeded(len(rows))


def make_registry() -> tuple[StepRegistry, dict[str, Any]]:
    steps: dict[str, Any] = {
        "count": CountingStep(),
        "flaky": FlakyStep(),
        "fails_once": FailsOnceStep(),
        "sleep": SleepStep(),
        "raise": RaisingStep(),
        "result": ResultStep(),
        "probe": ProbeStep(),
    }
    return StepRegistry({**builtin_steps(), **steps}), steps
