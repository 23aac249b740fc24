"""An example Stepwise step plugin: ``step: upper``.

``with: {text: "..."}`` → output ``{"text": "...", "length": n}`` with the text
upper-cased. Installed (``pip install ./examples/plugin``), it is found through the
``stepwise.steps`` entry point declared in ``pyproject.toml``.
"""

from __future__ import annotations

from app.steps.base import StepContext, StepResult


class UpperStep:
    """A step is any object with ``async def execute(ctx) -> StepResult``."""

    async def execute(self, ctx: StepContext) -> StepResult:
        text = ctx.config.get("text")
        if not isinstance(text, str):
            return StepResult.failed("invalid_step_config", "`with.text` must be a string")
        await ctx.progress(stage="upper-casing", chars=len(text))  # a step.progress event
        return StepResult.succeeded({"text": text.upper(), "length": len(text)})
