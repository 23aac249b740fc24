"""Fan-out, join and merge (DESIGN §10) over HTTP, on both backends."""

from __future__ import annotations

import httpx

from tests.conftest import events_of
from tests.engine.test_runner import start, types_of, wf

PLAN = wf(
    "plan",
    {
        "plan": {"step": "set", "set": {"notes": ["plan"], "total": 1}},
        "research": {"step": "set", "set": {"notes": ["r"], "total": 2, "found": "{{ 'R' }}"}},
        "draft": {"step": "set", "set": {"notes": ["d"], "total": 3, "text": "D"}},
        "polish": {"step": "set", "set": {"text": "{{ state.text ~ '!' }}"}},
        "review": {"step": "set", "set": {"notes": "v", "total": 4, "meta": {"ok": True}}},
        "merge": {
            "step": "set",
            "join": "all",
            "set": {"parts": "{{ [state.found, state.text] }}"},
        },
    },
    [
        {"from": "plan", "to": ["research", "draft", "review"]},
        {"from": "research", "to": "merge"},
        {"from": "draft", "to": "polish"},
        {"from": "polish", "to": "merge"},
        {"from": "review", "to": "merge"},
    ],
    reducers={"notes": "append", "total": "add"},
)


async def test_branches_meet_at_the_join_and_merge(client: httpx.AsyncClient) -> None:
    run = await start(client, PLAN)
    assert run["status"] == "completed", run
    state = run["state"]
    assert state["notes"] == ["plan", "r", "d", "v"]  # folded in `to` order
    assert state["total"] == 1 + 2 + 3 + 4
    assert state["parts"] == ["R", "D!"]
    assert state["meta"] == {"ok": True}
    events = await events_of(client, run["id"])
    merge_started = [e for e in events if e["type"] == "node.started" and e["node"] == "merge"]
    assert len(merge_started) == 1  # the join runs once
    branch_of = {
        e["node"]: e["data"].get("branch") for e in events if e["type"] == "node.completed"
    }
    assert branch_of == {
        "plan": None,
        "research": "research",
        "draft": "draft",
        "polish": "draft",
        "review": "review",
        "merge": None,
    }
    assert types_of(events)[-1] == "run.completed"
