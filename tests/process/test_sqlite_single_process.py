"""SQLite is the embedded, single-process store: a second process on the same file
refuses to start its runners, with a message that says why and what to do."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.conftest import free_port

ROOT = Path(__file__).resolve().parents[2]

pytestmark = pytest.mark.slow


def spawn(kind: str, database: Path, log: Path) -> subprocess.Popen[bytes]:
    args = [sys.executable, "-m", "app", kind]
    if kind == "serve":
        args += ["--port", str(free_port())]
    env = {**os.environ, "STEPWISE_DATABASE_URL": f"sqlite:///{database}", "STEPWISE_WORKERS": "2"}
    with log.open("wb") as out:
        return subprocess.Popen(args, cwd=ROOT, env=env, stdout=out, stderr=subprocess.STDOUT)


def wait_for(log: Path, needle: str, timeout_s: float = 30) -> None:
    deadline = time.monotonic() + timeout_s
    while needle not in log.read_text(errors="replace"):
        assert time.monotonic() < deadline, log.read_text(errors="replace")
        time.sleep(0.05)


def refused(kind: str, database: Path, log: Path) -> str:
    second = spawn(kind, database, log)
    try:
        code = second.wait(30)
    finally:
        if second.poll() is None:
            second.kill()
            second.wait(10)
    message = " ".join(log.read_text().split())
    assert code == 1, message
    return message


def test_a_second_process_on_one_sqlite_file_refuses_to_run(tmp_path: Path) -> None:
    database = tmp_path / "stepwise.db"
    first = spawn("worker", database, tmp_path / "first.log")
    try:
        wait_for(tmp_path / "first.log", "worker ready")
        for kind in ("worker", "serve"):
            message = refused(kind, database, tmp_path / f"second-{kind}.log")
            assert "already running the runs of" in message
            assert "single-process" in message and "postgresql://" in message
        assert first.poll() is None  # the first one is unaffected
    finally:
        first.terminate()
        assert first.wait(15) == 0
    # once the first has stopped, the file is free again
    third = spawn("worker", database, tmp_path / "third.log")
    try:
        wait_for(tmp_path / "third.log", "worker ready")
    finally:
        third.terminate()
        assert third.wait(15) == 0
