"""Running an agent's tools: ``http`` tools (an ``http`` step's ``with`` templated with the
call's ``args``) and Python plugins (entry-point group ``stepwise.tools``).

A plugin is a callable ``tool(args, ctx)`` (sync or async) returning a JSON value; ``ctx``
is the agent step's :class:`~app.steps.base.StepContext`. Arguments are checked against
the tool's ``parameters`` before it runs: a bad call is answered to the model as an error,
it does not fail the node.
"""

from __future__ import annotations

import dataclasses
import inspect
import json
from importlib.metadata import entry_points
from typing import Any

from jsonschema import Draft202012Validator
from jsonschema.validators import validator_for

from app.steps.base import StepContext, StepResult, StepStatus
from app.steps.http import HttpStep

TOOL_ENTRY_POINT_GROUP = "stepwise.tools"


@dataclasses.dataclass(frozen=True, slots=True)
class ToolOutcome:
    """A tool's result for the model, or a failure of the node (``failure``)."""

    result: Any = None
    error: str | None = None
    failure: StepResult | None = None


def argument_errors(parameters: dict[str, Any], args: Any) -> str | None:
    """What is wrong with a call's arguments, or None."""
    if not isinstance(args, dict):
        return "the arguments are not a JSON object"
    cls = validator_for(parameters, default=Draft202012Validator)
    problems = sorted(cls(parameters).iter_errors(args), key=lambda e: list(e.path))
    if not problems:
        return None
    return "; ".join(
        f"{'/'.join(str(p) for p in e.path) or '(arguments)'}: {e.message}" for e in problems[:5]
    )


def result_text(result: Any) -> str:
    return result if isinstance(result, str) else json.dumps(result, ensure_ascii=False)


def plugin_installed(name: str) -> bool:
    """Whether an installed distribution registers the tool plugin ``name``."""
    return bool(entry_points(group=TOOL_ENTRY_POINT_GROUP, name=name))


def load_plugin(name: str) -> Any | None:
    for ep in entry_points(group=TOOL_ENTRY_POINT_GROUP, name=name):
        obj = ep.load()
        return obj() if isinstance(obj, type) else obj
    return None


async def run_http_tool(
    ctx: StepContext, name: str, http: dict[str, Any], args: dict[str, Any], call_id: str
) -> ToolOutcome:
    services = ctx.services
    scope = {**(ctx.scope or {}), "args": args, "secrets": services.secrets}
    try:
        config = services.templates.render(http, scope)
    except Exception as exc:  # a TemplateError: the tool is misconfigured
        message = getattr(exc, "message", str(exc))
        return ToolOutcome(failure=StepResult.failed("tool_failed", f"tool {name!r}: {message}"))
    headers = dict(config.get("headers") or {})
    if isinstance(config.get("headers"), dict) or "headers" not in config:
        if not any(str(k).lower() == "idempotency-key" for k in headers):
            headers["Idempotency-Key"] = f"{ctx.idempotency_key}:{call_id}"
        config = {**config, "headers": headers}
    result = await HttpStep().execute(dataclasses.replace(ctx, config=config))
    if result.status is StepStatus.SUCCEEDED:
        return ToolOutcome(result=result.output["body"])
    return ToolOutcome(failure=_tool_failed(name, result))


async def run_plugin_tool(
    ctx: StepContext, name: str, plugin: str, args: dict[str, Any]
) -> ToolOutcome:
    tool = load_plugin(plugin)
    if tool is None or not callable(tool):
        msg = f"tool {name!r}: no plugin {plugin!r} in entry-point group {TOOL_ENTRY_POINT_GROUP}"
        return ToolOutcome(failure=StepResult.failed("tool_failed", msg))
    try:
        value = tool(args, ctx)
        if inspect.isawaitable(value):
            value = await value
        json.dumps(value)
    except Exception as exc:
        msg = f"tool {name!r} raised {type(exc).__name__}: {exc}"
        return ToolOutcome(failure=StepResult.failed("tool_failed", msg))
    return ToolOutcome(result=value)


def _tool_failed(name: str, result: StepResult) -> StepResult:
    error = result.error
    assert error is not None
    return StepResult.failed(
        "tool_failed",
        f"tool {name!r} failed: {error.message}",
        retryable=error.retryable,
        retry_after_s=error.retry_after_s,
        details={"code": error.code, **(error.details or {})},
    )
