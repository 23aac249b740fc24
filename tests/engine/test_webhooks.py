"""Webhooks: the run resource is POSTed whenever the run pauses or ends, from an outbox
written with the pause or end (durable, in order for each run, at least once)."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from typing import Any

import httpx
import pytest
from prometheus_client import REGISTRY
from sqlalchemy import text
from sqlalchemy.ext.asyncio import create_async_engine

from app.engine import webhooks
from app.steps.registry import StepRegistry, builtin_steps
from tests.conftest import AppFactory, until_status
from tests.engine.test_poison_runs import FLOW as POISON_FLOW
from tests.engine.test_poison_runs import BrokenPlugin
from tests.engine.test_runner import wf

ASK_THEN_END = wf(
    "hooked",
    {"ask": {"step": "interrupt", "with": {}}, "end": {"step": "set"}},
    [{"from": "ask", "to": "end"}],
)


@dataclass
class Hit:
    key: str | None
    body: dict[str, Any]
    answered: int | None  # None: left without an answer


@dataclass
class Receiver:
    """A loopback HTTP server for webhooks; ``answer(body)`` says the status to answer
    with, or None to leave the request hanging."""

    url: str = ""
    hits: list[Hit] = field(default_factory=list)
    answer: Callable[[dict[str, Any]], int | None] = lambda body: 200

    def delivered(self) -> list[dict[str, Any]]:
        return [h.body for h in self.hits if h.answered is not None and h.answered < 300]

    async def wait(self, predicate: Callable[[], bool], what: str) -> None:
        for _ in range(400):
            if predicate():
                return
            await asyncio.sleep(0.025)
        raise AssertionError(f"{what}: hits {[(h.body['status'], h.answered) for h in self.hits]}")


@pytest.fixture
async def receiver() -> AsyncIterator[Receiver]:
    receiver = Receiver()

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        head = await reader.readuntil(b"\r\n\r\n")
        headers = dict(
            line.decode().split(": ", 1) for line in head.split(b"\r\n")[1:] if b": " in line
        )
        lowered = {k.lower(): v for k, v in headers.items()}
        body = json.loads(await reader.readexactly(int(lowered["content-length"])))
        status = receiver.answer(body)
        receiver.hits.append(Hit(lowered.get("idempotency-key"), body, status))
        if status is None:
            await asyncio.Event().wait()  # until the server closes
        reply = f"HTTP/1.1 {status} X\r\ncontent-length: 0\r\nconnection: close\r\n\r\n"
        writer.write(reply.encode())
        await writer.drain()
        writer.close()

    server = await asyncio.start_server(handle, "127.0.0.1", 0)
    receiver.url = f"http://127.0.0.1:{server.sockets[0].getsockname()[1]}/hook"
    yield receiver
    server.close()


@pytest.fixture(autouse=True)
def quick_backoff(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(webhooks, "FIRST_DELAY_S", 0.05)


async def owed(database_url: str) -> list[dict[str, Any]]:
    """The outbox's rows, oldest first."""
    engine = create_async_engine(database_url)
    try:
        async with engine.connect() as conn:
            result = await conn.execute(
                text("SELECT run_id, body, key, attempts, last_error FROM webhook_deliveries")
            )
            found = [dict(row._mapping) for row in result]
    finally:
        await engine.dispose()
    for row in found:
        if isinstance(row["body"], str):
            row["body"] = json.loads(row["body"])
    return found


def attempts_counted(outcome: str) -> float:
    value = REGISTRY.get_sample_value("stepwise_webhook_attempts_total", {"outcome": outcome})
    return value or 0.0


async def started_paused(client: httpx.AsyncClient, url: str) -> dict[str, Any]:
    body = {"definition": ASK_THEN_END, "inputs": {}, "webhook": url}
    run: dict[str, Any] = (await client.post("/runs/wait", json=body)).json()
    assert run["status"] == "interrupted"
    return run


async def test_pause_and_end_go_out_in_order_each_as_it_left_the_run(
    make_client: AppFactory, receiver: Receiver, database_url: str
) -> None:
    """The receiver fails every attempt until the run has completed: the pause's delivery
    still carries the run as the pause left it, every attempt of it the same key, and the
    end's delivery waits for it."""
    receiver.answer = lambda body: 200 if opened.is_set() else 503
    opened = asyncio.Event()
    client = await make_client()
    run = await started_paused(client, receiver.url)
    await receiver.wait(lambda: len(receiver.hits) >= 2, "the pause retried")
    answer = {"interrupt_id": run["interrupt"]["id"]}
    done = await client.post(f"/runs/{run['id']}/response", params={"wait_s": 10}, json=answer)
    assert done.json()["status"] == "completed"
    opened.set()
    await receiver.wait(lambda: len(receiver.delivered()) == 2, "both delivered")

    first, second = receiver.delivered()
    assert (first["status"], second["status"]) == ("interrupted", "completed")
    assert first["interrupt"]["id"] == run["interrupt"]["id"]
    assert first["updated_at"] == run["updated_at"]
    assert second == done.json()
    # every attempt of the pause came before the end's first, with the pause's key
    statuses = [h.body["status"] for h in receiver.hits]
    assert statuses.index("completed") == len(statuses) - 1
    assert {h.key for h in receiver.hits[:-1]} == {f"{run['id']}:interrupted:{run['updated_at']}"}
    assert receiver.hits[-1].key == f"{run['id']}:completed:{second['updated_at']}"
    assert await owed(database_url) == []


async def test_cancel_and_reject_owe_their_webhook(
    make_client: AppFactory, receiver: Receiver
) -> None:
    client = await make_client()
    cancelled = await started_paused(client, receiver.url)
    assert (await client.post(f"/runs/{cancelled['id']}/cancel")).status_code < 300
    rejected = await started_paused(client, receiver.url)
    answer = {"interrupt_id": rejected["interrupt"]["id"], "status": "rejected"}
    assert (await client.post(f"/runs/{rejected['id']}/response", json=answer)).status_code < 300
    await receiver.wait(lambda: len(receiver.delivered()) == 4, "four deliveries")

    by_run: dict[str, list[str]] = {}
    for body in receiver.delivered():
        by_run.setdefault(body["id"], []).append(body["status"])
    assert by_run == {
        cancelled["id"]: ["interrupted", "cancelled"],
        rejected["id"]: ["interrupted", "failed"],
    }
    failed = next(
        b for b in receiver.delivered() if b["id"] == rejected["id"] and b["status"] == "failed"
    )
    assert failed["error"]["code"] == "interrupt_rejected"


async def test_the_delivery_is_written_with_the_end_and_given_up_after_its_attempts(
    make_client: AppFactory, database_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Nothing listens at the URL: the delivery stays owed, with its last error, until its
    attempts are spent."""
    monkeypatch.setattr(webhooks, "FIRST_DELAY_S", 0.5)
    client = await make_client(webhook_attempts=2)
    retrying, failed = attempts_counted("retrying"), attempts_counted("failed")
    closed = "http://127.0.0.1:9/hook"  # the discard port: nothing answers
    body = {"definition": wf("ends", {"end": {"step": "set"}}), "inputs": {}, "webhook": closed}
    run = (await client.post("/runs/wait", json=body)).json()
    assert run["status"] == "completed"

    rows = await owed(database_url)
    assert len(rows) == 1
    row = rows[0]
    assert row["run_id"] == run["id"]
    assert row["body"] == run
    assert row["key"] == f"{run['id']}:completed:{run['updated_at']}"
    for _ in range(200):
        if not await owed(database_url):
            break
        await asyncio.sleep(0.025)
    else:
        raise AssertionError(f"never given up: {await owed(database_url)}")
    assert attempts_counted("retrying") == retrying + 1
    assert attempts_counted("failed") == failed + 1


async def test_shutdown_hands_back_an_attempt_under_way_and_a_restart_delivers_it(
    make_client: AppFactory, receiver: Receiver, database_url: str
) -> None:
    receiver.answer = lambda body: None  # hang: the attempt is under way at shutdown
    client = await make_client(webhook_timeout_s=60)
    body = {
        "definition": wf("ends", {"end": {"step": "set"}}),
        "inputs": {},
        "webhook": receiver.url,
    }
    run = (await client.post("/runs/wait", json=body)).json()
    await receiver.wait(lambda: len(receiver.hits) == 1, "the first attempt")
    await client.stop()  # type: ignore[attr-defined]
    (row,) = await owed(database_url)
    assert row["attempts"] == 1

    receiver.answer = lambda body: 200
    # (a claim would have lasted 65 s: the attempt was handed back)
    await make_client(webhook_timeout_s=60)
    await receiver.wait(lambda: len(receiver.delivered()) == 1, "delivered after restart")
    assert receiver.delivered()[0] == run
    assert receiver.hits[0].key == receiver.hits[1].key
    for _ in range(100):
        if not await owed(database_url):
            break
        await asyncio.sleep(0.025)
    assert await owed(database_url) == []


async def test_a_run_failed_by_the_service_owes_its_webhook(
    make_client: AppFactory, receiver: Receiver
) -> None:
    """An execution that keeps raising inside the service fails the run (``internal_error``)
    outside the runner's own writes; that failure owes its delivery too."""
    registry = StepRegistry({**builtin_steps(), "broken": BrokenPlugin()})
    client = await make_client(registry=registry)
    body = {"definition": POISON_FLOW, "inputs": {}, "webhook": receiver.url}
    run_id = (await client.post("/runs", json=body)).json()["id"]
    run = await until_status(client, run_id, "failed", within_s=30)
    await receiver.wait(lambda: len(receiver.delivered()) == 1, "the failure delivered")
    (delivered,) = receiver.delivered()
    assert delivered["error"]["code"] == "internal_error"
    assert delivered == run


async def test_a_webhook_the_guard_refuses_whatever_it_resolves_to_is_a_422(
    make_client: AppFactory,
) -> None:
    """It could never be delivered: an address (or localhost) the outbound guard refuses
    is refused when the run starts; a name is checked when a delivery resolves it."""
    client = await make_client(allow_private_networks=False)
    definition = wf("ends", {"end": {"step": "set"}})
    for url in ("http://127.0.0.1:9/hook", "http://localhost:9/hook", "https://10.0.0.7/h"):
        body = {"definition": definition, "inputs": {}, "webhook": url}
        response = await client.post("/runs", json=body)
        assert response.status_code == 422, (url, response.text)
        problem = response.json()
        assert problem["code"] == "invalid_webhook"
        assert problem["errors"][0]["loc"] == ["body", "webhook"]
    assert (await client.get("/runs")).json()["items"] == []
    body = {"definition": definition, "inputs": {}, "webhook": "https://hooks.example.invalid/h"}
    assert (await client.post("/runs", json=body)).status_code == 202

    opened = await make_client(allow_private_networks=False, http_allowed_hosts=["127.0.0.1"])
    body = {"definition": definition, "inputs": {}, "webhook": "http://127.0.0.1:9/hook"}
    assert (await opened.post("/runs", json=body)).status_code == 202
