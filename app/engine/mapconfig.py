"""The ``with`` of a ``map`` node (DESIGN §10): what it takes and what is wrong with it,
checked once rendered when the node runs, and on its literal values when the definition
is stored (a value that is a template passes until it is rendered)."""

from __future__ import annotations

from collections.abc import Collection, Mapping
from typing import Any

from app.steps.base import StepError

MAX_ITEMS = 10_000
DEFAULT_ITEM_CONCURRENCY = 8
# (unknown keys are refused when the definition is stored, not when the node runs)
KEYS = frozenset({"workflow", "version", "items", "inputs", "max_concurrency", "on_item_failure"})


def bad(message: str) -> StepError:
    return StepError("invalid_step_config", f"map: {message}")


def config_problem(
    config: Mapping[str, Any], templated: Collection[str] = ()
) -> tuple[str, StepError] | None:
    """The first problem of ``config`` and the key it is at; keys in ``templated`` hold
    templates not rendered yet, and pass."""

    def given(key: str) -> bool:
        return key not in templated

    if given("workflow") and not isinstance(config.get("workflow"), str):
        return "workflow", bad("`with.workflow` must name a stored workflow")
    version = config.get("version")
    if given("version") and version is not None and type(version) is not int:
        return "version", bad("`with.version` must be an integer")
    items = config.get("items")
    if given("items"):
        if not isinstance(items, list):
            return "items", bad("`with.items` must be a list")
        if len(items) > MAX_ITEMS:
            msg = f"map over {len(items)} items; at most {MAX_ITEMS} are allowed"
            return "items", StepError("too_many_items", msg)
    if given("inputs") and not isinstance(config.get("inputs", {}), dict | str):
        msg = "`with.inputs` must be an object (templates may use `item`, `index`)"
        return "inputs", bad(msg)
    limit = config.get("max_concurrency", DEFAULT_ITEM_CONCURRENCY)
    if given("max_concurrency") and (type(limit) is not int or not 1 <= limit <= 1000):
        return "max_concurrency", bad("`with.max_concurrency` must be an integer from 1 to 1000")
    if given("on_item_failure") and config.get("on_item_failure", "fail") not in (
        "fail",
        "collect",
    ):
        return "on_item_failure", bad("`with.on_item_failure` is `fail` or `collect`")
    return None
