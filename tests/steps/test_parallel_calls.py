"""Parallel branches of ``call`` steps against a real loopback endpoint (DESIGN §10)."""

from __future__ import annotations

import json
import time

from loopback_server import Hit, LoopbackServer, Reply

from tests.conftest import AppFactory, events_of, run_and_wait


def slow_endpoint(server: LoopbackServer, seconds: float) -> str:
    def reply(hit: Hit) -> Reply:
        request = json.loads(hit.body)
        body = {"status": "succeeded", "output": {"node": request["node"]}}
        return Reply(
            200, [("Content-Type", "application/json")], json.dumps(body).encode(), delay_s=seconds
        )

    server.route("/slow", reply)
    return server.url("/slow")


async def test_two_one_second_calls_finish_together(
    make_client: AppFactory, server: LoopbackServer
) -> None:
    client = await make_client()
    url = slow_endpoint(server, 1.0)
    definition = {
        "name": "two-calls",
        "nodes": {
            "plan": {"step": "set"},
            "left": {"step": "call", "with": {"url": url}, "set": {"left": "{{ output.node }}"}},
            "right": {"step": "call", "with": {"url": url}, "set": {"right": "{{ output.node }}"}},
            "join": {"step": "set", "join": "all"},
        },
        "edges": [
            {"from": "plan", "to": ["left", "right"]},
            {"from": "left", "to": "join"},
            {"from": "right", "to": "join"},
        ],
    }
    began = time.monotonic()
    run = await run_and_wait(client, {"definition": definition, "inputs": {}})
    took = time.monotonic() - began
    assert run["status"] == "completed", run
    assert run["state"] == {"left": "left", "right": "right"}
    assert len(server.hits_for("/slow")) == 2
    assert took < 1.8, f"two 1 s calls in parallel took {took:.2f} s"
    keys = {hit.headers["idempotency-key"] for hit in server.hits_for("/slow")}
    assert keys == {f"{run['id']}:left:1", f"{run['id']}:right:1"}
    started = [e for e in await events_of(client, run["id"]) if e["type"] == "node.started"]
    assert {e["node"]: e["data"].get("branch") for e in started}["left"] == "left"
