"""Definitions of agent workflows against a fake model."""

from __future__ import annotations

from typing import Any

from tests.agents.fake_models import FakeModel


def agent_workflow(
    fake: FakeModel,
    *,
    agent: dict[str, Any] | None = None,
    node: dict[str, Any] | None = None,
    tools: dict[str, Any] | None = None,
    **top: Any,
) -> dict[str, Any]:
    """One `step: agent` node bound to agent `helper`, whose model is the fake."""
    return {
        "name": "agent-test",
        "models": {"m": {"provider": fake.provider, "base_url": fake.base_url, "model": "fake-1"}},
        "tools": tools or {},
        "agents": {"helper": {"model": "m", "system_prompt": "You help.", **(agent or {})}},
        "nodes": {
            "ask": {
                "step": "agent",
                "agent": "helper",
                "with": {"prompt": "{{ inputs.question }}"},
                "set": {"answer": "{{ output.text }}"},
                **(node or {}),
            }
        },
        **top,
    }


def system_of(fake: FakeModel, body: dict[str, Any]) -> str | None:
    if fake.provider == "anthropic":
        return body.get("system")
    first = body["messages"][0]
    return first["content"] if first["role"] == "system" else None


def user_texts(fake: FakeModel, body: dict[str, Any]) -> list[str]:
    """The user turns of a model request (tool results excluded)."""
    texts = []
    for m in body["messages"]:
        if m["role"] != "user":
            continue
        if isinstance(m["content"], str):
            texts.append(m["content"])
        else:
            texts += [b["text"] for b in m["content"] if b.get("type") == "text"]
    return texts


def tool_results(fake: FakeModel, body: dict[str, Any]) -> list[dict[str, Any]]:
    """``{id, content, is_error}`` of each tool result the request sends back."""
    found = []
    for m in body["messages"]:
        if fake.provider == "openai" and m["role"] == "tool":
            found.append({"id": m["tool_call_id"], "content": m["content"], "is_error": None})
        if fake.provider == "anthropic" and isinstance(m["content"], list):
            for b in m["content"]:
                if b.get("type") == "tool_result":
                    found.append(
                        {
                            "id": b["tool_use_id"],
                            "content": b["content"],
                            "is_error": b.get("is_error"),
                        }
                    )
    return found
