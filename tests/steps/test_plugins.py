"""Step plugins: the example package (examples/plugin) found through its entry point.

The package is made discoverable without pip: a ``.dist-info`` directory with its
``entry_points.txt`` is written to a temporary directory on ``sys.path``, which is what
an installation leaves behind for ``importlib.metadata``.
"""

from __future__ import annotations

import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from app.steps.registry import ENTRY_POINT_GROUP, StepRegistry
from tests.conftest import AppFactory, events_of, run_and_wait, store

EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "plugin"


def entry_points_of_example() -> str:
    """The ``[project.entry-points."stepwise.steps"]`` table of the example's pyproject."""
    import tomllib

    project = tomllib.loads((EXAMPLE / "pyproject.toml").read_text())["project"]
    lines = [f"[{ENTRY_POINT_GROUP}]"]
    lines += [
        f"{name} = {target}" for name, target in project["entry-points"][ENTRY_POINT_GROUP].items()
    ]
    return "\n".join(lines) + "\n"


@pytest.fixture
def installed_example(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    dist = tmp_path / "stepwise_upper-0.1.0.dist-info"
    dist.mkdir()
    (dist / "METADATA").write_text("Metadata-Version: 2.1\nName: stepwise-upper\nVersion: 0.1.0\n")
    (dist / "entry_points.txt").write_text(entry_points_of_example())
    monkeypatch.syspath_prepend(str(EXAMPLE))
    monkeypatch.syspath_prepend(str(tmp_path))
    yield
    sys.modules.pop("stepwise_upper", None)


def test_the_example_is_not_there_without_its_metadata() -> None:
    assert not StepRegistry.load().knows("upper")


def test_the_registry_finds_the_plugin_through_its_entry_point(installed_example: None) -> None:
    registry = StepRegistry.load()

    assert registry.knows("upper")
    assert "upper" in registry.names
    step = registry.get("upper")
    assert type(step).__name__ == "UpperStep"
    assert type(step).__module__ == "stepwise_upper"
    assert registry.knows("http")  # built-ins stay


async def test_a_stored_workflow_runs_the_plugin_step(
    installed_example: None, make_client: AppFactory
) -> None:
    client = await make_client(registry=StepRegistry.load())
    definition = {
        "name": "shout",
        "nodes": {
            "shout": {
                "step": "upper",
                "with": {"text": "{{ inputs.text }}"},
                "set": {"shouted": "{{ output.text }}", "length": "{{ output.length }}"},
            },
        },
    }
    await store(client, definition)

    run = await run_and_wait(client, {"workflow": "shout", "inputs": {"text": "hello"}})
    assert run["status"] == "completed", run
    assert run["state"] == {"shouted": "HELLO", "length": 5}
    events = await events_of(client, run["id"])
    [progress] = [e for e in events if e["type"] == "step.progress"]
    assert progress["node"] == "shout"
    assert progress["data"] == {"stage": "upper-casing", "chars": 5}

    run = await run_and_wait(client, {"workflow": "shout", "inputs": {"text": 5}})
    assert run["status"] == "failed", run
    assert run["error"]["code"] == "invalid_step_config" and run["error"]["node"] == "shout"


async def test_a_definition_using_an_unknown_step_is_refused(make_client: AppFactory) -> None:
    client = await make_client(registry=StepRegistry.load())
    definition = {"name": "shout", "nodes": {"shout": {"step": "upper"}}}
    response = await client.post("/workflows", json=definition)

    assert response.status_code == 422, response.text
    [error] = response.json()["errors"]
    assert error["loc"] == ["nodes", "shout", "step"]
