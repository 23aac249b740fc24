"""``input``: waits for a session message; succeeds with the message."""

from app.steps.base import StepContext, StepResult


class InputStep:
    pure = True  # instant, no I/O: its node.started need not be written before it runs

    async def execute(self, ctx: StepContext) -> StepResult:
        if "user_message" in ctx.context:
            return StepResult.succeeded(ctx.context["user_message"])
        prompt = ctx.config.get("prompt")
        return StepResult.awaiting_input(str(prompt) if prompt is not None else None)
