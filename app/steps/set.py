"""``set``: outputs its rendered ``with``."""

from app.steps.base import StepContext, StepResult


class SetStep:
    async def execute(self, ctx: StepContext) -> StepResult:
        return StepResult.succeeded(ctx.config)
