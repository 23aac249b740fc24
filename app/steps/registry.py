"""The step registry: built-in steps plus plugins from the ``stepwise.steps`` entry points."""

from __future__ import annotations

import logging
from collections.abc import Mapping
from importlib.metadata import entry_points

from app.steps.agent import AgentStep
from app.steps.base import Step
from app.steps.call import CallStep
from app.steps.fail import FailStep
from app.steps.handoff import HandoffStep
from app.steps.http import HttpStep
from app.steps.input import InputStep
from app.steps.interrupt import InterruptStep
from app.steps.set import SetStep
from app.steps.wait import WaitStep

log = logging.getLogger(__name__)

ENTRY_POINT_GROUP = "stepwise.steps"
# Steps the runner itself carries out (they change which frame runs, not just an output).
ENGINE_STEPS = frozenset({"subgraph", "map"})


def builtin_steps() -> dict[str, Step]:
    return {
        "set": SetStep(),
        "fail": FailStep(),
        "handoff": HandoffStep(),
        "interrupt": InterruptStep(),
        "input": InputStep(),
        "wait": WaitStep(),
        "http": HttpStep(),
        "call": CallStep(),
        "agent": AgentStep(),
    }


class StepRegistry:
    def __init__(self, steps: Mapping[str, Step]) -> None:
        self._steps = dict(steps)

    @classmethod
    def load(cls) -> StepRegistry:
        steps = builtin_steps()
        for ep in entry_points(group=ENTRY_POINT_GROUP):
            if ep.name in steps or ep.name in ENGINE_STEPS:
                log.warning("step plugin %r ignored: a built-in step has that name", ep.name)
                continue
            obj = ep.load()
            step = obj() if isinstance(obj, type) else obj
            if not callable(getattr(step, "execute", None)):
                log.warning("step plugin %r ignored: it has no execute(ctx)", ep.name)
                continue
            steps[ep.name] = step
        return cls(steps)

    def knows(self, name: str) -> bool:
        return name in self._steps or name in ENGINE_STEPS

    def get(self, name: str) -> Step:
        return self._steps[name]

    @property
    def step_names(self) -> frozenset[str]:
        """The steps this registry holds (not the engine's own, such as ``map``)."""
        return frozenset(self._steps)

    @property
    def names(self) -> list[str]:
        return sorted([*self._steps, *ENGINE_STEPS])
