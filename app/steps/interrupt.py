"""``interrupt``: pauses for an answer; on approval succeeds with the answer's value."""

from app.steps.base import StepContext, StepResult


class InterruptStep:
    pure = True  # instant, no I/O: its node.started need not be written before it runs

    async def execute(self, ctx: StepContext) -> StepResult:
        response = ctx.context.get("response")
        if response is not None:
            return StepResult.succeeded(response.get("value"))
        schema = ctx.config.get("schema")
        return StepResult.interrupted(ctx.config, schema if isinstance(schema, dict) else None)
