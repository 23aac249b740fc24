"""Stepwise over real HTTP: a real ``stepwise serve`` process on a scratch Postgres database.

    python -m bench.stepwise_suite --params '{"duration_s": 5}'

The load generator (this process) and the server share the machine's cores.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import os
import signal
import socket
import subprocess
import sys
from collections.abc import Awaitable, Callable
from datetime import datetime
from pathlib import Path
from typing import Any

import httpx
import psutil

from bench.call_endpoint import CallEndpoint
from bench.common import (
    DEFAULTS,
    Clock,
    Throughput,
    blob,
    database_bytes,
    emit,
    latency_summary,
    log,
    measure,
    query,
    scratch_db,
    suite_args,
)
from bench.lean_http import LeanClient, lean_client

ROOT = Path(__file__).resolve().parents[1]
NODES = 10
SET_N = {"n": "{{ state.n + 1 }}"}


def linear_workflow() -> dict[str, Any]:
    names = [f"s{i}" for i in range(NODES)]
    return {
        "name": "bench-linear",
        "state": {"n": 0},
        "nodes": {name: {"step": "set", "set": SET_N} for name in names},
        "edges": [{"from": a, "to": b} for a, b in itertools.pairwise(names)],
    }


def call_workflow(url: str) -> dict[str, Any]:
    """W1C: 10 ``call`` steps to the loopback endpoint (``bench.call_endpoint``)."""
    names = [f"c{i}" for i in range(NODES)]
    return {
        "name": "bench-call",
        "nodes": {name: {"step": "call", "with": {"url": url, "timeout_s": 30}} for name in names},
        "edges": [{"from": a, "to": b} for a, b in itertools.pairwise(names)],
    }


def interrupt_workflow() -> dict[str, Any]:
    return {
        "name": "bench-interrupt",
        "state": {"n": 0},
        "nodes": {
            "before": {"step": "set", "set": SET_N},
            "ask": {"step": "interrupt", "with": {"question": "go?"}},
            "after": {"step": "set", "set": SET_N},
        },
        "edges": [{"from": "before", "to": "ask"}, {"from": "ask", "to": "after"}],
    }


def paused_workflow() -> dict[str, Any]:
    """W5: a run that pauses at once and stays paused."""
    return {
        "name": "bench-paused",
        "state": {"n": 0},
        "nodes": {"ask": {"step": "interrupt", "with": {"question": "later"}}},
    }


def big_state_workflow() -> dict[str, Any]:
    """W5: a ~100 KB state of which each step changes about 10 bytes (n and a 10-digit tag)."""
    return {
        "name": "bench-big-state",
        "state": {"blob": "{{ inputs.blob }}", "n": 0, "tag": 1000000000},
        "max_node_iterations": 100_000,
        "nodes": {
            "tick": {
                "step": "set",
                "set": {"n": "{{ state.n + 1 }}", "tag": "{{ 1000000000 + state.n + 1 }}"},
            },
            "done": {"step": "set"},
        },
        "edges": [
            {"from": "tick", "to": "tick", "when": "state.n < inputs.steps", "loop": True},
            {"from": "tick", "to": "done"},
        ],
    }


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class Server:
    """A ``stepwise serve`` subprocess on a scratch database."""

    def __init__(self, database: str, env: dict[str, str] | None = None) -> None:
        self.database = database
        self.url = scratch_db(database)
        self.port = free_port()
        self.base = f"http://127.0.0.1:{self.port}"
        self.env = env or {}
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def rss(self) -> int:
        return int(psutil.Process(self.pid).memory_info().rss)

    def _spawn(self) -> subprocess.Popen[bytes]:
        env = {
            **os.environ,
            "STEPWISE_DATABASE_URL": self.url,
            "STEPWISE_LOG_LEVEL": "WARNING",
            **self.env,
        }
        self.log_path = Path(f"/tmp/{self.database}.server.log")
        return subprocess.Popen(
            [sys.executable, "-m", "app", "serve", "--port", str(self.port)],
            cwd=ROOT,
            env=env,
            stdout=self.log_path.open("wb"),
            stderr=subprocess.STDOUT,
        )

    async def __aenter__(self) -> Server:
        self.proc = self._spawn()
        async with httpx.AsyncClient() as client:
            for _ in range(300):
                with contextlib.suppress(httpx.HTTPError):
                    if (await client.get(f"{self.base}/readyz")).status_code == 200:
                        return self
                if self.proc.poll() is not None:
                    break
                await asyncio.sleep(0.1)
        raise RuntimeError(f"stepwise serve did not start; see {self.log_path}")

    async def __aexit__(self, *exc: object) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


def http_client(base: str, in_flight: int) -> contextlib.AbstractAsyncContextManager[LeanClient]:
    """The load generator's client: raw keep-alive sockets (``bench.lean_http``), so the
    cores it shares with the server go to the server."""
    return lean_client(base, in_flight)


async def store(client: LeanClient, definition: dict[str, Any]) -> None:
    response = await client.post("/workflows", json=definition)
    response.raise_for_status()


async def start(client: LeanClient, workflow: str, inputs: dict[str, Any] | None = None) -> str:
    response = await client.post("/runs", json={"workflow": workflow, "inputs": inputs or {}})
    response.raise_for_status()
    return str(response.json()["id"])


async def wait(client: LeanClient, run_id: str) -> dict[str, Any]:
    """Block until the run is no longer queued or running."""
    while True:
        response = await client.get(f"/runs/{run_id}/wait", params={"timeout_s": 60})
        response.raise_for_status()
        run: dict[str, Any] = response.json()
        if run["status"] not in ("queued", "running"):
            return run


async def closed_loop(
    in_flight: int, duration_s: float, one: Callable[[], Awaitable[int]]
) -> Throughput:
    """``in_flight`` workers each repeat ``one`` (returning steps done) until the deadline."""
    runs = steps = errors = 0
    begin = Clock.now()
    deadline = begin + duration_s

    async def worker() -> None:
        nonlocal runs, steps, errors
        while Clock.now() < deadline:
            try:
                done = await one()  # not `steps += await …`: that reads `steps` before awaiting
                steps += done
                runs += 1
            except (RuntimeError, OSError) as exc:  # LeanHTTPError, timeouts, resets
                errors += 1
                log(f"error: {exc!r}")

    await asyncio.gather(*(worker() for _ in range(in_flight)))
    return Throughput(in_flight, runs, steps, Clock.now() - begin, errors)


# -- workloads -----------------------------------------------------------------------------


async def w1_linear(
    client: LeanClient, in_flight: int, duration_s: float, workflow: str = "bench-linear"
) -> Throughput:
    async def one() -> int:
        run = await wait(client, await start(client, workflow))
        if run["status"] != "completed":
            raise RuntimeError(f"run ended {run['status']}: {run.get('error')}")
        return int(run["step_count"])

    return await closed_loop(in_flight, duration_s, one)


async def w2_interrupt(client: LeanClient, in_flight: int, duration_s: float) -> dict[str, Any]:
    latencies: list[float] = []

    async def one() -> int:
        run = await wait(client, await start(client, "bench-interrupt"))
        if run["status"] != "interrupted":
            raise RuntimeError(f"run is {run['status']}, not interrupted")
        t0 = Clock.now()
        # the answer and its outcome in one request (``?wait_s=``), as a client does it
        response = await client.post(
            f"/runs/{run['id']}/response",
            params={"wait_s": 60},
            json={"interrupt_id": run["interrupt"]["id"], "value": 1},
        )
        response.raise_for_status()
        done = response.json()
        latencies.append(Clock.now() - t0)
        if done["status"] != "completed":
            raise RuntimeError(f"run ended {done['status']}")
        return 1

    result = await closed_loop(in_flight, duration_s, one)
    return {"in_flight": in_flight, "errors": result.errors, **latency_summary(latencies)}


async def w3_start_latency(client: LeanClient, samples: int) -> dict[str, Any]:
    """POST /runs (client clock) to the ``ts`` of the first node.started (server clock, same host)."""
    latencies: list[float] = []
    accepted: list[float] = []
    durable: list[float] = []
    for _ in range(samples):
        t0 = Clock.wall()
        run_id = await start(client, "bench-linear")
        accepted.append(Clock.wall() - t0)
        await wait(client, run_id)
        # every step (the first node.started included) is durable and visible by now
        durable.append(Clock.wall() - t0)
        page = await client.get(
            f"/runs/{run_id}/events",
            params={"types": "node.started", "limit": 1},
            headers={"Accept": "application/json"},
        )
        page.raise_for_status()
        ts = datetime.fromisoformat(page.json()["items"][0]["ts"].replace("Z", "+00:00"))
        latencies.append(ts.timestamp() - t0)
    return {
        **latency_summary(latencies),
        "post_runs_202": latency_summary(accepted),
        "run_completed": latency_summary(durable),
    }


async def w5_paused(server: Server, client: LeanClient, count: int) -> dict[str, Any]:
    async def make(n: int) -> None:
        queue = iter(range(n))

        async def worker() -> None:
            for _ in queue:
                run = await wait(client, await start(client, "bench-paused"))
                assert run["status"] == "interrupted", run["status"]

        await asyncio.gather(*(worker() for _ in range(16)))

    await make(min(500, count))  # warm the allocator and caches first
    await asyncio.sleep(1)
    rss0, bytes0 = server.rss(), database_bytes(server.url)
    t0 = Clock.now()
    await make(count)
    seconds = Clock.now() - t0
    await asyncio.sleep(2)
    rss1, bytes1 = server.rss(), database_bytes(server.url)
    rows = query(server.url, "SELECT count(*) FROM runs WHERE status = 'interrupted'")
    return {
        "paused_runs": count,
        "paused_total": int(rows[0][0]),
        "create_seconds": seconds,
        "rss_before_mb": rss0 / 2**20,
        "rss_after_mb": rss1 / 2**20,
        "rss_delta_bytes_per_run": (rss1 - rss0) / count,
        "db_bytes_per_run": (bytes1 - bytes0) / count,
    }


async def w5_state_cost(
    server: Server, client: LeanClient, blob_bytes: int, steps: list[int]
) -> dict[str, Any]:
    payload = blob(blob_bytes)
    growth = []
    for count in steps:
        before = database_bytes(server.url)
        run = await wait(
            client, await start(client, "bench-big-state", {"blob": payload, "steps": count})
        )
        if run["status"] != "completed":
            raise RuntimeError(f"big-state run ended {run['status']}: {run.get('error')}")
        growth.append((database_bytes(server.url) - before, int(run["step_count"]), run["id"]))
    (small, small_steps, _), (big, big_steps, big_id) = growth
    rows = query(
        server.url,
        "SELECT count(*) FILTER (WHERE base_id IS NULL), "
        "avg(pg_column_size(data)) FILTER (WHERE base_id IS NOT NULL), "
        "max(pg_column_size(data)) FILTER (WHERE base_id IS NULL), "
        "avg(pg_column_size(c.*)) FILTER (WHERE base_id IS NOT NULL) "
        "FROM checkpoints c WHERE run_id = %s",
        (big_id,),
    )
    events = query(
        server.url,
        "SELECT count(*), coalesce(sum(pg_column_size(e.*)), 0) FROM events e WHERE run_id = %s",
        (big_id,),
    )
    snapshots, delta_avg, snapshot_max, row_avg = rows[0]
    return {
        "blob_bytes": blob_bytes,
        "steps": [small_steps, big_steps],
        "db_growth_per_step": (big - small) / (big_steps - small_steps),
        "checkpoint_data_bytes_per_step": float(delta_avg or 0),
        "checkpoint_row_bytes_per_step": float(row_avg or 0),
        "snapshots_written": int(snapshots),
        "snapshot_data_bytes": int(snapshot_max or 0),
        "event_rows_per_step": int(events[0][0]) / big_steps,
        "event_bytes_per_step": int(events[0][1]) / big_steps,
    }


# -- the suite -----------------------------------------------------------------------------


async def run_suite(params: dict[str, Any]) -> dict[str, Any]:
    p = {**DEFAULTS, **params}
    out: dict[str, Any] = {
        "system": "stepwise",
        "only": p.get("only"),
        "W1": [],
        "W1C": [],
        "W2": [],
        "W3": [],
        "W5": [],
        "W5_state": [],
    }
    endpoint = CallEndpoint()
    with endpoint:
        await _suite(p, out, endpoint.url)
    return out


async def _suite(p: dict[str, Any], out: dict[str, Any], call_url: str) -> None:
    env = {"STEPWISE_ALLOW_PRIVATE_NETWORKS": "true"}  # the call endpoint is on loopback
    if p.get("processes"):
        env["STEPWISE_PROCESSES"] = str(p["processes"])
    async with Server("bench_stepwise", env) as server:
        out["server_pid"] = server.pid
        async with http_client(server.base, 16) as client:
            for definition in (
                linear_workflow(),
                interrupt_workflow(),
                paused_workflow(),
                big_state_workflow(),
                call_workflow(call_url),
            ):
                await store(client, definition)
            log("stepwise: warm-up")
            await w1_linear(client, 4, 2.0)
            reps, conc = p["reps"], p["concurrency"]
            await measure(out, "W1", reps, lambda c: w1_linear(client, c, p["duration_s"]), conc)
            await measure(
                out,
                "W1C",
                reps,
                lambda c: w1_linear(client, c, p["duration_s"], "bench-call"),
                conc,
            )
            await measure(out, "W2", reps, lambda c: w2_interrupt(client, c, p["duration_s"]), conc)
            await measure(out, "W3", reps, lambda: w3_start_latency(client, p["latency_samples"]))
            await measure(
                out,
                "W5_state",
                reps,
                lambda: w5_state_cost(server, client, p["blob_bytes"], p["state_steps"]),
            )
            await measure(out, "W5", reps, lambda: w5_paused(server, client, p["paused_runs"]))


def main() -> None:
    emit(asyncio.run(run_suite(suite_args())))


if __name__ == "__main__":
    main()
