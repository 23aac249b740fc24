"""examples/agents/triage-billing.yaml: valid, and runnable against an OpenAI-compatible
server (here the fake one): triage hands a refund to billing after an approval."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml

from tests.agents.fake_models import Answer, FakeModel
from tests.conftest import AppFactory, events_of, run_and_wait, wait_run

EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "agents" / "triage-billing.yaml"


@pytest.fixture
def openai_fake() -> Iterator[FakeModel]:
    server = FakeModel("openai").start()
    yield server
    server.stop()


async def test_the_example_runs_against_an_openai_compatible_server(
    make_client: AppFactory, openai_fake: FakeModel
) -> None:
    fake = openai_fake
    definition = yaml.safe_load(EXAMPLE.read_text())
    definition["models"]["chat"]["base_url"] = fake.base_url
    os.environ["STEPWISE_SECRET_MODEL_API_KEY"] = "sk-example-0123456789"
    try:
        client = await make_client()
    finally:
        del os.environ["STEPWISE_SECRET_MODEL_API_KEY"]
    checked = await client.post("/workflows/validate", json=definition)
    assert checked.json() == {"valid": True, "errors": []}
    fake.push(
        Answer(text="Let me pass you to billing.",
               tool_calls=[("c1", "transfer_to_agent", {"agent": "billing", "reason": "refund"})]),
        Answer(text="Refund of order A-1001 issued."),
    )  # fmt: skip
    run = await run_and_wait(
        client, {"definition": definition, "inputs": {"question": "Refund A-1001 please"}}
    )
    assert run["status"] == "interrupted", run
    assert run["interrupt"]["kind"] == "handoff_approval"
    await client.post(f"/runs/{run['id']}/response", json={"interrupt_id": run["interrupt"]["id"]})
    done = await wait_run(client, run["id"])
    assert done["status"] == "completed", done
    assert done["output"]["answer"] == "Refund of order A-1001 issued."
    assert done["output"]["refund_handled"] is True
    assert fake.model_requests[0].headers["authorization"] == "Bearer sk-example-0123456789"
    assert "sk-example" not in str(await events_of(client, run["id"]))
