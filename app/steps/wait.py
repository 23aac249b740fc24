"""``wait``: suspends until ``with.seconds`` from now or ``with.until`` (RFC 3339)."""

from datetime import UTC, datetime, timedelta

from app.steps.base import StepContext, StepResult

MAX_WAIT_S = 100 * 366 * 86400  # beyond it a time is no longer a date Python can write


class WaitStep:
    pure = True  # instant, no I/O: its node.started need not be written before it runs

    async def execute(self, ctx: StepContext) -> StepResult:
        if ctx.context.get("continuation") is not None:
            return StepResult.succeeded(None)  # the wait is over (timer due, or resumed)
        seconds, until = ctx.config.get("seconds"), ctx.config.get("until")
        now = datetime.now(UTC)
        if until is not None:
            try:
                resume_at = datetime.fromisoformat(str(until))
                if resume_at.tzinfo is None:
                    resume_at = resume_at.replace(tzinfo=UTC)
                resume_at = resume_at.astimezone(UTC)
            except (ValueError, OverflowError):
                return StepResult.failed("invalid_step_config", f"wait: bad `until` {until!r}")
        elif isinstance(seconds, int | float) and not isinstance(seconds, bool) and seconds >= 0:
            if seconds > MAX_WAIT_S:
                return StepResult.failed(
                    "invalid_step_config",
                    f"wait: `seconds` is at most {MAX_WAIT_S} (100 years); give `until` instead",
                )
            resume_at = now + timedelta(seconds=float(seconds))
        else:
            return StepResult.failed(
                "invalid_step_config", "wait needs `with.seconds` (a number ≥ 0) or `with.until`"
            )
        if resume_at <= now:
            return StepResult.succeeded(None)
        return StepResult.needs_continuation(resume_at)
