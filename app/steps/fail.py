"""``fail``: fails the run with ``with: {code, message}``."""

from app.steps.base import StepContext, StepResult


class FailStep:
    pure = True  # instant, no I/O: its node.started need not be written before it runs

    async def execute(self, ctx: StepContext) -> StepResult:
        code = ctx.config.get("code") or "failed"
        message = ctx.config.get("message") or f"node {ctx.node!r} failed"
        return StepResult.failed(str(code), str(message))
