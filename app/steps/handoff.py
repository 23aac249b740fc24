"""``handoff``: hands the run to another agent, ``with: {to, payload}``."""

from app.steps.base import StepContext, StepResult


class HandoffStep:
    pure = True  # instant, no I/O: its node.started need not be written before it runs

    async def execute(self, ctx: StepContext) -> StepResult:
        target = ctx.config.get("to")
        if not isinstance(target, str) or not target:
            return StepResult.failed("invalid_step_config", "handoff needs `with.to`: an agent id")
        return StepResult.handoff_to(target, ctx.config.get("payload"))
