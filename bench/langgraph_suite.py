"""LangGraph with its Postgres checkpointer, in-process, on its own scratch database.

    python -m bench.langgraph_suite --params '{"duration_s": 5}'

Graphs run with ``durability="sync"``: each step's checkpoint is written before the next
step starts, which is what Stepwise promises (LangGraph's default, "async", overlaps the
write with the next step).
"""

from __future__ import annotations

import asyncio
import gc
import itertools
import uuid
from typing import Any, TypedDict

import httpx
import psutil
from langchain_core.runnables import RunnableConfig
from langgraph.checkpoint.postgres.aio import AsyncPostgresSaver
from langgraph.graph import END, START, StateGraph
from langgraph.types import Command, interrupt
from psycopg.rows import dict_row
from psycopg_pool import AsyncConnectionPool

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
DURABILITY = "sync"
first_node_at: dict[str, float] = {}


class Counter(TypedDict):
    n: int


class BigState(TypedDict):
    blob: str
    n: int
    tag: int
    steps: int


async def inc(state: Counter) -> dict[str, int]:
    return {"n": state["n"] + 1}


async def first(state: Counter, config: RunnableConfig) -> dict[str, int]:
    first_node_at.setdefault(str(config["configurable"]["thread_id"]), Clock.wall())
    return {"n": state["n"] + 1}


async def ask(state: Counter) -> dict[str, int]:
    value = interrupt({"question": "go?"})
    return {"n": state["n"] + int(value)}


def linear_graph(saver: AsyncPostgresSaver) -> Any:
    builder = StateGraph(Counter)
    names = [f"s{i}" for i in range(NODES)]
    for i, name in enumerate(names):
        builder.add_node(name, first if i == 0 else inc)
    builder.add_edge(START, names[0])
    for a, b in itertools.pairwise(names):
        builder.add_edge(a, b)
    builder.add_edge(names[-1], END)
    return builder.compile(checkpointer=saver)


CALL: dict[str, Any] = {}  # W1C: the endpoint's URL and the shared client


async def call(state: Counter) -> dict[str, int]:
    """W1C: each node POSTs to the loopback endpoint, as a Stepwise ``call`` step does."""
    response = await CALL["client"].post(CALL["url"], json={"n": state["n"]})
    response.raise_for_status()
    assert response.json()["status"] == "succeeded"
    return {"n": state["n"] + 1}


def call_graph(saver: AsyncPostgresSaver) -> Any:
    builder = StateGraph(Counter)
    names = [f"c{i}" for i in range(NODES)]
    for name in names:
        builder.add_node(name, call)
    builder.add_edge(START, names[0])
    for a, b in itertools.pairwise(names):
        builder.add_edge(a, b)
    builder.add_edge(names[-1], END)
    return builder.compile(checkpointer=saver)


def interrupt_graph(saver: AsyncPostgresSaver, *, paused_only: bool = False) -> Any:
    builder = StateGraph(Counter)
    builder.add_node("ask", ask)
    if paused_only:
        builder.add_edge(START, "ask")
        builder.add_edge("ask", END)
        return builder.compile(checkpointer=saver)
    builder.add_node("before", inc)
    builder.add_node("after", inc)
    builder.add_edge(START, "before")
    builder.add_edge("before", "ask")
    builder.add_edge("ask", "after")
    builder.add_edge("after", END)
    return builder.compile(checkpointer=saver)


def big_state_graph(saver: AsyncPostgresSaver) -> Any:
    async def tick(state: BigState) -> dict[str, int]:
        return {"n": state["n"] + 1, "tag": 1000000000 + state["n"] + 1}

    async def route(state: BigState) -> str:
        return "tick" if state["n"] < state["steps"] else "done"

    async def done(state: BigState) -> dict[str, int]:
        return {}

    builder = StateGraph(BigState)
    builder.add_node("tick", tick)
    builder.add_node("done", done)
    builder.add_edge(START, "tick")
    builder.add_conditional_edges("tick", route, {"tick": "tick", "done": "done"})
    builder.add_edge("done", END)
    return builder.compile(checkpointer=saver)


def thread() -> dict[str, Any]:
    return {"configurable": {"thread_id": str(uuid.uuid4())}}


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
                log(f"langgraph error: {exc!r}")

    await asyncio.gather(*(worker() for _ in range(in_flight)))
    return Throughput(in_flight, runs, steps, Clock.now() - begin, errors)


async def w1(graph: Any, in_flight: int, duration_s: float) -> Throughput:
    async def one() -> int:
        result = await graph.ainvoke({"n": 0}, thread(), durability=DURABILITY)
        assert result["n"] == NODES, result
        return NODES

    return await closed_loop(in_flight, duration_s, one)


async def w2(graph: Any, in_flight: int, duration_s: float) -> dict[str, Any]:
    latencies: list[float] = []

    async def one() -> int:
        config = thread()
        paused = await graph.ainvoke({"n": 0}, config, durability=DURABILITY)
        assert "__interrupt__" in paused, paused
        t0 = Clock.now()
        result = await graph.ainvoke(Command(resume=1), config, durability=DURABILITY)
        latencies.append(Clock.now() - t0)
        assert result["n"] == 3, result
        return 1

    result = await closed_loop(in_flight, duration_s, one)
    return {"in_flight": in_flight, "errors": result.errors, **latency_summary(latencies)}


async def w3(graph: Any, samples: int) -> dict[str, Any]:
    latencies = []
    for _ in range(samples):
        config = thread()
        t0 = Clock.wall()
        await graph.ainvoke({"n": 0}, config, durability=DURABILITY)
        latencies.append(first_node_at.pop(config["configurable"]["thread_id"]) - t0)
    return latency_summary(latencies)


async def w5_paused(graph: Any, url: str, count: int) -> dict[str, Any]:
    async def make(n: int) -> None:
        queue = iter(range(n))

        async def worker() -> None:
            for _ in queue:
                paused = await graph.ainvoke({"n": 0}, thread(), durability=DURABILITY)
                assert "__interrupt__" in paused

        await asyncio.gather(*(worker() for _ in range(16)))

    await make(min(500, count))
    gc.collect()
    process = psutil.Process()
    rss0, bytes0 = process.memory_info().rss, database_bytes(url)
    t0 = Clock.now()
    await make(count)
    seconds = Clock.now() - t0
    gc.collect()
    rss1, bytes1 = process.memory_info().rss, database_bytes(url)
    return {
        "paused_runs": count,
        "create_seconds": seconds,
        "rss_before_mb": rss0 / 2**20,
        "rss_after_mb": rss1 / 2**20,
        "rss_delta_bytes_per_run": (rss1 - rss0) / count,
        "db_bytes_per_run": (bytes1 - bytes0) / count,
    }


async def w5_state(graph: Any, url: str, blob_bytes: int, steps: list[int]) -> dict[str, Any]:
    payload = blob(blob_bytes)
    growth = []
    for count in steps:
        before = database_bytes(url)
        config = {**thread(), "recursion_limit": count + 10}
        state = {"blob": payload, "n": 0, "tag": 1000000000, "steps": count}
        result = await graph.ainvoke(state, config, durability=DURABILITY)
        assert result["n"] == count
        growth.append((database_bytes(url) - before, count + 1))
    (small, small_steps), (big, big_steps) = growth
    return {
        "blob_bytes": blob_bytes,
        "steps": [small_steps, big_steps],
        "db_growth_per_step": (big - small) / (big_steps - small_steps),
    }


async def run_suite(params: dict[str, Any]) -> dict[str, Any]:
    p = {**DEFAULTS, **params}
    url = scratch_db("bench_langgraph")
    out: dict[str, Any] = {
        "system": "langgraph",
        "only": p.get("only"),
        "W1": [],
        "W1C": [],
        "W2": [],
        "W3": [],
        "W5": [],
        "W5_state": [],
    }
    kwargs = {"autocommit": True, "prepare_threshold": 0, "row_factory": dict_row}
    async with AsyncConnectionPool(url, min_size=4, max_size=20, kwargs=kwargs, open=False) as pool:
        saver = AsyncPostgresSaver(pool)  # type: ignore[arg-type]
        await saver.setup()
        linear, paused = linear_graph(saver), interrupt_graph(saver)
        await w1(linear, 4, 2.0)
        reps, conc, d = p["reps"], p["concurrency"], p["duration_s"]
        await measure(out, "W1", reps, lambda c: w1(linear, c, d), conc)
        with CallEndpoint() as endpoint:
            async with httpx.AsyncClient(timeout=30) as client:
                CALL.update(url=endpoint.url, client=client)
                calls = call_graph(saver)
                await measure(out, "W1C", reps, lambda c: w1(calls, c, d), conc)
        await measure(out, "W2", reps, lambda c: w2(paused, c, d), conc)
        await measure(out, "W3", reps, lambda: w3(linear, p["latency_samples"]))
        big = big_state_graph(saver)
        await measure(
            out, "W5_state", reps, lambda: w5_state(big, url, p["blob_bytes"], p["state_steps"])
        )
        only = interrupt_graph(saver, paused_only=True)
        await measure(out, "W5", reps, lambda: w5_paused(only, url, p["paused_runs"]))
    out["durability"] = DURABILITY
    return out


def main() -> None:
    emit(asyncio.run(run_suite(suite_args())))


if __name__ == "__main__":
    main()
