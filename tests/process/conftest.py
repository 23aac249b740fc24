"""Real Stepwise processes on one scratch Postgres database.

``procs.spawn("worker")`` / ``procs.spawn("serve")`` start ``python -m app …`` with the
scratch database and small lease/poll settings; every process is stopped at teardown and
its log is printed when a test fails. ``CallServer`` is the remote end of ``call`` steps:
it counts hits and Idempotency-Key values, and its ``/slow`` route blocks until released.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import httpx
import pytest
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine, create_async_engine

from app.main import create_app
from tests.conftest import free_port, scratch_pg_database
from tests.conftest import settings_for as base_settings

ROOT = Path(__file__).resolve().parents[2]

# Small leases and polls, so that recovery happens within a test's patience.
PROCESS_ENV = {
    "STEPWISE_MIGRATE_ON_START": "false",
    "STEPWISE_ALLOW_PRIVATE_NETWORKS": "true",
    "STEPWISE_LEASE_S": "2",
    "STEPWISE_POLL_INTERVAL_S": "0.5",
    "STEPWISE_SWEEP_INTERVAL_S": "1",
    "STEPWISE_SHUTDOWN_GRACE_S": "5",
    "STEPWISE_WORKERS": "8",
    "STEPWISE_DB_POOL_SIZE": "4",
    "STEPWISE_LOG_LEVEL": "INFO",
}


# -- the database ------------------------------------------------------------------------------


@pytest.fixture(scope="session")
async def pg_url() -> AsyncIterator[str]:
    async with scratch_pg_database("stepwise_proc", "process tests") as url:
        yield url


@pytest.fixture
async def db(pg_url: str) -> AsyncIterator[AsyncEngine]:
    """The scratch database, emptied; for the test's own queries."""
    engine = create_async_engine(pg_url, pool_pre_ping=True)
    async with engine.begin() as conn:
        for table in ("events", "checkpoints", "runs", "workflows", "webhook_deliveries"):
            await conn.execute(text(f"DELETE FROM {table}"))
    yield engine
    await engine.dispose()


async def scalar(db: AsyncEngine, sql: str, **params: Any) -> Any:
    async with db.connect() as conn:
        return (await conn.execute(text(sql), params)).scalar()


async def rows(db: AsyncEngine, sql: str, **params: Any) -> list[Any]:
    async with db.connect() as conn:
        return list((await conn.execute(text(sql), params)).all())


@pytest.fixture
async def api(pg_url: str, db: AsyncEngine) -> AsyncIterator[httpx.AsyncClient]:
    """An API without runners (workers=0), in this process: it only submits and reads."""
    app = create_app(base_settings(pg_url, workers=0))
    lifespan = app.router.lifespan_context(app)
    await lifespan.__aenter__()
    client = httpx.AsyncClient(
        transport=httpx.ASGITransport(app=app), base_url="http://stepwise.test", timeout=60
    )
    yield client
    await client.aclose()
    await lifespan.__aexit__(None, None, None)


# -- processes ---------------------------------------------------------------------------------


@dataclass
class Proc:
    kind: str
    popen: subprocess.Popen[bytes]
    log_path: Path
    port: int | None = None

    @property
    def pid(self) -> int:
        return self.popen.pid

    @property
    def url(self) -> str:
        assert self.port is not None
        return f"http://127.0.0.1:{self.port}"

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def signal(self, sig: int) -> None:
        self.popen.send_signal(sig)

    async def wait_log(self, needle: str, timeout_s: float = 30) -> None:
        deadline = time.monotonic() + timeout_s
        while needle not in self.log():
            if time.monotonic() > deadline:
                raise AssertionError(f"{self.kind} {self.pid}: no {needle!r} in its log")
            await asyncio.sleep(0.05)

    async def wait_exit(self, timeout_s: float = 30) -> int:
        deadline = time.monotonic() + timeout_s
        while self.popen.poll() is None:
            if time.monotonic() > deadline:
                raise AssertionError(f"{self.kind} {self.pid} did not exit")
            await asyncio.sleep(0.05)
        return int(self.popen.returncode)

    async def ready(self, timeout_s: float = 30) -> Proc:
        if self.kind == "worker":
            await self.wait_log("worker ready", timeout_s)
            return self
        deadline = time.monotonic() + timeout_s
        async with httpx.AsyncClient() as client:
            while True:
                if self.popen.poll() is not None:
                    raise AssertionError(f"serve exited ({self.popen.returncode})")
                try:
                    if (await client.get(f"{self.url}/healthz")).status_code == 200:
                        return self
                except httpx.TransportError:
                    pass
                if time.monotonic() > deadline:
                    raise AssertionError("serve did not become healthy")
                await asyncio.sleep(0.1)


@dataclass
class Procs:
    database_url: str
    tmp: Path
    started: list[Proc] = field(default_factory=list)

    def spawn(self, kind: str, **env: str) -> Proc:
        port = free_port() if kind == "serve" else None
        args = [sys.executable, "-m", "app", kind]
        if port is not None:
            args += ["--port", str(port)]
        log_path = self.tmp / f"{kind}-{len(self.started)}.log"
        environment = {
            **os.environ,
            **PROCESS_ENV,
            "STEPWISE_DATABASE_URL": self.database_url,
            **{f"STEPWISE_{k.upper()}": v for k, v in env.items()},
        }
        with log_path.open("wb") as out:
            popen = subprocess.Popen(
                args, cwd=ROOT, env=environment, stdout=out, stderr=subprocess.STDOUT
            )
        proc = Proc(kind, popen, log_path, port)
        self.started.append(proc)
        return proc

    async def start(self, kind: str, **env: str) -> Proc:
        return await self.spawn(kind, **env).ready()

    def by_owner(self, owner: str | None) -> Proc:
        """The process whose runner pool is ``owner`` (host:pid:nonce)."""
        assert owner, "the run has no lease owner"
        pid = int(owner.split(":")[1])
        return next(p for p in self.started if p.pid == pid)

    def logs(self) -> str:
        return "\n".join(
            f"===== {p.kind} pid {p.pid} (exit {p.popen.returncode}) =====\n{p.log()[-6000:]}"
            for p in self.started
        )

    def stop_all(self) -> None:
        for proc in self.started:
            if proc.popen.poll() is None:
                proc.popen.send_signal(signal.SIGCONT)
                proc.popen.kill()
        for proc in self.started:
            proc.popen.wait(10)


@pytest.hookimpl(wrapper=True, tryfirst=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]) -> Any:
    report = yield
    if report.when == "call":
        item.stash[FAILED] = report.failed
    return report


FAILED = pytest.StashKey[bool]()


@pytest.fixture
def procs(request: pytest.FixtureRequest, pg_url: str, tmp_path: Path) -> Iterator[Procs]:
    group = Procs(pg_url, tmp_path)
    yield group
    group.stop_all()
    if request.node.stash.get(FAILED, False) or os.environ.get("STEPWISE_TEST_SHOW_LOGS"):
        print(group.logs())  # shown with the failure report


# -- the remote end of `call` steps ------------------------------------------------------------


@dataclass
class CallHit:
    path: str
    key: str | None
    body: dict[str, Any]


class CallServer:
    """``/fast`` answers at once (after ``?delay=`` seconds); ``/slow`` blocks until
    ``release()``. Both succeed with ``{"path", "key"}`` as the output."""

    def __init__(self) -> None:
        self.hits: list[CallHit] = []
        self.released = threading.Event()
        self._lock = threading.Lock()
        self._arrived = threading.Condition(self._lock)
        server = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def do_POST(self) -> None:
                length = int(self.headers.get("Content-Length", "0"))
                body = json.loads(self.rfile.read(length) or b"{}")
                path, _, query = self.path.partition("?")
                key = self.headers.get("Idempotency-Key")
                with server._arrived:
                    server.hits.append(CallHit(path, key, body))
                    server._arrived.notify_all()
                if path == "/slow":
                    server.released.wait(120)
                elif query.startswith("delay="):
                    time.sleep(float(query.split("=", 1)[1]))
                answer = json.dumps(
                    {"status": "succeeded", "output": {"path": path, "key": key}}
                ).encode()
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(answer)))
                self.end_headers()
                with_errors_ignored(lambda: self.wfile.write(answer))

            def log_message(self, format: str, *args: Any) -> None:
                pass

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._server.daemon_threads = True
        self.port = self._server.server_address[1]
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)
        self._thread.start()

    def url(self, path: str) -> str:
        return f"http://127.0.0.1:{self.port}{path}"

    def hits_of(self, path: str) -> list[CallHit]:
        with self._lock:
            return [h for h in self.hits if h.path == path]

    async def wait_hits(self, path: str, count: int, timeout_s: float = 30) -> list[CallHit]:
        deadline = time.monotonic() + timeout_s
        while len(self.hits_of(path)) < count:
            if time.monotonic() > deadline:
                raise AssertionError(f"{path}: {len(self.hits_of(path))} hit(s), not {count}")
            await asyncio.sleep(0.05)
        return self.hits_of(path)

    def release(self) -> None:
        self.released.set()

    def close(self) -> None:
        self.released.set()
        self._server.shutdown()
        self._server.server_close()


def with_errors_ignored(write: Any) -> None:
    with contextlib.suppress(OSError):  # the caller died meanwhile (a killed worker)
        write()


@pytest.fixture
def call_server() -> Iterator[CallServer]:
    server = CallServer()
    yield server
    server.close()


# -- helpers -----------------------------------------------------------------------------------


async def wait_until(predicate: Any, timeout_s: float = 60, what: str = "condition") -> None:
    deadline = time.monotonic() + timeout_s
    while not await predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        await asyncio.sleep(0.1)


async def lease_owner(db: AsyncEngine, run_id: str) -> str | None:
    value = await scalar(db, "SELECT lease_owner FROM runs WHERE id = :id", id=run_id)
    return None if value is None else str(value)


async def step_visits(db: AsyncEngine, run_id: str) -> dict[str, int]:
    """node.completed events per node of one run."""
    found = await rows(
        db,
        "SELECT node, count(*) FROM event_log WHERE run_id = :id AND type = 'node.completed' "
        "GROUP BY node",
        id=run_id,
    )
    return {str(node): int(n) for node, n in found}


async def event_count(db: AsyncEngine, run_id: str, type_: str) -> int:
    return int(
        await scalar(
            db,
            "SELECT count(*) FROM event_log WHERE run_id = :id AND type = :t",
            id=run_id,
            t=type_,
        )
    )
