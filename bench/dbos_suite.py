"""DBOS Transact, in-process, on its own scratch system database.

    python -m bench.dbos_suite --params '{"duration_s": 5}'

A workflow of 10 steps (each records its output durably); the pause is ``DBOS.recv``,
answered with ``DBOS.send``. A paused DBOS workflow is a live coroutine in the process
that started it, which W5 shows.
"""

from __future__ import annotations

import asyncio
import gc
import logging
import uuid
from typing import Any

import httpx
import psutil
from dbos import DBOS, SetWorkflowID

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
    scratch_db,
    suite_args,
)

NODES = 10
first_step_at: dict[str, float] = {}


@DBOS.step()
async def inc(n: int) -> int:
    return n + 1


@DBOS.step()
async def first(n: int) -> int:
    first_step_at.setdefault(str(DBOS.workflow_id), Clock.wall())
    return n + 1


@DBOS.step()
async def tick(n: int) -> tuple[int, int]:
    return n + 1, 1000000000 + n + 1


CALL: dict[str, Any] = {}  # W1C: the endpoint's URL and the shared client


@DBOS.step()
async def call(n: int) -> int:
    """W1C: each step POSTs to the loopback endpoint, as a Stepwise ``call`` step does."""
    response = await CALL["client"].post(CALL["url"], json={"n": n})
    response.raise_for_status()
    assert response.json()["status"] == "succeeded"
    return n + 1


@DBOS.workflow()
async def calls(n: int) -> int:
    for _ in range(NODES):
        n = await call(n)
    return n


@DBOS.workflow()
async def linear(n: int) -> int:
    n = await first(n)
    for _ in range(NODES - 1):
        n = await inc(n)
    return n


@DBOS.workflow()
async def with_pause(n: int) -> int:
    n = await inc(n)
    await DBOS.set_event_async("paused", True)
    value = await DBOS.recv_async("go", timeout_seconds=3600)
    return await inc(n + int(value))


@DBOS.workflow()
async def paused_only() -> int:
    value = await DBOS.recv_async("go", timeout_seconds=3600)
    return int(value or 0)


@DBOS.workflow()
async def big_state(payload: str, steps: int) -> int:
    """The 100 KB payload is the workflow's input (stored once); steps return the small change."""
    n, tag = 0, 1000000000
    while n < steps:
        n, tag = await tick(n)
    return n + tag * 0 + len(payload) * 0


async def closed_loop(in_flight: int, duration_s: float, one: Any) -> Throughput:
    runs = steps = errors = 0
    begin = Clock.now()
    deadline = begin + duration_s

    async def worker() -> None:
        nonlocal runs, steps, errors
        while Clock.now() < deadline:
            try:
                done = await one()
                steps += done
                runs += 1
            except Exception as exc:
                errors += 1
                log(f"dbos error: {exc!r}")

    await asyncio.gather(*(worker() for _ in range(in_flight)))
    return Throughput(in_flight, runs, steps, Clock.now() - begin, errors)


async def w1(in_flight: int, duration_s: float, workflow: Any = linear) -> Throughput:
    async def one() -> int:
        handle = await DBOS.start_workflow_async(workflow, 0)
        assert await handle.get_result() == NODES
        return NODES

    return await closed_loop(in_flight, duration_s, one)


async def w2(in_flight: int, duration_s: float) -> dict[str, Any]:
    latencies: list[float] = []

    async def one() -> int:
        handle = await DBOS.start_workflow_async(with_pause, 0)
        paused = await DBOS.get_event_async(handle.workflow_id, "paused", timeout_seconds=60)
        assert paused is True
        t0 = Clock.now()
        await DBOS.send_async(handle.workflow_id, 1, "go")
        result = await handle.get_result()
        latencies.append(Clock.now() - t0)
        assert result == 3, result
        return 1

    result = await closed_loop(in_flight, duration_s, one)
    return {"in_flight": in_flight, "errors": result.errors, **latency_summary(latencies)}


async def w3(samples: int) -> dict[str, Any]:
    latencies = []
    for _ in range(samples):
        workflow_id = str(uuid.uuid4())
        t0 = Clock.wall()
        with SetWorkflowID(workflow_id):
            handle = await DBOS.start_workflow_async(linear, 0)
        await handle.get_result()
        latencies.append(first_step_at.pop(workflow_id) - t0)
    return latency_summary(latencies)


async def w5_paused(url: str, count: int) -> dict[str, Any]:
    handles: list[Any] = []

    async def make(n: int) -> None:
        for _ in range(n):
            handles.append(await DBOS.start_workflow_async(paused_only))
        # every one has reached recv (it is then "PENDING" with no further progress)
        await asyncio.sleep(1)

    await make(min(500, count))
    gc.collect()
    process = psutil.Process()
    rss0, bytes0 = process.memory_info().rss, database_bytes(url)
    t0 = Clock.now()
    await make(count)
    seconds = Clock.now() - t0
    gc.collect()
    rss1, bytes1 = process.memory_info().rss, database_bytes(url)
    tasks = len([t for t in asyncio.all_tasks() if not t.done()])
    for handle in handles:  # let them finish, so the next rep starts clean
        await DBOS.send_async(handle.workflow_id, 0, "go")
    await asyncio.gather(*(h.get_result() for h in handles))
    return {
        "paused_runs": count,
        "create_seconds": seconds,
        "rss_before_mb": rss0 / 2**20,
        "rss_after_mb": rss1 / 2**20,
        "rss_delta_bytes_per_run": (rss1 - rss0) / count,
        "db_bytes_per_run": (bytes1 - bytes0) / count,
        "live_tasks_while_paused": tasks,
    }


async def w5_state(url: str, blob_bytes: int, steps: list[int]) -> dict[str, Any]:
    payload = blob(blob_bytes)
    growth = []
    for count in steps:
        before = database_bytes(url)
        handle = await DBOS.start_workflow_async(big_state, payload, count)
        assert await handle.get_result() == count
        growth.append((database_bytes(url) - before, count))
    (small, small_steps), (big, big_steps) = growth
    return {
        "blob_bytes": blob_bytes,
        "steps": [small_steps, big_steps],
        "db_growth_per_step": (big - small) / (big_steps - small_steps),
    }


async def run_suite(params: dict[str, Any]) -> dict[str, Any]:
    p = {**DEFAULTS, **params}
    url = scratch_db("bench_dbos")
    out: dict[str, Any] = {"system": "dbos", "only": p.get("only")}
    DBOS(config={"name": "bench", "system_database_url": url, "log_level": "WARNING"})
    DBOS.launch()
    logging.getLogger("dbos").setLevel(logging.WARNING)
    try:
        await w1(4, 2.0)
        reps, conc, d = p["reps"], p["concurrency"], p["duration_s"]
        await measure(out, "W1", reps, lambda c: w1(c, d), conc)
        with CallEndpoint() as endpoint:
            async with httpx.AsyncClient(timeout=30) as client:
                CALL.update(url=endpoint.url, client=client)
                await measure(out, "W1C", reps, lambda c: w1(c, d, calls), conc)
        await measure(out, "W2", reps, lambda c: w2(c, d), conc)
        await measure(out, "W3", reps, lambda: w3(p["latency_samples"]))
        await measure(
            out, "W5_state", reps, lambda: w5_state(url, p["blob_bytes"], p["state_steps"])
        )
        await measure(out, "W5", reps, lambda: w5_paused(url, p["paused_runs"]))
    finally:
        DBOS.destroy()
    return out


def main() -> None:
    emit(asyncio.run(run_suite(suite_args())))


if __name__ == "__main__":
    main()
