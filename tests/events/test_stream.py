"""GET /runs/{id}/events (SSE and JSON), POST /runs/stream and step progress, over real
sockets: replay, reconnection with Last-Event-ID, live delivery, filters, limits."""

from __future__ import annotations

import asyncio
from typing import Any

import httpx
import pytest

from tests.conftest import events_of, run_and_wait, store, wait_run
from tests.events.conftest import ServerFactory, read_sse

LINEAR = {
    "name": "linear",
    "state": {"n": 0},
    "nodes": {
        "a": {"step": "set", "set": {"n": "{{ state.n + 1 }}"}},
        "b": {"step": "set", "set": {"n": "{{ state.n + 1 }}"}},
        "c": {"step": "set", "set": {"n": "{{ state.n + 1 }}"}},
    },
    "edges": [{"from": "a", "to": "b"}, {"from": "b", "to": "c"}],
}

GATED = {
    "name": "gated",
    "nodes": {
        "a": {"step": "set", "set": {"x": 1}},
        "ask": {
            "step": "interrupt",
            "with": {"question": "go?"},
            "set": {"answer": "{{ output }}"},
        },
        "b": {"step": "set", "set": {"y": 2}},
    },
    "edges": [{"from": "a", "to": "ask"}, {"from": "ask", "to": "b"}],
}

PROGRESS = {
    "name": "progress",
    "nodes": {
        "work": {"step": "emit", "with": {"count": 4}, "set": {"done": "{{ output.emitted }}"}},
    },
}


def is_interrupted(event: dict[str, Any]) -> bool:
    return bool(event["type"] == "run.interrupted")


async def answer(client: httpx.AsyncClient, run_id: str, value: Any = "yes") -> None:
    run = (await client.get(f"/runs/{run_id}")).json()
    response = await client.post(
        f"/runs/{run_id}/response", json={"interrupt_id": run["interrupt"]["id"], "value": value}
    )
    assert response.status_code == 202, response.text


async def test_replay_of_a_finished_run_matches_storage(serve: ServerFactory) -> None:
    client = await serve()
    await store(client, LINEAR)
    run = await run_and_wait(client, {"workflow": "linear", "inputs": {}})
    assert run["status"] == "completed"
    stored = await events_of(client, run["id"])

    stream = await read_sse(client, f"/runs/{run['id']}/events")

    assert stream.closed_by_server  # the run is terminal: replay, then the stream ends
    assert stream.events == stored
    assert stream.seqs == list(range(1, len(stored) + 1))
    assert stream.types[0] == "run.queued" and stream.types[-1] == "run.completed"
    first = stream.events[0]
    assert set(first) == {"run_id", "seq", "type", "node", "ts", "data"}
    assert first["run_id"] == run["id"]


async def test_every_last_event_id_yields_exactly_the_later_events(
    serve: ServerFactory,
) -> None:
    client = await serve()
    await store(client, LINEAR)
    run = await run_and_wait(client, {"workflow": "linear", "inputs": {}})
    stored = await events_of(client, run["id"])
    url = f"/runs/{run['id']}/events"

    for last in range(len(stored) + 1):
        by_header = await read_sse(client, url, headers={"Last-Event-ID": str(last)})
        by_query = await read_sse(client, url, params={"after": last})
        assert by_header.events == stored[last:], last
        assert by_query.events == stored[last:], last
    # a browser reconnecting keeps the URL it first used: the header wins over ?after
    both = await read_sse(client, url, params={"after": 0}, headers={"Last-Event-ID": "5"})
    assert both.seqs == [e["seq"] for e in stored[5:]]


async def test_bad_last_event_id_and_unknown_run(serve: ServerFactory) -> None:
    client = await serve()
    await store(client, LINEAR)
    run = await run_and_wait(client, {"workflow": "linear", "inputs": {}})
    bad = await read_sse(client, f"/runs/{run['id']}/events", headers={"Last-Event-ID": "x1"})
    assert bad.status == 422
    assert bad.headers["content-type"].startswith("application/problem+json")
    missing = await read_sse(client, "/runs/nope/events")
    assert missing.status == 404 and "run_not_found" in missing.body


async def test_reconnecting_during_a_live_run_loses_and_repeats_nothing(
    serve: ServerFactory,
) -> None:
    client = await serve()
    await store(client, GATED)
    started = await client.post("/runs", json={"workflow": "gated", "inputs": {}})
    run_id = started.json()["id"]
    url = f"/runs/{run_id}/events"

    # first connection: read up to the pause, then drop the connection
    first = await read_sse(client, url, stop=is_interrupted)
    assert not first.closed_by_server and first.types[-1] == "run.interrupted"
    # while nobody listens, the run goes on and finishes
    await answer(client, run_id)
    assert (await wait_run(client, run_id))["status"] == "completed"
    # the reconnection gets the rest, once
    second = await read_sse(client, url, headers={"Last-Event-ID": str(first.seqs[-1])})
    assert second.closed_by_server

    stored = await events_of(client, run_id)
    assert first.events + second.events == stored
    assert second.types[0] == "run.resumed" and second.types[-1] == "run.completed"


async def test_live_events_reach_a_waiting_subscriber(serve: ServerFactory) -> None:
    client = await serve()
    await store(client, GATED)
    started = await client.post("/runs", json={"workflow": "gated", "inputs": {}})
    run_id = started.json()["id"]
    received: list[dict[str, Any]] = []
    paused = asyncio.Event()

    def note(event: dict[str, Any]) -> bool:
        received.append(event)
        if event["type"] == "run.interrupted":
            paused.set()
        return False

    reader = asyncio.create_task(read_sse(client, f"/runs/{run_id}/events", stop=note))
    await asyncio.wait_for(paused.wait(), 20)
    # the subscriber is now waiting on a paused run; everything after the answer is live
    await answer(client, run_id, {"ok": True})
    stream = await asyncio.wait_for(reader, 20)

    assert stream.closed_by_server
    assert stream.events == await events_of(client, run_id)
    assert stream.types[-1] == "run.completed"


async def test_until_paused(serve: ServerFactory) -> None:
    client = await serve()
    await store(client, GATED)
    started = await client.post("/runs", json={"workflow": "gated", "inputs": {}})
    run_id = started.json()["id"]
    url = f"/runs/{run_id}/events"

    # a live run: the stream closes at its next pause
    live = await read_sse(client, url, params={"until": "paused"})
    assert live.closed_by_server and live.types[-1] == "run.interrupted"
    # a run already paused: replay, then close
    again = await read_sse(client, url, params={"until": "paused"})
    assert again.closed_by_server and again.events == live.events
    assert again.events == await events_of(client, run_id)

    # an earlier pause in the replay does not close a stream watching a running run
    await answer(client, run_id)
    assert (await wait_run(client, run_id))["status"] == "completed"
    full = await read_sse(client, url, params={"until": "paused"})
    assert full.types.count("run.interrupted") == 1 and full.types[-1] == "run.completed"


async def test_type_filters(serve: ServerFactory) -> None:
    client = await serve()
    await store(client, LINEAR)
    run = await run_and_wait(client, {"workflow": "linear", "inputs": {}})
    stored = await events_of(client, run["id"])
    url = f"/runs/{run['id']}/events"

    nodes = await read_sse(client, url, params={"types": "node.*"})
    assert nodes.events == [e for e in stored if e["type"].startswith("node.")]
    assert {"node.started", "node.completed"} <= set(nodes.types)

    mixed = await read_sse(client, url, params={"types": "node.completed, run.completed"})
    assert mixed.types == ["node.completed"] * 3 + ["run.completed"]
    assert mixed.closed_by_server

    # a filter never moves the cursor backwards: resuming from a filtered event's id
    later = await read_sse(
        client, url, params={"types": "node.*"}, headers={"Last-Event-ID": str(nodes.seqs[1])}
    )
    assert later.events == nodes.events[2:]

    # the JSON page takes the same filters
    page = await events_of(client, run["id"], types="node.*,run.completed")
    assert page == [
        e for e in stored if e["type"].startswith("node.") or e["type"] == "run.completed"
    ]


async def test_json_page_and_cursor(serve: ServerFactory) -> None:
    client = await serve()
    await store(client, LINEAR)
    run = await run_and_wait(client, {"workflow": "linear", "inputs": {}})
    url = f"/runs/{run['id']}/events"
    headers = {"Accept": "application/json"}
    stored = await events_of(client, run["id"])

    pages: list[list[dict[str, Any]]] = []
    params: dict[str, Any] = {"limit": 4}
    while True:
        response = await client.get(url, params=params, headers=headers)
        assert response.status_code == 200
        assert response.headers["content-type"].startswith("application/json")
        body = response.json()
        assert set(body) == {"items", "next_cursor"}
        pages.append(body["items"])
        if body["next_cursor"] is None:
            break
        params = {"limit": 4, "cursor": body["next_cursor"]}
    assert [e for page in pages for e in page] == stored
    assert all(len(page) == 4 for page in pages[:-1])

    after = (await client.get(url, params={"after": 7, "limit": 2}, headers=headers)).json()
    assert after["items"] == stored[7:9]
    bad = await client.get(url, params={"cursor": "!!"}, headers=headers)
    assert bad.status_code == 422 and bad.json()["code"] == "invalid_cursor"


async def test_post_runs_stream(serve: ServerFactory) -> None:
    client = await serve()
    await store(client, LINEAR)
    stream = await read_sse(
        client, "/runs/stream", method="POST", json={"workflow": "linear", "inputs": {}}
    )
    assert stream.status == 200
    run_id = stream.headers["x-run-id"]
    assert stream.closed_by_server
    assert stream.events == await events_of(client, run_id)
    assert stream.types[0] == "run.queued" and stream.types[-1] == "run.completed"

    # with until=paused and a filter
    await store(client, GATED)
    paused = await read_sse(
        client,
        "/runs/stream",
        method="POST",
        params={"until": "paused", "types": "run.*"},
        json={"workflow": "gated", "inputs": {}},
    )
    assert paused.types == ["run.queued", "run.started", "run.interrupted"]

    unknown = await read_sse(
        client, "/runs/stream", method="POST", json={"workflow": "nope", "inputs": {}}
    )
    assert unknown.status == 404


async def test_step_progress_events_are_stored_and_streamed(serve: ServerFactory) -> None:
    client = await serve()
    await store(client, PROGRESS)
    stream = await read_sse(
        client, "/runs/stream", method="POST", json={"workflow": "progress", "inputs": {}}
    )
    run_id = stream.headers["x-run-id"]
    progress = [e for e in stream.events if e["type"] == "step.progress"]
    assert [e["data"] for e in progress] == [{"i": i, "of": 4} for i in range(4)]
    assert {e["node"] for e in progress} == {"work"}
    types = stream.types
    assert types.index("node.started") < types.index("step.progress")
    assert types.index("node.completed") > max(
        i for i, t in enumerate(types) if t == "step.progress"
    )
    assert stream.events == await events_of(client, run_id)
    only = await read_sse(client, f"/runs/{run_id}/events", params={"types": "step.progress"})
    assert only.events == progress
    assert (await wait_run(client, run_id))["state"] == {"done": 4}


async def test_stream_count_is_bounded(serve: ServerFactory) -> None:
    client = await serve(sse_max_connections=1)
    await store(client, GATED)
    started = await client.post("/runs", json={"workflow": "gated", "inputs": {}})
    run_id = started.json()["id"]
    held = asyncio.Event()

    def hold(event: dict[str, Any]) -> bool:
        if event["type"] == "run.interrupted":
            held.set()
        return False

    first = asyncio.create_task(read_sse(client, f"/runs/{run_id}/events", stop=hold))
    await asyncio.wait_for(held.wait(), 20)
    refused = await read_sse(client, f"/runs/{run_id}/events")
    assert refused.status == 503
    assert refused.headers["content-type"].startswith("application/problem+json")
    assert '"too_many_streams"' in refused.body
    refused_start = await read_sse(
        client, "/runs/stream", method="POST", json={"workflow": "gated", "inputs": {}}
    )
    assert refused_start.status == 503
    runs = (await client.get("/runs")).json()["items"]
    assert len(runs) == 1  # the refused stream started no run
    # the JSON page is not a stream: still served
    assert (await events_of(client, run_id))[-1]["type"] == "run.interrupted"

    await answer(client, run_id)
    assert (await asyncio.wait_for(first, 20)).types[-1] == "run.completed"
    # the slot is free again once the stream ended
    again = await read_sse(client, f"/runs/{run_id}/events")
    assert again.status == 200 and again.closed_by_server


async def test_stream_lifetime_is_bounded(serve: ServerFactory) -> None:
    client = await serve(sse_max_stream_s=0.5, sse_keepalive_s=0.1)
    await store(client, GATED)
    started = await client.post("/runs", json={"workflow": "gated", "inputs": {}})
    run_id = started.json()["id"]
    assert (await wait_run(client, run_id))["status"] == "interrupted"

    # a paused run without until=paused would keep the stream open; the bound ends it
    stream = await asyncio.wait_for(read_sse(client, f"/runs/{run_id}/events"), 20)
    assert stream.closed_by_server
    assert stream.events == await events_of(client, run_id)
    assert stream.comments >= 2  # keep-alives while nothing happened
    # keep-alive comments carry no id: a reconnection goes on from the last event
    rest = await asyncio.wait_for(
        read_sse(client, f"/runs/{run_id}/events", headers={"Last-Event-ID": str(stream.seqs[-1])}),
        20,
    )
    assert rest.events == []


async def test_deleted_run_ends_its_stream(serve: ServerFactory) -> None:
    client = await serve()
    await store(client, GATED)
    started = await client.post("/runs", json={"workflow": "gated", "inputs": {}})
    run_id = started.json()["id"]
    held = asyncio.Event()

    def hold(event: dict[str, Any]) -> bool:
        if event["type"] == "run.interrupted":
            held.set()
        return False

    reader = asyncio.create_task(read_sse(client, f"/runs/{run_id}/events", stop=hold))
    await asyncio.wait_for(held.wait(), 20)
    assert (await client.delete(f"/runs/{run_id}")).status_code == 204
    stream = await asyncio.wait_for(reader, 20)
    assert stream.closed_by_server and stream.types[-1] == "run.interrupted"


@pytest.mark.parametrize("subscribers", [50])
async def test_many_subscribers_share_one_feed(serve: ServerFactory, subscribers: int) -> None:
    client = await serve()
    await store(client, GATED)
    started = await client.post("/runs", json={"workflow": "gated", "inputs": {}})
    run_id = started.json()["id"]
    ready = 0
    all_ready = asyncio.Event()

    def count(event: dict[str, Any]) -> bool:
        nonlocal ready
        if event["type"] == "run.interrupted":
            ready += 1
            if ready == subscribers:
                all_ready.set()
        return False

    readers = [
        asyncio.create_task(read_sse(client, f"/runs/{run_id}/events", stop=count))
        for _ in range(subscribers)
    ]
    await asyncio.wait_for(all_ready.wait(), 30)
    hub = client.app.state.feeds  # type: ignore[attr-defined]
    assert hub.feed_count == 1 and hub.streams == subscribers
    await answer(client, run_id)
    streams = await asyncio.wait_for(asyncio.gather(*readers), 30)
    stored = await events_of(client, run_id)
    assert all(s.events == stored for s in streams)
    assert hub.feed_count == 0
