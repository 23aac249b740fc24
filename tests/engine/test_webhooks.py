"""Webhooks: the run resource is POSTed whenever the run pauses or ends."""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import AsyncIterator
from typing import Any

import pytest

from app.engine import webhooks
from tests.conftest import AppFactory
from tests.engine.test_runner import wf


@pytest.fixture
async def receiver() -> AsyncIterator[tuple[str, list[dict[str, Any]]]]:
    """A loopback HTTP server that records JSON bodies (the first attempt answers 500)."""
    received: list[dict[str, Any]] = []
    attempts = 0

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        nonlocal attempts
        head = await reader.readuntil(b"\r\n\r\n")
        length = next(
            int(line.split(b":")[1])
            for line in head.split(b"\r\n")
            if line.lower().startswith(b"content-length")
        )
        body = await reader.readexactly(length)
        attempts += 1
        status = b"500 Oops" if attempts == 1 else b"200 OK"
        if attempts > 1:
            received.append(json.loads(body))
        writer.write(b"HTTP/1.1 " + status + b"\r\ncontent-length: 0\r\nconnection: close\r\n\r\n")
        await writer.drain()
        writer.close()

    server = await asyncio.start_server(handle, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    yield f"http://127.0.0.1:{port}/hook", received
    server.close()


async def test_webhook_on_pause_and_end_with_retry(
    make_client: AppFactory,
    receiver: tuple[str, list[dict[str, Any]]],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr("app.engine.webhooks.FIRST_DELAY_S", 0.05)
    url, received = receiver
    client = await make_client()
    definition = wf(
        "hooked",
        {"ask": {"step": "interrupt", "with": {}}, "end": {"step": "set"}},
        [{"from": "ask", "to": "end"}],
    )
    run = (
        await client.post(
            "/runs/wait", json={"definition": definition, "inputs": {}, "webhook": url}
        )
    ).json()
    assert run["status"] == "interrupted"
    await client.post(f"/runs/{run['id']}/response", json={"interrupt_id": run["interrupt"]["id"]})
    for _ in range(200):
        if len(received) >= 2:
            break
        await asyncio.sleep(0.05)
    assert sorted(body["status"] for body in received) == ["completed", "interrupted"]
    assert all(body["id"] == run["id"] for body in received)


async def test_a_pause_webhook_carries_the_run_as_the_pause_left_it(
    make_client: AppFactory,
    receiver: tuple[str, list[dict[str, Any]]],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The body of a pause's webhook is the run as that pause committed it, even when the
    run has moved on (answered, completed) before the delivery went out."""
    monkeypatch.setattr("app.engine.webhooks.FIRST_DELAY_S", 0.05)
    gate = asyncio.Event()
    real = webhooks.transaction

    @contextlib.asynccontextmanager
    async def held_back(sessions: Any) -> AsyncIterator[Any]:
        await gate.wait()  # a delivery that reads the run reads it only once it completed
        async with real(sessions) as session:
            yield session

    monkeypatch.setattr(webhooks, "transaction", held_back)
    url, received = receiver
    client = await make_client()
    definition = wf(
        "hooked-late",
        {"ask": {"step": "interrupt", "with": {}}, "end": {"step": "set"}},
        [{"from": "ask", "to": "end"}],
    )
    body = {"definition": definition, "inputs": {}, "webhook": url}
    run = (await client.post("/runs/wait", json=body)).json()
    answer = {"interrupt_id": run["interrupt"]["id"]}
    done = await client.post(f"/runs/{run['id']}/response", params={"wait_s": 10}, json=answer)
    assert done.json()["status"] == "completed"
    gate.set()
    for _ in range(200):
        if len(received) >= 2:
            break
        await asyncio.sleep(0.05)
    by_status = {b["status"]: b for b in received}
    assert sorted(by_status) == ["completed", "interrupted"]
    assert by_status["interrupted"]["interrupt"]["id"] == run["interrupt"]["id"]
    assert by_status["interrupted"]["updated_at"] == run["updated_at"]
