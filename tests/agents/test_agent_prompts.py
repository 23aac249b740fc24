"""Stored prompts in agent steps: `system_prompt_ref` and `with.prompt_ref` resolve to a
stored version rendered with the run's scope, and the version a visit used is the text
it keeps, even after a newer version is stored and the visit is re-executed."""

from __future__ import annotations

import httpx

from tests.agents.fake_models import Answer, FakeModel
from tests.agents.helpers import agent_workflow, system_of, user_texts
from tests.conftest import run_and_wait, wait_run


async def store_prompt(client: httpx.AsyncClient, name: str, template: str) -> int:
    response = await client.post("/prompts", json={"name": name, "template": template})
    assert response.status_code in (200, 201), response.text
    return int(response.json()["version"])


async def test_prompt_refs_are_rendered_and_pinned_to_the_version_a_visit_used(
    client: httpx.AsyncClient, fake: FakeModel
) -> None:
    await store_prompt(client, "helper-system", "You help {{ inputs.company }}.")
    await store_prompt(client, "helper-ask", "Question: {{ inputs.question }}")
    fake.push(
        Answer(text="Let me ask.", tool_calls=[("call_q", "ask_human", {"question": "Which?"})]),
        Answer(text="Done."),
    )
    definition = agent_workflow(
        fake,
        agent={"system_prompt": None, "system_prompt_ref": "helper-system", "ask_human": True},
        node={"with": {"prompt_ref": "helper-ask@1"}},
    )
    del definition["agents"]["helper"]["system_prompt"]
    stored = await client.post("/workflows", json=definition)
    assert stored.status_code == 201, stored.text
    assert "warnings" not in stored.json()
    inputs = {"company": "Acme", "question": "refund?"}
    run = await run_and_wait(client, {"workflow": "agent-test", "inputs": inputs})
    assert run["status"] == "interrupted", run
    first = fake.model_requests[0].body
    assert system_of(fake, first) == "You help Acme."
    assert user_texts(fake, first) == ["Question: refund?"]

    # a newer version meanwhile: the paused visit keeps the text it started with
    assert await store_prompt(client, "helper-system", "You are rude to {{ inputs.company }}.") == 2
    answered = await client.post(
        f"/runs/{run['id']}/response", json={"interrupt_id": run["interrupt"]["id"], "value": "A"}
    )
    assert answered.status_code == 202, answered.text
    done = await wait_run(client, run["id"])
    assert done["status"] == "completed", done
    assert system_of(fake, fake.model_requests[1].body) == "You help Acme."

    # a new run takes the latest version
    fake.push(Answer(text="Hmph."))
    again = await run_and_wait(client, {"workflow": "agent-test", "inputs": inputs})
    assert again["status"] == "completed", again
    assert system_of(fake, fake.model_requests[2].body) == "You are rude to Acme."


async def test_a_run_naming_a_prompt_that_is_not_stored_is_refused(
    client: httpx.AsyncClient, fake: FakeModel
) -> None:
    definition = agent_workflow(fake, agent={"system_prompt_ref": "nowhere"})
    del definition["agents"]["helper"]["system_prompt"]
    stored = await client.post("/workflows", json=definition)
    assert stored.status_code == 201, stored.text
    assert [w["loc"] for w in stored.json()["warnings"]] == [
        ["agents", "helper", "system_prompt_ref"]
    ]
    refused = await client.post("/runs", json={"workflow": "agent-test", "inputs": {}})
    assert refused.status_code == 422, refused.text
    assert refused.json()["code"] == "unknown_prompt"
    assert fake.model_requests == []


async def test_a_run_keeps_the_prompt_version_it_first_used_across_time_travel_and_forks(
    client: httpx.AsyncClient, fake: FakeModel
) -> None:
    """DESIGN §9: a run records the version it used, so a replay uses the same text: a
    resume from the checkpoint before the agent ran, after a newer version was stored,
    and a fork from there, both ask the model with the first version."""
    await store_prompt(client, "helper-system", "First {{ inputs.company }}.")
    definition = agent_workflow(fake, agent={"system_prompt_ref": "helper-system"})
    del definition["agents"]["helper"]["system_prompt"]
    assert (await client.post("/workflows", json=definition)).status_code == 201
    fake.push(Answer(text="one"))
    run = await run_and_wait(client, {"workflow": "agent-test",
                                      "inputs": {"company": "Acme", "question": "q"}})  # fmt: skip
    assert run["status"] == "completed", run
    assert system_of(fake, fake.model_requests[0].body) == "First Acme."
    assert await store_prompt(client, "helper-system", "Second {{ inputs.company }}.") == 2

    checkpoints = (await client.get(f"/runs/{run['id']}/checkpoints")).json()["items"]
    start = checkpoints[0]["id"]
    fake.push(Answer(text="two"), Answer(text="three"))
    resumed = await client.post(f"/runs/{run['id']}/resume", json={"checkpoint_id": start})
    assert resumed.status_code == 202, resumed.text
    assert (await wait_run(client, run["id"]))["status"] == "completed"
    assert system_of(fake, fake.model_requests[1].body) == "First Acme."

    forked = await client.post(f"/runs/{run['id']}/fork", json={"checkpoint_id": start})
    assert forked.status_code == 201, forked.text
    assert (await wait_run(client, forked.json()["id"]))["status"] == "completed"
    assert system_of(fake, fake.model_requests[2].body) == "First Acme."

    # a new run takes the latest version
    fake.push(Answer(text="four"))
    again = await run_and_wait(client, {"workflow": "agent-test",
                                        "inputs": {"company": "Acme", "question": "q"}})  # fmt: skip
    assert again["status"] == "completed", again
    assert system_of(fake, fake.model_requests[3].body) == "Second Acme."
