"""A step in flight when its process dies runs again, with the same Idempotency-Key.

Real ``stepwise serve`` processes: the first is killed with SIGKILL while its ``http``
step waits on a loopback server; a second one, on the same database, takes the run over
when the lease lapses and finishes it. Earlier steps are not run again (DESIGN §6).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from loopback_server import Hit, LoopbackServer, Reply

from tests.conftest import free_port, truncate

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parents[2]


class Serve:
    """One ``python -m app serve`` process."""

    def __init__(self, database_url: str, logs: Path) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        env = {
            **os.environ,
            "STEPWISE_DATABASE_URL": database_url,
            "STEPWISE_MIGRATE_ON_START": "false",
            "STEPWISE_ALLOW_PRIVATE_NETWORKS": "true",
            "STEPWISE_LEASE_S": "2",
            "STEPWISE_POLL_INTERVAL_S": "0.2",
            "STEPWISE_SWEEP_INTERVAL_S": "0.5",
            "STEPWISE_WORKERS": "2",
            "STEPWISE_SHUTDOWN_GRACE_S": "1",
        }
        self.log = logs.open("wb")
        self.process = subprocess.Popen(
            [sys.executable, "-m", "app", "serve", "--host", "127.0.0.1", "--port", str(self.port)],
            cwd=ROOT,
            env=env,
            stdout=self.log,
            stderr=subprocess.STDOUT,
        )

    async def ready(self, client: httpx.AsyncClient) -> None:
        for _ in range(300):
            assert self.process.poll() is None, "stepwise serve exited at start"
            with contextlib.suppress(httpx.TransportError):
                if (await client.get(f"{self.url}/healthz")).status_code == 200:
                    return
            await asyncio.sleep(0.1)
        raise AssertionError("stepwise serve did not start")

    def kill(self) -> None:
        self.process.send_signal(signal.SIGKILL)
        self.process.wait(10)

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(15)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(5)
        self.log.close()


@pytest.fixture
def processes() -> Iterator[list[Serve]]:
    started: list[Serve] = []
    yield started
    for serve in started:
        serve.stop()


async def test_a_killed_step_runs_again_with_the_same_idempotency_key(
    database_url: str,
    processes: list[Serve],
    make_server: Any,
    tmp_path: Path,
) -> None:
    await truncate(database_url)
    server: LoopbackServer = make_server()
    blocked = 0

    def block_once(hit: Hit) -> Reply:
        nonlocal blocked
        blocked += 1
        if blocked == 1:  # the first process dies while waiting for this
            return Reply(200, body=b"too late", delay_s=60)
        return Reply(200, [("Content-Type", "application/json")], b'{"charged": true}')

    server.route("/first", Reply(200, [("Content-Type", "application/json")], b'{"n": 1}'))
    server.route("/charge", block_once)
    definition = {
        "name": "charge",
        "nodes": {
            "first": {"step": "http", "with": {"url": server.url("/first")}},
            "charge": {
                "step": "http",
                "with": {"method": "POST", "url": server.url("/charge"), "json": {"amount": 5}},
                "set": {"charged": "{{ output.body.charged }}"},
            },
        },
        "edges": [{"from": "first", "to": "charge"}],
    }

    async with httpx.AsyncClient(timeout=30) as client:
        first = Serve(database_url, tmp_path / "first.log")
        processes.append(first)
        await first.ready(client)
        created = await client.post(f"{first.url}/workflows", json=definition)
        assert created.status_code == 201, created.text
        started = await client.post(f"{first.url}/runs", json={"workflow": "charge", "inputs": {}})
        assert started.status_code == 202, started.text
        run_id = started.json()["id"]
        for _ in range(300):
            if server.hits_for("/charge"):
                break
            await asyncio.sleep(0.05)
        assert len(server.hits_for("/charge")) == 1
        first.kill()

        second = Serve(database_url, tmp_path / "second.log")
        processes.append(second)
        await second.ready(client)
        response = await client.get(f"{second.url}/runs/{run_id}/wait", params={"timeout_s": 30})
        assert response.status_code == 200, response.text
        run = response.json()
        events = await client.get(
            f"{second.url}/runs/{run_id}/events",
            params={"limit": 500},
            headers={"Accept": "application/json"},
        )

    logs = (tmp_path / "second.log").read_text(errors="replace")
    assert run["status"] == "completed", (run, logs)
    assert run["state"] == {"charged": True}
    assert len(server.hits_for("/first")) == 1  # the finished step did not run again
    charges = server.hits_for("/charge")
    assert len(charges) == 2
    assert [hit.headers["idempotency-key"] for hit in charges] == [f"{run_id}:charge:1"] * 2
    assert [hit.body for hit in charges] == [b'{"amount":5}'] * 2
    started_nodes = [e["node"] for e in events.json()["items"] if e["type"] == "node.started"]
    assert started_nodes == ["first", "charge", "charge"]
