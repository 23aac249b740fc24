"""SIGTERM ends the open event streams at once: the server's drain of its connections
does not wait for them (their clients reconnect elsewhere with ``Last-Event-ID``)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import httpx
import pytest

from tests.conftest import free_port

ROOT = Path(__file__).resolve().parents[2]

pytestmark = pytest.mark.slow


def test_sigterm_ends_an_open_event_stream_and_the_process(tmp_path: Path) -> None:
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    env = {
        **os.environ,
        "STEPWISE_DATABASE_URL": f"sqlite:///{tmp_path / 'db.sqlite'}",
        # a drain that waited for the stream would outlast the wait below
        "STEPWISE_SHUTDOWN_GRACE_S": "120",
        "STEPWISE_WORKERS": "2",
    }
    log = tmp_path / "serve.log"
    with log.open("wb") as out:
        process = subprocess.Popen(
            [sys.executable, "-m", "app", "serve", "--port", str(port)],
            cwd=ROOT, env=env, stdout=out, stderr=subprocess.STDOUT,
        )  # fmt: skip
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                if httpx.get(f"{base}/healthz").status_code == 200:
                    break
            except httpx.TransportError:
                pass
            assert time.monotonic() < deadline, log.read_text()
            time.sleep(0.1)
        definition = {"name": "held", "nodes": {"ask": {"step": "interrupt", "with": {}}}}
        body = {"definition": definition, "inputs": {}}
        run = httpx.post(f"{base}/runs/wait", json=body, timeout=30).json()
        assert run["status"] == "interrupted"

        seen: list[str] = []
        ended = threading.Event()

        def watch() -> None:
            with httpx.stream("GET", f"{base}/runs/{run['id']}/events", timeout=None) as stream:
                for line in stream.iter_lines():
                    seen.append(line)
            ended.set()

        watcher = threading.Thread(target=watch, daemon=True)
        watcher.start()
        while not any(line.startswith("event: run.interrupted") for line in seen):
            time.sleep(0.05)
        process.send_signal(signal.SIGTERM)
        assert process.wait(60) in (0, -signal.SIGTERM)  # (uvicorn re-raises the signal)
        assert ended.wait(10), "the stream did not end"
    finally:
        if process.poll() is None:
            process.kill()
            process.wait(10)
    text = log.read_text()
    assert "Exception in ASGI application" not in text, text
    assert "graceful shutdown exceeded" not in text, text
