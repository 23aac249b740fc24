"""Fan-out across processes: a subscriber on one real ``stepwise serve`` process gets the
events of a run executed by another, through Postgres LISTEN/NOTIFY."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.conftest import events_of, free_port, store, truncate
from tests.events.conftest import read_sse
from tests.events.test_stream import GATED, answer

ROOT = Path(__file__).resolve().parents[2]

pytestmark = [pytest.mark.postgres_only, pytest.mark.slow]

Spawn = Callable[..., Awaitable[httpx.AsyncClient]]


def popen_serve(port: int, env: dict[str, str]) -> subprocess.Popen[bytes]:
    return subprocess.Popen(
        [sys.executable, "-m", "app", "serve", "--host", "127.0.0.1", "--port", str(port)],
        cwd=ROOT,
        env=env,
    )


@pytest.fixture
async def spawn(database_url: str) -> AsyncIterator[Spawn]:
    await truncate(database_url)
    started: list[tuple[subprocess.Popen[bytes], httpx.AsyncClient]] = []

    async def start(**env: str) -> httpx.AsyncClient:
        port = free_port()
        environ = {
            **os.environ,
            "STEPWISE_DATABASE_URL": database_url,
            "STEPWISE_MIGRATE_ON_START": "false",
            "STEPWISE_LOG_LEVEL": "WARNING",
            "STEPWISE_SHUTDOWN_GRACE_S": "1",
            **env,
        }
        process = popen_serve(port, environ)
        client = httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}", timeout=30)
        started.append((process, client))
        for _ in range(300):
            if process.poll() is not None:
                pytest.fail(f"stepwise serve exited with {process.returncode}")
            try:
                if (await client.get("/readyz")).status_code == 200:
                    return client
            except httpx.TransportError:
                pass
            await asyncio.sleep(0.05)
        pytest.fail("stepwise serve did not become ready")

    yield start
    for process, client in started:
        await client.aclose()
        process.send_signal(signal.SIGTERM)
    for process, _ in started:
        try:
            await asyncio.to_thread(process.wait, 15)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


async def test_subscriber_on_one_process_gets_events_run_by_another(spawn: Spawn) -> None:
    # the API-only process never runs a step, and its fallback poll is too slow to matter:
    # what it streams live arrives through NOTIFY
    api, runner = await asyncio.gather(
        spawn(STEPWISE_WORKERS="0", STEPWISE_POLL_INTERVAL_S="60"),
        spawn(STEPWISE_WORKERS="2", STEPWISE_POLL_INTERVAL_S="0.2"),
    )
    await store(api, GATED)
    started = await api.post("/runs", json={"workflow": "gated", "inputs": {}})
    assert started.status_code == 202, started.text
    run_id = started.json()["id"]
    paused = asyncio.Event()

    def note(event: dict[str, Any]) -> bool:
        if event["type"] == "run.interrupted":
            paused.set()
        return False

    reader = asyncio.create_task(read_sse(api, f"/runs/{run_id}/events", stop=note))
    await asyncio.wait_for(paused.wait(), 30)
    await answer(runner, run_id, {"ok": True})
    stream = await asyncio.wait_for(reader, 30)

    assert stream.closed_by_server and stream.types[-1] == "run.completed"
    assert stream.events == await events_of(runner, run_id)
    # the other process streams the same events
    replay = await read_sse(runner, f"/runs/{run_id}/events")
    assert replay.events == stream.events


async def test_post_runs_stream_on_an_api_only_process(spawn: Spawn) -> None:
    api, _runner = await asyncio.gather(
        spawn(STEPWISE_WORKERS="0", STEPWISE_POLL_INTERVAL_S="60"),
        spawn(STEPWISE_WORKERS="2", STEPWISE_POLL_INTERVAL_S="0.2"),
    )
    await store(api, GATED)
    stream = await asyncio.wait_for(
        read_sse(
            api,
            "/runs/stream",
            method="POST",
            params={"until": "paused"},
            json={"workflow": "gated", "inputs": {}},
        ),
        30,
    )
    assert stream.status == 200 and stream.closed_by_server
    assert stream.types[-1] == "run.interrupted"
    assert stream.events == await events_of(api, stream.headers["x-run-id"])
