"""``STEPWISE_LOG_JSON=true``: every line a process writes is one JSON object, uvicorn's
start-up lines and access log included, whatever the messages hold."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

from tests.conftest import free_port

ROOT = Path(__file__).resolve().parents[2]

pytestmark = pytest.mark.slow


def test_every_line_of_a_serve_process_is_a_json_object(tmp_path: Path) -> None:
    port = free_port()
    env = {
        **os.environ,
        "STEPWISE_DATABASE_URL": f"sqlite:///{tmp_path / 'db.sqlite'}",
        "STEPWISE_LOG_JSON": "true",
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
                if httpx.get(f"http://127.0.0.1:{port}/healthz").status_code == 200:
                    break
            except httpx.TransportError:
                pass
            assert time.monotonic() < deadline, log.read_text()
            time.sleep(0.1)
        httpx.get(f"http://127.0.0.1:{port}/runs/nope")  # an access line, in quotes
    finally:
        process.send_signal(signal.SIGTERM)
        process.wait(30)
    lines = log.read_text().splitlines()
    records = [json.loads(line) for line in lines]  # every line parses
    assert all({"ts", "level", "logger", "msg"} <= set(r) for r in records)
    loggers = {r["logger"] for r in records}
    assert {"uvicorn.error", "uvicorn.access"} <= loggers, loggers
    access = [r["msg"] for r in records if r["logger"] == "uvicorn.access"]
    assert any('"GET /runs/nope HTTP/1.1" 404' in msg for msg in access), access
