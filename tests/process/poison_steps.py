"""Step plugins that break their process, for the poison-run tests. Each breaks only
while the file named by ``STEPWISE_TEST_POISON`` exists: deleting it is "the fix"."""

from __future__ import annotations

import os
from pathlib import Path

from app.steps.base import StepContext, StepResult


def _poisoned() -> bool:
    flag = os.environ.get("STEPWISE_TEST_POISON")
    return flag is not None and Path(flag).exists()


class RaisingOutsideExecute:
    """Raises where the engine asks whether the step may share a commit: outside
    ``execute``, so no step-level guard turns it into a failed node."""

    @property
    def pure(self) -> bool:
        if _poisoned():
            raise RuntimeError("the plugin is broken")
        return False

    async def execute(self, ctx: StepContext) -> StepResult:
        return StepResult.succeeded({"ok": True})


class KillsItsProcess:
    async def execute(self, ctx: StepContext) -> StepResult:
        if _poisoned():
            os._exit(17)
        return StepResult.succeeded({"ok": True})


ENTRY_POINTS = {
    "raises_outside": "tests.process.poison_steps:RaisingOutsideExecute",
    "kills_process": "tests.process.poison_steps:KillsItsProcess",
}


def install(site: Path) -> None:
    """Make the plugins discoverable (``importlib.metadata``) from ``site`` on sys.path."""
    dist = site / "stepwise_poison-0.1.0.dist-info"
    dist.mkdir(parents=True, exist_ok=True)
    (dist / "METADATA").write_text("Metadata-Version: 2.1\nName: stepwise-poison\nVersion: 0.1.0\n")
    lines = ["[stepwise.steps]", *(f"{k} = {v}" for k, v in ENTRY_POINTS.items())]
    (dist / "entry_points.txt").write_text("\n".join(lines) + "\n")
