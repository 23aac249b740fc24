"""Executing one step: its timeout, its retry policy, and exceptions turned into results."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable

from app import tracing
from app.schemas.definition import Node
from app.steps.base import Step, StepContext, StepError, StepResult, StepStatus

log = logging.getLogger(__name__)

OnRetry = Callable[[int, float, StepError, str], Awaitable[None]]


async def _attempt(step: Step, ctx: StepContext, timeout_s: float | None) -> StepResult:
    try:
        if timeout_s is None:
            result = await step.execute(ctx)
        else:
            result = await asyncio.wait_for(step.execute(ctx), timeout_s)
    except TimeoutError:
        return StepResult.failed(
            "timeout", f"node {ctx.node!r} timed out after {timeout_s}s", retryable=True
        )
    except Exception as exc:  # a step's bug must fail its node, not the runner
        log.exception("step %r of node %r raised", ctx.step, ctx.node)
        return StepResult.failed(
            "step_error", f"step {ctx.step!r} raised {type(exc).__name__}: {exc}"
        )
    if not isinstance(result, StepResult):
        return StepResult.failed(
            "bad_step_result",
            f"step {ctx.step!r} returned {type(result).__name__}, not a StepResult",
        )
    return result


async def execute_with_retry(
    step: Step, ctx: StepContext, node: Node, on_retry: OnRetry
) -> StepResult:
    """Run the step; retry retryable failures per the node's policy (once without one).

    ``on_retry`` records the failed attempt durably before the backoff sleep, so a
    restart neither loses nor repeats an attempt count.
    """
    with tracing.step_span(ctx.run_id, ctx.node, ctx.step, ctx.visit) as span:
        first = ctx.attempt
        result = await _with_retry(step, ctx, node, on_retry)
        code = result.error.code if result.error is not None else None
        tracing.end_step(span, result.status.value, ctx.attempt - first + 1, code)
        return result


async def _with_retry(step: Step, ctx: StepContext, node: Node, on_retry: OnRetry) -> StepResult:
    max_attempts = node.retry.max_attempts if node.retry else 1
    while True:
        result = await _attempt(step, ctx, node.timeout_s)
        if result.status is not StepStatus.FAILED:
            return result
        error = result.error
        assert error is not None
        if node.retry is None or ctx.attempt >= max_attempts:
            return result
        if not (error.retryable or (node.retry.retry_on_4xx and _client_error(error))):
            return result
        delay = node.retry.delay_s(ctx.attempt)
        if error.retry_after_s is not None:
            delay = max(delay, min(error.retry_after_s, node.retry.max_delay_s))
        await on_retry(ctx.attempt, delay, error, ctx.node)
        await asyncio.sleep(delay)
        ctx.attempt += 1


def _client_error(error: StepError) -> bool:
    """A 4xx answer of an ``http``, ``call`` or model request (``details.status``)."""
    status = (error.details or {}).get("status")
    return isinstance(status, int) and 400 <= status < 500
