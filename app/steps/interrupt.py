"""``interrupt``: pauses for an answer; on approval succeeds with the answer's value."""

from app.steps.base import StepContext, StepResult
from app.steps.http import config_error
from app.steps.schemas import schema_problem


class InterruptStep:
    pure = True  # instant, no I/O: its node.started need not be written before it runs

    async def execute(self, ctx: StepContext) -> StepResult:
        response = ctx.context.get("response")
        if response is not None:
            return StepResult.succeeded(response.get("value"))
        schema = ctx.config.get("schema")
        if schema is not None:  # (checked when stored unless it is a template)
            problem = schema_problem(schema)
            if problem is not None:
                return config_error("interrupt", f"schema: {problem}")
        return StepResult.interrupted(ctx.config, schema)
