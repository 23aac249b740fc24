"""The model clients are kept for the life of the runtime (app/agents/clients.py): agent
steps and runs reuse one connection to a model server, each node still sends its own API
key, and the clients are closed at shutdown or when too many are idle."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from app.agents.clients import ClientKey, ModelClients
from app.agents.providers import ModelRequest
from app.steps.destinations import OutboundPolicy
from tests.agents.fake_models import Answer, FakeModel
from tests.agents.helpers import agent_workflow
from tests.conftest import AppFactory, run_and_wait


async def _closed(fake: FakeModel) -> bool:
    for _ in range(100):
        if fake.open_connections == 0:
            return True
        await asyncio.sleep(0.02)
    return False


async def test_agent_runs_reuse_one_connection_until_shutdown(
    make_client: AppFactory, fake: FakeModel
) -> None:
    client = await make_client()
    fake.push(Answer(text="one"), Answer(text="two"))
    for expected in ("one", "two"):
        body = {"definition": agent_workflow(fake), "inputs": {"question": "q"}}
        run = await run_and_wait(client, body)
        assert run["status"] == "completed", run["error"]
        assert run["state"]["answer"] == expected
    assert len(fake.model_requests) == 2
    assert fake.connections == 1  # the second run's call went over the first's connection
    assert fake.open_connections == 1
    await client.stop()  # type: ignore[attr-defined]
    assert await _closed(fake), "the runtime's shutdown closes the model connections"


def _keyed_workflow(fake: FakeModel) -> dict[str, Any]:
    model = {"provider": fake.provider, "base_url": fake.base_url, "model": "fake-1"}
    definition = agent_workflow(fake)
    definition["models"] = {
        "a": {**model, "api_key": "key-a-{{ secrets.SUFFIX }}"},
        "b": {**model, "api_key": "key-b-literal"},
        "none": model,
    }
    definition["agents"] = {
        name: {"model": name, "system_prompt": "You help."} for name in ("a", "b", "none")
    }
    definition["agents"]["a2"] = definition["agents"]["a"]  # model a again, after the others
    definition["nodes"] = {
        name: {"step": "agent", "agent": name, "with": {"prompt": f"to {name}"}}
        for name in ("a", "b", "none", "a2")
    }
    definition["edges"] = [
        {"from": "a", "to": "b"}, {"from": "b", "to": "none"}, {"from": "none", "to": "a2"}
    ]  # fmt: skip
    return definition


async def test_nodes_sharing_a_base_url_each_send_their_own_key(
    make_client: AppFactory, fake: FakeModel, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("STEPWISE_SECRET_SUFFIX", "s3cr3t")
    monkeypatch.setenv("OPENAI_API_KEY", "key-from-the-environment")
    monkeypatch.setenv("ANTHROPIC_API_KEY", "key-from-the-environment")
    client = await make_client()
    fake.push(*(Answer(text=f"answer {i}") for i in range(8)))
    definition = _keyed_workflow(fake)
    for _ in range(2):  # a second run: the clients are warm, the keys stay apart
        run = await run_and_wait(client, {"definition": definition, "inputs": {}})
        assert run["status"] == "completed", run["error"]
    sent = [
        {k: v for k, v in r.headers.items() if k in ("authorization", "x-api-key")}
        for r in fake.model_requests
    ]
    expected = ["key-a-s3cr3t", "key-b-literal", "unused", "key-a-s3cr3t"] * 2
    assert len(sent) == len(expected)
    for headers, key in zip(sent, expected, strict=True):
        assert headers, "every request carries a key"
        assert all(value.removeprefix("Bearer ") == key for value in headers.values()), headers
    assert fake.connections == 1


def _request(text: str) -> ModelRequest:
    messages = [{"role": "user", "content": text}]
    return ModelRequest("fake-1", None, messages, [], None, None, stream=True)


async def _ask(clients: ModelClients, key: ClientKey) -> str:
    async with clients.provider(key, "k") as provider:
        answer = await provider.complete(_request("q"), lambda text: asyncio.sleep(0))
    return answer.text


async def test_idle_clients_beyond_the_limit_are_closed_and_busy_ones_kept() -> None:
    first, second = FakeModel("openai").start(), FakeModel("openai").start()
    policy = OutboundPolicy(allow_private_networks=True)
    key_1 = ClientKey("openai", first.base_url, policy, 30.0)
    key_2 = ClientKey("openai", second.base_url, policy, 30.0)
    first.push(*(Answer(text=f"first {i}") for i in range(3)))
    second.push(*(Answer(text=f"second {i}") for i in range(2)))
    clients = ModelClients(max_clients=1)
    try:
        assert await _ask(clients, key_1) == "first 0"
        async with clients.provider(key_1, "k") as busy:
            # the first client is in use: a second one does not close it
            assert await _ask(clients, key_2) == "second 0"
            answer = await busy.complete(_request("q"), lambda text: asyncio.sleep(0))
            assert answer.text == "first 1"
        assert first.connections == 1
        # both idle, one too many: the least recently used (the second) was closed
        assert await _closed(second)
        assert await _ask(clients, key_2) == "second 1"
        assert second.connections == 2
        assert await _closed(first)  # and now the first, idle, made way
        assert await _ask(clients, key_1) == "first 2"
        assert first.connections == 2
    finally:
        await clients.aclose()
        assert await _closed(first) and await _closed(second)
        first.stop()
        second.stop()
