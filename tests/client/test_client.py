"""``stepwise.client`` against the real app on a real port: every endpoint, errors as
exceptions, and event streams that resume after the server cuts them."""

from __future__ import annotations

import asyncio
from typing import Any

import httpx
import pytest

from stepwise.client import (
    ApiError,
    AsyncClient,
    CannotConnect,
    Client,
    Conflict,
    InvalidRequest,
    NotFound,
    Unauthorized,
)
from stepwise.models import Run
from stepwise.sse import EventStream
from tests.client.conftest import ServerFactory
from tests.conftest import free_port

APPROVAL = {
    "name": "approval",
    "state": {"approved": False},
    "nodes": {
        "prepare": {"step": "set", "with": {"n": "{{ inputs.n }}"}, "set": {"n": "{{ output.n }}"}},
        "ask": {
            "step": "interrupt",
            "with": {"question": "ok?"},
            "set": {"approved": "{{ output.approved }}"},
        },
    },
    "edges": [{"from": "prepare", "to": "ask"}],
}
CHAT = {"name": "chat", "nodes": {"listen": {"step": "input"}}}
SLOW = {
    "name": "slow",
    "nodes": {
        "one": {"step": "set", "with": {"x": 1}},
        "pause1": {"step": "wait", "with": {"seconds": 0.6}},
        "two": {"step": "set", "with": {"x": 2}},
        "pause2": {"step": "wait", "with": {"seconds": 0.6}},
        "three": {"step": "set", "with": {"x": 3}},
    },
    "edges": [
        {"from": "one", "to": "pause1"},
        {"from": "pause1", "to": "two"},
        {"from": "two", "to": "pause2"},
        {"from": "pause2", "to": "three"},
    ],
}


async def test_every_endpoint(live_server: str) -> None:
    async with AsyncClient(live_server) as stepwise:
        assert (await stepwise.health())["status"] == "ok"
        assert (await stepwise.ready())["status"] == "ready"
        assert "# TYPE" in await stepwise.metrics()
        stored = await stepwise.store_workflow(APPROVAL)
        assert (stored.name, stored.version) == ("approval", 1)
        yaml_text = "name: chat\nnodes:\n  listen: {step: input}\n"
        assert (await stepwise.store_workflow(yaml_text)).definition["nodes"] == CHAT["nodes"]
        again = await stepwise.store_workflow({**APPROVAL, "description": "v2"})
        assert again.version == 2
        check = await stepwise.validate_workflow({"name": "bad", "nodes": {"a": {"step": "nope"}}})
        assert not check.valid and check.errors[0].loc[:2] == ["nodes", "a"]
        names = {w.name for w in (await stepwise.list_workflows()).items}
        assert names == {"approval", "chat"}
        assert (await stepwise.get_workflow("approval")).version == 2
        assert (await stepwise.get_workflow("approval", 1)).description is None
        versions = await stepwise.list_workflow_versions("approval")
        assert [v.version for v in versions.items] == [2, 1]

        run = await stepwise.run_and_wait("approval", inputs={"n": 5}, timeout_s=20)
        assert run.status == "interrupted" and run.interrupt is not None
        assert run.interrupt.kind == "interrupt" and run.current_node == "ask"
        assert run.workflow.version == 2
        edited = await stepwise.update_state(run.id, {"note": "edited"})
        assert edited.state["note"] == "edited" and edited.status == "interrupted"
        answered = await stepwise.respond(
            run.id, run.interrupt.id, value={"approved": True}, responded_by="ana"
        )
        assert answered.id == run.id
        done = await stepwise.wait_run(run.id, timeout_s=20)
        assert done.status == "completed" and done.state["approved"] is True
        assert done.terminal

        checkpoints = (await stepwise.list_checkpoints(run.id)).items
        assert checkpoints[0].seq == 1 and checkpoints[-1].status == "completed"
        first = await stepwise.get_checkpoint(run.id, checkpoints[0].id)
        assert first.next_node == "prepare"
        fork = await stepwise.fork(run.id, checkpoints[0].id, state_patch={"approved": True})
        assert fork.parent_run_id == run.id and fork.id != run.id
        forked = await stepwise.wait_run(fork.id, timeout_s=20)
        assert forked.status == "interrupted"
        cancelled = await stepwise.cancel(fork.id)
        assert cancelled.id == fork.id
        assert (await stepwise.wait_run(fork.id, timeout_s=20)).status == "cancelled"
        fork_start = (await stepwise.list_checkpoints(fork.id)).items[0]
        resumed = await stepwise.resume(fork.id, checkpoint_id=fork_start.id)
        assert resumed.id == fork.id
        paused = await stepwise.wait_run(fork.id, timeout_s=20)
        assert paused.status == "interrupted" and paused.interrupt is not None
        finished = await stepwise.respond(
            fork.id, paused.interrupt.id, value={"approved": True}, wait_s=20
        )  # the answer and its outcome in one request
        assert finished.status == "completed" and finished.state["approved"] is True

        page = await stepwise.list_events(run.id, types="run.*", limit=2)
        assert [e.type for e in page.items] == ["run.queued", "run.started"]
        rest = await stepwise.list_events(run.id, types=["run.*"], cursor=page.next_cursor)
        assert [e.type for e in rest.items][-2:] == ["run.completed", "run.forked"]

        chat = await stepwise.run_and_wait("chat", timeout_s=20)
        assert chat.status == "awaiting_input"
        await stepwise.send_message(chat.id, "hello")
        chatted = await stepwise.wait_run(chat.id, timeout_s=20)
        assert chatted.status == "completed"

        listed = await stepwise.list_runs(status="completed", workflow="approval")
        assert {r.id for r in listed.items} == {run.id, fork.id}
        both = await stepwise.list_runs(status=["completed", "interrupted"], limit=1)
        assert len(both.items) == 1 and both.next_cursor is not None

        inline = await stepwise.start_run(
            definition={"name": "inline", "nodes": {"a": {"step": "set", "with": {"v": 1}}}},
            idempotency_key="key-1",
        )
        replay = await stepwise.start_run(
            definition={"name": "inline", "nodes": {"a": {"step": "set", "with": {"v": 1}}}},
            idempotency_key="key-1",
        )
        assert replay.id == inline.id
        await stepwise.wait_run(inline.id, timeout_s=20)
        await stepwise.delete_run(inline.id)
        with pytest.raises(NotFound) as missing:
            await stepwise.get_run(inline.id)
        assert missing.value.status == 404 and missing.value.code


async def test_errors_are_exceptions_with_problem_details(live_server: str) -> None:
    async with AsyncClient(live_server) as stepwise:
        with pytest.raises(NotFound) as unknown:
            await stepwise.start_run("no-such-workflow")
        assert unknown.value.status == 404 and unknown.value.detail
        with pytest.raises(InvalidRequest) as invalid:
            await stepwise.store_workflow({"name": "x", "nodes": {"a": {"step": "set"}}, "bad": 1})
        assert invalid.value.status == 422
        assert any(error["loc"][-1] == "bad" for error in invalid.value.errors)
        await stepwise.store_workflow(APPROVAL)
        run = await stepwise.run_and_wait("approval", inputs={"n": 1}, timeout_s=20)
        with pytest.raises(Conflict) as stale:
            await stepwise.respond(run.id, "not-the-interrupt")
        assert stale.value.code == "interrupt_not_pending" and stale.value.status == 409
        assert isinstance(stale.value, ApiError)


async def test_api_key_from_argument_and_environment(
    serve: ServerFactory, monkeypatch: pytest.MonkeyPatch
) -> None:
    async with serve(api_keys=["k1"]) as url:
        async with AsyncClient(url) as anonymous:
            with pytest.raises(Unauthorized) as refused:
                await anonymous.list_runs()
            assert refused.value.code == "unauthorized"
        async with AsyncClient(url, api_key="k1") as keyed:
            assert (await keyed.list_runs()).items == []
        monkeypatch.setenv("STEPWISE_API_KEY", "k1")
        monkeypatch.setenv("STEPWISE_URL", url)
        async with AsyncClient() as from_env:
            assert from_env.base_url == url
            assert (await from_env.list_runs()).items == []


async def test_a_closed_port_is_cannot_connect() -> None:
    url = f"http://127.0.0.1:{free_port()}"
    async with AsyncClient(url) as stepwise:
        with pytest.raises(CannotConnect) as failed:
            await stepwise.get_run("x")
    assert str(failed.value) == f"cannot reach {url}: connection refused"
    with Client(url) as blocking, pytest.raises(CannotConnect) as failed_sync:
        blocking.list_runs()
    assert str(failed_sync.value) == f"cannot reach {url}: connection refused"


class CountingTransport(httpx.AsyncBaseTransport):
    """The real transport, counting the event-stream connections made through it."""

    def __init__(self) -> None:
        self.inner = httpx.AsyncHTTPTransport()
        self.streams: list[dict[str, str]] = []

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        if request.headers.get("accept") == "text/event-stream":
            self.streams.append(dict(request.headers))
        return await self.inner.handle_async_request(request)

    async def aclose(self) -> None:
        await self.inner.aclose()


def assert_whole(events: list[Any]) -> None:
    seqs = [event.seq for event in events]
    assert seqs == list(range(1, len(seqs) + 1)), seqs  # every event, once, in order
    assert events[-1].type == "run.completed"


async def test_stream_resumes_with_last_event_id_after_the_server_cuts_it(
    serve: ServerFactory,
) -> None:
    # the server ends every stream after 0.3 s; the run takes over a second
    async with serve(sse_max_stream_s=0.3) as url:
        transport = CountingTransport()
        async with AsyncClient(url, transport=transport) as stepwise:
            await stepwise.store_workflow(SLOW)
            run = await stepwise.start_run("slow")
            events = [event async for event in stepwise.stream_events(run.id)]
        assert_whole(events)
        assert len(transport.streams) >= 3
        assert "last-event-id" not in transport.streams[0]
        assert all("last-event-id" in headers for headers in transport.streams[1:])
        nodes = [e.node for e in events if e.type == "node.completed"]
        assert nodes == ["one", "pause1", "two", "pause2", "three"]


async def test_start_and_stream_resumes_too(serve: ServerFactory) -> None:
    async with serve(sse_max_stream_s=0.3) as url:
        transport = CountingTransport()
        async with AsyncClient(url, transport=transport) as stepwise:
            await stepwise.store_workflow(SLOW)
            events = [event async for event in stepwise.stream_run("slow", types="run.*,node.*")]
        assert [e.type for e in events][:2] == ["run.queued", "run.started"]
        assert events[-1].type == "run.completed"
        assert len({e.run_id for e in events}) == 1
        assert len(transport.streams) >= 2
        seqs = [e.seq for e in events]
        assert seqs == sorted(set(seqs))


async def test_until_paused_and_the_blocking_client(serve: ServerFactory) -> None:
    async with serve(sse_max_stream_s=0.3) as url:

        def blocking() -> tuple[list[Any], list[Any], str]:
            with Client(url) as stepwise:
                stepwise.store_workflow(APPROVAL)
                run = stepwise.start_run("approval", inputs={"n": 2})
                first = list(stepwise.stream_events(run.id, until="paused"))
                pending = stepwise.get_run(run.id)
                assert pending.interrupt is not None
                answered = stepwise.respond(
                    run.id, pending.interrupt.id, value={"approved": False}, wait_s=20
                )
                rest = list(stepwise.stream_events(run.id, after=first[-1].seq))
                return first, rest, answered.status

        first, rest, status = await asyncio.to_thread(blocking)
        assert first[-1].type == "run.interrupted"
        assert rest[0].seq == first[-1].seq + 1
        assert_whole(first + rest)
        assert status == "completed"


class CuttingProxy:
    """A TCP proxy to the server that aborts the first ``cuts`` event-stream connections
    after ``after_bytes`` of the answer: a connection dropped mid-stream, mid-frame."""

    def __init__(self, target: str, cuts: int, after_bytes: int) -> None:
        self.target_port = int(target.rsplit(":", 1)[1])
        self.cuts = cuts
        self.after_bytes = after_bytes
        self.cut = 0

    async def start(self) -> str:
        self.server = await asyncio.start_server(self._handle, "127.0.0.1", 0)
        return f"http://127.0.0.1:{self.server.sockets[0].getsockname()[1]}"

    async def stop(self) -> None:
        self.server.close()
        await self.server.wait_closed()

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        up_reader, up_writer = await asyncio.open_connection("127.0.0.1", self.target_port)
        streaming = asyncio.Event()

        async def upstream() -> None:
            while chunk := await reader.read(65536):
                if b"text/event-stream" in chunk:
                    streaming.set()
                up_writer.write(chunk)
                await up_writer.drain()

        async def downstream() -> None:
            sent = 0
            while chunk := await up_reader.read(self.after_bytes):
                if streaming.is_set() and self.cut < self.cuts:
                    sent += len(chunk)
                    if sent >= self.after_bytes:
                        writer.write(chunk[: len(chunk) // 2])  # half a frame, then gone
                        self.cut += 1
                        writer.transport.abort()
                        up_writer.transport.abort()
                        return
                writer.write(chunk)
                await writer.drain()

        tasks = [asyncio.create_task(upstream()), asyncio.create_task(downstream())]
        await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        writer.close()
        up_writer.close()


async def test_stream_resumes_after_the_connection_drops_mid_frame(live_server: str) -> None:
    proxy = CuttingProxy(live_server, cuts=2, after_bytes=700)
    url = await proxy.start()
    try:
        async with AsyncClient(url) as stepwise:
            await stepwise.store_workflow(SLOW)
            run = await stepwise.start_run("slow")
            events = [event async for event in stepwise.stream_events(run.id)]
    finally:
        await proxy.stop()
    assert proxy.cut == 2
    assert_whole(events)


def _run(status: str) -> Run:
    now = "2026-12-07T00:00:00+00:00"
    return Run.model_validate(
        {
            "id": "r",
            "workflow": {"name": "w"},
            "status": status,
            "created_at": now,
            "updated_at": now,
        }
    )


def test_a_stream_whose_run_settled_reads_once_more_before_it_ends() -> None:
    """A connection that closed with nothing new, then the run found settled: it may have
    settled after the close, its last events unsent, so the stream connects once more
    (replaying them) and ends only when that one brings nothing either."""
    stream = EventStream("r", 5, None, None, max_reconnects=3)
    assert not stream.settled(_run("running"))
    assert not stream.settled(_run("completed"))  # once more first
    assert stream.settled(_run("completed"))
    paused = EventStream("r", 5, None, "paused", max_reconnects=3)
    assert not paused.settled(_run("interrupted"))
    assert paused.settled(_run("interrupted"))
    assert not EventStream("r", 5, None, None, 3).settled(_run("interrupted"))
