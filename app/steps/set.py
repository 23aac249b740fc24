"""``set``: outputs its rendered ``with``."""

from app.steps.base import StepContext, StepResult


class SetStep:
    pure = True  # instant, no I/O: its node.started need not be written before it runs

    async def execute(self, ctx: StepContext) -> StepResult:
        return StepResult.succeeded(ctx.config)
