"""Tool plugins for the tests (entry-point group ``stepwise.tools``)."""

from __future__ import annotations

from typing import Any

from app.steps.base import StepContext


async def word_count(args: dict[str, Any], ctx: StepContext) -> dict[str, Any]:
    return {"words": len(args["text"].split()), "run": ctx.run_id}


def broken(args: dict[str, Any], ctx: StepContext) -> Any:
    raise RuntimeError("the plugin broke")
